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


def _has_dtype(ty, dtype: str) -> bool:
    if isinstance(ty, relax.TensorType):
        return str(ty.dtype) == dtype
    if isinstance(ty, tvm.ir.TupleType):
        return any(_has_dtype(t, dtype) for t in ty.fields)
    return False


def _narrow_attrs(attrs, wide: str, narrow: str):
    """``attrs`` with every ``wide`` dtype field set to ``narrow`` (same node type), or None when there is none."""
    if attrs is None:
        return None
    info = getattr(type(attrs), "__tvm_ffi_type_info__", None)
    if info is None:
        return None
    fields = {f.name: getattr(attrs, f.name) for f in info.fields}
    if not any(k in _DTYPE_FIELDS and v is not None and str(v) == wide for k, v in fields.items()):
        return None
    fields = {k: (narrow if k in _DTYPE_FIELDS and v is not None and str(v) == wide else v)
              for k, v in fields.items()}
    return tvm.ir.make_node(info.type_key, **fields)


def _int32_constant(values: np.ndarray, where: str) -> np.ndarray:
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise TargetError(f"NarrowInt64: {where} has an int64 constant with values in "
                          f"[{values.min()}, {values.max()}], outside int32")
    return values.astype(np.int32)


class Narrower:
    """Rebuilds one flat Relax function with its ``wide`` tensors stored as ``narrow`` (see the module
    docstring); ``constant(values, where)`` narrows a constant or raises. NarrowFloat64 uses it too."""

    def __init__(self, func: relax.Function, name: str, wide: str = _I64, narrow: str = _I32,
                 constant=_int32_constant, pass_name: str = "NarrowInt64"):
        self.func = func
        self.name = name
        self.wide, self.narrow, self.constant, self.pass_name = wide, narrow, constant, pass_name
        self.remap: Dict[tvm.ir.Var, relax.Expr] = {}

    def run(self) -> relax.Function:
        bb = relax.BlockBuilder()
        params: List[relax.Var] = []
        for p in self.func.params:
            if _tensor_dtype(p.ty) == self.wide:
                q = relax.Var(p.name, relax.TensorType(p.ty.shape, self.narrow))
                self.remap[p] = q
                params.append(q)
            else:
                params.append(p)
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError(f"{self.pass_name}: function '{self.name}' is not in binding-block form")
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
                raise TargetError(f"{self.pass_name}: function '{self.name}' has a match_cast on "
                                  f"'{binding.var.name}', which this pass does not rewrite")
            name = binding.var.name
            new = self._after(bb, bb.emit(self._rebuild(binding.value), name_hint=name))
            if dataflow and not isinstance(binding.var, relax.DataflowVar):
                new = bb.emit_output(new, name_hint=name)  # the block's outputs leave as non-dataflow vars
            self.remap[binding.var] = new

    def _after(self, bb: relax.BlockBuilder, var):
        """A call that still yields a wide tensor (argmax, shape_to_tensor ...) is narrowed right after it."""
        if _tensor_dtype(var.ty) == self.wide:
            return bb.emit(relax.op.astype(var, self.narrow))
        if _has_dtype(var.ty, self.wide):
            raise TargetError(f"{self.pass_name}: function '{self.name}': '{var.name}' is a tuple holding "
                              f"{self.wide} tensors, which the vulkan target cannot store")
        return var

    def _rebuild(self, expr):
        if isinstance(expr, tvm.ir.Var):
            return self.remap.get(expr, expr)
        if isinstance(expr, tvm.ir.expr.GenericConst) and _tensor_dtype(expr.ty) == self.wide:
            return relax.const(self.constant(expr.value.numpy(), f"function '{self.name}'"))
        if isinstance(expr, tvm.ir.Tuple):
            return relax.Tuple([self._rebuild(f) for f in expr.fields])
        if isinstance(expr, tvm.ir.TupleGetItem):
            return relax.TupleGetItem(self._rebuild(expr.tuple_value), expr.index)
        if isinstance(expr, tvm.ir.Call):
            args = [self._rebuild(a) for a in expr.args]
            attrs = expr.attrs
            if isinstance(expr.op, tvm.ir.Op):
                attrs = _narrow_attrs(attrs, self.wide, self.narrow) or attrs
            ty_args = [relax.TensorType(t.shape, self.narrow) if _tensor_dtype(t) == self.wide else t
                       for t in expr.ty_args]
            return relax.Call(expr.op, args, attrs, ty_args)
        if isinstance(expr, (relax.If, relax.Function, relax.SeqExpr)):
            raise TargetError(f"{self.pass_name}: function '{self.name}' has a {type(expr).__name__}, "
                              f"which this pass does not rewrite")
        return expr


def uses_dtype(func: relax.Function, dtype: str) -> bool:
    found = []

    def visit(e):
        ty = getattr(e, "ty", None)
        if ty is not None and _has_dtype(ty, dtype):
            found.append(e)

    relax.analysis.post_order_visit(func, visit)
    return bool(found)


def narrow_module(mod: tvm.IRModule, wide: str, narrower) -> tvm.IRModule:
    """``mod`` with ``narrower(func, name)`` applied to each Relax function that has a ``wide`` tensor."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and uses_dtype(func, wide):
            updates[gv] = narrower(func, gv.name_hint).run()
    if not updates:
        return mod
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        out[gv] = func
    return out


def narrow_int64_module(mod: tvm.IRModule) -> tvm.IRModule:
    """The module with the int64 tensors of its Relax functions narrowed to int32 (see the module docstring).

    The plain-function form: a :class:`TargetError` reaches the caller as itself (through the pass object,
    TVM's FFI turns it into a RuntimeError carrying the same message).
    """
    return narrow_module(mod, _I64, Narrower)


@tvm.transform.module_pass(opt_level=0, name="NarrowInt64")
def narrow_int64(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """NarrowInt64 as a TVM pass (see :func:`narrow_int64_module`)."""
    return narrow_int64_module(mod)
