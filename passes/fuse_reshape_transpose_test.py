"""fuse_reshape_transpose on FX and ONNX: chains before and after, declined sites, outputs unchanged."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from aglmc.passes._testing import run_onnx, run_pass
from aglmc.passes.select import fx_op_kind
from onnx import TensorProto, helper, numpy_helper


def _kinds(gm):
    return Counter(fx_op_kind(n) for n in gm.graph.nodes if n.op == "call_function")


def _run(kind, graph, ops=()):
    return run_pass("fuse_reshape_transpose", kind, graph, ops)


class _Net(torch.nn.Module):
    def forward(self, x):  # x: [2, 3, 4, 4]
        a = x.view(2, 3, 16).reshape(2, 48)             # reshape of a reshape -> one reshape
        b = x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)   # the two permutes cancel
        c = x.transpose(1, 2).transpose(2, 3)           # -> one permute [0, 2, 3, 1]
        d = torch.relu(x).transpose(1, 2).reshape(2, 4, 12)  # transpose then reshape: left alone
        return a * 2, b + 1, c, d


def test_fuse_reshape_transpose_fx_before_after_and_numerics():
    net = _Net()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = net(x)
    gm = torch.export.export(net, (x,)).module()
    before = _kinds(gm)
    assert (before["reshape"], before["transpose"]) == (3, 5)

    result = _run("fx", gm)

    after = _kinds(gm)
    assert (after["reshape"], after["transpose"]) == (2, 2)
    assert result.summary == "collapsed 3 reshape/transpose site(s)"
    assert [d.split(": ", 1)[1] for d in result.details] == [
        "reshape of a reshape -> one reshape to [2, 48]",
        "transposes cancel out",
        "two transposes -> one permute [0, 2, 3, 1]",
    ]
    for got, want in zip(gm(x), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fuse_reshape_transpose_fx_selector():
    gm = torch.export.export(_Net(), (torch.randn(2, 3, 4, 4),)).module()
    result = _run("fx", gm, ops=("transpose",))
    assert result.summary == "collapsed 2 reshape/transpose site(s)"
    assert _kinds(gm)["reshape"] == 3


def _onnx_model():
    shape = numpy_helper.from_array(np.array([2, 48], np.int64), "s48")
    zero = numpy_helper.from_array(np.array([0, 48], np.int64), "s0")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=2),                  # [6, 16]
        helper.make_node("Reshape", ["f", "s48"], ["a"], name="reshape_a"),              # chain -> Reshape(x)
        helper.make_node("Flatten", ["x"], ["g"], name="flat_g", axis=1),
        helper.make_node("Reshape", ["g", "s0"], ["z"], name="reshape_zero"),            # 0 entry: declined
        helper.make_node("Transpose", ["x"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 3, 1, 2]),     # cancels
        helper.make_node("Relu", ["t2"], ["b"], name="relu"),
        helper.make_node("Transpose", ["x"], ["u1"], name="u1", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["u1"], ["c"], name="u2", perm=[0, 1, 3, 2]),      # -> [0, 2, 3, 1]
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "chains", [helper.make_tensor_value_info("x", f32, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("a", f32, [2, 48]),
                               helper.make_tensor_value_info("z", f32, [2, 48]),
                               helper.make_tensor_value_info("b", f32, [2, 3, 4, 4]),
                               helper.make_tensor_value_info("c", f32, [2, 4, 4, 3])], [shape, zero])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    return model



def test_fuse_reshape_transpose_onnx_before_after_and_numerics():
    model = _onnx_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    graph = gs.import_onnx(model)

    result = _run("onnx", graph)

    assert result.summary == "collapsed 3 reshape/transpose site(s), declined 1"
    assert result.details == [
        "applied at reshape_a: Flatten then Reshape -> one Reshape to [2, 48]",
        "declined at reshape_zero: target shape [0, 48] has 0 (copy the input's dimension) entries",
        "applied at t2: identity transpose removed",
        "applied at u2: two Transposes -> one Transpose [0, 2, 3, 1]",
    ]
    assert Counter(n.op for n in graph.nodes) == Counter({"Reshape": 2, "Flatten": 1, "Relu": 1, "Transpose": 1})
    fused = gs.export_onnx(graph)
    onnx.checker.check_model(fused)
    for got, want in zip(run_onnx(fused, x=x), run_onnx(model, x=x)):
        np.testing.assert_array_equal(got, want)
