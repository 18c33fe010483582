"""WidenBool and RunOnInt32: no bool/8-bit tensor is left in storage once fusion has run."""

import numpy as np
import tvm
from tvm import relax

from aglmc.targets.vulkan.widen_bool import run_on_int32, widen_bool


def _masked(bb_target="int32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 4], "float32"))
    keep = relax.Var("keep", relax.TensorType([4, 4], "bool"))
    causal = relax.const(np.tril(np.ones((4, 4), bool)))
    with bb.function("main", [x, keep]):
        with bb.dataflow():
            pos = bb.emit(relax.op.greater(x, relax.const(0.0)))
            both = bb.emit(relax.op.logical_and(pos, keep))
            masked = bb.emit(relax.op.where(causal, x, relax.const(-1.0)))
            rows = bb.emit(relax.op.max(relax.op.astype(both, "int8"), axis=[1]))
            gv = bb.emit_output(relax.Tuple([masked, both, rows]))
        bb.emit_func_output(gv)
    return bb.get()


def _lower(mod):
    seq = tvm.transform.Sequential([run_on_int32, relax.transform.LegalizeOps(),
                                    relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                                    widen_bool, relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FuseOps(), relax.transform.FuseTIR()])
    with tvm.target.Target("llvm"):
        return seq(mod)


def _stored_dtypes(mod):
    """dtypes of every tensor a Relax binding, parameter or constant of main holds."""
    found = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: found.add(str(e.ty.dtype))
                                    if isinstance(getattr(e, "ty", None), relax.TensorType) else None)
    return found


def test_without_the_passes_bool_and_int8_tensors_are_stored():
    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR()])
    with tvm.target.Target("llvm"):
        assert {"bool", "int8"} <= _stored_dtypes(seq(_masked()))


def test_after_fusion_only_float32_and_int32_are_stored():
    lowered = _lower(_masked())
    assert _stored_dtypes(lowered) == {"float32", "int32"}
    main = lowered["main"]
    assert [str(p.ty.dtype) for p in main.params] == ["float32", "int32"]
    assert [str(f.dtype) for f in main.body.body.ty.fields] == ["float32", "int32", "int32"]


def test_results_are_unchanged():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 4)).astype("float32")
    keep = rng.random((4, 4)) > 0.5

    def run(mod, args):
        ex = tvm.compile(mod, target="llvm")
        vm = relax.VirtualMachine(ex, tvm.cpu())
        return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]

    want = run(_masked(), [x, keep])
    got = run(_lower(_masked()), [x, keep.astype("int32")])
    assert np.array_equal(got[0], want[0])
    assert np.array_equal(got[1].astype(bool), want[1])
    assert np.array_equal(got[2].astype(np.int8), want[2])
