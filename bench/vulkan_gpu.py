"""The examples' vulkan artifacts on a GPU machine: numerics against the host build, latency beside PyTorch.

Two steps, because the GPU machine has neither TVM nor this repository's build environment:

    python -m bench.vulkan_gpu prepare DIR      # here: build each case for host + vulkan, save the host's
                                                # outputs (and greedy tokens) on real inputs into DIR
    python bench/vulkan_gpu.py run DIR          # there: wgpu + numpy (+ lark for aglmc.compiler.llm) and,
                                                # for the peer, PyTorch with CUDA

``run`` picks the Vulkan adapter the way ``aglmc run --target vulkan`` does (``AGLMC_VULKAN_ADAPTER`` narrows
it), checks every artifact against the saved host outputs (max-abs error; greedy tokens for LLM builds), and
times it two ways: one inference as a user calls it (``VulkanRunner.run``: upload, one submission, read back)
and the device's steady rate (``VulkanRunner.time``: many inferences' dispatches in one submission). PyTorch
runs the schedule's original model on the same GPU (CUDA, eager, synchronised per call). It prints a markdown
table and writes ``--json``.

The cases are the examples (``examples/``) with ``target vulkan`` added and ``target arm`` removed; MiniLM runs
in float16 only: its float32 artifact (~80 MB of weights) is more than a device call may carry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: name -> (schedule, text replacements, the PyTorch model factory "file.py:function" relative to examples/)
CASES = {
    "digits": ("01_digits_cnn/digits.sched", {}, "01_digits_cnn/model.py:build"),
    "digits_fp16": ("01_digits_cnn/digits.sched", {"\ntarget vulkan\n": "\ntarget vulkan { fp16 = true }\n"},
                    "01_digits_cnn/model.py:build"),
    "digits_onnx": ("02_digits_onnx/digits_onnx.sched", {}, "01_digits_cnn/model.py:build"),
    "digits_pruned": ("05_digits_pruned/digits_pruned.sched", {}, "01_digits_cnn/model.py:build"),
    "digits_int8": ("06_int8/digits_int8.sched", {}, "01_digits_cnn/model.py:build"),
    "glm_tiny": ("03_glm_tiny/glm_tiny.sched", {}, "03_glm_tiny/model.py:build"),
    "glm_tiny_fp16": ("03_glm_tiny/glm_tiny.sched", {"\ntarget vulkan\n": "\ntarget vulkan { fp16 = true }\n"},
                      "03_glm_tiny/model.py:build"),
    "glm_generate": ("03_glm_tiny/glm_generate.sched", {}, "03_glm_tiny/trained.py:build"),
    "glm_int4": ("03_glm_tiny/glm_int4.sched", {}, "03_glm_tiny/trained.py:build"),
    # float16: the float32 artifact (~80 MB) is more than a device call may carry. PyTorch runs the same
    # architecture (the checkpoint's config) with random weights: the weights package is 88 MB.
    "minilm_lowrank_fp16": ("04_minilm_lowrank/minilm_lowrank.sched",
                            {"\ntarget vulkan\n": "\ntarget vulkan { fp16 = true }\n"},
                            "04_minilm_lowrank/model.py:MiniLMSentenceEncoder"),
}
LLM_PROMPTS = 2       # greedy generation checked on this many of the schedule's prompts
LLM_NEW_TOKENS = 16


def schedule_copy(sched: Path, dest: Path, replace: Dict[str, str]) -> Path:
    """``sched`` at ``dest`` with absolute model/data sources, ``target arm`` removed, ``target vulkan`` present."""
    text = sched.read_text()
    text = re.sub(r'"((?!/)[^"]+\.(?:py:\w+|onnx|npz))"', lambda m: f'"{sched.parent / m.group(1)}"', text)
    text = re.sub(r"\ntarget arm(\s*\{[^}]*\})?[^\n]*", "", text)
    if "\ntarget vulkan" not in text:
        text = text.rstrip("\n") + "\ntarget vulkan\n"
    for old, new in replace.items():
        if old not in text:
            raise SystemExit(f"{old!r} is not in {sched}")
        text = text.replace(old, new)
    dest.write_text(text)
    return dest


# ---- prepare (here: TVM, torch, the examples' data) ------------------------------------------------------------
def _first_batch(sched: Path) -> List[np.ndarray]:
    """The first evaluation batch of a schedule (real data: its ``evaluate`` data set, else the example input)."""
    from aglmc.compiler.catalog import build_catalog
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import evaluation_batches, load_datasets
    from aglmc.dsl import check, parse_file

    checked = check(parse_file(sched), build_catalog([]))
    model = load_model(checked)
    arrays, _ = next(iter(evaluation_batches(checked, model, load_datasets(checked, model)).batches()))
    return [np.ascontiguousarray(a) for a in arrays]


def _llm_prompts(sched: Path) -> List[List[int]]:
    from aglmc.compiler.catalog import build_catalog
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import load_datasets
    from aglmc.dsl import check, parse_file

    checked = check(parse_file(sched), build_catalog([]))
    name = checked.generation.params["prompts"]
    rows = load_datasets(checked, load_model(checked))[name].inputs["input_ids"]
    return [[int(t) for t in row] for row in rows[:LLM_PROMPTS]]


def prepare(out: Path, names: List[str]) -> None:
    from aglmc.compiler.llm import generate
    from aglmc.targets.llm import HostLlmRunner
    from aglmc.targets.run import HostRunner

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "cases.json"  # cases prepared earlier into DIR stay, unless prepared again
    cases = [c for c in (json.loads(listing.read_text()) if listing.is_file() else []) if c["name"] not in names]
    for name in names:
        sched_rel, replace, factory = CASES[name]
        sched = schedule_copy(EXAMPLES / sched_rel, out / f"{name}.sched", replace)
        build = out / name
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "aglmc.compiler", "build", str(sched), "--out", str(build), "--quiet"],
                       check=True)
        print(f"{name}: built in {time.time() - t0:.0f} s", flush=True)
        manifest = json.loads((build / "manifest.json").read_text())
        case = {"name": name, "schedule": sched_rel, "torch_factory": factory}
        if _is_class(factory):  # PyTorch builds the class from the checkpoint's config.json, random weights
            import shutil

            shutil.copy(Path(_example_module(factory).model_dir()) / "config.json", build / "torch_config.json")
        if manifest.get("llm"):
            host = HostLlmRunner(build / "host_llm.so")
            prompts = _llm_prompts(sched)
            tokens = [generate(host, p, LLM_NEW_TOKENS, 256).tokens for p in prompts]
            logits, _ = host.prefill(prompts[0])
            case.update(kind="llm", prefill="vulkan_prefill.wgpu", decode="vulkan_decode.wgpu", prompts=prompts,
                        host_tokens=tokens)
            np.savez(build / "reference.npz", prefill_logits=np.asarray(logits))
            for f in build.iterdir():  # only the vulkan artifacts travel
                if f.name not in ("vulkan_prefill.wgpu", "vulkan_decode.wgpu", "reference.npz"):
                    _remove(f)
        else:
            inputs = _first_batch(sched)
            outputs = HostRunner(build / "host.so", threads=1).run(inputs)
            case.update(kind="model", artifact="vulkan.wgpu", inputs=len(inputs), outputs=len(outputs))
            np.savez(build / "reference.npz", **{f"in{i}": a for i, a in enumerate(inputs)},
                     **{f"out{i}": np.asarray(a) for i, a in enumerate(outputs)})
            for f in build.iterdir():
                if f.name not in ("vulkan.wgpu", "reference.npz", "torch_config.json"):
                    _remove(f)
        cases.append(case)
    cases.sort(key=lambda c: list(CASES).index(c["name"]))
    listing.write_text(json.dumps(cases, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(cases)} cases, {size / 2**20:.1f} MiB")


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---- run (the GPU machine: wgpu, numpy, torch) -----------------------------------------------------------------
def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _is_class(factory: str) -> bool:
    return factory.split(":")[1][:1].isupper()


def _example_module(factory: str):
    file = factory.split(":")[0]
    spec = importlib.util.spec_from_file_location(f"aglmc_gpu_{Path(file).parent.name}_{Path(file).stem}",
                                                  EXAMPLES / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


def _torch_ms(factory: str, build: Path, inputs: List[np.ndarray], half: bool, repeats: int) -> Dict[str, object]:
    """PyTorch eager on the GPU, on ``inputs`` (the vulkan case's own): the schedule's original model, or for a
    model class, that class built from the checkpoint's config with seeded random weights."""
    try:
        import torch

        module, fn = _example_module(factory), factory.split(":")[1]
        if _is_class(factory):
            from transformers import AutoConfig

            torch.manual_seed(0)
            model = getattr(module, fn)(AutoConfig.from_pretrained(str(build / "torch_config.json")))
            weights = "random weights, the checkpoint's config"
        else:
            model = getattr(module, fn)()[0]
            weights = "the schedule's model"
        model = model.eval().cuda()
        args = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in inputs]
        if half:
            model = model.half()
            args = [a.half() if a.is_floating_point() else a for a in args]
    except Exception as e:  # the peer is a measurement, not a check: say why it is missing
        return {"error": f"{type(e).__name__}: {e}"}

    def call():
        with torch.inference_mode():
            model(*args)
        torch.cuda.synchronize()

    try:
        for _ in range(5):
            call()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return {"ms": _median_ms(call, repeats), "device": torch.cuda.get_device_name(), "weights": weights,
            "dtype": "float16" if half else "float32"}


