"""fold_batchnorm on FX and ONNX: the graph before and after, and the numerics on seeded inputs."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import helper

from aglmc.passes._testing import fx_ops, onnx_model, run_onnx, run_pass


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
    before = fx_ops(gm)
    assert before["aten.batch_norm"] == 4 and before["aten.conv2d"] == 3

    result = run_pass("fold_batchnorm", "fx", gm)

    after = fx_ops(gm)
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
    result = run_pass("fold_batchnorm", "fx", gm, ops=("linear",))
    assert result.summary == "folded 1 batch norm(s), left 3"
    assert fx_ops(gm)["aten.batch_norm"] == 3
    torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


def _onnx_conv_bn_model(rng):
    inits = {
        "W": rng.standard_normal((8, 3, 3, 3)), "B": rng.standard_normal(8),
        "gamma": rng.uniform(0.5, 1.5, 8), "beta": rng.uniform(-0.5, 0.5, 8),
        "mean": rng.uniform(-1, 1, 8), "var": rng.uniform(0.5, 2, 8),
        "W2": rng.standard_normal((10, 8 * 4 * 4)), "B2": rng.standard_normal(10),
        "g2": rng.uniform(0.5, 1.5, 10), "b2": rng.uniform(-0.5, 0.5, 10),
        "m2": rng.uniform(-1, 1, 10), "v2": rng.uniform(0.5, 2, 10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W2", "B2"], ["g"], name="fc", transB=1),
        helper.make_node("BatchNormalization", ["g", "g2", "b2", "m2", "v2"], ["y"], name="bn_fc"),
    ]
    return onnx_model(nodes, {"x": [2, 3, 6, 6]}, {"y": [2, 10]}, inits)


def test_fold_batchnorm_onnx_before_after_and_numerics():
    rng = np.random.default_rng(0)
    model = _onnx_conv_bn_model(rng)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    graph = gs.import_onnx(model)
    assert [n.op for n in graph.nodes] == ["Conv", "BatchNormalization", "Relu", "Flatten", "Gemm",
                                           "BatchNormalization"]

    result = run_pass("fold_batchnorm", "onnx", graph)

    assert result.changed and result.summary == "folded 2 batch norm(s)"
    assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm"]
    folded = gs.export_onnx(graph)
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(run_onnx(folded, x=x)[0], run_onnx(model, x=x)[0], rtol=1e-5, atol=1e-5)
