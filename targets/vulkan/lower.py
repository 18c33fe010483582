"""Lowering a Relax module for the vulkan target: TVM's GPU pipeline, WGSL code generation, and what the launch
plan needs from both.

TVM's webgpu target is the code generator (the PyPI wheel has no Vulkan one, see shared/VULKAN.md). We run the
steps of ``relax.backend.gpu_generic``'s default pipeline ourselves and stop before ``LowerRuntimeBuiltin``, so
the Relax ``main`` still reads as alloc/kill and destination-passing calls of PrimFuncs (:mod:`.plan` turns it
into the launch plan). The PrimFuncs are built with ``tvm.tirx.build`` under a pass instrument that keeps the
module as it enters ``tirx.MakePackedAPI``: the host PrimFuncs there call ``T.call_ffi_kernel`` with each
kernel's arguments and launch extents, the device PrimFuncs carry the kernels' parameters.

Pinned to apache-tvm 0.27: the pass name ``tirx.MakePackedAPI`` and the ``// Function: NAME`` source headers are
internal; ``tests/test_vulkan.py`` checks both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import tvm
from tvm import relax

from aglmc.errors import TargetError
from aglmc.targets.compile import error_summary
from aglmc.targets.vulkan.wgsl import fix_wgsl

CAPTURE_BEFORE = "tirx.MakePackedAPI"

# Element types WGSL can keep in a storage buffer (TVM emits array<i8>/array<bool> for the others, which
# does not validate; WGSL has no 64-bit integers and wgpu no f64 storage).
STORABLE = {"float32", "float16", "int32", "uint32"}
FLOAT64_HINT = ("WGSL has no f64. NarrowFloat64 runs float64 tensors between ops in float32; this kernel "
                "computes in float64 inside itself (an op lowered with float64 arithmetic): cast the model to "
                "float32, or build this schedule for host/arm only")


def fusion_passes(target: tvm.target.Target) -> List[tvm.transform.Pass]:
    """``gpu_generic``'s library dispatch, legalization and fusion, with WidenBool between FoldConstant and
    fusion: the module after them holds the unscheduled fused PrimFuncs (the tuning tasks, see :mod:`.tuning`)."""
    from aglmc.targets.vulkan.widen_bool import widen_bool
    from tvm.relax.backend import gpu_generic

    return (gpu_generic.library_dispatch_passes(target)
            + [relax.transform.LegalizeOps(),
               relax.transform.AnnotateTIROpPattern(),
               relax.transform.FoldConstant(),
               widen_bool,
               relax.transform.AnnotateTIROpPattern(),  # the casts WidenBool added
               relax.transform.FuseOps(),
               relax.transform.FuseTIR()])


def schedule_passes(database=None) -> List[tvm.transform.Pass]:
    """The GPU schedules: a tuning database's records first (``MetaScheduleApplyDatabase``, which marks what it
    scheduled), then dlight's defaults (Matmul, GEMV, Reduction, GeneralReduction, Fallback) for the rest."""
    from tvm.s_tir import dlight as dl

    dlight = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                     dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    return [dlight] if database is None else [apply_database(database), dlight]


def apply_database(database) -> tvm.transform.Pass:
    """``MetaScheduleApplyDatabase`` with ``database`` as MetaSchedule's current database (how it finds it): the
    PrimFuncs ``database`` has records for get their best schedule and ``tirx.is_scheduled``."""

    @tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
    def apply(mod, _ctx):
        with database:  # the pass is made here: it reads the current target (run under the target's scope)
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

    return apply


def lowering_passes(target: tvm.target.Target) -> List[tvm.transform.Pass]:
    """After the schedules: ``gpu_generic``'s dataflow lowering, then memory planning up to, not including,
    ``LowerRuntimeBuiltin``."""
    from tvm.relax.backend import gpu_generic

    return (gpu_generic.dataflow_lower_passes(target)
            + [relax.transform.StaticPlanBlockMemory(),
               relax.transform.LowerAllocTensor(),
               relax.transform.KillAfterLastUse(),
               relax.transform.AttachGlobalSymbol()])


def relax_pipeline(target: tvm.target.Target, database=None) -> List[tvm.transform.Pass]:
    """The Relax passes from the prepared model to the form :mod:`.plan` reads, in order.

    ``gpu_generic``'s steps (library dispatch; legalization, fusion, the tuning database's records when given,
    then dlight's default GPU schedules; dataflow lowering), with WidenBool between FoldConstant and fusion,
    then memory planning up to, not including, ``LowerRuntimeBuiltin``.
    """
    return fusion_passes(target) + schedule_passes(database) + lowering_passes(target)


