"""NarrowFloat64: float64 tensors become float32, because WGSL (and so the vulkan target) has no f64.

TVM's WGSL code generator stops at the first ``f64`` ("only support f16 or f32"), and wgpu has no f64 storage.
Models bring float64 in on purpose where they round as PyTorch does: per-token dynamic quantization
(``quantize_dynamic``, ``granularity = per_token``) computes its scales and ``x / scale`` in float64. This pass
rewrites every Relax function of the module the way NarrowInt64 does for int64 (same rewriter,
:class:`~aglmc.targets.vulkan.narrow_int64.Narrower`):

- float64 tensor parameters become float32 parameters (the runtime casts the caller's float64 arrays, and casts
  float64 outputs back);
- float64 constants become float32 constants (a finite value outside float32's range is a
  :class:`~aglmc.errors.TargetError`; infinities and NaN stay what they are);
- calls whose attributes ask for float64 (``astype``, ``full`` ...) ask for float32;
- any other call that still yields a float64 tensor is followed by ``astype(float32)``.

What changes: the arithmetic is float32. A value computed in float64 and then rounded (a quantized activation)
can round the other way where float32 and float64 disagree on which side of a tie it lies, one quantization
step in about one value of 10^6-10^7; the vulkan build's check against the host measures what that costs the
model's outputs.

Requires: a Relax module before ``LegalizeOps`` whose functions are flat (binding blocks, no ``If``).
Guarantees: Relax-level float64 tensors are gone. A module with no float64 tensor is returned unchanged.
"""

from __future__ import annotations

import numpy as np
import tvm

from aglmc.errors import TargetError
from aglmc.targets.vulkan.narrow_int64 import Narrower, narrow_module

_F64 = "float64"
_F32 = "float32"


def _float32_constant(values: np.ndarray, where: str) -> np.ndarray:
    finite = values[np.isfinite(values)]
    limit = float(np.finfo(np.float32).max)
    if finite.size and np.abs(finite).max() > limit:
        raise TargetError(f"NarrowFloat64: {where} has a float64 constant of magnitude {np.abs(finite).max():g}, "
                          f"outside float32's range")
    return values.astype(np.float32)


def _narrower(func, name: str) -> Narrower:
    return Narrower(func, name, wide=_F64, narrow=_F32, constant=_float32_constant, pass_name="NarrowFloat64")


def narrow_float64_module(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with the float64 tensors of its Relax functions narrowed to float32 (see the module
    docstring). The plain-function form: a :class:`TargetError` reaches the caller as itself."""
    return narrow_module(mod, _F64, _narrower)


@tvm.transform.module_pass(opt_level=0, name="NarrowFloat64")
def narrow_float64(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """NarrowFloat64 as a TVM pass (see :func:`narrow_float64_module`)."""
    return narrow_float64_module(mod)
