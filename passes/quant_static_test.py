"""quantize_static on FX and ONNX: Q/DQ counted per pattern and in order (pt2e's node_occurrence), then the
error bounded (SQNR) on seeded data. The trained-model accuracy check is tests/test_quant_digits.py."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from aglmc.compiler.data import Dataset
from aglmc.errors import PassError
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.quant_spec import sqnr_db
from aglmc.passes.select import fx_op_name, make_selector

Q, DQ = "quantized_decomposed.quantize_per_tensor", "quantized_decomposed.dequantize_per_tensor"
DQC = "quantized_decomposed.dequantize_per_channel"


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.nn.functional.max_pool2d(torch.relu(self.conv2(y)), 2)
        return self.fc(y.flatten(1))


def _data(n=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _ctx(kind, ops=(), name="x", path=None):
    return PassContext(selects=make_selector(kind, ops, path),
                       datasets={"calib": Dataset("calib", {name: _data()}, None)},
                       example_inputs={name: np.zeros((1, 3, 8, 8), np.float32)}, log=lambda *_: None)


def _fx():
    torch.manual_seed(0)
    net = _Net().eval()
    return net, torch.export.export(net, (torch.zeros(1, 3, 8, 8),)).module()


def _ops(gm):
    return [fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function" and not fx_op_name(n).startswith("_")]


def _sqnr_fx(net, gm, seed=1):
    x = torch.from_numpy(_data(16, seed))
    with torch.no_grad():
        ref = np.concatenate([net(x[i:i + 1]).numpy() for i in range(16)])
        got = np.concatenate([gm(x[i:i + 1]).numpy() for i in range(16)])
    return sqnr_db(ref, got)


def test_fx_qdq_counts_order_and_sqnr():
    net, gm = _fx()
    result = get_pass("quantize_static")(data="calib", samples=16, method="percentile").run("fx", gm, _ctx("fx"))
    counts = Counter(_ops(gm))
    # x, relu1, relu2 and the flattened max-pool (fc's input, sharing relu2's scale); the model output stays float
    assert counts[Q] == 4 and counts[DQ] == 4 and counts[DQC] == 3
    assert _ops(gm) == [Q, DQ, DQC, "aten.conv2d", "aten.relu", Q, DQ, DQC, "aten.conv2d", "aten.relu", Q, DQ,
                        "aten.max_pool2d", "aten.flatten.using_ints", Q, DQ, DQC, "aten.linear"]
    # each conv reads dequantize(quantize(x)) and dequantize_per_channel(int8 weight)
    for conv in [n for n in gm.graph.nodes if fx_op_name(n) in ("aten.conv2d", "aten.linear")]:
        x, w = conv.args[:2]
        assert fx_op_name(x) == DQ and fx_op_name(x.args[0]) == Q
        assert fx_op_name(w) == DQC and getattr(gm, w.args[0].target).dtype == torch.int8
    # fc's input reuses relu2's scale through max-pool and flatten (its own percentile would differ)
    scales = [n.args[1] for n in gm.graph.nodes if fx_op_name(n) == Q]
    assert scales[2] == scales[3]
    assert result.summary.startswith("quantized 3 layer(s) to int8 (static, percentile 99.99), 0 kept float")
    assert len(result.details) == 3 and "weight SQNR" in result.details[0] and "output SQNR" in result.details[0]
    assert _sqnr_fx(net, gm) > 30


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_fx_range_methods_bound_the_error(method):
    net, gm = _fx()
    get_pass("quantize_static")(data="calib", samples=16, method=method).run("fx", gm, _ctx("fx"))
    assert _sqnr_fx(net, gm) > 25


def test_fx_selector_and_keep_output_float():
    net, gm = _fx()
    result = get_pass("quantize_static")(data="calib", samples=8).run("fx", gm, _ctx("fx", ops=("conv2d",)))
    assert Counter(_ops(gm))[DQC] == 2  # the linear layer was not selected
    linear = next(n for n in gm.graph.nodes if fx_op_name(n) == "aten.linear")
    assert fx_op_name(linear.args[1]) != DQC
    assert result.summary.startswith("quantized 2 layer(s)")

    net, gm = _fx()
    result = get_pass("quantize_static")(data="calib", samples=8, keep_output_float=True).run("fx", gm, _ctx("fx"))
    assert Counter(_ops(gm))[DQC] == 2
    assert any(d.startswith("float: fc (linear)") and "keep_output_float" in d for d in result.details)


def test_fx_min_sqnr_keeps_sensitive_layers_float():
    net, gm = _fx()
    result = get_pass("quantize_static")(data="calib", samples=8, min_sqnr=200.0).run("fx", gm, _ctx("fx"))
    assert not result.changed or Counter(_ops(gm))[DQC] == 0
    assert sum(d.startswith("float:") and "sensitive" in d for d in result.details) == 3


def test_check_target_refuses_asymmetric_weights_on_arm():
    _, gm = _fx()
    with pytest.raises(PassError, match="target 'arm' has no fast kernel for this scheme: weights must be "
                                        "symmetric int8"):
        get_pass("quantize_static")(data="calib", weights_symmetric=False, check_target="arm").run(
            "fx", gm, _ctx("fx"))


# ---- ONNX ---------------------------------------------------------------------------------------------------
def _onnx_model(net):
    def const(name, t):
        return numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)

    inits = [const("W1", net.conv1.weight), const("B1", net.conv1.bias), const("W2", net.conv2.weight),
             const("B2", net.conv2.bias), const("W3", net.fc.weight), const("B3", net.fc.bias)]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_onnx_qdq_counts_order_and_onnxruntime_runs_it():
    torch.manual_seed(0)
    model = _onnx_model(_Net().eval())
    graph = gs.import_onnx(model)
    result = get_pass("quantize_static")(data="calib", samples=16).run("onnx", graph, _ctx("onnx"))
    quantized = gs.export_onnx(graph)
    onnx.checker.check_model(quantized)
    counts = Counter(n.op_type for n in quantized.graph.node)
    # activations as in FX (4 pairs); weights (3) and int32 biases (3) behind DequantizeLinear
    assert counts["QuantizeLinear"] == 4 and counts["DequantizeLinear"] == 4 + 3 + 3
    assert result.summary.startswith("quantized 3 layer(s) to int8")
    tensors = {t.name: t for n in graph.nodes for t in n.inputs}
    for node in [n for n in graph.nodes if n.op in ("Conv", "Gemm")]:
        x, w, b = node.inputs
        assert x.inputs[0].op == "DequantizeLinear" and x.inputs[0].inputs[0].inputs[0].op == "QuantizeLinear"
        assert w.inputs[0].op == "DequantizeLinear" and w.inputs[0].inputs[0].values.dtype == np.int8
        assert w.inputs[0].attrs["axis"] == 0
        assert b.inputs[0].op == "DequantizeLinear" and b.inputs[0].inputs[0].values.dtype == np.int32
    assert tensors  # graph walked
    x = _data(16, seed=1)
    assert sqnr_db(_ort(model, x), _ort(quantized, x)) > 30
    assert [o.name for o in quantized.graph.output] == ["y"]


def test_onnx_and_fx_agree():
    """The same schedule on both forms of one model: the same calibration, so the same numerics."""
    torch.manual_seed(0)
    net = _Net().eval()
    graph = gs.import_onnx(_onnx_model(net))
    get_pass("quantize_static")(data="calib", samples=16).run("onnx", graph, _ctx("onnx"))
    gm = torch.export.export(net, (torch.zeros(1, 3, 8, 8),)).module()
    get_pass("quantize_static")(data="calib", samples=16).run("fx", gm, _ctx("fx"))
    x = _data(16, seed=2)
    with torch.no_grad():
        fx_out = np.concatenate([gm(torch.from_numpy(x[i:i + 1])).numpy() for i in range(16)])
    onnx_out = _ort(gs.export_onnx(graph), x)
    assert sqnr_db(fx_out, onnx_out) > 40
