"""``python -m bench --arm``: executed aarch64 instructions per inference, counted under qemu-user.

Instruction counts, not time. shared/tools/armcount is a qemu TCG plugin; its ``armcount.py`` runs a guest
snippet twice (1 and 1+K inferences) and reports the difference per inference, split by instruction class.

What is counted, 1 thread, fp32, ``-cpu cortex-a76``:

- aglmc: the ``arm.so`` of ``aglmc build`` with ``target arm { cpu = "cortex-a76"  features = ["+neon"]
  threads = 1 }``, run by the aarch64 TVM runtime;
- tvm (plain): ``tvm.compile`` with TVM's default pipeline for the same target, on the same Relax module;
- onnxruntime: onnxruntime's own aarch64 wheel on the same ONNX export the host benchmark uses.

Set up once, in a cache folder of the benchmark (``~/.cache/aglmc/bench/arm``; nothing is written to shared/):
the plugin built with armcount's ``build.sh``; an emulated board of its own (``prepare_emulated``: an arm64
Debian sysroot and a site with the aarch64 TVM runtime), whose sysroot gets a ``proc/cpuinfo`` describing
Cortex-A76 cores (onnxruntime's cpuinfo crashes on the host's x86 one); and a second aarch64 site with
onnxruntime and numpy, installed with every manylinux aarch64 tag listed (with fewer, pip silently picks an
old release).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bench.catalog import MODELS
from bench.runtimes import REPO, peers_dir
from bench.worker import safe_name

ARMCOUNT = Path(os.environ.get("AGLMC_ARMCOUNT", REPO.parent / "shared" / "tools" / "armcount"))
CPU = "cortex-a76"
K = 3          # extra inferences in armcount's second run
REPEAT = 2     # valid pairs of runs per count (the spread column)

# the guest snippet: setup at top level (cancels out), infer() is what is counted
SNIPPET = '''\
import json, os
import numpy as np
d = os.environ["BENCH_DIR"]
n = int(os.environ["BENCH_NINPUTS"])
inputs = [np.load(os.path.join(d, "in%d.npy" % i)) for i in range(n)]
ref = np.load(os.path.join(d, "ref.npy"))
runtime = os.environ["BENCH_RUNTIME"]
if runtime == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(os.environ["BENCH_ARTIFACT"], so, providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), inputs)}
    def infer():
        return sess.run(None, feeds)[0]
else:
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(os.environ["BENCH_ARTIFACT"]), tvm.cpu())
    main = vm["main"]
    args = [tvm.runtime.tensor(a) for a in inputs]
    def infer():
        out = main(*args)
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()
out = np.asarray(infer()).reshape(ref.shape)
with open(os.environ["BENCH_CHECK"], "w") as f:
    f.write(json.dumps({"max_abs_error": float(np.abs(out.astype(np.float64) - ref).max())}))
'''


def cache_dir() -> Path:
    return peers_dir() / "arm"


def _run(cmd: List[str], what: str, timeout: float = 1800, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-600:]}")
    return proc.stdout


def setup(log=print) -> Dict[str, Path]:
    """The plugin, the board (sysroot + TVM site) and the onnxruntime site; built once into :func:`cache_dir`."""
    from aglmc.targets.board import MANYLINUX_TAGS, prepare_emulated

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if not (ARMCOUNT / "armcount.py").is_file():
        raise RuntimeError(f"armcount not found at {ARMCOUNT} (set AGLMC_ARMCOUNT)")
    plugin = cache / "libarmcount.so"
    source = ARMCOUNT / "armcount.c"
    if not plugin.is_file() or plugin.stat().st_mtime < source.stat().st_mtime:
        log(f"arm: building the armcount plugin into {plugin}")
        _run(["sh", str(ARMCOUNT / "build.sh"), str(plugin)], "building the armcount plugin", timeout=300)
    board = prepare_emulated(cache / "board", cpu=CPU, log=log)
    cpuinfo = board.sysroot / "proc" / "cpuinfo"
    if not cpuinfo.is_file():  # what armcount.py --write-cpuinfo writes, in our own sysroot
        sys.path.insert(0, str(ARMCOUNT))
        try:
            import armcount  # noqa: F401  (only its Cortex-A76 cpuinfo text)
        finally:
            sys.path.remove(str(ARMCOUNT))
        cpuinfo.parent.mkdir(parents=True, exist_ok=True)
        cpuinfo.write_text("".join(armcount.CPUINFO_A76.format(i=i) for i in range(2)))
    ort_site = cache / "ort-site"
    stamp = ort_site / ".bench-wheels.json"
    from importlib.metadata import version

    wheels = [f"onnxruntime=={version('onnxruntime')}", "numpy"]
    if not stamp.is_file() or json.loads(stamp.read_text()) != wheels:
        log(f"arm: installing aarch64 wheels {' '.join(wheels)} into {ort_site}")
        tmp = cache / ".ort-site.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        platforms = [a for tag in MANYLINUX_TAGS for a in ("--platform", tag)]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
              str(tmp), *platforms, "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
              "--only-binary=:all:", *wheels], "installing the aarch64 onnxruntime wheels")
        (tmp / ".bench-wheels.json").write_text(json.dumps(wheels))
        shutil.rmtree(ort_site, ignore_errors=True)
        os.replace(tmp, ort_site)
    return {"plugin": plugin, "sysroot": board.sysroot, "tvm_site": board.site, "ort_site": ort_site}


# ---------------------------------------------------------------------------------------------- building
def _arm_schedule(model: str, path: Path) -> Path:
    from bench.runtimes import MODELS_FILE

    path.write_text("\n".join([
        f"# written by python -m bench --arm for model {model}",
        f'model "{MODELS_FILE}:{MODELS[model].factory}"',
        "target host { threads = 1 }",
        f'target arm {{ cpu = "{CPU}"  features = ["+neon"]  threads = 1 }}', ""]))
    return path


def build_aglmc(model: str, out: Path, log) -> Dict:
    from aglmc.compiler.pipeline import BuildOptions, build

    sched = _arm_schedule(model, out / "model.sched")
    start = time.perf_counter()
    with open(out / "build.log", "w") as f:
        result = build(sched, BuildOptions(out_dir=out / "artifact", log=lambda m: print(m, file=f)))
    arm = next(t for t in result.targets if t.kind == "arm")
    return {"artifact": str(out / "artifact" / arm.library), "size": arm.size,
            "seconds": time.perf_counter() - start}


def build_tvm_plain(model: str, out: Path, log) -> Dict:
    import tvm
    from aglmc.targets.arm import ArmTarget
    from aglmc.targets.toolchain import export_library, find_linker

    from bench.runtimes import _relax_module

    sched = _arm_schedule(model, out / "model.sched")
    start = time.perf_counter()
    mod = _relax_module(sched)
    settings = {"cpu": CPU, "features": ["+neon"], "threads": 1}
    target = ArmTarget.tvm_target(settings)
    executable = tvm.compile(mod, target=target)
    path = out / "model.so"
    export_library(executable, path, find_linker("zig", ArmTarget.resolve(settings)["triple"]))
    return {"artifact": str(path), "size": path.stat().st_size, "seconds": time.perf_counter() - start}


def _build_one(kind: str, model: str, out: Path) -> None:
    """In a process of its own: build ``kind`` for ``model`` into ``out`` and write build.json."""
    from bench.worker import _error_text

    out.mkdir(parents=True, exist_ok=True)
    try:
        info = {"aglmc": build_aglmc, "tvm (plain)": build_tvm_plain}[kind](model, out, print)
        info["ok"] = True
    except BaseException as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        info = {"ok": False, "error": _error_text(e)}
    (out / "build.json").write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------------------- counting
def count(env: Dict[str, Path], site: Path, folder: Path, runtime: str, artifact: str, ninputs: int,
          label: str) -> Dict:
    """armcount's pairs of runs (1 and 1+K inferences), until :data:`REPEAT` valid pairs (at most
    ``2 × REPEAT`` tries). A pair is valid when both runs saw the same guest threads: onnxruntime starts helper
    threads whose start-up work (millions of instructions) sometimes lands in one run only, which makes the
    difference meaningless (it was once smaller than the vector FMAs alone)."""
    snippet = folder / "snippet.py"
    snippet.write_text(SNIPPET)
    check = folder / f"check-{safe_name(runtime)}.json"
    valid, rejected = [], 0
    for attempt in range(2 * REPEAT):
        result = folder / f"armcount-{safe_name(runtime)}-{attempt}.json"
        cmd = [sys.executable, str(ARMCOUNT / "armcount.py"), "--sysroot", str(env["sysroot"]), "--site",
               str(site), "--plugin", str(env["plugin"]), "--cpu", CPU, "--mode", "cb", "-k", str(K), "--repeat",
               "1", "--threads", "1", "--json", str(result), "--label", label,
               "--env", f"BENCH_DIR={folder}", "--env", f"BENCH_NINPUTS={ninputs}",
               "--env", f"BENCH_RUNTIME={runtime}", "--env", f"BENCH_ARTIFACT={artifact}",
               "--env", f"BENCH_CHECK={check}", str(snippet)]
        _run(cmd, f"armcount ({label})", timeout=3600, cwd=str(folder))
        pair = json.loads(result.read_text())["results"][0]
        threads = [len(pair[key].get("per_vcpu_total") or [0]) for key in ("run1", f"run{1 + K}")]
        if threads[0] != threads[1]:
            rejected += 1
            continue
        valid.append(pair)
        if len(valid) == REPEAT:
            break
    if not valid:
        raise RuntimeError(f"every armcount pair saw different guest threads in its two runs ({rejected} tries)")
    totals = sorted(p["per_inference"]["total"] for p in valid)
    first = min(valid, key=lambda p: p["per_inference"]["total"])
    per = first["per_inference"]
    return {
        "instructions": per["total"],
        "neon_share": first["neon_vector_share"],
        "simd_fp_share": first["simd_fp_share"],
        "vfma_lanes": per["vfma_lanes"],
        "sfma": per["sfma"],
        "simd_vec": per["simd_vec"],
        "pairs": len(valid),
        "rejected_pairs": rejected,
        "spread_pct": 100.0 * (totals[-1] - totals[0]) / totals[-1] if totals[-1] else 0.0,
        "vcpus": first["vcpus_seen"],
        "max_abs_error": json.loads(check.read_text())["max_abs_error"] if check.is_file() else None,
    }


def prepare_model(model: str, folder: Path, log) -> Dict:
    """Inputs and torch's reference output of ``model`` in ``folder`` (``in{i}.npy``, ``ref.npy``), and
    ``meta.json``'s content; ``{"failure": reason}`` when the prepare step failed."""
    from bench.runner import _run_step, _worker_cmd, worker_env

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"[arm {model}] prepare")
    failure = _run_step(_worker_cmd("prepare", model, folder, 1), worker_env(1, None, folder.parent),
                        folder / "prepare.log", 1800)
    if failure:
        return {"failure": f"prepare: {failure}"}
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "inputs.npz") as data:
        arrays = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[-1]))]
    with np.load(folder / "reference.npz") as data:
        ref = data["a_0"]
    for i, a in enumerate(arrays):
        np.save(folder / f"in{i}.npy", a)
    np.save(folder / "ref.npy", ref.astype(np.float64))
    return {"meta": meta, "inputs": arrays, "reference": ref}


