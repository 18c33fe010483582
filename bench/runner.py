"""The host benchmark: for each model, every runtime in its own process, interleaved over rounds.

Per model:

1. ``prepare`` (one process): inputs, torch's outputs (the reference), evaluation set, MACs;
2. ``build`` (one process per runtime): the runtime's artifact, timed;
3. ``serve`` (one process per runtime, all alive at once but only one running at a time): load, check the
   outputs against torch, warm up; then rounds: in each round every runtime runs ``k`` timed calls, in an order
   that rotates from round to round, with a short pause between runtimes so idle thread pools go to sleep.
   ``k`` is chosen per runtime so that a round lasts about ``round_seconds``.

Same thread count everywhere: ``torch.set_num_threads``, onnxruntime's ``intra_op_num_threads``, TVM's
``TVM_NUM_THREADS`` (and aglmc's ``target host { threads = N }``), LiteRT's/ncnn's/MNN's ``num_threads``, and
``OMP/MKL/OPENBLAS_NUM_THREADS`` for whatever else.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bench import hw
from bench.catalog import MODELS
from bench.runtimes import BASELINE, REPO, Runtime, get
from bench.worker import safe_name


@dataclass
class Row:
    model: str
    runtime: str
    technique: str = "fp32"
    status: str = "ok"               # ok | wrong | failed | skipped
    reason: str = ""
    median_ms: Optional[float] = None
    p25_ms: Optional[float] = None
    p75_ms: Optional[float] = None
    samples: int = 0
    rounds: int = 0
    round_medians_ms: List[float] = field(default_factory=list)
    ratio_vs_baseline: Optional[float] = None
    gflops: Optional[float] = None
    pct_peak: Optional[float] = None
    max_abs_error: Optional[float] = None
    metric: Optional[float] = None
    rss_peak_mb: Optional[float] = None
    rss_base_mb: Optional[float] = None
    size_bytes: Optional[int] = None
    compile_s: Optional[float] = None
    notes: str = ""

    @property
    def iqr_ms(self) -> Optional[float]:
        return None if self.p25_ms is None else self.p75_ms - self.p25_ms


@dataclass
class Settings:
    threads: int
    rounds: int
    round_seconds: float
    warmup_seconds: float
    budget_seconds: float
    work: Path
    build_timeout: float = 3600.0
    load_timeout: float = 1800.0
    pause: float = 0.15
    #: prepare/build steps run this many at a time (then compile times are measured under contention)
    jobs: int = 1
    log: object = print


def worker_env(threads: int, runtime: Optional[Runtime] = None, work: Optional[Path] = None) -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    extra = runtime.extra_path() if runtime is not None else []
    env["PYTHONPATH"] = os.pathsep.join(extra + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if work is not None:  # torch.compile's caches start empty every run, so its compile time is a cold one
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
        env["TRITON_CACHE_DIR"] = str(work / "triton-cache")
    return env


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def _worker_cmd(step: str, model: str, work: Path, threads: int, runtime: Optional[str] = None) -> List[str]:
    cmd = [sys.executable, "-m", "bench.worker", step, "--model", model, "--work", str(work), "--threads",
           str(threads)]
    if runtime:
        cmd += ["--runtime", runtime]
    return cmd


def _run_step(cmd: List[str], env, log_path: Path, timeout: float) -> Optional[str]:
    """Run a worker step to completion; None on success, else a one-line reason."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return f"timed out after {timeout:.0f} s"
    if rc != 0:
        return f"exit {rc}: {_tail(log_path)}"
    return None


