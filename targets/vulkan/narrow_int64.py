"""NarrowInt64: int64 tensors become int32, because WGSL (and so the vulkan target) has no 64-bit integers.

TVM's WGSL code generator stops at the first ``i64`` ("CodeGenWebGPU: do not support i64"); PyTorch models bring
int64 in as token ids, positions and index arithmetic (``torch.arange``, ``argmax``). This pass rewrites every
Relax function of the module so that no tensor it stores is int64:

- int64 tensor parameters become int32 parameters (the runtime narrows the caller's int64 arrays and checks
  they fit);
- int64 constants become int32 constants (a value outside int32 is a :class:`~aglmc.errors.TargetError`);
- calls whose attributes ask for int64 (``astype``, ``arange``, ``full``, ``cumsum`` ...) ask for int32;
- any other call that still yields an int64 tensor (``argmax``) is followed by ``astype(int32)``; its own kernel
  keeps int64 arithmetic, which the WGSL check then reports by name.

Requires: a Relax module before ``LegalizeOps`` whose functions are flat (binding blocks, no ``If``).
Guarantees: Relax-level int64 tensors are gone; results are the same wherever the values fit in int32.
A module with no int64 tensor is returned unchanged. Run before LegalizeOps.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import tvm
from tvm import relax

from aglmc.errors import TargetError

_I64 = "int64"
_I32 = "int32"
_DTYPE_FIELDS = ("dtype", "out_dtype")


def _tensor_dtype(ty) -> str:
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else ""


def _has_int64(ty) -> bool:
    if isinstance(ty, relax.TensorType):
        return str(ty.dtype) == _I64
    if isinstance(ty, tvm.ir.TupleType):
        return any(_has_int64(t) for t in ty.fields)
    return False


def _narrow_attrs(attrs):
    """``attrs`` with every int64 dtype field set to int32 (same node type), or None when there is none."""
    if attrs is None:
        return None
    info = getattr(type(attrs), "__tvm_ffi_type_info__", None)
    if info is None:
        return None
    fields = {f.name: getattr(attrs, f.name) for f in info.fields}
    if not any(k in _DTYPE_FIELDS and v is not None and str(v) == _I64 for k, v in fields.items()):
        return None
    fields = {k: (_I32 if k in _DTYPE_FIELDS and v is not None and str(v) == _I64 else v)
              for k, v in fields.items()}
    return tvm.ir.make_node(info.type_key, **fields)


class _Narrower:
    """Rebuilds one flat Relax function with int64 tensors narrowed (see the module docstring)."""

    def __init__(self, func: relax.Function, name: str):
        self.func = func
        self.name = name
        self.remap: Dict[tvm.ir.Var, relax.Expr] = {}

    def run(self) -> relax.Function:
        bb = relax.BlockBuilder()
        params: List[relax.Var] = []
        for p in self.func.params:
            if _tensor_dtype(p.ty) == _I64:
                q = relax.Var(p.name, relax.TensorType(p.ty.shape, _I32))
                self.remap[p] = q
                params.append(q)
            else:
                params.append(p)
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError(f"NarrowInt64: function '{self.name}' is not in binding-block form")
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with bb.function(self.name, params, attrs=attrs, pure=True):
            for block in body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    with bb.dataflow():
                        self._emit_block(bb, block, dataflow=True)
                else:
                    self._emit_block(bb, block, dataflow=False)
            bb.emit_func_output(self._rebuild(body.body))
        return bb.get()[self.name]

    def _emit_block(self, bb: relax.BlockBuilder, block, dataflow: bool) -> None:
        for binding in block.bindings:
            if isinstance(binding, relax.MatchCast):
                raise TargetError(f"NarrowInt64: function '{self.name}' has a match_cast on "
                                  f"'{binding.var.name}', which this pass does not rewrite")
            name = binding.var.name
            new = self._after(bb, bb.emit(self._rebuild(binding.value), name_hint=name))
            if dataflow and not isinstance(binding.var, relax.DataflowVar):
                new = bb.emit_output(new, name_hint=name)  # the block's outputs leave as non-dataflow vars
            self.remap[binding.var] = new

    def _after(self, bb: relax.BlockBuilder, var):
        """A call that still yields int64 (argmax, shape_to_tensor ...) is narrowed right after it."""
        if _tensor_dtype(var.ty) == _I64:
            return bb.emit(relax.op.astype(var, _I32))
        if _has_int64(var.ty):
            raise TargetError(f"NarrowInt64: function '{self.name}': '{var.name}' is a tuple holding int64 "
                              f"tensors, which the vulkan target cannot store")
        return var

    def _rebuild(self, expr):
        if isinstance(expr, tvm.ir.Var):
            return self.remap.get(expr, expr)
        if isinstance(expr, tvm.ir.expr.GenericConst) and _tensor_dtype(expr.ty) == _I64:
            values = expr.value.numpy()
            info = np.iinfo(np.int32)
            if values.size and (values.min() < info.min or values.max() > info.max):
                raise TargetError(f"NarrowInt64: function '{self.name}' has an int64 constant with values in "
                                  f"[{values.min()}, {values.max()}], outside int32")
            return relax.const(values.astype(np.int32))
        if isinstance(expr, tvm.ir.Tuple):
            return relax.Tuple([self._rebuild(f) for f in expr.fields])
        if isinstance(expr, tvm.ir.TupleGetItem):
            return relax.TupleGetItem(self._rebuild(expr.tuple_value), expr.index)
        if isinstance(expr, tvm.ir.Call):
            args = [self._rebuild(a) for a in expr.args]
            attrs = expr.attrs
            if isinstance(expr.op, tvm.ir.Op):
                attrs = _narrow_attrs(attrs) or attrs
            ty_args = [relax.TensorType(t.shape, _I32) if _tensor_dtype(t) == _I64 else t for t in expr.ty_args]
            return relax.Call(expr.op, args, attrs, ty_args)
        if isinstance(expr, (relax.If, relax.Function, relax.SeqExpr)):
            raise TargetError(f"NarrowInt64: function '{self.name}' has a {type(expr).__name__}, "
                              f"which this pass does not rewrite")
        return expr


def _uses_int64(func: relax.Function) -> bool:
    found = []

    def visit(e):
        ty = getattr(e, "ty", None)
        if ty is not None and _has_int64(ty):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return bool(found)


def narrow_int64_module(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with the int64 tensors of its Relax functions narrowed to int32 (see the module docstring).

    The plain-function form: a :class:`TargetError` reaches the caller as itself (through the pass object,
    TVM's FFI turns it into a RuntimeError carrying the same message).
    """
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and _uses_int64(func):
            updates[gv] = _Narrower(func, gv.name_hint).run()
    if not updates:
        return mod
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        out[gv] = func
    return out


@tvm.transform.module_pass(opt_level=0, name="NarrowInt64")
def narrow_int64(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """NarrowInt64 as a TVM pass (see :func:`narrow_int64_module`)."""
    return narrow_int64_module(mod)