def build_arm_libraries(model: str, folder: Path, kinds: Sequence[str], log) -> Dict[str, Dict]:
    """aarch64 libraries of ``model`` for each of ``kinds`` ("aglmc", "tvm (plain)"), each built in a process
    of its own: kind -> build.json (``artifact`` when ``ok``, else ``error``)."""
    from bench.runner import _run_step, worker_env

    built = {}
    for kind in kinds:
        log(f"[arm {model}] build {kind} for aarch64")
        out = folder / f"arm-{safe_name(kind)}"
        code = f"from bench.arm import _build_one; _build_one({kind!r}, {model!r}, __import__('pathlib').Path({str(out)!r}))"
        failure = _run_step([sys.executable, "-c", code], worker_env(1, None, folder.parent),
                            folder / f"build-{safe_name(kind)}.log", 3600)
        info = _json(out / "build.json")
        if not info.get("ok"):
            info = {"ok": False, "error": info.get("error") or failure}
        built[kind] = info
    return built


def run_arm(models: Sequence[str], work: Path, log=print, *, kernels: bool = False) -> Dict:
    """Instruction counts of onnxruntime, aglmc and plain TVM per model; ``kernels``: aglmc's too, kernel by
    kernel (:mod:`bench.arm_kernels`)."""
    from bench.runner import _run_step, _worker_cmd, worker_env

    started = time.time()
    env = setup(log)
    rows: List[Dict] = []
    per_kernel: Dict[str, object] = {}
    runtimes = ("onnxruntime", "aglmc", "tvm (plain)")
    for model in models:
        spec = MODELS[model]
        folder = work / model

        def fail(runtime: str, reason: str):
            rows.append({"model": model, "title": spec.title, "runtime": runtime, "status": "failed",
                         "reason": reason})

        prepared = prepare_model(model, folder, log)
        if "failure" in prepared:
            for rt in runtimes:
                fail(rt, prepared["failure"])
            continue
        meta, arrays = prepared["meta"], prepared["inputs"]
        artifacts: Dict[str, Optional[str]] = {}
        # onnxruntime: the same export as the host benchmark
        log(f"[arm {model}] build onnxruntime (ONNX export)")
        failure = _run_step(_worker_cmd("build", model, folder, 1, "onnxruntime"), worker_env(1, None, work),
                            folder / "onnxruntime" / "build.log", 1800)
        info = _json(folder / "onnxruntime" / "build.json")
        artifacts["onnxruntime"] = info.get("artifact") if info.get("ok") else None
        if not artifacts["onnxruntime"]:
            fail("onnxruntime", f"build: {info.get('error') or failure}")
        for kind, info in build_arm_libraries(model, folder, ("aglmc", "tvm (plain)"), log).items():
            artifacts[kind] = info.get("artifact") if info.get("ok") else None
            if not artifacts[kind]:
                fail(kind, f"build: {info.get('error')}")
        for rt in runtimes:
            if not artifacts.get(rt):
                continue
            log(f"[arm {model}] count {rt} under qemu")
            site = env["ort_site"] if rt == "onnxruntime" else env["tvm_site"]
            try:
                counted = count(env, site, folder, "onnxruntime" if rt == "onnxruntime" else "tvm",
                                artifacts[rt], len(arrays), f"{model}/{rt}")
            except Exception as e:  # noqa: BLE001
                fail(rt, str(e)[-400:])
                continue
            row = {"model": model, "title": spec.title, "runtime": rt, "status": "ok", "macs": meta.get("macs"),
                   "size": Path(artifacts[rt]).stat().st_size, **counted}
            bound = spec.rtol * max(1.0, meta["output_scale"])
            err = row.get("max_abs_error")
            row["notes"] = f"max-abs err {err:.2g}" if err is not None else "output not checked"
            if err is None or err > bound:
                row["status"] = "wrong" if err is not None else "ok"
                if err is not None:
                    row["notes"] = f"WRONG: max-abs err {err:.3g} > {bound:.3g}"
            if counted["vcpus"] > 1:
                row["notes"] += f"; {counted['vcpus']} guest threads (all counted, mode cb)"
            if counted["rejected_pairs"]:
                row["notes"] += (f"; {counted['rejected_pairs']} pair(s) of runs discarded: the two runs saw "
                                 "different guest threads")
            rows.append(row)
            log(f"[arm {model}] {rt}: {counted['instructions'] / 1e6:.2f} M instructions, NEON share "
                f"{counted['neon_share']:.3f}")
            if kernels and rt == "aglmc":
                from bench.arm_kernels import count_kernels

                log(f"[arm {model}] count aglmc's kernels one by one under qemu")
                try:
                    per_kernel[model] = count_kernels(env, folder, artifacts[rt], folder / "arm-aglmc" / "model.sched",
                                                      CPU, K, ARMCOUNT)
                except Exception as e:  # noqa: BLE001 - the report says why
                    per_kernel[model] = f"FAILED: {str(e)[-300:]}"
        base = next((r for r in rows if r["model"] == model and r["runtime"] == "onnxruntime"
                     and r["status"] != "failed"), None)
        for r in rows:
            if r["model"] == model and base is not None and r["status"] != "failed":
                r["ratio_vs_ort"] = r["instructions"] / base["instructions"]
    return {"kind": "arm", "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": time.time() - started, "cpu": CPU, "k": K, "repeat": REPEAT,
            "guest": f"qemu-aarch64 -cpu {CPU}, Debian arm64 python3.11 sysroot ({env['sysroot']}), 1 thread, "
                     f"armcount mode cb, K={K}, the lower of {REPEAT} pairs of runs whose guest threads matched",
            "rows": rows, "kernels": per_kernel,
            "aglmc_tree": __import__("bench.runner", fromlist=["git_state"]).git_state()}


def _json(path: Path) -> Dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
