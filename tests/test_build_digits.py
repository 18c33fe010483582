"""The foundation end to end on the digits example: build, artifact contents, verification, run, ARM code."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import EXAMPLES, objdump_aarch64, schedule_copy

DIGITS = EXAMPLES / "01_digits_cnn"


def test_artifact_holds_libraries_manifest_schedule_and_report(digits_artifact):
    names = sorted(p.name for p in digits_artifact.iterdir())
    assert names == ["arm.so", "host.so", "manifest.json", "report.md", "schedule.sched"]
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "output0", "shape": [1, 10], "dtype": "float32"}]
    assert [t["kind"] for t in manifest["targets"]] == ["host", "arm"]
    assert manifest["tools"]["apache-tvm"] == "0.27.0.post1"
    assert manifest["tools"]["apache-tvm-ffi"] == "0.1.14.post1"
    text = (DIGITS / "digits.sched").read_text()
    assert manifest["schedule"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    [fold] = manifest["passes"]
    assert fold["name"] == "fold_batchnorm" and fold["changed"] and fold["summary"] == "folded 3 batch norm(s)"
    assert manifest["stats"]["before"]["ops"]["aten.batch_norm"] == 3
    assert "aten.batch_norm" not in manifest["stats"]["after"]["ops"]
    assert manifest["stats"]["before"]["macs"] == manifest["stats"]["after"]["macs"]


def test_verification_digits_accuracy_unchanged_after_batchnorm_fold(digits_artifact):
    v = json.loads((digits_artifact / "manifest.json").read_text())["verification"]
    assert v["samples"] == 400 and v["data"] == "heldout"
    assert v["error_vs_original"] < 1e-4
    assert v["metric"] == "accuracy"
    assert v["metric_original"] > 0.95
    assert v["metric_compiled"] == v["metric_original"] == v["metric_transformed"]
    report = (digits_artifact / "report.md").read_text()
    for heading in ("## Verification", "## Passes", "## Targets", "## Layers"):
        assert heading in report
    assert "host library vs original model" in report


def test_resolved_schedule_rechecks(digits_artifact, cli):
    resolved = digits_artifact / "schedule.sched"
    # the resolved schedule names the example's files relative to itself: check it from the example folder
    copy = DIGITS / ".resolved-test.sched"
    copy.write_text(resolved.read_text())
    try:
        result = cli("check", copy, "--quiet")
    finally:
        copy.unlink()
    assert result.code == 0, result.err


def test_run_prints_the_models_prediction(digits_artifact, cli):
    sample = DIGITS / "sample.npy"
    result = cli("run", digits_artifact, "--input", sample)
    assert result.code == 0, result.err
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_model", DIGITS / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, _ = mod.build()
    with torch.no_grad():
        expected = int(model(torch.from_numpy(np.load(sample))).argmax())
    assert f"argmax: [{expected}]" in result.out


def test_arm_library_is_aarch64_with_neon(digits_artifact):
    data = (digits_artifact / "arm.so").read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    assert int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64
    tool = objdump_aarch64()
    if tool is None:
        pytest.skip("no aarch64 objdump (apt-get install binutils-aarch64-linux-gnu)")
    asm = subprocess.run([tool, "-d", str(digits_artifact / "arm.so")], capture_output=True, text=True,
                         check=True).stdout
    neon = [line for line in asm.splitlines() if ".4s" in line and ("fmla" in line or "fadd" in line
                                                                     or "fmax" in line or "fmul" in line)]
    assert neon, "no NEON vector arithmetic in the arm library"


def test_failed_build_keeps_previous_artifact_and_inputs(tmp_path, cli):
    out = tmp_path / "digits"
    sched = schedule_copy(DIGITS / "digits.sched", tmp_path / "tight.sched",
                          replace={"tolerance = 1e-4": "tolerance = 1e-12"})
    out.mkdir()
    (out / "manifest.json").write_text('{"previous": true}')
    before = {p: p.read_bytes() for p in DIGITS.iterdir() if p.is_file()}
    result = cli("build", sched, "--out", out, "--quiet")
    assert result.code == 1
    assert "above the schedule's tolerance 1e-12" in result.err and "tight.sched:" in result.err
    assert "Traceback" not in result.err
    assert json.loads((out / "manifest.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "tight.sched"]  # no staging left
    assert {p: p.read_bytes() for p in DIGITS.iterdir() if p.is_file()} == before


def test_report_gives_each_kernels_rule_macs_and_measured_time_share(digits_artifact):
    """issue 12: per fused kernel, the rule, its share of the MACs and its measured share of the time (each kernel
    timed alone in the built host library); the arm library's kernels are not timed here."""
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    host = next(t for t in manifest["targets"] if t["kind"] == "host")
    kernels = host["schedule"]
    assert kernels and all(k["ms"] > 0 and k["calls"] >= 1 for k in kernels.values()), kernels
    arm = next(t for t in manifest["targets"] if t["kind"] == "arm")
    assert not any("ms" in k for k in arm["schedule"].values())
    report = (digits_artifact / "report.md").read_text()
    assert "| kernel | rule | calls | MACs per call | share of MACs | ms per call | share of time |" in report
    shares = [float(line.rsplit("|", 2)[-2].strip().rstrip("%")) for line in report.splitlines()
              if line.startswith("| fused_") or line.startswith("| max_pool")]
    assert len(shares) == len(kernels) and abs(sum(shares) - 100.0) < 0.5, shares
