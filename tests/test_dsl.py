"""The ``.sched`` language: parsing every construct, locations, value types, checking and the format round trip.

Error diagnostics are tested file by file in ``test_sched_fixtures.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aglmc.dsl import (Catalog, CheckedSchedule, Evaluation, PassSig, ResolvedStep, ResolvedTarget, check,
                      format_schedule, parse_file, parse_text)
from aglmc.dsl.ast import Selector
from aglmc.dsl.params import REQUIRED, Ident, Param
from aglmc.errors import Location, ScheduleError

EXAMPLE = '''\
# comments run to end of line
model "model.py:build"             # python file + factory
input x: float32[1, 1, 8, 8]
dataset calib = "data.npz"
dataset heldout = "data.py:heldout"
evaluate {
    data = heldout
    metric = accuracy
    tolerance = 1e-4
}
pass fold_batchnorm
pass prune_channels on conv2d, linear in "features.*" { ratio = 0.5  min_channels = 8 }
pass lowrank in "encoder.*" {
    rank_ratio = 0.5,              # commas between settings optional
    layers = [1, 2, 3]
}
target host { threads = 2 }
target arm {
    triple = "aarch64-linux-gnu"
    cpu = "cortex-a76"
    features = ["+neon", "+dotprod"]
}
'''

CATALOG = Catalog(
    passes={
        "fold_batchnorm": PassSig("fold_batchnorm", (), ("fx", "onnx"), guarantees=("no_batchnorm",)),
        "prune_channels": PassSig("prune_channels", (
            Param("ratio", "float", REQUIRED, min=0, max=1, min_open=True, max_open=True),
            Param("min_channels", "int", 1, min=1),
            Param("criterion", "enum", "l1", choices=("l1", "l2")),
        ), ("fx",), requires=("no_batchnorm",)),
        "lowrank": PassSig("lowrank", (
            Param("rank_ratio", "float", REQUIRED, min=0, max=1, min_open=True),
            Param("layers", "list[int]", ()),
            Param("method", "enum", "svd", choices=("svd", "tucker")),
            # defaults written as ints / a list: the checker hands them out as a float and a tuple of floats
            Param("momentum", "float", 0),
            Param("weights", "list[float]", [1, 0.5]),
        ), ("fx",)),
    },
    targets={
        "host": (Param("threads", "int", 1, min=1),),
        "arm": (Param("triple", "str", REQUIRED), Param("cpu", "str", "generic"),
                Param("features", "list[str]", ())),
    },
    metrics=("max_abs", "accuracy"),
    op_kinds=("conv2d", "linear", "batchnorm"),
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A schedule folder holding the files EXAMPLE names."""
    (tmp_path / "model.py").write_text("def build(): ...\n")
    (tmp_path / "data.py").write_text("def heldout(): ...\n")
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    return tmp_path


def test_parse_every_construct(folder: Path):
    s = parse_text(EXAMPLE, folder / "net.sched")
    assert s.path == folder / "net.sched" and s.text == EXAMPLE
    assert (s.model.source.text, s.model.source.path, s.model.source.factory) == (
        "model.py:build", folder.resolve() / "model.py", "build")
    assert [(i.name, i.dtype, i.shape) for i in s.inputs] == [("x", "float32", (1, 1, 8, 8))]
    calib, heldout = s.datasets
    assert (calib.name, calib.source.path, calib.source.factory, calib.source.is_python) == (
        "calib", folder.resolve() / "data.npz", None, False)
    assert (heldout.name, heldout.source.factory, heldout.source.is_python) == ("heldout", "heldout", True)
    assert [(x.key, x.value.plain()) for x in s.evaluate.settings] == [
        ("data", Ident("heldout")), ("metric", Ident("accuracy")), ("tolerance", 1e-4)]
    assert [(p.name, p.selector, [(x.key, x.value.plain()) for x in p.settings]) for p in s.passes] == [
        ("fold_batchnorm", Selector(), []),
        ("prune_channels", Selector(("conv2d", "linear"), "features.*"), [("ratio", 0.5), ("min_channels", 8)]),
        ("lowrank", Selector((), "encoder.*"), [("rank_ratio", 0.5), ("layers", (1, 2, 3))]),
    ]
    assert [(t.kind, [(x.key, x.value.plain()) for x in t.settings]) for t in s.targets] == [
        ("host", [("threads", 2)]),
        ("arm", [("triple", "aarch64-linux-gnu"), ("cpu", "cortex-a76"), ("features", ("+neon", "+dotprod"))]),
    ]


