"""fold_batchnorm on FX and ONNX: the graph before and after, and the numerics on seeded inputs."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import fx_op_name, make_selector


def _fx_ops(gm):
    return Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.conv3 = torch.nn.Conv2d(8, 4, 1)  # its output also feeds a residual: left alone
        self.bn3 = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 16)
        self.bn4 = torch.nn.BatchNorm1d(16)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        z = self.conv3(y)
        y = self.bn3(z) + z
        return self.bn4(self.fc(y.flatten(1)))


def _seeded_net():
    torch.manual_seed(0)
    net = _Net()
    for bn in (net.bn, net.bn2, net.bn3, net.bn4):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_fold_batchnorm_fx_before_after_and_numerics():
    net = _seeded_net()
    x = torch.randn(2, 3, 6, 6)
    reference = net(x)
    gm = torch.export.export(net, (x,)).module()
    before = _fx_ops(gm)
    assert before["aten.batch_norm"] == 4 and before["aten.conv2d"] == 3

    result = get_pass("fold_batchnorm")().run("fx", gm, PassContext(selects=make_selector("fx")))

    after = _fx_ops(gm)
    assert result.changed and result.summary == "folded 3 batch norm(s), left 1"
    assert after["aten.batch_norm"] == 1  # bn3: conv3's output is also read by the residual add
    assert after["aten.conv2d"] == 3 and after["aten.linear"] == 1
    assert any("conv3" in d and "other users" in d for d in result.details)
    torch.testing.assert_close(gm(x), reference, rtol=1e-5, atol=1e-5)
    # the original module is untouched (the build verifies against it)
    torch.testing.assert_close(net(x), reference, rtol=0, atol=0)


def test_fold_batchnorm_fx_respects_selector():
    net = _seeded_net()
    x = torch.randn(1, 3, 6, 6)
    gm = torch.export.export(net, (x,)).module()
    result = get_pass("fold_batchnorm")().run("fx", gm, PassContext(selects=make_selector("fx", ops=("linear",))))
    assert result.summary == "folded 1 batch norm(s), left 3"
    assert _fx_ops(gm)["aten.batch_norm"] == 3
    torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


def _onnx_conv_bn_model(rng):
    def const(name, arr):
        return numpy_helper.from_array(arr.astype(np.float32), name)

    inits = [
        const("W", rng.standard_normal((8, 3, 3, 3))), const("B", rng.standard_normal(8)),
        const("gamma", rng.uniform(0.5, 1.5, 8)), const("beta", rng.uniform(-0.5, 0.5, 8)),
        const("mean", rng.uniform(-1, 1, 8)), const("var", rng.uniform(0.5, 2, 8)),
        const("W2", rng.standard_normal((10, 8 * 4 * 4))), const("B2", rng.standard_normal(10)),
        const("g2", rng.uniform(0.5, 1.5, 10)), const("b2", rng.uniform(-0.5, 0.5, 10)),
        const("m2", rng.uniform(-1, 1, 10)), const("v2", rng.uniform(0.5, 2, 10)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W2", "B2"], ["g"], name="fc", transB=1),
        helper.make_node("BatchNormalization", ["g", "g2", "b2", "m2", "v2"], ["y"], name="bn_fc"),
    ]
    graph = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_fold_batchnorm_onnx_before_after_and_numerics():
    rng = np.random.default_rng(0)
    model = _onnx_conv_bn_model(rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    graph = gs.import_onnx(model)
    assert [n.op for n in graph.nodes] == ["Conv", "BatchNormalization", "Relu", "Flatten", "Gemm",
                                           "BatchNormalization"]

    result = get_pass("fold_batchnorm")().run("onnx", graph, PassContext(selects=make_selector("onnx")))

    assert result.changed and result.summary == "folded 2 batch norm(s)"
    assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm"]
    folded = gs.export_onnx(graph)
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(_ort(folded, x), _ort(model, x), rtol=1e-5, atol=1e-5)
