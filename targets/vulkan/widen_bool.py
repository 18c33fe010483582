"""WidenBool: bool tensors are stored as int32, because WGSL cannot keep bool in a storage buffer.

TVM's WGSL for a bool tensor is ``array<i8>`` (WGSL has no 8-bit storage either), which wgpu rejects. Masks are
common (a causal mask constant, an attention mask input), but a mask rarely needs to be *stored*: it is made by a
comparison and used by a ``where`` right after. This pass makes every stored bool an int32 and lets fusion keep
the bool values inside kernels:

- a call that yields a bool tensor ``b`` is followed by ``b32 = cast(b, int32)`` (which fuses into the producer),
  and each consumer of ``b`` reads a fresh ``cast(b32, bool)`` (which fuses into that consumer);
- a bool constant becomes an int32 constant read through ``cast(c32, bool)``; a bool parameter becomes an int32
  parameter, and a bool result is returned as int32 (the runtime converts both at the boundary).

Requires: legalized Relax (``call_tir`` calls, after ``LegalizeOps`` and ``FoldConstant``: run before it and
FoldConstant folds the casts of constants back into bool constants); flat functions. Run before
``AnnotateTIROpPattern`` and ``FuseOps``, which must see the new casts. Guarantees: no Relax variable, parameter,
constant or result of a rewritten function holds bool, except the casts' outputs that fusion folds into kernels.
A module without bool tensors is returned unchanged.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import tvm
from tvm import relax, topi

from aglmc.errors import TargetError
from aglmc.targets.relax_bindings import replace_functions

_STORE = "int32"
# Element types WGSL cannot store, kept as int32 instead (every value fits, so the round trip is exact).
NARROW = ("bool", "int8", "uint8", "int16", "uint16")
# Ops that FuseOps will not fuse with a cast on the side that matters: gathers index indirectly (opaque
# PrimFuncs, so a cast in front is stored), reductions take no elementwise epilogue here (so a cast after is
# stored). On a narrow dtype they run on an int32 copy of their first argument instead; the result cast back is
# exact (max/min), or wraps exactly as the narrow arithmetic would (sum/prod are the same modulo 2^bits).
INT32_OPS = ("relax.take", "relax.index_tensor", "relax.gather_elements", "relax.gather_nd",
             "relax.max", "relax.min", "relax.sum", "relax.prod")


def _is_bool(ty) -> bool:
    """A tensor of a dtype WGSL cannot store (bool, 8/16-bit integers); the name stays for readability."""
    return isinstance(ty, relax.TensorType) and str(ty.dtype) in NARROW


def _holds_bool(ty) -> bool:
    if _is_bool(ty):
        return True
    return isinstance(ty, tvm.ir.TupleType) and any(_holds_bool(t) for t in ty.fields)


class _Widener:
    def __init__(self, bb: relax.BlockBuilder, func: relax.Function, name: str):
        self.bb, self.func, self.name = bb, func, name
        self.plain: Dict[Any, Any] = {}  # old var -> new expr, same type
        self.widened: Dict[Any, Any] = {}  # old bool var -> its int32 copy

    def run(self, tmp_name: str) -> None:
        bb = self.bb
        params = []
        for p in self.func.params:
            if _is_bool(p.ty):
                q = relax.Var(p.name, relax.TensorType(p.ty.shape, _STORE))
                self.widened[p] = q
                params.append(q)
            elif _holds_bool(p.ty):
                raise TargetError(f"WidenBool: '{self.name}': parameter '{p.name}' is a tuple holding bool tensors")
            else:
                params.append(p)
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError(f"WidenBool: function '{self.name}' is not in binding-block form")
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with bb.function(tmp_name, params, attrs=attrs, pure=True):
            for block in body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    with bb.dataflow():
                        self._block(block, dataflow=True)
                else:
                    self._block(block, dataflow=False)
            bb.emit_func_output(self._result(body.body))

    def _block(self, block, dataflow: bool) -> None:
        bb = self.bb
        for binding in block.bindings:
            if isinstance(binding, relax.MatchCast):
                raise TargetError(f"WidenBool: '{self.name}' has a match_cast on '{binding.var.name}'")
            old = binding.var
            new = bb.emit(self._args(binding.value), name_hint=old.name)
            exported = dataflow and not isinstance(old, relax.DataflowVar)
            if _is_bool(new.ty):
                new = bb.emit(self._cast(new, _STORE))
                if exported:
                    new = bb.emit_output(new, name_hint=old.name)
                self.widened[old] = new
                continue
            if _holds_bool(new.ty):
                raise TargetError(f"WidenBool: '{self.name}': '{old.name}' is a tuple holding bool tensors, "
                                  f"which the vulkan target cannot store")
            if exported:
                new = bb.emit_output(new, name_hint=old.name)
            (self.widened if _is_bool(old.ty) else self.plain)[old] = new

    def _cast(self, x, dtype: str):
        return self.bb.call_te(topi.cast, x, dtype, primfunc_name_hint=f"cast_{dtype}")


    def _args(self, expr):
        """``expr`` with bool operands read through fresh casts (so each fuses into this consumer)."""
        if isinstance(expr, tvm.ir.Call):
            return relax.Call(expr.op, [self._operand(a) for a in expr.args], expr.attrs, expr.ty_args)
        if isinstance(expr, tvm.ir.Tuple):
            return relax.Tuple([self._keep(f) for f in expr.fields])
        if isinstance(expr, tvm.ir.TupleGetItem):
            return relax.TupleGetItem(self._keep(expr.tuple_value), expr.index)
        return self._keep(expr)

    def _operand(self, a):
        if isinstance(a, tvm.ir.Tuple):
            return relax.Tuple([self._operand(f) for f in a.fields])
        if isinstance(a, tvm.ir.Var) and a in self.widened:
            return self.bb.emit(self._cast(self.widened[a], str(a.ty.dtype)))
        if isinstance(a, tvm.ir.expr.GenericConst) and _is_bool(a.ty):
            return self.bb.emit(self._cast(relax.const(a.value.numpy().astype(np.int32)), str(a.ty.dtype)))
        return self.plain.get(a, a) if isinstance(a, tvm.ir.Var) else a

    def _keep(self, e):
        """A value passed along without computing on it (tuple fields, results): widened stays int32."""
        if isinstance(e, tvm.ir.Var):
            return self.widened.get(e, self.plain.get(e, e))
        if isinstance(e, tvm.ir.expr.GenericConst) and _is_bool(e.ty):
            return relax.const(e.value.numpy().astype(np.int32))
        if isinstance(e, tvm.ir.Tuple):
            return relax.Tuple([self._keep(f) for f in e.fields])
        if isinstance(e, tvm.ir.TupleGetItem):
            return relax.TupleGetItem(self._keep(e.tuple_value), e.index)
        return e

    def _result(self, e):
        return self._keep(e)


def _uses_bool(func: relax.Function) -> bool:
    found = []

    def visit(e):
        ty = getattr(e, "ty", None)
        if ty is not None and _holds_bool(ty):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="WidenBool")
def widen_bool(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The module with the bool tensors of its Relax functions stored as int32 (see the module docstring)."""
    todo = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function) and _uses_bool(f)]
    if not todo:
        return mod
    bb = relax.BlockBuilder(mod)
    tmp = {}
    for gv, func in todo:
        tmp[gv] = f"__widen_bool_{gv.name_hint}"
        _Widener(bb, func, gv.name_hint).run(tmp[gv])
    return replace_functions(bb.get(), tmp)


