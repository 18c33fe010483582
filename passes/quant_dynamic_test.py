"""quantize_dynamic on FX and ONNX: one run-time quantization per activation tensor (shared by the layers that
read it), int8 weights per channel, float outputs; the error bounded on seeded data."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.quant_spec import sqnr_db
from aglmc.passes.select import fx_op_name, make_selector

CHOOSE = "quantized_decomposed.choose_qparams.tensor"
QT, DQT = "quantized_decomposed.quantize_per_tensor.tensor", "quantized_decomposed.dequantize_per_tensor.tensor"
DQC = "quantized_decomposed.dequantize_per_channel"


class _Attn(torch.nn.Module):
    """q, k, v read one hidden state (one run-time quantization serves all three); q @ kᵀ has no weight."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 16)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)
        return self.out(att @ self.v(x))


def _ctx(kind):
    return PassContext(selects=make_selector(kind), example_inputs={"x": np.zeros((1, 8, 16), np.float32)})


def _ops(gm):
    return Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")


def test_fx_dynamic_counts_order_and_sqnr():
    torch.manual_seed(0)
    net = _Attn().eval()
    gm = torch.export.export(net, (torch.zeros(1, 8, 16),)).module()
    result = get_pass("quantize_dynamic")().run("fx", gm, _ctx("fx"))
    ops = _ops(gm)
    # x (read by q, k, v) and the attention output (read by out): two run-time quantizations, four int8 weights
    assert ops[CHOOSE] == 2 and ops[QT] == 2 and ops[DQT] == 2 and ops[DQC] == 4
    assert ops["aten.matmul"] == 2  # activation x activation products stay float
    for linear in [n for n in gm.graph.nodes if fx_op_name(n) == "aten.linear"]:
        x, w = linear.args[:2]
        assert fx_op_name(x) == DQT and fx_op_name(x.args[0]) == QT and fx_op_name(w) == DQC
        assert fx_op_name(x.args[0].args[1].args[0]) == CHOOSE  # scale = getitem(choose_qparams(x), 0)
    assert result.summary == "quantized 4 layer(s) to int8 (dynamic activations)"
    x = torch.randn(4, 1, 8, 16)
    with torch.no_grad():
        ref = np.concatenate([net(x[i]).numpy() for i in range(4)])
        got = np.concatenate([gm(x[i]).numpy() for i in range(4)])
    assert sqnr_db(ref, got) > 30


def test_onnx_dynamic_is_dynamicquantizelinear_onnxruntime_runs():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = gs.import_onnx(model)
    get_pass("quantize_dynamic")().run("onnx", g, _ctx("onnx"))
    quantized = gs.export_onnx(g)
    onnx.checker.check_model(quantized)
    assert [n.op_type for n in quantized.graph.node if n.op_type != "DequantizeLinear"] == [
        "DynamicQuantizeLinear", "MatMul", "Relu", "DynamicQuantizeLinear", "MatMul"]
    assert Counter(n.op_type for n in quantized.graph.node)["DequantizeLinear"] == 4  # 2 activations, 2 weights
    dq_w = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("quantized_1")
            or n.op_type == "DequantizeLinear" and "W_quantized" in n.input[0]]
    assert all(next(a.i for a in n.attribute if a.name == "axis") == 1 for n in dq_w)  # x @ W: columns
    x = rng.standard_normal((8, 1, 16)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, quantized)]
    ref, got = ([s.run(None, {"x": x[i]})[0] for i in range(8)] for s in run)
    assert sqnr_db(np.concatenate(ref), np.concatenate(got)) > 30


def test_fx_per_token_scales_each_row():
    torch.manual_seed(0)
    net = _Attn().eval()
    gm = torch.export.export(net, (torch.zeros(1, 8, 16),)).module()
    result = get_pass("quantize_dynamic")(granularity="per_token").run("fx", gm, _ctx("fx"))
    ops = _ops(gm)
    assert ops["quantized_decomposed.choose_qparams_per_token_asymmetric"] == 2
    assert ops["quantized_decomposed.quantize_per_token"] == 2 and ops["quantized_decomposed.dequantize_per_token"] == 2
    assert "a int8 asym per-token dynamic" in result.details[0]
    # one token 100x louder than the rest costs the others nothing (per tensor it would)
    x = torch.randn(1, 8, 16)
    x[0, 3] *= 100
    per_tensor = torch.export.export(net, (torch.zeros(1, 8, 16),)).module()
    get_pass("quantize_dynamic")().run("fx", per_tensor, _ctx("fx"))
    with torch.no_grad():
        ref, tok, ten = net(x).numpy(), gm(x).numpy(), per_tensor(x).numpy()
    quiet = [i for i in range(8) if i != 3]
    assert sqnr_db(ref[0, quiet], tok[0, quiet]) > sqnr_db(ref[0, quiet], ten[0, quiet]) + 10


def test_per_token_is_refused_on_onnx():
    import pytest

    from aglmc.errors import PassError

    with pytest.raises(PassError, match="per-token dynamic quantization is for PyTorch models"):
        get_pass("quantize_dynamic")(granularity="per_token").scheme("onnx")
