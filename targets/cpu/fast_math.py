"""FastMath: softmax, exp, erf, tanh and GELU as vectorisable polynomial approximations (TOPI's ``fast_*``).

LLVM has no vector ``expf``/``erff``: a vectorised loop calling them calls libm once per lane, so a softmax
over MiniLM's attention scores spent its time in ``expf`` (1536 x 128: 0.68 ms, 0.10 ms with ``fast_exp``).
The peers do the same (onnxruntime's MLAS computes exp, erf and tanh with polynomials). TVM's own
``FastMathTransform`` covers softmax, exp, erf and tanh; GELU reaches Relax as ``nn.gelu`` (erf form) or
``nn.gelu_tanh``, which it leaves alone, so they are written out here with ``fast_erf`` / ``fast_tanh``.

Requires: a Relax module before legalization (the ops are still ``relax.nn.softmax``, ``relax.exp`` ...).
Guarantees: the same graph with those ops as ``call_tir`` of TOPI's fast kernels; measured errors against
PyTorch: softmax 3e-8, GELU about 1e-6 (TOPI's approximations are accurate to a few float32 ulps).
"""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax import Call, Expr, PyExprMutator, expr_functor


def _gelu(x: tvm.te.Tensor) -> tvm.te.Tensor:
    half = tvm.tirx.const(0.5, x.dtype)
    return topi.multiply(topi.multiply(x, half),
                         topi.add(topi.fast_erf(topi.multiply(x, tvm.tirx.const(0.7071067811865476, x.dtype))),
                                  tvm.tirx.const(1.0, x.dtype)))


def _gelu_tanh(x: tvm.te.Tensor) -> tvm.te.Tensor:
    inner = topi.multiply(
        topi.add(x, topi.multiply(tvm.tirx.const(0.044715, x.dtype), topi.multiply(topi.multiply(x, x), x))),
        tvm.tirx.const(0.7978845608028654, x.dtype))
    return topi.multiply(topi.multiply(x, tvm.tirx.const(0.5, x.dtype)),
                         topi.add(topi.fast_tanh(inner), tvm.tirx.const(1.0, x.dtype)))


@expr_functor.mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call: Call) -> Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or not _float32(call.args[0] if call.args else None):
            return call
        name = call.op.name
        x = call.args[0]
        if name == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, x, call.attrs.axis)
        if name in ("relax.exp", "relax.erf", "relax.tanh", "relax.nn.gelu", "relax.nn.gelu_tanh"):
            te_fn = {"relax.exp": topi.fast_exp, "relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh,
                     "relax.nn.gelu": _gelu, "relax.nn.gelu_tanh": _gelu_tanh}[name]
            return self.builder_.call_te(te_fn, x)
        return call


def _float32(expr) -> bool:
    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


@tvm.transform.module_pass(opt_level=0, name="FastMath")
def fast_math(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The pass (see the module docstring)."""
    mutator = _FastMath(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
