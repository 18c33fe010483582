"""A MetaSchedule runner that times tuning candidates on a Vulkan device through wgpu.

Each ``RunnerInput`` names a candidate artifact (a one-kernel ``.wgpu`` zip that :mod:`.tuning` built through
the vulkan target's own code generation and launch plan). The runner loads it with aglmc's runtime
(:class:`~aglmc.targets.vulkan.runtime.VulkanRunner`, a fresh device per candidate: opening one on lavapipe
takes ~10 ms, and a candidate that loses its device cannot poison the next), uploads seeded random inputs of the
kernel's argument shapes, and times it with :meth:`VulkanRunner.time`: wall clock around one queue submission
of ``number`` back-to-back runs of the kernel's dispatches, waited for, ``repeat`` times.

Whatever goes wrong with one candidate (wgpu's validation rejecting its WGSL, a workgroup larger than the
device allows, a missing feature, a broken artifact) is that candidate's ``RunnerResult.error_msg``: a failed
trial, never an exception out of :meth:`run`.

Runs in the tuning process (no worker pool): there is one device, candidates are timed one at a time anyway,
and WGSL cannot read or write out of bounds (naga clamps every access), so a bad kernel cannot crash it.

>>> runner = VulkanCandidateRunner(number=3, repeat=3, min_repeat_ms=5)
>>> (future,) = runner.run([ms.runner.RunnerInput("/tmp/cand/candidate.wgpu", "vulkan", args_info)])
>>> future.result().run_secs      # seconds per run of the kernel, one per repeat; or .error_msg
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerInput
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture


def random_inputs(plan: dict, seed: int = 0) -> List[np.ndarray]:
    """Seeded inputs of the plan's shapes and dtypes: floats in [-1, 1), integers in [0, 4) (small enough to
    be valid indices)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in plan["inputs"]:
        dtype = np.dtype(spec.get("host_dtype", spec["dtype"]))
        shape = tuple(int(d) for d in spec["shape"])
        if dtype.kind == "f":
            out.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
        else:
            out.append(rng.integers(0, 4, shape).astype(dtype))
    return out


@derived_object
class VulkanCandidateRunner(PyRunner):
    """Times candidate artifacts on the Vulkan adapter ``adapter`` (a name substring; default: the runtime's
    choice). ``number``, ``repeat``, ``min_repeat_ms`` as in MetaSchedule's ``EvaluatorConfig``."""

    def __init__(self, adapter: Optional[str] = None, number: int = 3, repeat: int = 3,
                 min_repeat_ms: float = 20.0, seed: int = 0) -> None:
        super().__init__()
        self.adapter = adapter
        self.number = number
        self.repeat = repeat
        self.min_repeat_ms = min_repeat_ms
        self.seed = seed

    def run(self, runner_inputs: List[RunnerInput]) -> List[RunnerFuture]:
        return [self._run_one(str(inp.artifact_path)) for inp in runner_inputs]

    def _run_one(self, path: str) -> RunnerFuture:
        from aglmc.errors import TargetError
        from aglmc.targets.vulkan.runtime import VulkanRunner

        try:
            runner = VulkanRunner(path, adapter=self.adapter)
            seconds = runner.time(random_inputs(runner.plan, self.seed), number=self.number, repeat=self.repeat,
                                  min_repeat_ms=self.min_repeat_ms)
        except TargetError as e:
            return LocalRunnerFuture(error_message=e.message)
        except Exception as e:  # noqa: BLE001 - wgpu's errors (validation, device lost) fail this candidate only
            return LocalRunnerFuture(error_message=f"{type(e).__name__}: {_first_lines(e)}")
        return LocalRunnerFuture(res=[float(s) for s in seconds])


def _first_lines(e: BaseException, n: int = 4) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:n]) or type(e).__name__
