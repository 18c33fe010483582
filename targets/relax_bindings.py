"""Looking through the bindings of a flat Relax function: what a variable is bound to, and constant values.

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


class BindingView:
    """Mixin for a rewriter that records ``defs`` (variable -> bound expression) as it walks a function."""

    defs: Dict[tvm.ir.Var, relax.Expr]

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
