"""quantize_weights: weight-only int8 per channel and group-wise int4 on FX; int8 on ONNX. Counted, ordered,
and the error bounded on seeded inputs."""

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from aglmc.errors import PassError
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.quant_spec import sqnr_db
from aglmc.passes.select import fx_op_name, make_selector

DQC = "quantized_decomposed.dequantize_per_channel"
DQG = "quantized_decomposed.dequantize_per_channel_group"


def _mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 48), torch.nn.SiLU(),
                              torch.nn.Linear(48, 10)).eval()
    return net, torch.export.export(net, (torch.zeros(2, 64),)).module()


def _ctx(kind="fx", path=None):
    return PassContext(selects=make_selector(kind, ("linear",), path),
                       example_inputs={"x": np.zeros((2, 64), np.float32)})


def _sqnr(net, gm):
    x = torch.randn(8, 2, 64)
    with torch.no_grad():
        return sqnr_db(np.concatenate([net(b).numpy() for b in x]), np.concatenate([gm(b).numpy() for b in x]))


def test_int4_groups_of_32():
    net, gm = _mlp()
    result = get_pass("quantize_weights")(bits=4, group_size=32).run("fx", gm, _ctx())
    ops = Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")
    # 64 and 96 inputs split into groups of 32; the last layer's 48 inputs do not: it stays float, and says why
    assert ops[DQG] == 2 and ops[DQC] == 0 and ops["aten.linear"] == 3
    assert result.summary == "quantized 2 weight(s) to int4 groups of 32 (weight-only)"
    assert result.details[0] == "float: 4 (linear_2) [linear]: 48 inputs is not a multiple of group_size 32"
    first = next(n for n in gm.graph.nodes if fx_op_name(n) == DQG)
    q, scales = getattr(gm, first.args[0].target), getattr(gm, first.args[1].target)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert tuple(scales.shape) == (96, 2) and first.args[3:7] == (-8, 7, torch.int8, 32)
    assert 15 < _sqnr(net, gm) < 30


def test_int8_per_channel_and_keep_output_float():
    net, gm = _mlp()
    result = get_pass("quantize_weights")(keep_output_float=True).run("fx", gm, _ctx())
    ops = Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")
    assert ops[DQC] == 2 and "keep_output_float" in result.details[0]
    assert _sqnr(net, gm) > 35


def test_onnx_int8_weights_and_int4_refused():
    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc", transB=1)], "fc",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              [numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32), "W"),
                               numpy_helper.from_array(np.zeros(8, np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = gs.import_onnx(model)
    get_pass("quantize_weights")().run("onnx", g, _ctx("onnx"))
    assert [n.op for n in g.nodes] == ["DequantizeLinear", "Gemm"]
    with pytest.raises(PassError, match="group-wise int4"):
        get_pass("quantize_weights")(bits=4, group_size=32).run("onnx", gs.import_onnx(model), _ctx("onnx"))
