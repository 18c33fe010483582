"""Building and timing candidate kernels: on this machine, on one board over RPC, or on a farm of boards.

- The builder compiles each candidate in a pool of worker processes and links it into a ready shared library
  with aglmc's own linker (:mod:`aglmc.targets.toolchain`): for a board that is an aarch64 ``.so``, since the
  board cannot link (MetaSchedule's default ships a ``.tar`` of objects that the board would link with its own
  compiler, which under qemu is the host's x86 one).
- Runners are MetaSchedule's: ``LocalRunner`` for the host; ``RPCRunner`` for boards, which asks the tracker
  for a board of the key for every candidate, so ``jobs`` workers keep ``jobs`` boards of a farm busy.

Why not MetaSchedule's ``LocalBuilder``: it starts a new worker pool for every batch, and its build function
imports ``tvm.s_tir.tensor_intrin``, which parses hundreds of CUDA intrinsics; on a busy 2-core machine that
import alone took 48-66 s per batch, against 0.3-1 s to compile and link one candidate. This builder keeps its
workers (recycled every few batches) and its build function imports nothing extra.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
import uuid
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from aglmc.errors import TargetError

_CPU_INTRINSICS = ("x86", "arm_cpu")


def load_cpu_intrinsics() -> None:
    """Register the CPU tensor intrinsics MetaSchedule's CPU rules may use, without the CUDA/ROCm/Hexagon ones.

    ``TuneContext`` imports the package ``tvm.s_tir.tensor_intrin``, whose ``__init__`` imports every back end's
    intrinsics (the CUDA ones alone took 48 s on a busy 2-core machine). Unless that package is already
    imported, a stand-in module with the same path is installed and only the CPU submodules are imported;
    any other submodule still imports on demand.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a different TVM layout
            importlib.import_module(name)
            return
        package = types.ModuleType(name, "CPU tensor intrinsics only (aglmc.targets.tuning.measure)")
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = name
        sys.modules[name] = package
        import tvm.s_tir

        tvm.s_tir.tensor_intrin = package
    for sub in _CPU_INTRINSICS:
        importlib.import_module(f"{name}.{sub}")


@dataclass(frozen=True)
class SearchConfig:
    """MetaSchedule's evolutionary search, sized for short runs.

    MetaSchedule's defaults (population 512, 4 genetic rounds) spend ~2 minutes per batch choosing candidates on
    2 busy cores; these spend a few seconds and still pick from the database's best and the cost model's.
    """

    batch: int = 16  # candidates per measured batch (MetaSchedule's num_trials_per_iter)
    population_size: int = 128
    init_min_unmeasured: int = 32
    genetic_num_iters: int = 2
    seed: int = 1

    def strategy(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.search_strategy.EvolutionarySearch(population_size=self.population_size,
                                                     init_min_unmeasured=self.init_min_unmeasured,
                                                     genetic_num_iters=self.genetic_num_iters)


@dataclass(frozen=True)
class MeasureConfig:
    """How each candidate is timed (MetaSchedule's ``EvaluatorConfig``) and how long a step may take."""

    number: int = 3
    repeat: int = 3
    min_repeat_ms: int = 40
    build_timeout: float = 120.0
    run_timeout: float = 60.0
    board_timeout: float = 300.0  # one candidate on a board: session, upload, load, time (emulated boards are slow)

    def evaluator(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.EvaluatorConfig(number=self.number, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms,
                                         enable_cpu_cache_flush=False)


# ---- building ---------------------------------------------------------------------------------------
def build_candidate(mod, target, linker) -> str:
    """Compile one scheduled workload and link it into a shared library; returns its path (worker side).

    Like MetaSchedule's ``default_build``, weight-layout rewrite blocks are dropped (their packing runs at
    compile time in a real build, so only the kernel is timed).
    """
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    runtime_mod = tvm.compile(mod, target=target)
    folder = tempfile.mkdtemp(prefix="aglmc-candidate-")
    path = os.path.join(folder, f"candidate-{uuid.uuid4().hex[:12]}.so")  # unique: boards keep uploads by name
    runtime_mod.export_library(path, fcompile=linker.fcompile())
    return path


class CandidateBuilder:
    """Builds batches of candidates in ``workers`` processes that outlive a batch (see the module doc)."""

    RECYCLE_BATCHES = 8  # TVM notes memory growing in long-lived build workers: start fresh ones now and then

    def __init__(self, linker, workers: int, timeout: float):
        self.linker = linker
        self.workers = max(1, workers)
        self.timeout = timeout
        self._pool = None
        self._batches = 0

    def build(self, mods: Sequence, target) -> List[Tuple[Optional[str], Optional[str]]]:
        """(library path, None) or (None, error) per module, in order."""
        from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

        if self._pool is None or self._batches >= self.RECYCLE_BATCHES:
            self.close()
            self._pool = PopenPoolExecutor(max_workers=self.workers, timeout=self.timeout)
            self._batches = 0
        self._batches += 1
        results: List[Tuple[Optional[str], Optional[str]]] = []
        work = functools.partial(build_candidate, target=target, linker=self.linker)  # pickled by reference
        for outcome in self._pool.map_with_error_catching(work, mods):
            if outcome.status == StatusKind.COMPLETE:
                results.append((outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append((None, f"build timed out after {self.timeout:.0f} s"))
            else:
                results.append((None, f"build failed: {_last_line(outcome.value)}"))
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def remove_artifact(path: Optional[str]) -> None:
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


# ---- running ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerSpec:
    """Where candidates run: this machine (``board`` None) or boards of a tracker key, ``jobs`` at a time."""

    board: Optional[str] = None
    jobs: int = 1

    def describe(self) -> str:
        if self.board is None:
            return "this machine"
        return f"board {self.board}" + (f" ({self.jobs} in parallel)" if self.jobs > 1 else "")


def make_runner(spec: RunnerSpec, config: MeasureConfig):
    """MetaSchedule's runner for ``spec``: LocalRunner, or RPCRunner through the board's tracker."""
    from tvm.s_tir import meta_schedule as ms

    if spec.board is None:
        return ms.runner.LocalRunner(timeout_sec=config.run_timeout, evaluator_config=config.evaluator())
    from aglmc.targets.board import parse_board

    board = parse_board(spec.board)
    if board.key is None:
        raise TargetError(f"tuning on board '{spec.board}' needs a tracker, which hands a board to every "
                          f"candidate: name the board as KEY@HOST:PORT (or KEY at 127.0.0.1:9190)",
                          hint="real boards: python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY")
    from aglmc.targets.board import _tracker_summary

    summary = _tracker_summary(board.host, board.port, timeout=10.0)  # a dead tracker fails now, not per trial
    if board.key not in summary.get("queue_info", {}):
        keys = ", ".join(sorted(summary.get("queue_info", {}))) or "none"
        raise TargetError(f"no board is registered under key '{board.key}' at the tracker {board.host}:"
                          f"{board.port} (keys there: {keys})")
    rpc = ms.runner.RPCConfig(tracker_host=board.host, tracker_port=board.port, tracker_key=board.key,
                              session_priority=1, session_timeout_sec=int(config.board_timeout))
    return ms.runner.RPCRunner(rpc_config=rpc, evaluator_config=config.evaluator(), max_workers=spec.jobs)


def _last_line(value) -> str:
    lines = [ln.strip() for ln in str(value).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(value).__name__