def test_locations_point_at_the_text(folder: Path):
    path = folder / "net.sched"
    s = parse_text(EXAMPLE, path)

    def at(line, col, end_col):
        return Location(str(path), line, col, line, end_col)

    assert s.model.loc == at(2, 1, 23)  # the whole statement
    assert s.model.source.loc == at(2, 7, 23)  # the string, quotes included
    assert (s.inputs[0].loc, s.inputs[0].dtype_loc) == (at(3, 7, 8), at(3, 10, 17))
    assert s.datasets[1].loc == at(5, 9, 16)
    assert s.evaluate.loc == at(6, 1, 9)
    tolerance = s.evaluate.settings[2]
    assert (tolerance.loc, tolerance.value.loc) == (at(9, 5, 14), at(9, 17, 21))
    prune = s.passes[1]
    assert prune.loc == at(12, 6, 20)
    assert prune.selector.ops_locs == (at(12, 24, 30), at(12, 32, 38))
    assert prune.selector.loc == at(12, 21, 54)  # from `on` to the end of the glob
    assert s.passes[2].settings[1].value.loc == at(15, 14, 23)  # the whole list
    assert s.passes[2].settings[1].value.value[2].loc == at(15, 21, 22)  # one element
    arm = s.targets[1]
    assert (arm.loc, arm.settings[2].loc) == (at(18, 8, 11), at(21, 5, 13))


@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("-2", -2), ("+7", 7),
    ("0.5", 0.5), ("1e-4", 1e-4), ("-1.5E3", -1500.0), (".5", 0.5), ("2.", 2.0), ("3e2", 300.0),
    ('"plain"', "plain"), (r'"a\"b\\c\nd\te"', 'a"b\\c\nd\te'), ('""', ""),
    ("true", True), ("false", False), ("accuracy", Ident("accuracy")), ("true_ish", Ident("true_ish")),
    ("[]", ()), ("[1, 2.5, \"s\", x, false,]", (1, 2.5, "s", Ident("x"), False)), ("[[1], []]", ((1,), ())),
])
def test_value_types(text: str, expected):
    s = parse_text(f"target t {{ v = {text} }}", "v.sched")
    value = s.targets[0].settings[0].value.plain()
    assert value == expected and type(value) is type(expected)


def test_newlines_commas_and_comments_are_insignificant(folder: Path):
    code = [line.split("#")[0].strip() for line in EXAMPLE.splitlines()]
    one_line = " ".join(code).replace("rank_ratio = 0.5,", "rank_ratio = 0.5")
    a = check(parse_text(EXAMPLE, folder / "a.sched"), CATALOG)
    b = check(parse_text(one_line, folder / "b.sched"), CATALOG)
    assert a == b


def test_sources_resolve_against_the_schedule_folder(tmp_path: Path):
    s = parse_text('model "../net.onnx"  dataset d = "sub/x.py:make"', tmp_path / "deep" / "s.sched")
    assert (s.model.source.path, s.model.source.factory) == (tmp_path.resolve() / "net.onnx", None)
    assert (s.datasets[0].source.path, s.datasets[0].source.factory) == (
        tmp_path.resolve() / "deep" / "sub" / "x.py", "make")


def test_check_resolves_names_types_and_defaults(folder: Path):
    c = check(parse_text(EXAMPLE, folder / "net.sched"), CATALOG)
    assert isinstance(c, CheckedSchedule)
    assert c.model.source.factory == "build"
    assert list(c.datasets) == ["calib", "heldout"]
    assert c.evaluation == Evaluation("heldout", "accuracy", 1e-4, None, None, loc=None)
    fold, prune, lowrank = c.steps
    assert fold == ResolvedStep("fold_batchnorm", Selector(), {}, loc=None)
    assert prune.params == {"ratio": 0.5, "min_channels": 8, "criterion": "l1"}
    assert lowrank.params == {"rank_ratio": 0.5, "layers": (1, 2, 3), "method": "svd", "momentum": 0.0,
                              "weights": (1.0, 0.5)}
    assert type(lowrank.params["momentum"]) is float
    assert c.targets == (
        ResolvedTarget("host", {"threads": 2}, loc=None),
        ResolvedTarget("arm", {"triple": "aarch64-linux-gnu", "cpu": "cortex-a76",
                               "features": ("+neon", "+dotprod")}, loc=None),
    )


