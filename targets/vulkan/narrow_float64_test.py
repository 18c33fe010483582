"""NarrowFloat64: float64 parameters, constants and dtype attributes become float32; the graph before and after,
and its numerics against numpy in float64."""

import numpy as np
import pytest
import tvm
from tvm import relax

from aglmc.errors import TargetError
from aglmc.targets.vulkan.narrow_float64 import narrow_float64, narrow_float64_module
from aglmc.targets.vulkan.narrow_int64 import narrow_int64
from aglmc.targets.vulkan.narrow_int64_test import _dtypes


def _module(const_value=3.0):
    """main(x: f32[4, 8], s: f64[4, 1]) -> (f32, f64): x / s rounded in float64, as per-token quantization does."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 8], "float32"))
    s = relax.Var("s", relax.TensorType([4, 1], "float64"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            wide = bb.emit(relax.op.astype(x, "float64"))
            step = bb.emit(relax.op.multiply(s, relax.const(const_value, "float64")))
            q = bb.emit(relax.op.round(relax.op.divide(wide, step)))
            back = bb.emit(relax.op.astype(q, "float32"))
            gv = bb.emit_output(relax.Tuple([back, q]))
        bb.emit_func_output(gv)
    return bb.get()


def _run(mod, *args):
    mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]


def test_float64_tensors_become_float32_and_round_the_same():
    before = _module()
    print(before)
    assert _dtypes(before["main"]) == {"float32", "float64"}
    after = narrow_float64(before)
    print(after)
    func = after["main"]
    assert _dtypes(func) == {"float32"}
    assert [str(p.ty.dtype) for p in func.params] == ["float32", "float32"]
    assert [str(f.dtype) for f in func.body.body.ty.fields] == ["float32", "float32"]

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 8)) * 50).astype(np.float32)
    s = rng.uniform(0.1, 1.0, (4, 1))
    want = np.round(x.astype(np.float64) / (s * 3.0))
    got_back, got_q = _run(after, x, s.astype(np.float32))
    # float32 may put a value on the other side of a .5 tie than float64 does: none here
    assert np.array_equal(got_back, want.astype(np.float32)) and np.array_equal(got_q, want.astype(np.float32))


@pytest.mark.parametrize("narrow", [narrow_float64, narrow_int64], ids=["NarrowFloat64", "NarrowInt64"])
def test_a_module_with_nothing_to_narrow_is_returned_as_is(narrow):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(relax.op.exp(x))
        bb.emit_func_output(gv)
    mod = bb.get()
    assert narrow(mod).same_as(mod)


def test_a_constant_outside_float32_is_an_error():
    with pytest.raises(TargetError, match=r"NarrowFloat64: function 'main' has a float64 constant of magnitude "
                                          r"1e\+300"):
        narrow_float64_module(_module(const_value=1e300))
    # infinities stay infinities (masks)
    assert _dtypes(narrow_float64_module(_module(const_value=float("inf")))["main"]) == {"float32"}
