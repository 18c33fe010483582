"""The benchmark harness (bench/, ``python -m bench``): it runs, and its table keeps every runtime's row.

These check the harness, never speeds: the timings of a shared CI machine are not evidence of anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ sits beside the installed aglmc package, not inside it

from bench import catalog, hw, report, runtimes  # noqa: E402


def _bench(tmp_path: Path, *args: str, env=None, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench", *args, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(tmp_path: Path):
    data = json.loads((tmp_path / "out" / "host.json").read_text())
    return data, {(r["model"], r["runtime"]): r for r in data["rows"]}


def _model_section(markdown: str, title: str) -> str:
    start = markdown.index(f"### {title}")
    end = markdown.find("\n### ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


@pytest.mark.slow
def test_quick_mode_table_has_every_runtime_row(tmp_path):
    proc = _bench(tmp_path, "--quick")
    data, rows = _rows(tmp_path)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert data["rounds"] == 3 and data["quick"]
    assert "shared" in markdown and "noisy" in markdown  # the machine note
    for model in catalog.QUICK_MODELS:
        section = _model_section(markdown, catalog.MODELS[model].title)
        for runtime in runtimes.QUICK_RUNTIMES:
            row = rows[(model, runtime)]
            assert f"| {runtime} |" in section, (model, runtime)
            assert row["status"] in ("ok", "wrong", "failed", "skipped"), row
            if row["status"] in ("ok", "wrong"):  # measured: a latency, its spread and an output check
                assert row["median_ms"] > 0 and row["samples"] > 0 and row["rounds"] >= 1, row
                assert row["max_abs_error"] is not None and row["rss_peak_mb"] > 0, row
            else:  # a failure or skip keeps its row and says why
                assert row["reason"], row
                assert row["reason"].replace("|", "\\|")[:40] in section
    # the harness's own numbers: ratios against onnxruntime, GFLOP/s from the MACs
    assert rows[("matmul256", "onnxruntime")]["ratio_vs_baseline"] == pytest.approx(1.0)
    assert data["models"]["matmul256"]["macs"] == 256 ** 3
    assert data["models"]["digits"]["metric"] == "accuracy"
    assert "### Summary" in proc.stdout  # the table is printed too


_PLUGIN = '''
import numpy as np
from bench.runtimes import OnnxRuntime, Runtime, register


class Broken(Runtime):
    name = "broken"
    has_build = False

    def load(self, ctx, built):
        raise RuntimeError("this runtime cannot load anything")


class Wrong(OnnxRuntime):
    name = "wrong"

    def load(self, ctx, built):
        infer = super().load(ctx, built)
        return lambda inputs: [o + 1.0 for o in infer(inputs)]


class Missing(Runtime):
    name = "missing"
    requires = ("no_such_module_for_bench",)
    install = "pip install no-such-module"


for runtime in (Broken(), Wrong(), Missing()):
    register(runtime)
'''


@pytest.mark.slow
def test_failing_wrong_and_missing_runtimes_stay_in_the_table(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(_PLUGIN)
    _bench(tmp_path, "--models", "matmul256", "--runtimes", "onnxruntime,broken,wrong,missing", "--rounds", "2",
           "--round-seconds", "0.02", "--no-plots", "--plugin", str(plugin))
    _, rows = _rows(tmp_path)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert rows[("matmul256", "onnxruntime")]["status"] == "ok"
    broken = rows[("matmul256", "broken")]
    assert broken["status"] == "failed" and "cannot load anything" in broken["reason"]
    wrong = rows[("matmul256", "wrong")]
    assert wrong["status"] == "wrong" and wrong["max_abs_error"] == pytest.approx(1.0, abs=1e-5)
    assert wrong["median_ms"] > 0  # still measured
    missing = rows[("matmul256", "missing")]
    assert missing["status"] == "skipped" and "pip install no-such-module" in missing["reason"]
    for text in ("| broken | FAILED |", "WRONG: max-abs error", "| missing | skipped |"):
        assert text in markdown


def test_peak_from_cpuinfo():
    avx512 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
              "cpu MHz\t\t: 2600.000\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n"
              "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n\n")
    cpu = hw.parse_cpuinfo(avx512)
    assert (cpu.lanes, cpu.cores, cpu.fma_units) == (16, 2, 2)
    assert cpu.per_core_gflops == pytest.approx(16 * 2 * 2 * 2.6)
    assert cpu.peak_gflops(2) == pytest.approx(2 * 166.4) and cpu.peak_gflops(8) == cpu.peak_gflops(2)
    avx2 = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz\nflags\t\t: sse2 avx avx2 fma\n"
    cpu = hw.parse_cpuinfo(avx2)
    assert (cpu.lanes, cpu.ghz, cpu.clock_source) == (8, 3.4, "model name")
    assert cpu.peak_gflops(1) == pytest.approx(8 * 2 * 2 * 3.4)


def test_report_keeps_failed_and_skipped_rows():
    base = dict(technique="fp32", p25_ms=None, p75_ms=None, iqr_ms=None, samples=0, rounds=0, gflops=None,
                pct_peak=None, max_abs_error=None, metric=None, rss_peak_mb=None, rss_base_mb=None,
                size_bytes=None, compile_s=None, notes="", ratio_vs_baseline=None, median_ms=None)
    data = {"baseline": "onnxruntime", "models": {"m": {"title": "model m", "macs": 10 ** 6}}, "rows": [
        {**base, "model": "m", "runtime": "onnxruntime", "status": "ok", "reason": "", "median_ms": 2.0,
         "p25_ms": 1.9, "p75_ms": 2.2, "iqr_ms": 0.3, "samples": 30, "rounds": 3, "ratio_vs_baseline": 1.0,
         "max_abs_error": 1e-6},
        {**base, "model": "m", "runtime": "x", "status": "failed", "reason": "build: TVMError: boom | bad"},
        {**base, "model": "m", "runtime": "y", "status": "skipped", "reason": "not installed (y): pip install y"},
    ]}
    text = report.host_tables(data)
    assert "| model m | 2.00 (1.00×) | FAILED | skipped |" in text
    assert "| x | FAILED |" in text and "TVMError: boom \\| bad" in text
    assert "| y | skipped |" in text and "pip install y" in text


def test_board_runner_checks_and_times_on_the_emulated_board_and_labels_it(tmp_path, emulated_board):
    """``python -m bench --board``: aglmc's and plain TVM's aarch64 libraries run on a board over RPC; on an
    emulated board every time is labelled correctness-only, in the rows and in the table."""
    from bench import board, report

    data = board.run_board(["digits"], tmp_path / "work", emulated_board.spec, log=lambda m: None, seconds=0.2)
    assert data["emulated"] is True
    rows = {r["runtime"]: r for r in data["rows"]}
    assert set(rows) == {"aglmc", "tvm (plain)"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["max_abs_error"] < 1e-4 and row["median_ms"] > 0 and row["correctness_only"]
        assert "correctness only" in row["notes"]
    table = report.board_section(data)
    assert "emulated: correctness only" in table and "(emulated)" in table


def test_a_board_name_that_cannot_be_read_is_a_clear_error(capsys, tmp_path):
    from bench.cli import main

    assert main(["--board", "bad spec!", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 2
    assert "cannot read board 'bad spec!'" in capsys.readouterr().err


@pytest.mark.slow
def test_vulkan_gpu_prepares_and_runs_the_examples_on_this_vulkan_device(tmp_path):
    """bench/vulkan_gpu.py, as on a GPU machine: prepare (here, with TVM) then run as a file, with TVM hidden
    (the GPU machine has none); on lavapipe in CI, where PyTorch has no CUDA, the peer says why it is missing."""
    from aglmc.errors import TargetError
    from aglmc.targets.vulkan.runtime import select_adapter

    try:
        select_adapter()
    except TargetError as e:
        pytest.skip(f"no Vulkan device: {e.message}")
    prep = subprocess.run([sys.executable, "-m", "bench.vulkan_gpu", "prepare", str(tmp_path / "g"), "--cases",
                           "digits", "glm_int4"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "g" / "glm_int4").iterdir()) == [
        "reference.npz", "vulkan_decode.wgpu", "vulkan_prefill.wgpu"]  # only what the GPU machine needs
    hide_tvm = ("import sys, runpy\n"
                "class Hide:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name.split('.')[0] in ('tvm', 'tvm_ffi', 'onnx', 'onnxruntime'):\n"
                "            raise ImportError(name + ' is hidden: the GPU machine has no TVM')\n"
                "sys.meta_path.insert(0, Hide())\n"
                "sys.argv = sys.argv[1:]\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", hide_tvm, "bench/vulkan_gpu.py", "run", str(tmp_path / "g"),
                          "--json", str(tmp_path / "r.json"), "--repeats", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    rows = {r["name"]: r for r in result["cases"]}
    assert rows["digits"]["ok"] and rows["digits"]["error_vs_host"] < 1e-4 and rows["digits"]["vulkan_ms"] > 0
    assert rows["glm_int4"]["tokens_equal"] == rows["glm_int4"]["prompts"] == 2
    assert all("ms" in r["torch_cuda"] or "error" in r["torch_cuda"] for r in rows.values())
    assert "| digits [[1, 1, 8, 8]] | max-abs" in run.stdout
