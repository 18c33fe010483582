"""NarrowInt64: int64 parameters, constants and dtype attributes become int32; results unchanged where they fit."""

import pytest
import tvm
from tvm import relax

from aglmc.errors import TargetError
from aglmc.targets.vulkan.narrow_int64 import narrow_int64, narrow_int64_module


def _module(const_value=5):
    bb = relax.BlockBuilder()
    ids = relax.Var("ids", relax.TensorType([1, 3], "int64"))
    table = relax.Var("table", relax.TensorType([10, 4], "float32"))
    with bb.function("main", [ids, table]):
        with bb.dataflow():
            pos = bb.emit(relax.op.arange(0, 3, 1, "int64"))
            shifted = bb.emit(relax.op.add(ids, relax.const(const_value, "int64")))
            rows = bb.emit(relax.op.take(table, relax.op.reshape(shifted, [3]), axis=0))
            best = bb.emit(relax.op.argmax(rows, axis=1))
            gv = bb.emit_output(relax.Tuple([rows, pos, best]))
        bb.emit_func_output(gv)
    return bb.get()


def _dtypes(func):
    found = set()
    relax.analysis.post_order_visit(func, lambda e: found.add(str(e.ty.dtype))
                                    if isinstance(getattr(e, "ty", None), relax.TensorType) else None)
    return found


def test_params_constants_and_dtype_attributes_become_int32():
    before = _module()
    assert "int64" in _dtypes(before["main"])
    after = narrow_int64(before)["main"]
    assert str(after.params[0].ty.dtype) == "int32" and str(after.params[1].ty.dtype) == "float32"
    calls = []
    relax.analysis.post_order_visit(after, lambda e: calls.append(e.op.name)
                                    if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op) else None)
    # argmax still yields int64 (no dtype attribute): it is narrowed right after, by one astype
    assert calls.count("relax.argmax") == 1 and calls.count("relax.astype") == 1
    ret = after.body.body.ty
    assert [str(f.dtype) for f in ret.fields] == ["float32", "int32", "int32"]
    # the only int64 left is argmax's own result, consumed by the astype
    assert _dtypes(after) == {"float32", "int32", "int64"}


def test_a_constant_outside_int32_is_an_error():
    with pytest.raises(TargetError, match="outside int32"):
        narrow_int64_module(_module(const_value=2**40))