def run(src: Path, json_out: Path, repeats: int) -> int:
    from aglmc.compiler.llm import generate
    from aglmc.targets.vulkan.llm import VulkanLlmRunner
    from aglmc.targets.vulkan.runtime import VulkanRunner, describe_adapter, select_adapter

    adapter = describe_adapter(select_adapter())
    print(f"Vulkan adapter: {adapter}", flush=True)
    results, failures = [], 0
    for case in json.loads((src / "cases.json").read_text()):
        name, build = case["name"], src / case["name"]
        ref = np.load(build / "reference.npz")
        half = name.endswith("fp16")
        row = {"name": name, "kind": case["kind"]}
        peer_inputs = None
        try:
            if case["kind"] == "model":
                runner = VulkanRunner(build / case["artifact"])
                inputs = [ref[f"in{i}"] for i in range(case["inputs"])]
                got = runner.run(inputs)
                want = [ref[f"out{i}"] for i in range(case["outputs"])]
                scale = max(1.0, max(float(np.abs(w).max()) for w in want))
                row["error_vs_host"] = max(float(np.abs(np.asarray(g, np.float64) - w).max())
                                           for g, w in zip(got, want))
                row["ok"] = row["error_vs_host"] <= (2e-2 if half else 1e-3) * scale
                row["vulkan_ms"] = _median_ms(lambda: runner.run(inputs), repeats)
                row["vulkan_steady_ms"] = min(runner.time(inputs, number=10, repeat=5, min_repeat_ms=50)) * 1e3
                row["input_shapes"] = [list(a.shape) for a in inputs]
                peer_inputs = inputs
            else:
                runner = VulkanLlmRunner(build / case["prefill"], build / case["decode"])
                tokens = [generate(runner, p, LLM_NEW_TOKENS, 256).tokens for p in case["prompts"]]
                row["tokens_equal"] = sum(t == h for t, h in zip(tokens, case["host_tokens"]))
                row["prompts"] = len(case["prompts"])
                logits, cache = runner.prefill(case["prompts"][0])
                want = ref["prefill_logits"]
                row["error_vs_host"] = float(np.abs(np.asarray(logits).reshape(want.shape) - want).max())
                row["ok"] = row["tokens_equal"] == row["prompts"]
                ids = np.asarray(case["prompts"][0], dtype=np.int64)[None]
                row["vulkan_prefill_ms"] = _median_ms(lambda: runner.prefill(ids), repeats)
                pos = ids.shape[1]
                row["vulkan_decode_ms"] = _median_ms(lambda: runner.decode(1, cache, pos), repeats)
                row["vulkan_decode_steady_ms"] = min(runner._decode.time(
                    [np.array([[1]], np.int64), cache, np.array([pos], np.int64)], number=10, repeat=5,
                    min_repeat_ms=50)) * 1e3
                row["prompt_tokens"] = pos
                peer_inputs = [ids]
        except Exception as e:
            row.update(ok=False, error=f"{type(e).__name__}: {e}")
        row["torch_cuda"] = (_torch_ms(case["torch_factory"], build, peer_inputs, half, repeats)
                             if peer_inputs is not None else {"error": "the vulkan case failed"})
        failures += not row["ok"]
        results.append(row)
        print(json.dumps(row), flush=True)
    json_out.write_text(json.dumps({"adapter": adapter, "cases": results}, indent=1))
    print(_table(adapter, results))
    return 1 if failures else 0


