"""The vulkan target: TVM's GPU kernels as WGSL, run on a Vulkan device through wgpu.

The PyPI TVM has no Vulkan code generator, so kernels are generated with TVM's webgpu target (WGSL) and run by
wgpu on its Vulkan backend (shared/VULKAN.md). The artifact is one zip, ``vulkan.wgpu``: a launch plan
(plain JSON), the WGSL kernels and the constants as ``.npy`` arrays; :mod:`.runtime` runs it with wgpu and numpy.

Build steps, in order (each named so a failure says where it happened)::

    prepare      PackWeights, DecomposeOpsForInference, NarrowInt64, NarrowFloat64, RunOnInt32,
                 ToMixedPrecision(float16) if fp16
    lower        gpu_generic: legalize, fuse, dlight GPU schedules, memory planning (see lower.py)
    check        every kernel's tensors are storable in WGSL (no int8/bool/int64 storage), none computes in f64
    codegen      ExactFloatLiterals, tvm.tirx.build for webgpu -> WGSL, capturing the module before MakePackedAPI
    plan         kernel order, grids, bindings, scalar arguments, storages and their lifetimes (plan.py)
    package      plan.json + shaders/*.wgsl + constants/*.npy in one zip (artifact.py)

With a tuning database (``database=``), the kernels it has records for are scheduled from them before dlight
schedules the rest; the plan's ``schedules`` and ``BuildInfo.schedule`` say which (``database`` or ``dlight``).
``target vulkan { tune_trials = N }`` tunes them first (tuning.py: MetaSchedule, timed on the Vulkan device).

PackWeights (pack_weights.py) keeps a quantized model's int8 / int4 weights as packed u32 words that the GPU
kernels unpack as they multiply; the plan's ``weights`` entry lists what it packed and what stayed float.

A schedule asks for it with ``target vulkan { fp16 = false }``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import tvm
from tvm import relax

from aglmc.dsl.params import Param
from aglmc.errors import TargetError
from aglmc.targets.base import BuildInfo, Target, register_target
from aglmc.targets.compile import error_summary
from aglmc.targets.vulkan.artifact import DTYPE_BYTES, write_artifact
from aglmc.targets.vulkan.exact_floats import exact_float_literals
from aglmc.targets.cpu.report import DATABASE, ScheduledFunction, ScheduleReport, call_counts, estimate_macs
from aglmc.targets.vulkan.lower import (build_kernels, called_prim_funcs, check_arithmetic, check_storable,
                                        apply_database, fusion_passes, lowering_passes, run_relax_pipeline,
                                        schedule_passes)
from aglmc.targets.vulkan.narrow_float64 import narrow_float64_module
from aglmc.targets.vulkan.narrow_int64 import narrow_int64_module
from aglmc.targets.vulkan.pack_weights import PackReport, pack_weights
from aglmc.targets.vulkan.plan import PlanBuilder
from aglmc.targets.vulkan.widen_bool import run_on_int32
from aglmc.targets.tuning.settings import TUNE_PARAMS


VULKAN_DEFAULT_RULE = "dlight"  # the rule name of a kernel no tuning record scheduled


def device_model(device: str = "") -> str:
    """What the vulkan target's tuning records are keyed by (the TVM target's ``model``, part of the database
    folder's hash): ``device`` when the target block names one (a machine that builds for another machine's GPU
    names it on both), else the name of the adapter ``aglmc run`` picks here (``$AGLMC_VULKAN_ADAPTER`` narrows
    it), else ``"none"``. Timings of one GPU say nothing of another: lavapipe's records must not schedule an
    NVIDIA build."""
    return device or _this_machines_adapter(os.environ.get("AGLMC_VULKAN_ADAPTER", ""))


@functools.lru_cache(maxsize=None)
def _this_machines_adapter(wanted: str) -> str:
    from aglmc.targets.vulkan.runtime import select_adapter

    try:
        return str(select_adapter(wanted or None).info.get("device") or "unknown")
    except TargetError:  # no wgpu, no Vulkan driver, or none that matches
        return "none"


def _power_of_two(n: int):
    return None if n & (n - 1) == 0 else f"must be a power of two, got {n}"


@register_target
class VulkanTarget(Target):
    """Vulkan devices (and lavapipe), through TVM's WGSL kernels and wgpu; needs wgpu + numpy to run."""

    kind = "vulkan"
    library_name = "vulkan.wgpu"
    params = (
        Param("fp16", "bool", default=False,
              doc="compute and store in float16 (inputs and outputs stay float32); needs shader-f16"),
        Param("max_workgroup_size", "int", default=256, min=32, max=1024, check=_power_of_two,
              doc="threads per workgroup the GPU schedules may use (WebGPU guarantees 256)"),
        Param("max_shared_memory", "int", default=16384, min=1024,
              doc="bytes of workgroup memory a kernel may use (WebGPU guarantees 16384; lavapipe has 32768)"),
        Param("device", "str", default="",
              doc="the Vulkan adapter (part of its name) that tuning measures on and whose records the build "
                  "applies; default: the adapter `aglmc run` picks on this machine"),
        *TUNE_PARAMS,  # issue 8: MetaSchedule on the Vulkan device (tuning.py)
    )

    @classmethod
    def tvm_target(cls, settings: Mapping[str, Any]) -> tvm.target.Target:
        s = cls.resolve(settings)
        return tvm.target.Target({"kind": "webgpu", "max_num_threads": s["max_workgroup_size"],
                                  "max_shared_memory_per_block": s["max_shared_memory"],
                                  "model": device_model(s["device"]), "host": {"kind": "llvm"}})

    @classmethod
    def build(cls, mod: tvm.IRModule, settings: Mapping[str, Any], out_path: Path, *, database=None) -> BuildInfo:
        """Build ``mod`` into the artifact ``out_path``; ``database`` (MetaSchedule's, e.g. from
        ``tuning.database_for_build``) schedules the kernels it has records for, dlight the rest."""
        s = cls.resolve(settings)
        target = cls.tvm_target(s)
        start = time.perf_counter()
        host_in, host_out = _io_dtypes(mod["main"])
        packed = PackReport()
        mod = _step("prepare", prepare, mod, s, packed)
        # lower: relax_pipeline(target, database), run in three parts to see what the database scheduled
        fused = run_relax_pipeline(mod, target, passes=fusion_passes(target))
        calls = call_counts(fused)
        macs = {gvar.name_hint: _macs(f) for gvar, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
        tuned = set()
        if database is not None:
            before = _scheduled(fused)
            fused = run_relax_pipeline(fused, target, passes=[apply_database(database)])
            tuned = _scheduled(fused) - before
        lowered = run_relax_pipeline(fused, target, passes=schedule_passes() + lowering_passes(target))
        prims = called_prim_funcs(lowered)
        check_storable(prims)
        check_arithmetic(prims)
        prims = {name: exact_float_literals(f) for name, f in prims.items()}  # TVM prints 7 digits of a float32
        kernels = build_kernels(prims, target)
        plan, shaders, constants = PlanBuilder(lowered, kernels).build()
        compiled = time.perf_counter()
        _annotate(plan, host_in, host_out, target, s)
        schedule = ScheduleReport(tuple(sorted(
            (ScheduledFunction(name, DATABASE if name in tuned else VULKAN_DEFAULT_RULE, macs.get(name),
                               calls=max(1, calls.get(name, 1))) for name in prims),
            key=lambda f: f.name)))
        plan["schedules"] = {f.name: f.rule for f in schedule.functions}  # which kernels a tuning record scheduled
        if packed.packed or packed.left:
            plan["weights"] = packed.to_json()
        write_artifact(out_path, plan, shaders, constants)
        return BuildInfo(kind=cls.kind, path=Path(out_path), target=str(target), settings=s,
                         seconds=time.perf_counter() - start, compile_seconds=compiled - start,
                         link_seconds=time.perf_counter() - compiled, linker="none (WGSL, compiled by wgpu at load)",
                         schedule=schedule)

    # issue 8: autotuning, measured on this machine's Vulkan device
    @classmethod
    def tune(cls, mod: tvm.IRModule, settings: Mapping[str, Any], *, trials: Optional[int] = None,
             base_dir: Optional[Path] = None, log=print, adapter: Optional[str] = None, **options):
        """Tune ``mod``'s kernels on this machine's Vulkan device into the vulkan target's tuning database
        (MetaSchedule's GPU search; see :mod:`aglmc.targets.vulkan.tuning`)."""
        from aglmc.targets.tuning import tune_kernels
        from aglmc.targets.vulkan.tuning import VulkanBackend

        s = cls.resolve(settings)
        return tune_kernels(mod, cls.tvm_target(s), s, None, None, kind=cls.kind, trials=trials, base_dir=base_dir,
                            log=log, backend=VulkanBackend(s, adapter=adapter or s["device"] or None), **options)

    @classmethod
    def runner(cls, path, adapter: Optional[str] = None):
        """A :class:`~aglmc.targets.vulkan.runtime.VulkanRunner` for the artifact at ``path``."""
        from aglmc.targets.vulkan.runtime import VulkanRunner

        return VulkanRunner(path, adapter=adapter)


def prepare(mod: tvm.IRModule, settings: Mapping[str, Any], packed: Optional[PackReport] = None) -> tvm.IRModule:
    """The Relax passes the vulkan target needs before TVM's GPU pipeline (``packed`` receives PackWeights'
    report)."""
    mod = pack_weights(mod, packed)  # first: it reads the frontend's Q/DQ form, before anything folds it
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = narrow_int64_module(mod)  # called directly so its TargetError reaches the user as one
    mod = narrow_float64_module(mod)
    mod = run_on_int32(mod)
    if settings["fp16"]:
        mod = relax.transform.ToMixedPrecision(out_dtype="float16")(mod)
    return mod


def _scheduled(mod: tvm.IRModule) -> set:
    """Names of the PrimFuncs of ``mod`` marked scheduled."""
    return {gvar.name_hint for gvar, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and int((func.attrs or {}).get("tirx.is_scheduled", 0))}


def _macs(func) -> Optional[int]:
    try:
        return estimate_macs(func)
    except Exception:  # noqa: BLE001 - a count for the report only
        return None


def _step(name: str, fn, *args):
    try:
        return fn(*args)
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"vulkan build step '{name}' failed: {error_summary(e)}") from e


