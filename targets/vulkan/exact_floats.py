"""ExactFloatLiterals: float32 constants reach the WGSL kernels bit for bit.

TVM 0.27's WGSL code generator prints a float literal with seven significant digits (``2.550000e+02f``), but a
float32 needs up to nine to round-trip: ``255.00001525878906`` (the requantization multiplier ``1 / (1/255)``)
is printed as ``255.0``. A float model hardly notices (one ulp of a constant); a quantized one does, because
``round(x · 255.000015)`` and ``round(x · 255.0)`` differ wherever ``x · 255`` is within an ulp of a half, and a
requantized value one step off moves the output by a quantization step. This pass replaces each float32
constant whose seven-digit form is not the same float32 by ``reinterpret(float32, its bits)``, which the code
generator prints as ``bitcast<f32>(1132396545u)``: exact, and still a compile-time constant for the shader
compiler. Constants that print exactly (``0.5``, ``-128.0``) stay as they are, so most kernels do not change,
and so do ±FLT_MAX: they are the identities of max/min reductions, which TVM's reducer matching (rfactor,
cross-thread reduction) recognises by value, and ``-3.402823e+38`` is below every value a model computes anyway.

Requires: scheduled PrimFuncs (run just before ``tvm.tirx.build``; TIR's simplifier does not fold the
reinterpret back). Guarantees: every finite float32 literal of the kernels equals the model's constant exactly;
nothing else changes (infinities and NaN are left to :func:`~aglmc.targets.vulkan.wgsl.fix_wgsl`).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
import tvm_ffi

_FloatImm = tvm.ir.prim.expr.FloatImm
_FLT_MAX = float(np.finfo(np.float32).max)


def prints_exactly(value: float) -> bool:
    """Whether TVM's WGSL literal for the float32 ``value`` (``%.6e``) reads back as the same float32."""
    v = np.float32(value)
    return not math.isfinite(v) or np.float32(float("%.6e" % v)) == v


def _exact(imm):
    if str(imm.ty) != "float32" or prints_exactly(imm.value) or abs(imm.value) == _FLT_MAX:
        return imm
    bits = int(np.float32(imm.value).view(np.uint32))
    return tvm.tirx.reinterpret("float32", tvm.tirx.const(bits, "uint32"))


def exact_float_literals(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` with every float32 constant that would print inexactly written as the reinterpret of its bits."""
    return tvm_ffi.structural_map(func, [(_FloatImm, _exact)])


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="ExactFloatLiterals")
def exact_float_literals_pass(func, _mod, _ctx):
    """:func:`exact_float_literals` as a PrimFunc pass."""
    return exact_float_literals(func)