def _table(adapter: str, rows) -> str:
    lines = [f"Vulkan adapter: {adapter}", "",
             "| case | check vs host | vulkan ms / inference (call; steady) | PyTorch CUDA eager ms, same input |",
             "|---|---|---|---|"]
    for r in rows:
        torch_ms = r["torch_cuda"].get("ms")
        peer = (f"{torch_ms:.3f} ({r['torch_cuda']['dtype']}, {r['torch_cuda']['weights']})" if torch_ms
                else r["torch_cuda"].get("error", ""))
        if "error" in r:
            lines.append(f"| {r['name']} | FAILED: {r['error'][:200]} | | {peer} |")
        elif r["kind"] == "model":
            lines.append(f"| {r['name']} {r['input_shapes']} | max-abs {r['error_vs_host']:.2e} | "
                         f"{r['vulkan_ms']:.3f}; {r['vulkan_steady_ms']:.3f} | {peer} |")
        else:
            lines.append(f"| {r['name']} (prefill {r['prompt_tokens']} tokens; decode) | tokens {r['tokens_equal']}/"
                         f"{r['prompts']}, prefill logits max-abs {r['error_vs_host']:.2e} | prefill "
                         f"{r['vulkan_prefill_ms']:.3f}; decode {r['vulkan_decode_ms']:.3f}; decode steady "
                         f"{r['vulkan_decode_steady_ms']:.3f} | {peer} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.vulkan_gpu", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the cases and save the host's outputs (needs TVM)")
    p.add_argument("dir", type=Path)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    r = sub.add_parser("run", help="run the prepared artifacts on this machine's Vulkan GPU (wgpu, torch)")
    r.add_argument("dir", type=Path)
    r.add_argument("--json", type=Path, default=Path("vulkan_gpu.json"))
    r.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.cases)
        return 0
    return run(args.dir, args.json, args.repeats)


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file on the GPU machine: bench/ sits beside the aglmc package
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
