"""Channel pruning on the digits CNN (examples/01_digits_cnn): half of every group's channels removed, held-out
accuracy before, after pruning and after distillation recovery; the sensitivity analysis writes its table, JSON
and plot, and prune_channels applies the per-group ratios it chose."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from aglmc.compiler.data import Dataset
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.prune_runtime import batch_free
from aglmc.passes.select import make_selector
from conftest import EXAMPLES

DIGITS = EXAMPLES / "01_digits_cnn"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"digits_{name}", DIGITS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    model, data = _load("model"), _load("data")
    net, example = model.build()
    heldout, labels = data.heldout()
    x, y = data.train()
    datasets = {"calib": Dataset("calib", data.calibration(), None), "train": Dataset("train", {"x": x}, y)}
    return net, example, heldout["x"], labels, datasets


def _accuracy(module, x, labels):
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == labels).mean())


def _conv_widths(gm):
    return [int(n.meta["val"].shape[1]) for n in gm.graph.nodes if n.op == "call_function"
            and "conv2d" in str(n.target)]


@pytest.mark.slow
def test_digits_half_the_channels_then_recovery(digits):
    torch.manual_seed(0)
    net, example, x, labels, datasets = digits
    gm = torch.export.export(net, example).module()
    ctx = PassContext(selects=make_selector("fx"), datasets=datasets, example_inputs={"x": example[0].numpy()},
                      log=lambda m: None)
    ctx.reference_module = net
    before = _accuracy(net, x, labels)

    pruned = get_pass("prune_channels")(ratio=0.5, importance="l2").run("fx", gm, ctx)
    after_prune = _accuracy(batch_free(gm), x, labels)
    recovered = get_pass("distill")(data="train", steps=150, lr=1e-3, batch_size=32).run("fx", gm, ctx)
    after_recovery = _accuracy(batch_free(gm), x, labels)

    print(f"\ndigits CNN, 400 held-out images: accuracy {before:.4f} original, {after_prune:.4f} after pruning 50 % "
          f"of channels ({pruned.summary}), {after_recovery:.4f} after distillation ({recovered.summary})")
    assert _conv_widths(gm) == [8, 16, 16]  # from 16, 32, 32
    params = [int(v) for v in pruned.summary.split("parameters ")[1].replace(",", "").split(" → ")]
    assert params[1] < 0.35 * params[0]
    assert before > 0.98
    assert after_prune < before - 0.05  # pruning alone costs accuracy ...
    assert after_recovery > 0.97  # ... distillation gives it back


@pytest.mark.slow
def test_sensitivity_analysis_and_ratios_from(digits, tmp_path, monkeypatch):
    from aglmc.compiler.sensitivity import analyze_sensitivity

    for name in ("model.py", "data.py", "weights.pt"):
        shutil.copy(DIGITS / name, tmp_path / name)
    sched = tmp_path / "prune.sched"
    sched.write_text('model "model.py:build"\ninput x: float32[1, 1, 8, 8]\n'
                     'dataset heldout = "data.py:heldout"\n'
                     'evaluate {\n    data = heldout\n    metric = accuracy\n    metric_drop = 0.02\n'
                     '    limit = 200\n}\n'
                     'pass prune_channels { importance = l1 }\ntarget host { threads = 1 }\n')
    table = analyze_sensitivity(sched, ratios=(0.25, 0.5, 0.75), out_dir=tmp_path / "out", log=lambda m: None)

    assert [p.name for p in table.files] == ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
    assert (tmp_path / "out" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert saved["metric"] == "accuracy" and saved["max_drop"] == 0.02 and saved["importance"] == "l1"
    assert set(saved["ratios"]) == {"features.0", "features.3", "features.7"}
    assert len(saved["table"]) == 9
    for group, ratio in saved["ratios"].items():  # the chosen ratio is the largest that keeps the drop small
        drops = {r["ratio"]: r["drop"] for r in saved["table"] if r["group"] == group}
        assert all(drops[r] <= 0.02 for r in drops if r <= ratio)
        assert ratio == max(drops) or drops[min(r for r in drops if r > ratio)] > 0.02
    kept = {r["group"]: r["kept"] for r in saved["table"] if r["ratio"] == 0.5}
    assert kept == {"features.0": 8, "features.3": 16, "features.7": 16}
    markdown = (tmp_path / "out" / "sensitivity.md").read_text()
    assert "| group | channels | 0.25 | 0.5 | 0.75 | chosen ratio |" in markdown

    monkeypatch.chdir(tmp_path)
    net, example, x, labels, _ = digits
    gm = torch.export.export(net, example).module()
    get_pass("prune_channels")(ratio=0.0, importance="l1", ratios_from="out/sensitivity.json").run(
        "fx", gm, PassContext(selects=make_selector("fx")))
    widths = _conv_widths(gm)
    expected = [c - int(np.floor(c * saved["ratios"][g] + 1e-9))
                for g, c in (("features.0", 16), ("features.3", 32), ("features.7", 32))]
    assert widths == expected
