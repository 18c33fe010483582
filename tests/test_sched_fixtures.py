"""Diagnostics of the ``.sched`` language, in the style of MLIR's ``--verify-diagnostics``.

Each ``tests/sched_fixtures/*.sched`` file is a broken schedule whose first line says where the error is and
what it says; an optional second line names a substring of the hint::

    # expect: 4:31: ratio must be in (0, 1), got 1.2
    # hint: did you mean 'ratio'?

The test parses and checks the file against the catalog below and requires exactly that ScheduleError: its
location, a message containing the substring, and a rendering with the source line and a caret under the column.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aglmc.dsl import Catalog, PassSig, check, parse_file
from aglmc.dsl.params import REQUIRED, Param
from aglmc.errors import ScheduleError

FIXTURES = Path(__file__).with_name("sched_fixtures")


def _power_of_two(v: int):
    return None if v > 0 and v & (v - 1) == 0 else f"align must be a power of two, got {v}"


CATALOG = Catalog(
    passes={
        "fold_batchnorm": PassSig("fold_batchnorm", (), ("fx", "onnx"), guarantees=("no_batchnorm",)),
        "reparam": PassSig("reparam", (), ("fx",), invalidates=("no_batchnorm",)),
        "prune_channels": PassSig("prune_channels", (
            Param("ratio", "float", REQUIRED, "fraction of channels removed", min=0, max=1, min_open=True,
                  max_open=True),
            Param("min_channels", "int", 8, min=1),
            Param("align", "int", 8, check=_power_of_two),
            Param("criterion", "enum", "l1", choices=("l1", "l2")),
        ), ("fx",), requires=("no_batchnorm",)),
        "lowrank": PassSig("lowrank", (
            Param("rank_ratio", "float", REQUIRED, "kept rank / full rank", min=0, max=1, min_open=True),
            Param("layers", "list[int]", (), min=0),
            Param("method", "enum", "svd", choices=("svd", "tucker")),
        ), ("fx",)),
        "quantize": PassSig("quantize", (
            Param("calib", "dataset"),
            Param("per_channel", "bool", True),
            Param("scheme", "enum", "int8_sym", choices=("int8_sym", "int8_asym")),
        ), ("onnx",), requires=("no_batchnorm",), guarantees=("quantized",)),
    },
    targets={
        "host": (Param("threads", "int", 1, min=1),),
        "arm": (Param("triple", "str", "aarch64-linux-gnu"), Param("cpu", "str", "generic"),
                Param("features", "list[str]", ())),
    },
    metrics=("max_abs", "accuracy", "top5"),
    op_kinds=("conv2d", "linear", "batchnorm", "matmul", "relu"),
)

_EXPECT = re.compile(r"# expect: (\d+):(\d+): (.+)")
_HINT = re.compile(r"# hint: (.+)")


def _fixtures():
    return sorted(FIXTURES.glob("*.sched"))


def test_there_are_enough_fixtures():
    assert len(_fixtures()) >= 30


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.stem)
def test_fixture(path: Path):
    lines = path.read_text().splitlines()
    expect = _EXPECT.fullmatch(lines[0])
    assert expect, f"{path.name}: the first line must be '# expect: LINE:COL: message'"
    line, col, message = int(expect[1]), int(expect[2]), expect[3]
    hint = _HINT.fullmatch(lines[1]) if len(lines) > 1 else None

    with pytest.raises(ScheduleError) as info:
        check(parse_file(path), CATALOG)
    err = info.value

    assert (err.location.file, err.location.line, err.location.col) == (str(path), line, col), err.render()
    assert message in err.message, err.render()
    if hint:
        assert err.hint and hint[1] in err.hint, err.render()
    rendered = err.render().splitlines()
    assert rendered[0] == f"{path}:{line}:{col}: error: {err.message}"
    if line <= len(lines):  # the error at the end of a file may point past its last line's text
        assert rendered[1].endswith(f"{line} | {lines[line - 1]}")
        caret = rendered[2]
        assert caret.index("^") - caret.index("|") - 2 == col - 1, err.render()