@tvm.transform.module_pass(opt_level=0, name="RunOnInt32")
def run_on_int32(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Gathers and reductions (:data:`INT32_OPS`) of bool or 8/16-bit tensors run on an int32 copy of the data.

    WidenBool's casts fuse into elementwise producers and consumers, but not in front of a gather or behind a
    reduction, where they would leave a bool/int8 tensor in storage. Run before LegalizeOps (WidenBool runs
    after FoldConstant). ``op(x, ...)`` becomes ``astype(op(astype(x, int32), ...), dtype)``, where ``dtype``
    is the op's own result dtype.
    """
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    data = wildcard()
    pattern = None
    for op in INT32_OPS:
        p = is_op(op)(data) | is_op(op)(data, wildcard())
        pattern = p if pattern is None else pattern | p

    def rewriter(expr, matches):
        x = matches[data]
        if not _is_bool(x.ty):
            return expr
        result = expr.ty if not expr.ty.is_missing() else None
        dtype = str(result.dtype) if isinstance(result, relax.TensorType) else str(x.ty.dtype)
        wide = relax.Call(expr.op, [relax.op.astype(x, _STORE)] + list(expr.args[1:]), expr.attrs, expr.ty_args)
        return relax.op.astype(wide, dtype)

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and _uses_bool(func):
            out[gv] = rewrite_call(pattern, rewriter, func)
    return out