def run_relax_pipeline(mod: tvm.IRModule, target: tvm.target.Target, database=None,
                       passes: Optional[List[tvm.transform.Pass]] = None) -> tvm.IRModule:
    """``mod`` through :func:`relax_pipeline` (or ``passes``) under ``target``; TVM's errors as TargetError."""
    try:
        with target:
            return tvm.transform.Sequential(passes if passes is not None else relax_pipeline(target, database))(mod)
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"TVM's GPU pipeline failed for the vulkan target: {error_summary(e)}") from e


def called_prim_funcs(mod: tvm.IRModule, entry: str = "main") -> Dict[str, tvm.tirx.PrimFunc]:
    """The PrimFuncs ``entry`` calls, by name (legalization leaves unused ones behind)."""
    names = set()

    def visit(e):
        if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            names.add(e.op.name_hint)

    relax.analysis.post_order_visit(mod[entry], visit)
    return {gv.name_hint: f for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint in names}


def check_storable(prims: Dict[str, tvm.tirx.PrimFunc]) -> None:
    """A TargetError naming the first PrimFunc whose tensors WGSL cannot store (int8, bool, int64 ...)."""
    for name, func in prims.items():
        for p in func.params:
            ty = p.ty
            if isinstance(ty, tvm.tirx.BufferType):
                dtype = str(ty.dtype)
                if dtype not in STORABLE:
                    hint = {"int64": "NarrowInt64 narrows int64 tensors between ops; this one is made inside a "
                                      "fused kernel",
                            "float64": FLOAT64_HINT}
                    widened = ("WidenBool stores bool/8/16-bit tensors as int32 where fusion allows, and "
                               "PackWeights packs int8/int4 weight constants into u32 words where a conv2d or "
                               "matmul dequantizes them; this one stayed (an op that is neither fused nor in "
                               "RunOnInt32's list, or a constant read by another op)")
                    raise TargetError(f"the vulkan target cannot run '{name}': its tensor '{p.name}' is {dtype}, "
                                      f"which WGSL cannot keep in a storage buffer",
                                      hint=hint.get(dtype, widened))


def check_arithmetic(prims: Dict[str, tvm.tirx.PrimFunc]) -> None:
    """A TargetError naming the first PrimFunc that computes in float64 inside its kernel (WGSL has no f64;
    TVM's code generator would stop with "only support f16 or f32" and no name)."""
    import tvm_ffi

    for name, func in prims.items():
        found = []

        def visit(e, found=found):
            if not found and str(getattr(e, "ty", "")) == "float64":
                found.append(e)

        tvm_ffi.structural_walk(func.body, [(tvm.ir.expr.Expr, visit)])
        if found:
            raise TargetError(f"the vulkan target cannot run '{name}': it computes in float64 ({found[0]}), which "
                              f"WGSL does not have", hint=FLOAT64_HINT)


@tvm.instrument.pass_instrument
class CaptureBefore:
    """Keeps the IRModule as it enters the pass named ``name``."""

    def __init__(self, pass_name: str):
        self.pass_name = pass_name
        self.module = None

    def run_before_pass(self, mod, info):
        if info.name == self.pass_name:
            self.module = mod


@dataclass
class Kernels:
    """The device side of a build: the IRModule before MakePackedAPI (host and device PrimFuncs) and WGSL."""

    before_packed_api: tvm.IRModule
    wgsl: Dict[str, str]

    def host_func(self, name: str) -> tvm.tirx.PrimFunc:
        for gv, f in self.before_packed_api.functions_items():
            if gv.name_hint == name and not _is_device(f):
                return f
        raise TargetError(f"vulkan: no host function '{name}' in the lowered module")

    def device_func(self, name: str) -> tvm.tirx.PrimFunc:
        for gv, f in self.before_packed_api.functions_items():
            if gv.name_hint == name and _is_device(f):
                return f
        raise TargetError(f"vulkan: no kernel '{name}' in the lowered module")


def _is_device(f) -> bool:
    return f.attrs is not None and "calling_conv" in f.attrs and int(f.attrs["calling_conv"]) == 2


