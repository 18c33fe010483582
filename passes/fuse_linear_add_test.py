"""fuse_linear_add on FX and ONNX: the graph before and after, the reasons it declines, the numerics."""


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from aglmc.passes._testing import fx_ops, run_onnx, run_pass
from aglmc.passes.select import fx_op_name
from onnx import TensorProto, helper, numpy_helper


def _run(kind, graph, ops=()):
    return run_pass("fuse_linear_add", kind, graph, ops)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = torch.nn.Linear(8 * 4 * 4, 16)
        self.proj = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 4)
        self.register_buffer("shift", torch.randn(1, 8, 1, 1))
        self.register_buffer("offset", torch.randn(16))
        self.register_buffer("table", torch.randn(2, 4))

    def forward(self, x):
        y = torch.relu(self.conv(x) + self.shift)              # applied: conv bias created
        y = self.offset + self.fc(y.flatten(1))                # applied: constant first
        z = self.proj(y)
        y = torch.relu(z + y)                                  # declined: a residual, not a constant
        w = self.out(y)
        return (w - 0.5) * 2, self.out(y) + self.table         # applied (scalar sub); declined (varies on batch)


def test_fuse_linear_add_fx_before_after_and_numerics():
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(2, 3, 4, 4)
    reference = net(x)
    gm = torch.export.export(net, (x,)).module()
    before = fx_ops(gm)
    assert (before["aten.add.Tensor"], before["aten.sub.Tensor"]) == (4, 1)

    result = _run("fx", gm)

    after = fx_ops(gm)
    assert (after["aten.add.Tensor"], after["aten.sub.Tensor"]) == (2, 0)
    assert result.summary == "folded 3 add(s) into biases, declined 2"
    assert result.details[0].startswith("applied at conv + add")
    assert result.details[1].startswith("applied at fc + add")
    assert "adds an activation" in result.details[2] and result.details[2].startswith("declined at proj + add")
    assert result.details[3].startswith("applied at out + sub")
    assert result.details[4].endswith("constant of shape [2, 4] varies along output axis 0, not only the channel "
                                      "axis")
    for got, want in zip(gm(x), reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    conv = next(n for n in gm.graph.nodes if fx_op_name(n) == "aten.conv2d")
    assert conv.args[2] is not None  # the conv has a bias now


def test_fuse_linear_add_fx_respects_selector_and_shared_outputs():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x, img):
            y = self.fc(x)
            return y + 1.0, y * 2, self.conv(img) + 1.0

    torch.manual_seed(0)
    net = Shared().eval()
    args = (torch.randn(2, 4), torch.randn(1, 1, 3, 3))
    gm = torch.export.export(net, args).module()
    result = _run("fx", gm, ops=("linear",))
    assert result.details == ["declined at fc + add (add): aten.linear output has 2 readers"]
    result = _run("fx", gm, ops=("conv2d",))
    assert result.details == ["applied at conv + add (add_1)"]
    for got, want in zip(gm(*args), net(*args)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _onnx_model(rng):
    def const(name, arr):
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    inits = [
        const("Wc", rng.standard_normal((8, 3, 3, 3))), const("shift", rng.standard_normal((1, 8, 1, 1))),
        const("W1", rng.standard_normal((16, 32))), const("B1", rng.standard_normal(16)),
        const("c1", rng.standard_normal(16)),
        const("W2", rng.standard_normal((16, 10))), const("b2", rng.standard_normal(10)),
        const("W3", rng.standard_normal((10, 6))), const("b3", rng.standard_normal(6)),
        const("shape3d", np.zeros(0)),
    ]
    inits[-1] = numpy_helper.from_array(np.array([2, 1, 10], np.int64), "shape3d")
    nodes = [
        helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        helper.make_node("Add", ["c", "shift"], ["cs"], name="conv_shift"),
        helper.make_node("Relu", ["cs"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),  # [2, 8*2*2=32]
        helper.make_node("Gemm", ["f", "W1", "B1"], ["g"], name="fc1", transB=1),
        helper.make_node("Add", ["c1", "g"], ["g1"], name="fc1_shift"),
        helper.make_node("MatMul", ["g1", "W2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["h"], name="fc2_bias"),
        helper.make_node("Reshape", ["h", "shape3d"], ["h3"], name="to3d"),
        helper.make_node("MatMul", ["h3", "W3"], ["m3"], name="fc3"),
        helper.make_node("Add", ["m3", "b3"], ["y"], name="fc3_bias"),
    ]
    graph = helper.make_graph(nodes, "adds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 6])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    return model



def test_fuse_linear_add_onnx_before_after_and_numerics():
    rng = np.random.default_rng(0)
    model = _onnx_model(rng)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    graph = gs.import_onnx(model)
    assert [n.op for n in graph.nodes].count("Add") == 4

    result = _run("onnx", graph)

    assert result.summary == "folded 3 add(s) into biases, declined 1"
    assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm", "Gemm", "Reshape", "MatMul", "Add"]
    assert result.details == [
        "applied at conv + Add (conv_shift)",
        "applied at fc1 + Add (fc1_shift)",
        "applied at fc2 + Add (fc2_bias)",
        "declined at fc3 + Add (fc3_bias): MatMul input is 3-D; Gemm takes 2-D (left as MatMul + Add)",
    ]
    fused = gs.export_onnx(graph)
    onnx.checker.check_model(fused)
    np.testing.assert_allclose(run_onnx(fused, x=x)[0], run_onnx(model, x=x)[0], rtol=1e-5, atol=1e-4)
