"""Tuning the vulkan target: MetaSchedule's GPU search over the vulkan build's own kernels, timed on the device.

The same loop as CPU tuning (:func:`aglmc.targets.tuning.tune_kernels`: budgets, resumable database, default
baselines, only-faster records), with this backend:

- tasks      the vulkan build's Relax module (``prepare``, then :func:`.lower.fusion_passes`) cut before its
             schedules: each fused PrimFunc that dlight would schedule is a task;
- defaults   each task as dlight schedules it (rule ``dlight``), the untuned build's kernel;
- search     MetaSchedule's CUDA rules and postprocessors (multi-level tiling with blockIdx/threadIdx binding,
             shared-memory reuse, cross-thread reduction, auto-bind, VerifyGPUCode). TVM's ``webgpu`` target
             kind has no ``max_threads_per_block`` attribute, which those rules read, so the search sees a
             ``cuda`` target that carries the vulkan block's limits (``max_workgroup_size``,
             ``max_shared_memory``); traces are target-neutral and are built, recorded and applied for the
             webgpu target;
- builder    :func:`.lower.build_kernels` (WGSL, as the vulkan build generates it, ExactFloatLiterals included)
             and :meth:`.plan.PlanBuilder.for_prim_func` into a one-kernel ``.wgpu`` artifact;
- runner     :class:`.tuning_runner.VulkanCandidateRunner` on this machine's Vulkan adapter.

Records go to the webgpu target's folder of the tuning database (beside the CPU targets' folders, same files),
one folder per adapter: the target's ``model`` is the adapter's name (:func:`.target.device_model`);
a vulkan build applies them with ``MetaScheduleApplyDatabase`` before dlight (:func:`.lower.schedule_passes`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tvm

from aglmc.errors import TargetError
from aglmc.targets.tuning.backend import TuningBackend

#: the rule name of an untuned vulkan kernel (the report's baseline)
DEFAULT_RULE = "dlight"


def fused_module(relax_mod: tvm.IRModule, target: tvm.target.Target, settings: Mapping[str, Any]) -> tvm.IRModule:
    """``relax_mod`` as the vulkan build has it just before scheduling: prepared, legalized and fused."""
    from aglmc.targets.vulkan.lower import fusion_passes, run_relax_pipeline
    from aglmc.targets.vulkan.target import _step, prepare

    mod = _step("prepare", prepare, relax_mod, settings)
    return run_relax_pipeline(mod, target, passes=fusion_passes(target))


def search_target(target: tvm.target.Target) -> tvm.target.Target:
    """A ``cuda`` target with ``target``'s workgroup limits, for MetaSchedule's GPU rules (see the module doc)."""
    threads = int(target.attrs["max_num_threads"])
    shared = int(target.attrs["max_shared_memory_per_block"])
    return tvm.target.Target({"kind": "cuda", "max_threads_per_block": threads, "max_num_threads": threads,
                              "max_shared_memory_per_block": shared, "thread_warp_size": 32,
                              "arch": "sm_50"})  # set, so TVM does not look for a CUDA toolkit


def gpu_design_space():
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, folder: str) -> str:
    """A scheduled workload (one PrimFunc, ``main``) as a one-kernel vulkan artifact in ``folder``; its path."""
    from aglmc.targets.vulkan.artifact import write_artifact
    from aglmc.targets.vulkan.exact_floats import exact_float_literals
    from aglmc.targets.vulkan.lower import build_kernels, check_arithmetic, check_storable
    from aglmc.targets.vulkan.plan import PlanBuilder

    prims = {"main": exact_float_literals(mod["main"])}
    check_storable(prims)
    check_arithmetic(prims)
    kernels = build_kernels(prims, target)
    plan, shaders, constants = PlanBuilder.for_prim_func(kernels, "main")
    kinds = plan["kernels"].values()
    plan["requires"] = {"features": ["shader-f16"] if any(k["f16"] for k in kinds) else [], "limits": {}}
    path = os.path.join(folder, f"candidate-{uuid.uuid4().hex[:12]}.wgpu")
    write_artifact(path, plan, shaders, constants)
    return path


class VulkanBackend(TuningBackend):
    """Tuning backend of the vulkan target (``settings``: the resolved target block)."""

    device_type = "vulkan"

    def __init__(self, settings: Mapping[str, Any], adapter: Optional[str] = None):
        self.settings = dict(settings)
        self.adapter = adapter
        self.target = None
        self.runner = None
        self.where = "this machine's Vulkan device"

    def extract_tasks(self, relax_mod, target) -> List:
        from aglmc.targets.tuning.tasks import tasks_of

        return tasks_of(fused_module(relax_mod, target, self.settings))

    def pipeline_key(self, target) -> str:
        from aglmc.targets.vulkan.lower import fusion_passes, schedule_passes

        names = [p.info.name for p in fusion_passes(target) + schedule_passes()]
        return "vulkan:" + ",".join(names) + f":fp16={self.settings.get('fp16')}"

    def default_kernels(self, relax_mod, target, tasks: Sequence) -> Dict[str, Tuple[tvm.IRModule, Optional[str]]]:
        from aglmc.targets.vulkan.lower import run_relax_pipeline, schedule_passes

        fused = fused_module(relax_mod, target, self.settings)
        scheduled = run_relax_pipeline(fused, target, passes=schedule_passes())
        functions = {gvar.name_hint: func for gvar, func in scheduled.functions_items()}
        kernels = {}
        for task in tasks:
            func = functions.get(task.name)
            if isinstance(func, tvm.tirx.PrimFunc):
                kernels[task.shash] = (tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), DEFAULT_RULE)
        return kernels

    def search_target(self, target):
        return search_target(target)

    def design_space(self, target):
        return gpu_design_space()

    def load_intrinsics(self) -> None:
        # the CUDA rules without tensor cores use no tensor intrinsics: skip importing every back end's
        from aglmc.targets.tuning.measure import load_cpu_intrinsics

        load_cpu_intrinsics()

    def open(self, target, measure) -> None:
        from aglmc.targets.vulkan.runtime import describe_adapter, select_adapter
        from aglmc.targets.vulkan.tuning_runner import VulkanCandidateRunner

        self.target = target
        self.where = describe_adapter(select_adapter(self.adapter))  # no adapter: a TargetError now, not per trial
        self.runner = VulkanCandidateRunner(adapter=self.adapter, number=measure.number, repeat=measure.repeat,
                                            min_repeat_ms=measure.min_repeat_ms)

    def build(self, mods: Sequence) -> List[Tuple[Optional[str], Optional[str]]]:
        from aglmc.targets.compile import error_summary

        out: List[Tuple[Optional[str], Optional[str]]] = []
        for mod in mods:
            folder = tempfile.mkdtemp(prefix="aglmc-vulkan-candidate-")
            try:
                out.append((build_candidate(mod, self.target, folder), None))
            except Exception as e:  # noqa: BLE001 - TVM's checks and codegen fail this candidate only
                shutil.rmtree(folder, ignore_errors=True)
                out.append((None, f"build failed: {e.message if isinstance(e, TargetError) else error_summary(e)}"))
        return out

    def describe(self) -> str:
        return self.where