def _kill(proc: subprocess.Popen) -> None:
    """End a worker we started (its own session: the whole group, so its helpers go too)."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


class Server:
    """A serve worker: a process holding one loaded runtime, answering JSON commands on a pipe."""

    def __init__(self, model: str, runtime: Runtime, work: Path, settings: Settings):
        self.runtime = runtime
        self.log_path = work / safe_name(runtime.name) / "serve.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        cmd = _worker_cmd("serve", model, work, settings.threads, runtime.name) + [
            "--fd", str(write_fd), "--warmup", str(settings.warmup_seconds)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(settings.threads, runtime, settings.work),
                                     stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                                     pass_fds=(write_fd,), text=True, start_new_session=True)
        os.close(write_fd)
        self._fd = read_fd
        self._buffer = b""

    def receive(self, timeout: float) -> Dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited ({self.proc.returncode}): {_tail(self.log_path)}")
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.proc.wait(timeout=30)
                raise RuntimeError(f"worker exited ({self.proc.returncode}): {_tail(self.log_path)}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, obj: Dict) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 30.0) -> Optional[Dict]:
        bye = None
        try:
            if self.proc.poll() is None:
                self.send({"cmd": "quit"})
                bye = self.receive(timeout)
                self.proc.wait(timeout=timeout)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired, ValueError):
            pass
        if self.proc.poll() is None:
            _kill(self.proc)
        os.close(self._fd)
        self._log.close()
        return bye


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build_model(model: str, runtimes: Sequence[Runtime], settings: Settings):
    """Prepare the model and build it for every runtime (each step its own process): ``(rows, built, meta)``,
    ``built``/``meta`` None when preparing failed."""
    log = settings.log
    work = settings.work / model
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = worker_env(settings.threads, None, settings.work)
    rows: Dict[str, Row] = {}
    for rt in runtimes:
        if rt.applies_to(model):
            rows[rt.name] = Row(model, rt.name, rt.technique)

    log(f"[{model}] prepare (inputs, torch reference, MACs)")
    t0 = time.perf_counter()
    failure = _run_step(_worker_cmd("prepare", model, work, settings.threads), env, work / "prepare.log",
                        settings.build_timeout)
    if failure:
        for row in rows.values():
            row.status, row.reason = "failed", f"prepare: {failure}"
        return rows, None, None
    meta = json.loads((work / "meta.json").read_text())
    log(f"[{model}] prepared in {time.perf_counter() - t0:.1f} s")

    built: Dict[str, Dict] = {}
    for rt in runtimes:
        if rt.name not in rows:
            continue
        row = rows[rt.name]
        reason = rt.unavailable()
        if reason:
            row.status, row.reason = "skipped", reason
            continue
        if not rt.has_build:
            built[rt.name] = {"compile_s": 0.0}
            continue
        log(f"[{model}] build {rt.name}")
        t0 = time.perf_counter()
        out = work / safe_name(rt.name)
        failure = _run_step(_worker_cmd("build", model, work, settings.threads, rt.name),
                            worker_env(settings.threads, rt, settings.work), out / "build.log",
                            settings.build_timeout)
        info = {}
        if (out / "build.json").is_file():
            info = json.loads((out / "build.json").read_text())
        if failure or not info.get("ok"):
            row.status, row.reason = "failed", f"build: {info.get('error') or failure}"
            row.compile_s = info.get("compile_s")
            continue
        built[rt.name] = info
        log(f"[{model}] built {rt.name} in {time.perf_counter() - t0:.1f} s")
        row.size_bytes = info.get("size")
        row.notes = info.get("notes", "")
    return rows, built, meta


def measure_model(model: str, runtimes: Sequence[Runtime], settings: Settings, cpu: hw.Cpu, rows: Dict[str, Row],
                  built: Optional[Dict[str, Dict]], meta: Optional[Dict]) -> List[Row]:
    """Load every built runtime in its own process, check it, and time the rounds."""
    if built is None:
        return list(rows.values())
    log = settings.log
    spec = MODELS[model]
    work = settings.work / model
    servers: Dict[str, Server] = {}
    ready: Dict[str, Dict] = {}
    for rt in runtimes:
        if rt.name not in built:
            continue
        row = rows[rt.name]
        log(f"[{model}] load {rt.name}")
        t0 = time.perf_counter()
        server = Server(model, rt, work, settings)
        try:
            first = server.receive(settings.load_timeout)
            log(f"[{model}] {rt.name} ready in {time.perf_counter() - t0:.1f} s")
        except (RuntimeError, TimeoutError) as e:
            first = {"error": str(e), "stage": "load"}
        if "error" in first:
            row.status, row.reason = "failed", f"{first.get('stage', 'load')}: {first['error']}"
            server.close()
            continue
        servers[rt.name] = server
        ready[rt.name] = first
        row.max_abs_error = first["max_abs_error"]
        row.metric = first.get("metric")
        row.rss_base_mb = first.get("rss_base_mb")
        extra = max(0.0, first["first_call_s"] - first["warm_s"]) if rt.lazy else 0.0
        row.compile_s = built[rt.name].get("compile_s", 0.0) + first["load_s"] + extra
        bound = spec.rtol * max(1.0, meta["output_scale"])
        if rt.lossy:
            row.notes = "; ".join(x for x in ("lossy: error reported, not bounded", row.notes) if x)
        elif row.max_abs_error > bound:
            row.status = "wrong"
            row.reason = f"max-abs error {row.max_abs_error:.3g} > {bound:.3g} vs torch"

    # interleaved rounds
    times: Dict[str, List[float]] = {name: [] for name in servers}
    spent: Dict[str, float] = {name: 0.0 for name in servers}
    iters = {name: int(min(1000, max(1, round(settings.round_seconds / max(ready[name]["warm_s"], 1e-6)))))
             for name in servers}
    order = list(servers)
    for r in range(settings.rounds):
        live = [n for n in order if n in servers]
        if not live:
            break
        shift = r % len(live)
        for name in live[shift:] + live[:shift]:
            if r >= 3 and spent[name] >= settings.budget_seconds:
                continue
            server = servers[name]
            try:
                server.send({"cmd": "run", "n": iters[name]})
                answer = server.receive(max(120.0, 20 * iters[name] * ready[name]["warm_s"]))
            except (OSError, RuntimeError, TimeoutError) as e:
                answer = {"error": str(e), "stage": "timed run"}
            if "error" in answer:
                rows[name].status, rows[name].reason = "failed", f"{answer['stage']}: {answer['error']}"
                server.close()
                del servers[name]
                continue
            times[name].extend(answer["times"])
            rows[name].round_medians_ms.append(float(np.median(answer["times"]) * 1e3))
            rows[name].rounds += 1
            spent[name] += sum(answer["times"])
            time.sleep(settings.pause)
        log(f"[{model}] round {r + 1}/{settings.rounds}: " + ", ".join(
            f"{n} {rows[n].round_medians_ms[-1]:.3f} ms" for n in live if rows[n].round_medians_ms))
    for name in list(servers):
        bye = servers.pop(name).close()
        if bye:
            rows[name].rss_peak_mb = bye.get("rss_peak_mb")

    for name, samples in times.items():
        row = rows[name]
        if not samples or row.status == "failed":
            continue
        ms = np.asarray(samples) * 1e3
        row.median_ms, row.p25_ms, row.p75_ms = (float(np.median(ms)), _percentile(ms, 25), _percentile(ms, 75))
        row.samples = len(samples)
        if meta.get("macs"):
            row.gflops = 2.0 * meta["macs"] / (row.median_ms * 1e-3) / 1e9
            peak = cpu.peak_gflops(settings.threads)
            lossy = next((rt.lossy for rt in runtimes if rt.name == name), False)
            # an int8 row's operations are not fp32 FLOPs: no % of the fp32 peak for lossy techniques
            row.pct_peak = 100.0 * row.gflops / peak if peak and not lossy else None
    base = rows.get(BASELINE)
    for row in rows.values():
        if base is not None and base.median_ms and row.median_ms:
            row.ratio_vs_baseline = row.median_ms / base.median_ms
        if row.size_bytes is None and row.runtime in ("torch", "torch.compile") and meta.get("params"):
            row.size_bytes = 4 * int(meta["params"])  # fp32 parameters (torch keeps the module in memory)
    return list(rows.values())


def run_host(models: Sequence[str], runtime_names: Sequence[str], settings: Settings) -> Dict:
    cpu = hw.this_cpu()
    runtimes = [get(n) for n in runtime_names]
    started = time.time()
    load_before = hw.load_average()
    rows: List[Row] = []
    metas: Dict[str, Dict] = {}
    prebuilt: Dict[str, tuple] = {}
    if settings.jobs > 1:  # every model's prepare/build steps first, several at once; then the timing, alone
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(settings.jobs) as pool:
            futures = {m: pool.submit(build_model, m, runtimes, settings) for m in models}
            prebuilt = {m: f.result() for m, f in futures.items()}
    for model in models:
        t0 = time.perf_counter()
        built = prebuilt.get(model) or build_model(model, runtimes, settings)
        rows.extend(measure_model(model, runtimes, settings, cpu, *built))
        meta_path = settings.work / model / "meta.json"
        metas[model] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        metas[model]["bench_seconds"] = time.perf_counter() - t0
        settings.log(f"[{model}] done in {metas[model]['bench_seconds']:.0f} s")
    return {
        "kind": "host",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": time.time() - started,
        "threads": settings.threads,
        "rounds": settings.rounds,
        "round_seconds": settings.round_seconds,
        "budget_seconds": settings.budget_seconds,
        "build_jobs": settings.jobs,
        "cpu": cpu.to_json(),
        "cpu_description": cpu.describe(settings.threads),
        "peak_gflops": cpu.peak_gflops(settings.threads),
        "load_average_before": load_before,
        "load_average_after": hw.load_average(),
        "models": {m: {"title": MODELS[m].title, **metas.get(m, {})} for m in models},
        "baseline": BASELINE,
        "rows": [dict(asdict(r), iqr_ms=r.iqr_ms) for r in rows],
        "versions": versions(),
    }


def git_state() -> str:
    """The commit aglmc was measured at, and the files (outside bench/) that differed from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", ".", ":!bench",
                                  ":!tests/test_bench.py"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not changed:
        return f"commit {head}, clean"
    names = [line[3:] for line in changed]
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"commit {head} plus uncommitted changes in {shown}"


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "aglmc tree": git_state()}
    for dist in ("aglmc", "torch", "apache-tvm", "onnxruntime", "onnx", "ai-edge-litert", "litert-torch",
                 "executorch", "ncnn", "pnnx", "MNN", "iree-base-runtime", "iree-base-compiler", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            from bench.runtimes import PEER_SITES, peers_dir

            for site in PEER_SITES:  # the converters installed in site folders of their own
                found = [d.version for d in metadata.distributions(name=dist, path=[str(peers_dir() / site)])]
                if found:
                    out[dist] = f"{found[0]} ({site})"
                    break
    return out
