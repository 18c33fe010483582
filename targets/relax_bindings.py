"""Looking through the bindings of a flat Relax function (what a variable is bound to, constant values) and
putting rewritten functions back into their module.

The Q/DQ rewriters (``targets/quant/lower_qdq.py`` for the CPU targets, ``targets/vulkan/pack_weights.py``) match
``dequantize(constant, ...)`` through the variables a frontend binds, and through the views a frontend puts on a
weight (``astype``, ``reshape``, ``permute_dims``, ``expand_dims``, ``squeeze``).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import tvm
from tvm import relax

#: the ops a constant may sit behind and still be read as a numpy value
CONSTANT_VIEWS = ("relax.astype", "relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze")


def op_name(expr) -> str:
    """``relax.*`` name of a call to an operator, else ``""``."""
    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return ""


def replace_functions(built: tvm.IRModule, temporary: Dict[tvm.ir.GlobalVar, str]) -> tvm.IRModule:
    """``built`` with each function that was rebuilt under a temporary name (``temporary``: original global
    var -> that name) put back under its original global var and symbol. A pass that rewrites several functions
    with one BlockBuilder (so that the kernels it makes get names unique across the module) builds them under
    temporary names, because the builder already holds the originals."""
    swapped = {built.get_global_var(name): gv for gv, name in temporary.items()}
    out = tvm.IRModule({gv: f for gv, f in built.functions_items() if gv not in swapped}, attrs=built.attrs)
    for new_gv, gv in swapped.items():
        func = built[new_gv]
        if func.attrs is not None and "global_symbol" in func.attrs:
            func = func.with_attr("global_symbol", gv.name_hint)
        out[gv] = func
    return out


class BindingView:
    """Mixin for a rewriter that records ``defs`` (variable -> bound expression) as it walks a function, and
    ``remap`` (old variable -> its replacement) as it emits the new one."""

    defs: Dict[tvm.ir.Var, relax.Expr]
    remap: Dict[tvm.ir.Var, relax.Expr]

    def _rebuild(self, expr):
        """``expr`` over the new variables (a call, tuple or item whose operands were rewritten)."""
        if isinstance(expr, tvm.ir.Var):
            return self.remap.get(expr, expr)
        if isinstance(expr, tvm.ir.Tuple):
            return relax.Tuple([self._rebuild(f) for f in expr.fields])
        if isinstance(expr, tvm.ir.TupleGetItem):
            return relax.TupleGetItem(self._rebuild(expr.tuple_value), expr.index)
        if isinstance(expr, tvm.ir.Call):
            return relax.Call(expr.op, [self._rebuild(a) for a in expr.args], expr.attrs, expr.ty_args)
        return expr

    def _value(self, expr):
        """``expr`` with variables replaced by what they are bound to, as long as they are."""
        while isinstance(expr, tvm.ir.Var) and expr in self.defs:
            expr = self.defs[expr]
        return expr

    def _const(self, expr) -> Optional[np.ndarray]:
        """The numpy value of a constant expression (a constant through :data:`CONSTANT_VIEWS`), else None."""
        expr = self._value(expr)
        if isinstance(expr, tvm.ir.expr.GenericConst):
            return expr.value.numpy()
        op = op_name(expr)
        if op not in CONSTANT_VIEWS:
            return None
        inner = self._const(expr.args[0])
        if inner is None:
            return None
        if op == "relax.astype":
            return inner.astype(str(expr.attrs.dtype))
        if op == "relax.permute_dims":
            return np.transpose(inner, None if expr.attrs.axes is None else [int(a) for a in expr.attrs.axes])
        return inner.reshape([int(d) for d in expr.ty.shape])
