"""The benchmark's worker processes, one per (model, runtime) and step, started by :mod:`bench.runner`.

    python -m bench.worker prepare --model M --work DIR --threads N
    python -m bench.worker build   --model M --runtime R --work DIR --threads N
    python -m bench.worker serve   --model M --runtime R --work DIR --threads N

``prepare`` (torch) writes the model's inputs, torch's outputs (the reference every runtime is checked against),
its evaluation set and its statistics (MACs from aglmc's ``inspect`` statistics). ``build`` runs the runtime's
build and writes ``build.json``. ``serve`` loads the runtime's artifact, checks its outputs, then answers
commands, one JSON object per line, on the file descriptor given by ``--fd`` (the worker's own stdout is
redirected to its log, so a library printing to stdout cannot garble the protocol):

    → {"cmd": "run", "n": 20}      ← {"times": [seconds, ...]}
    → {"cmd": "quit"}              ← {"rss_peak_mb": ..., "bye": true}

Its first message says whether loading worked: ``{"ready": true, ...}`` or ``{"error": "...", "stage": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List

import numpy as np


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _arrays(path: Path) -> List[np.ndarray]:
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[-1]))]


def _save_arrays(path: Path, arrays) -> None:
    np.savez(path, **{f"a_{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})


def max_abs(outputs: List[np.ndarray], reference: List[np.ndarray]) -> float:
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} output(s), torch gives {len(reference)}")
    err = 0.0
    for out, ref in zip(outputs, reference):
        out = np.asarray(out)
        if out.shape != ref.shape:
            if out.size != ref.size:
                raise ValueError(f"output shape {tuple(out.shape)}, torch gives {tuple(ref.shape)}")
            out = out.reshape(ref.shape)  # runtimes without a batch axis (ncnn)
        if ref.size:
            err = max(err, float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))))
    return err


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:3])[:400] if lines else type(e).__name__


# ---------------------------------------------------------------------------------------------- prepare
def prepare(args) -> int:
    import torch

    from bench.catalog import MODELS
    from bench.runtimes import Context

    torch.set_num_threads(args.threads)
    spec = MODELS[args.model]
    work = Path(args.work)
    ctx = Context(args.model, spec.factory, work, work, args.threads, [], [])
    module, example = ctx.module()
    inputs = [t.detach().numpy() for t in example]
    names = spec.input_names or [f"in{i}" for i in range(len(inputs))]
    from bench.runtimes import _flatten_torch

    with torch.inference_mode():
        reference = _flatten_torch(module(*example))
    _save_arrays(work / "inputs.npz", inputs)
    _save_arrays(work / "reference.npz", reference)
    meta: Dict = {"model": args.model, "input_names": names,
                  "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in inputs],
                  "outputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in reference],
                  "output_scale": max(float(np.max(np.abs(a))) for a in reference if a.size)}
    # statistics the way `aglmc inspect` computes them: aglmc.compiler.stats over the torch.export graph
    try:
        from aglmc.compiler.stats import fx_stats

        stats = fx_stats(torch.export.export(module, tuple(example)).module(), inputs)
        meta.update(macs=int(stats.macs), params=int(stats.params))
    except Exception as e:  # the table then shows no GFLOP/s, and says why
        meta.update(macs=None, params=None, stats_error=_error_text(e))
    if spec.eval_set:
        from bench import models as bench_models

        eval_inputs, labels = getattr(bench_models, spec.eval_set)()
        eval_inputs = [np.asarray(a) for a in eval_inputs]
        outs = []
        with torch.inference_mode():
            for i in range(len(eval_inputs[0])):
                outs.append(_flatten_torch(module(*[torch.from_numpy(a[i:i + 1]) for a in eval_inputs])))
        eval_ref = [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]
        _save_arrays(work / "eval_inputs.npz", eval_inputs)
        _save_arrays(work / "eval_reference.npz", eval_ref)
        if labels is not None:
            np.save(work / "eval_labels.npy", np.asarray(labels))
        meta["eval_samples"] = int(len(eval_inputs[0]))
        meta["metric"] = spec.metric
        meta["metric_torch"] = metric(spec.metric, eval_ref, eval_ref, labels)
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    return 0


def metric(name: str, outputs: List[np.ndarray], reference: List[np.ndarray], labels) -> float:
    out, ref = np.asarray(outputs[0], dtype=np.float64), np.asarray(reference[0], dtype=np.float64)
    out = out.reshape(ref.shape)
    if name == "accuracy":
        return float(np.mean(out.reshape(len(out), -1).argmax(-1) == np.asarray(labels)))
    if name == "cosine":
        a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        return float(np.mean(cos))
    raise ValueError(f"unknown metric {name}")


# ---------------------------------------------------------------------------------------------- build
def _context(args):
    from bench.catalog import MODELS
    from bench.runtimes import Context

    work = Path(args.work)
    meta = json.loads((work / "meta.json").read_text())
    out = work / safe_name(args.runtime)
    out.mkdir(parents=True, exist_ok=True)
    return Context(args.model, MODELS[args.model].factory, work, out, args.threads, meta["input_names"],
                   _arrays(work / "inputs.npz")), meta


def safe_name(runtime: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in runtime)


def build(args) -> int:
    from bench.runtimes import get

    ctx, _ = _context(args)
    runtime = get(args.runtime)
    start = time.perf_counter()
    try:
        info = dict(runtime.build(ctx))
        info.setdefault("compile_s", time.perf_counter() - start)
        info["ok"] = True
    except BaseException as e:  # noqa: BLE001 - any failure is a row in the table
        traceback.print_exc()
        info = {"ok": False, "error": _error_text(e), "compile_s": time.perf_counter() - start}
    info["rss_peak_mb"] = _rss_mb()
    (ctx.out / "build.json").write_text(json.dumps(info, indent=1))
    return 0 if info["ok"] else 1


# ---------------------------------------------------------------------------------------------- serve
def serve(args) -> int:
    proto = os.fdopen(args.fd, "w", buffering=1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    stage = "import"
    try:
        from bench.runtimes import get

        runtime = get(args.runtime)
        ctx, meta = _context(args)
        built = {}
        if runtime.has_build:
            built = json.loads((ctx.out / "build.json").read_text())
        # import the runtime's own packages before measuring the base memory
        for mod in runtime.runtime_modules or runtime.requires:
            __import__(mod)
        rss_base = _rss_mb("VmRSS")
        stage = "load"
        t0 = time.perf_counter()
        infer = runtime.load(ctx, built)
        load_s = time.perf_counter() - t0
        stage = "first inference"
        inputs = [np.ascontiguousarray(a) for a in ctx.inputs]
        t0 = time.perf_counter()
        outputs = infer(inputs)
        first_s = time.perf_counter() - t0
        stage = "output check"
        err = max_abs(outputs, _arrays(ctx.work / "reference.npz"))
        result = {"ready": True, "load_s": load_s, "first_call_s": first_s, "max_abs_error": err,
                  "rss_base_mb": rss_base}
        if meta.get("eval_samples"):
            stage = "evaluation"
            eval_inputs = _arrays(ctx.work / "eval_inputs.npz")
            eval_ref = _arrays(ctx.work / "eval_reference.npz")
            labels_path = ctx.work / "eval_labels.npy"
            labels = np.load(labels_path) if labels_path.is_file() else None
            outs = [infer([np.ascontiguousarray(a[i:i + 1]) for a in eval_inputs])
                    for i in range(meta["eval_samples"])]
            outs = [np.concatenate([np.asarray(o[j]).reshape((1,) + eval_ref[j].shape[1:]) for o in outs])
                    for j in range(len(eval_ref))]
            result["metric"] = metric(meta["metric"], outs, eval_ref, labels)
            result["eval_max_abs_error"] = max_abs(outs, eval_ref)
        stage = "warm-up"
        warm = []
        t_end = time.perf_counter() + args.warmup
        while len(warm) < 2 or (time.perf_counter() < t_end and len(warm) < 50):
            t0 = time.perf_counter()
            infer(inputs)
            warm.append(time.perf_counter() - t0)
        result["warm_s"] = float(np.median(warm))
        send(result)
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        send({"error": _error_text(e), "stage": stage})
        return 1

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "run":
            times = []
            try:
                for _ in range(int(cmd.get("n", 1))):
                    t0 = time.perf_counter()
                    infer(inputs)
                    times.append(time.perf_counter() - t0)
            except BaseException as e:  # noqa: BLE001
                traceback.print_exc()
                send({"error": _error_text(e), "stage": "timed run"})
                return 1
            send({"times": times})
        elif cmd.get("cmd") == "quit":
            break
    send({"bye": True, "rss_peak_mb": _rss_mb()})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("step", choices=("prepare", "build", "serve"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--runtime")
    parser.add_argument("--work", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fd", type=int, help="serve: the file descriptor to answer on")
    parser.add_argument("--warmup", type=float, default=0.3, help="serve: seconds of warm-up calls (at least 2)")
    args = parser.parse_args(argv)
    if args.step == "serve" and args.fd is None:
        parser.error("serve needs --fd")
    return {"prepare": prepare, "build": build, "serve": serve}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
