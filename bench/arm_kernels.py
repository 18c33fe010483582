"""``python -m bench --arm --arm-kernels``: aglmc's aarch64 instructions per inference, kernel by kernel.

armcount counts a whole process; with ``mode=cb`` it also keeps one total per guest thread. The guest snippet
here starts one thread per kernel of aglmc's ``arm.so`` (TVM runs a 1-thread build in the calling thread), and
``infer()`` has each thread call its kernel once, on random inputs of the kernel's static shapes. Threads are
created in kernel order, so guest thread i + 1 is kernel i; armcount's pair of runs (1 and 1+K inferences) then
gives each kernel's instructions per call, times the calls per inference of the model.

This is how the NEON kernels of this benchmark were found and fixed (e.g. a 1x1 convolution on 6x6 at 1.24
instructions per MAC, its accumulators taken apart lane by lane, now 0.32).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

SNIPPET = '''\
import json, os, threading
import numpy as np, tvm
lib = tvm.runtime.load_module(os.environ["BENCH_ARTIFACT"])
def walk(m):
    yield m
    for i in m.imports:
        yield from walk(i)
mods = list(walk(lib))
kernels = json.load(open(os.environ["BENCH_KERNELS"]))
rng = np.random.default_rng(0)
jobs = []
for k in kernels:
    owner = next(m for m in mods if m.implements_function(k["name"]))
    args = [tvm.runtime.tensor(rng.standard_normal(s).astype(d) if d.startswith("float") else np.zeros(s, d))
            for s, d in k["args"]]
    jobs.append((owner.get_function(k["name"]), args))
go = [threading.Event() for _ in jobs]
done = [threading.Event() for _ in jobs]
def worker(i):
    f, a = jobs[i]
    while True:
        go[i].wait(); go[i].clear()
        f(*a)
        done[i].set()
for i in range(len(jobs)):
    threading.Thread(target=worker, args=(i,), daemon=True).start()
def infer():
    for i in range(len(jobs)):
        go[i].set(); done[i].wait(); done[i].clear()
'''


def kernel_list(sched: Path, cpu: str) -> List[Dict]:
    """The kernels of aglmc's arm build of ``sched`` (no passes): name, rule, MACs, calls, static arguments."""
    from aglmc.targets.arm import ArmTarget
    from aglmc.targets.cpu.pipeline import compile_cpu

    from bench.runtimes import _relax_module

    target = ArmTarget.tvm_target({"cpu": cpu, "features": ["+neon"], "threads": 1})
    _, report = compile_cpu(_relax_module(sched), target)
    return [{"name": f.name, "rule": f.rule, "macs": f.macs, "calls": f.calls, "args": f.args}
            for f in report.functions if f.args is not None]


def count_kernels(env: Dict[str, Path], folder: Path, artifact: str, sched: Path, cpu: str, k: int,
                  armcount: Path) -> List[Dict]:
    """One row per kernel: instructions per inference (per call × calls), share, instructions per MAC."""
    kernels = kernel_list(sched, cpu)
    (folder / "kernels.json").write_text(json.dumps(kernels))
    snippet = folder / "kernels_snippet.py"
    snippet.write_text(SNIPPET)
    result = folder / "armcount-kernels.json"
    cmd = [sys.executable, str(armcount / "armcount.py"), "--sysroot", str(env["sysroot"]), "--site",
           str(env["tvm_site"]), "--plugin", str(env["plugin"]), "--cpu", cpu, "--mode", "cb", "-k", str(k),
           "--repeat", "1", "--threads", "1", "--json", str(result),
           "--env", f"BENCH_ARTIFACT={artifact}", "--env", f"BENCH_KERNELS={folder / 'kernels.json'}", str(snippet)]
    proc = subprocess.run(cmd, cwd=str(folder), capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"armcount (kernels) failed: {(proc.stderr or proc.stdout)[-400:]}")
    pair = json.loads(result.read_text())["results"][0]
    first, more = pair["run1"]["per_vcpu_total"], pair[f"run{1 + k}"]["per_vcpu_total"]
    if not len(first) == len(more) == len(kernels) + 1:
        raise RuntimeError(f"expected {len(kernels) + 1} guest threads, saw {len(first)} and {len(more)}")
    rows = []
    for i, kernel in enumerate(kernels):
        per_call = (more[i + 1] - first[i + 1]) / k
        macs = (kernel["macs"] or 0) * kernel["calls"]
        rows.append({"kernel": kernel["name"], "rule": kernel["rule"], "calls": kernel["calls"],
                     "instructions": per_call * kernel["calls"], "macs": macs,
                     "per_mac": per_call * kernel["calls"] / macs if macs else None})
    total = sum(r["instructions"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["instructions"] / total
    return sorted(rows, key=lambda r: -r["instructions"])


def table(rows: List[Dict], title: str, most: int = 15) -> str:
    lines = [f"#### {title}: aglmc's kernels, aarch64 instructions per inference", "",
             "| kernel | rule | calls | instructions | share | per MAC |", "|---|---|---:|---:|---:|---:|"]
    for r in rows[:most]:
        per_mac = f"{r['per_mac']:.3f}" if r["per_mac"] is not None else "—"
        lines.append(f"| {r['kernel']} | {r['rule']} | {r['calls']} | {r['instructions'] / 1e6:.3f} M | "
                     f"{100 * r['share']:.1f} % | {per_mac} |")
    if len(rows) > most:
        lines.append(f"| ({len(rows) - most} more) | | | | | |")
    return "\n".join(lines + [""])