def build_kernels(prims: Dict[str, tvm.tirx.PrimFunc], target: tvm.target.Target) -> Kernels:
    """WGSL for every kernel of ``prims``, and the module as it entered MakePackedAPI."""
    capture = CaptureBefore(CAPTURE_BEFORE)
    mod = tvm.IRModule({tvm.ir.GlobalVar(name): f for name, f in prims.items()})
    try:
        with tvm.transform.PassContext(opt_level=3, instruments=[capture]):
            lib = tvm.tirx.build(mod, target=target)
    except Exception as e:
        text = str(e)
        codegen = re.search(r"CodeGenWebGPU:[^\n]*|The buffer \S+ allocated in the function has dtype (?:T\.)?\w+",
                            text)
        msg = codegen.group(0).strip() if codegen else error_summary(e)
        culprit = _culprit(e, prims)
        where = f" in '{culprit}'" if culprit else ""
        hint = None
        if "i64" in text or "int64" in msg:
            hint = ("WGSL has no 64-bit integers and this op computes in int64 inside its kernel (argmax/argmin "
                    "indices, int64 index arithmetic); NarrowInt64 only narrows tensors between kernels")
        raise TargetError(f"TVM's WGSL code generator failed{where}: {msg}", hint=hint) from e
    if capture.module is None:
        raise TargetError(f"vulkan: TVM's TIR pipeline never ran {CAPTURE_BEFORE}; this TVM version is not "
                          f"supported (pinned: apache-tvm 0.27)")
    device = [m for m in lib.imports if m.kind == "webgpu"]
    wgsl = split_wgsl(device[0].inspect_source()) if device else {}
    return Kernels(capture.module, {name: fix_wgsl(src) for name, src in wgsl.items()})


def _culprit(e: BaseException, prims) -> str:
    """The PrimFunc a codegen error mentions, if any."""
    text = str(e)
    for name in sorted(prims, key=len, reverse=True):
        if name in text:
            return name
    return ""


_HEADER = re.compile(r"^// Function: (\S+)\n//-+\n", re.M)


def split_wgsl(source: str) -> Dict[str, str]:
    """One WGSL module per kernel, from the device module's concatenated source (``// Function:`` headers)."""
    out: Dict[str, str] = {}
    matches = list(_HEADER.finditer(source))
    for m, nxt in zip(matches, matches[1:] + [None]):
        text = source[m.end(): nxt.start() if nxt else len(source)].strip()
        if text:
            out[m.group(1)] = text + "\n"
    return out


_BINDING = re.compile(r"@group\(0\) @binding\((\d+)\) var<storage, (read|read_write)> (\w+) : array<(\w+)>;")
_PODS = re.compile(r"struct PODArgs \{(.*?)\}", re.S)
_FIELD = re.compile(r"(\w+)\s*:\s*(\w+)")
_WORKGROUP = re.compile(r"@workgroup_size\((\d+), (\d+), (\d+)\)")
_SHARED = re.compile(r"var<workgroup> \w+ : array<(\w+), (\d+)>;")
_WGSL_BYTES = {"f32": 4, "i32": 4, "u32": 4, "f16": 2}


@dataclass
class KernelInterface:
    """What a WGSL kernel expects: storage bindings 0..n-1, then a uniform PODArgs at binding n."""

    buffers: List[Tuple[str, str, str]]  # (name, access, element type), in binding order
    pods: List[Tuple[str, str]]  # (name, type) without the trailing packGridDimX
    workgroup_size: Tuple[int, int, int]
    f16: bool
    workgroup_bytes: int = 0  # var<workgroup> memory


    def to_json(self, shader: str) -> dict:
        return {"shader": shader, "workgroup_size": list(self.workgroup_size), "f16": self.f16,
                "workgroup_bytes": self.workgroup_bytes,
                "buffers": [{"name": n, "access": a, "type": t} for n, a, t in self.buffers],
                "pods": [{"name": n, "type": t} for n, t in self.pods]}


def parse_interface(name: str, wgsl: str) -> KernelInterface:
    """The bindings, scalar arguments and workgroup size of the kernel ``name`` from its WGSL."""
    buffers = []
    for m in _BINDING.finditer(wgsl):
        if int(m.group(1)) != len(buffers):
            raise TargetError(f"vulkan: kernel '{name}' binds its buffers out of order")
        buffers.append((m.group(3), m.group(2), m.group(4)))
    pods_m = _PODS.search(wgsl)
    wg = _WORKGROUP.search(wgsl)
    if pods_m is None or wg is None:
        raise TargetError(f"vulkan: cannot read the interface of kernel '{name}' from its WGSL")
    fields = _FIELD.findall(pods_m.group(1))
    if not fields or fields[-1] != ("packGridDimX", "u32"):
        raise TargetError(f"vulkan: kernel '{name}': PODArgs does not end in packGridDimX: u32")
    for fname, ftype in fields:
        if ftype not in ("i32", "u32", "f32"):
            raise TargetError(f"vulkan: kernel '{name}': scalar argument '{fname}' is {ftype}")
    shared = sum(_WGSL_BYTES.get(t, 4) * int(n) for t, n in _SHARED.findall(wgsl))
    return KernelInterface(buffers, fields[:-1], tuple(int(g) for g in wg.groups()),
                           f16=bool(re.search(r"^enable f16;", wgsl, re.M)), workgroup_bytes=shared)