def test_check_converts_values_to_plain_python(folder: Path):
    text = '''model "model.py:build"
dataset calib = "data.npz"
evaluate { data = "calib"  metric = "max_abs"  metric_drop = 0  limit = 16 }
pass lowrank { rank_ratio = 1  method = tucker }
target host
'''
    c = check(parse_text(text, folder / "s.sched"), CATALOG)
    assert c.evaluation == Evaluation("calib", "max_abs", None, 0.0, 16, loc=None)
    assert type(c.evaluation.metric_drop) is float
    params = c.steps[0].params
    assert (params["rank_ratio"], params["method"]) == (1.0, "tucker")  # int literal → float, Ident → str
    assert type(params["rank_ratio"]) is float and type(params["method"]) is str
    assert c.targets == (ResolvedTarget("host", {"threads": 1}, loc=None),)


def test_evaluate_defaults_to_the_first_metric(folder: Path):
    c = check(parse_text('model "model.py:build" evaluate {} target host', folder / "s.sched"), CATALOG)
    assert c.evaluation == Evaluation(None, "max_abs", None, None, None, loc=None)


def test_format_fills_defaults_and_is_deterministic(folder: Path):
    text = format_schedule(check(parse_text(EXAMPLE, folder / "net.sched"), CATALOG))
    assert text == '''\
model "model.py:build"
input x: float32[1, 1, 8, 8]
dataset calib = "data.npz"
dataset heldout = "data.py:heldout"

evaluate {
    data = "heldout"
    metric = "accuracy"
    tolerance = 0.0001
}

pass fold_batchnorm
pass prune_channels on conv2d, linear in "features.*" {
    ratio = 0.5
    min_channels = 8
    criterion = "l1"
}
pass lowrank in "encoder.*" {
    rank_ratio = 0.5
    layers = [1, 2, 3]
    method = "svd"
    momentum = 0.0
    weights = [1.0, 0.5]
}

target host {
    threads = 2
}
target arm {
    triple = "aarch64-linux-gnu"
    cpu = "cortex-a76"
    features = ["+neon", "+dotprod"]
}
'''


@pytest.mark.parametrize("text", [
    EXAMPLE,
    'model "net.onnx" target host',
    'model "model.py:build" evaluate { limit = 3  metric_drop = 0.25 } target arm { triple = "a\\"b\\\\c\\td" }',
    'model "model.py:build" input a: int8[] input b: bool[3] pass lowrank { rank_ratio = 1e-9  layers = [] }'
    ' target host',
])
def test_format_round_trips(folder: Path, text: str):
    (folder / "net.onnx").write_bytes(b"")
    path = folder / "net.sched"
    checked = check(parse_text(text, path), CATALOG)
    formatted = format_schedule(checked)
    again = check(parse_text(formatted, path), CATALOG)
    assert again == checked
    assert format_schedule(again) == formatted


def test_parse_file(folder: Path):
    path = folder / "net.sched"
    path.write_text(EXAMPLE)
    assert parse_file(path) == parse_text(EXAMPLE, path)
    with pytest.raises(ScheduleError, match="schedule file not found: .*nope.sched"):
        parse_file(folder / "nope.sched")


def test_no_lark_error_escapes():
    """Every prefix of a schedule, and seeded one-character corruptions of it, parse or raise ScheduleError."""
    rng = np.random.default_rng(0)
    texts = [EXAMPLE[:n] for n in range(len(EXAMPLE))]
    for _ in range(300):
        i = int(rng.integers(len(EXAMPLE)))
        texts.append(EXAMPLE[:i] + str(rng.choice(list('{}[]=,:"\\#@-.x1 \n'))) + EXAMPLE[i + 1:])
    for text in texts:
        try:
            parse_text(text, "fuzz.sched")
        except ScheduleError as e:
            assert e.location is not None and e.source == text
            assert e.render()


def test_catalog_needs_a_metric():
    with pytest.raises(ValueError, match="metric"):
        Catalog(passes={}, targets={}, metrics=(), op_kinds=())