def _io_dtypes(main: relax.Function):
    """The dtypes of ``main``'s tensor inputs and (flattened) outputs before any narrowing."""
    ins = [str(p.ty.dtype) if isinstance(p.ty, relax.TensorType) else "" for p in main.params]
    outs: List[str] = []

    def flat(ty):
        if isinstance(ty, relax.TensorType):
            outs.append(str(ty.dtype))
        elif isinstance(ty, tvm.ir.TupleType):
            for f in ty.fields:
                flat(f)

    flat(main.body.ty if main.body is not None else None)
    return ins, outs


def _annotate(plan: Dict[str, Any], host_in: List[str], host_out: List[str], target, settings) -> None:
    """Host dtypes (what the caller passes and gets back) and what the adapter must offer."""
    for spec, dtype in zip(plan["inputs"], host_in):
        spec["host_dtype"] = dtype or spec["dtype"]
    if len(host_out) == len(plan["outputs"]):
        for out, dtype in zip(plan["outputs"], host_out):
            out["host_dtype"] = dtype
    kernels = plan["kernels"].values()
    limits = {
        "max-storage-buffers-per-shader-stage": max((len(k["buffers"]) for k in kernels), default=0),
        "max-compute-invocations-per-workgroup": max((k["workgroup_size"][0] * k["workgroup_size"][1]
                                                      * k["workgroup_size"][2] for k in kernels), default=1),
        "max-compute-workgroup-storage-size": max((k["workgroup_bytes"] for k in kernels), default=0),
    }
    if plan["constants"]:
        limits["max-storage-buffer-binding-size"] = max(math.prod(c["shape"]) * DTYPE_BYTES[c["dtype"]]
                                                        for c in plan["constants"])
    plan["requires"] = {"features": ["shader-f16"] if any(k["f16"] for k in kernels) else [],
                        "limits": limits}
    plan["target"] = str(target)
    plan["settings"] = dict(settings)
    plan["tvm"] = tvm.__version__
