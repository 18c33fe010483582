"""fuse_qdq on FX and ONNX: per pattern the ops before and after, the declined sites with their reason, and
outputs bit-identical on seeded inputs; end to end on a digits-like CNN quantized by quantize_static."""

import copy
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from aglmc.compiler.data import Dataset
from aglmc.passes._testing import fx_ops, run_onnx, run_pass
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import fx_op_name, make_selector

QD = torch.ops.quantized_decomposed
I8 = torch.int8
Q, DQ = "quantized_decomposed.quantize_per_tensor", "quantized_decomposed.dequantize_per_tensor"
QC, DQC = "quantized_decomposed.quantize_per_channel", "quantized_decomposed.dequantize_per_channel"
S = 0.05


def _q(x, s=S, z=3):
    return QD.quantize_per_tensor(x, s, z, -128, 127, I8)


def _dq(x, s=S, z=3):
    return QD.dequantize_per_tensor(x, s, z, -128, 127, I8)


def _qdq(x, s=S, z=3):
    return _dq(_q(x, s, z), s, z)


def _export(net, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    gm = torch.export.export(net, (x,)).module()
    return gm, copy.deepcopy(gm), x


def _assert_same_fx(gm, ref, x):
    with torch.no_grad():
        got, want = gm(x), ref(x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.dtype == w.dtype and torch.equal(g, w)


def _fx_qdq_ops(gm):
    ops = fx_ops(gm)
    return {k: v for k, v in ops.items() if k.startswith("quantized_decomposed") or k.startswith("aten.")}


# ---- FX -----------------------------------------------------------------------------------------------------
class _Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scales", torch.tensor([0.05, 0.1, 0.02]))
        self.register_buffer("zps", torch.tensor([0, 2, -1]))

    def forward(self, x):  # [1, 3, 3, 2]
        d = _qdq(x)
        a = _dq(_q(d))                    # the same parameters: Q(DQ(.)) is the identity
        b = _dq(_q(d, 0.1), 0.1)          # another scale: a real requantization, declined
        qc = QD.quantize_per_channel(x, self.scales, self.zps, 1, -128, 127, I8)
        dc = QD.dequantize_per_channel(qc, self.scales, self.zps, 1, -128, 127, I8)
        c = QD.quantize_per_channel(dc, self.scales, self.zps, 1, -128, 127, I8)    # per channel: removed
        e = QD.quantize_per_channel(dc, self.scales, self.zps, 2, -128, 127, I8)    # other axis: declined
        return a, b, c, e


def test_fx_identity_requantization():
    gm, ref, x = _export(_Identity(), (1, 3, 3, 2))
    assert _fx_qdq_ops(gm) == {Q: 3, DQ: 3, QC: 3, DQC: 1}

    result = run_pass("fuse_qdq", "fx", gm)

    assert _fx_qdq_ops(gm) == {Q: 2, DQ: 3, QC: 2, DQC: 1}
    assert result.details == [
        "applied at <top> (quantize_per_tensor_1): identity requantization dequantize_per_tensor → "
        "quantize_per_tensor_1 removed (scale 0.05, zero point 3, int8) (the dequantize stays for 1 other "
        "reader(s))",
        "declined at <top> (quantize_per_tensor_2): scales differ (0.05 vs 0.1)",
        "applied at <top> (quantize_per_channel_1): identity requantization dequantize_per_channel → "
        "quantize_per_channel_1 removed (scale [0.05, 0.1, 0.02], zero point [0, 2, -1], int8) (the dequantize "
        "stays for 1 other reader(s))",
        "declined at <top> (quantize_per_channel_2): per-channel axes differ (1 vs 2)",
    ]
    assert result.summary == ("removed 2 quantize/dequantize pair(s) (0 moves onto integers, 2 identity "
                              "requantizations), absorbed 0 activation(s), declined 2")
    _assert_same_fx(gm, ref, x)


class _Moves(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scales", torch.tensor([0.05, 0.1, 0.02, 0.04]))
        self.register_buffer("zps", torch.zeros(4, dtype=torch.int64))

    def forward(self, x):  # [1, 4, 4, 4]
        d = _qdq(x)
        a = _qdq(F.max_pool2d(d, 2).flatten(1))                # moved onto int8
        b = _qdq(d.permute(0, 2, 3, 1).reshape(1, 64))         # moved onto int8
        t = d.transpose(2, 3)
        c = _qdq(t) + t.sum()                                  # declined: t is read in float too
        e = _qdq(d.unsqueeze(0), 0.1)                          # declined: scales differ
        dc = QD.dequantize_per_channel(QD.quantize_per_channel(x, self.scales, self.zps, 1, -128, 127, I8),
                                       self.scales, self.zps, 1, -128, 127, I8)
        f = _qdq(dc.permute(0, 2, 3, 1))                       # declined: per-channel scales
        return a, b, c, e, f


def test_fx_data_movement_runs_on_int8():
    gm, ref, x = _export(_Moves(), (1, 4, 4, 4))
    before = _fx_qdq_ops(gm)
    assert (before[Q], before[DQ]) == (6, 6)

    result = run_pass("fuse_qdq", "fx", gm)

    after = _fx_qdq_ops(gm)
    assert (after[Q], after[DQ]) == (4, 6)  # two Qs gone, their DQs now read int8 ops; the shared DQ stays
    assert result.details == [
        "applied at <top> (max_pool2d): max_pool2d → flatten runs on the int8 tensor, a quantize/dequantize pair "
        "removed (the dequantize stays for 3 other reader(s))",
        "applied at <top> (permute): permute → reshape runs on the int8 tensor, a quantize/dequantize pair removed "
        "(the dequantize stays for 2 other reader(s))",
        "declined at <top> (transpose): the float output of transpose has other readers",
        "declined at <top> (unsqueeze): scales differ (0.05 vs 0.1)",
        "declined at <top> (permute_1): per-channel dequantize (axis 1): its scales are tied to an axis permute may "
        "move",
    ]
    # max_pool2d and flatten now read the int8 quantize and feed a dequantize
    pool = next(n for n in gm.graph.nodes if n.name == "max_pool2d")
    assert fx_op_name(pool.args[0]) == Q and pool.meta["val"].dtype == I8
    flat = next(iter(pool.users))
    assert [fx_op_name(u) for u in flat.users] == [DQ] and flat.meta["val"].dtype == I8
    _assert_same_fx(gm, ref, x)


class _Activations(torch.nn.Module):
    def forward(self, x):  # [1, 2, 4, 4]
        d = _qdq(x, S, -128)                                # int8, zero point -128 = qmin
        a = _qdq(torch.relu(d), S, -128)                    # relu dropped, then DQ → Q is the identity
        b = _qdq(F.relu6(x * 2), 6 / 255, -128)             # range [0, 6]: relu6 dropped (it reads any op)
        c = _qdq(torch.relu(d).flatten(1), S, -128)         # relu dropped, then flatten moved onto int8
        e = _qdq(torch.relu(x + 1), S, 3)                   # zero point 3 > qmin: relu needed
        f = _qdq(torch.clamp(x + 1, 0.0, 1.0), 6 / 255, -128)  # clamp at 1 inside [0, 6]: needed
        return a, b, c, e, f


def test_fx_activation_absorbed_into_quantize():
    gm, ref, x = _export(_Activations(), (1, 2, 4, 4))
    before = _fx_qdq_ops(gm)
    assert (before["aten.relu"], before["aten.relu6"], before["aten.clamp"], before[Q]) == (3, 1, 1, 6)

    result = run_pass("fuse_qdq", "fx", gm)

    after = _fx_qdq_ops(gm)
    assert (after["aten.relu"], after.get("aten.relu6", 0), after["aten.clamp"], after[Q]) == (1, 0, 1, 4)
    assert result.details == [
        "applied at <top> (relu): relu absorbed into the quantize (zero point -128 = qmin: it clamps negative "
        "values already)",
        "applied at <top> (quantize_per_tensor_1): identity requantization dequantize_per_tensor → "
        "quantize_per_tensor_1 removed (scale 0.05, zero point -128, int8) (the dequantize stays for 1 other "
        "reader(s))",
        "applied at <top> (relu6): relu6(0, 6) absorbed into the quantize (its bounds cover the quantize's "
        "range [0, 6])",
        "applied at <top> (relu_1): relu absorbed into the quantize (zero point -128 = qmin: it clamps negative "
        "values already)",
        "applied at <top> (flatten): flatten runs on the int8 tensor, a quantize/dequantize pair removed",
        "declined at <top> (relu_2): zero point 3 is above qmin -128: the quantize keeps negative values the "
        "activation removes",
        "declined at <top> (clamp): upper bound 1 is inside the quantize's range (qmax 127 is 6)",
    ]
    _assert_same_fx(gm, ref, x)


def test_fx_selector_and_switches():
    gm, _, _ = _export(_Activations(), (1, 2, 4, 4))
    result = run_pass("fuse_qdq", "fx", gm, ops=("reshape",))  # only moves of reshapes: the relu stays, so no
    assert not result.changed and result.details == []        # chain reaches a DQ
    result = run_pass("fuse_qdq", "fx", gm, activations=False)
    assert result.summary.startswith("removed 0 quantize/dequantize pair(s)") and not result.changed


# ---- ONNX ---------------------------------------------------------------------------------------------------
def _const(name, value, dtype):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _model(nodes, inits, outputs, shape=(1, 2, 4, 4)):
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs.items()],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _qdq_nodes(src, dst, s, z, tag):
    return [helper.make_node("QuantizeLinear", [src, s, z], [f"{tag}_q"], name=f"{tag}_Q"),
            helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [dst], name=f"{tag}_DQ")]


_INITS = [_const("s", S, np.float32), _const("z", 3, np.int8), _const("s2", 0.1, np.float32),
          _const("z128", -128, np.int8), _const("s6", 6 / 255, np.float32), _const("zero", 0.0, np.float32),
          _const("one", 1.0, np.float32), _const("six", 6.0, np.float32),
          _const("sc", [0.05, 0.1], np.float32), _const("zc", [0, 1], np.int8),
          _const("shape", [1, 32], np.int64)]


def _run_onnx_pass(model, **params):
    graph = gs.import_onnx(model)
    result = run_pass("fuse_qdq", "onnx", graph, **params)
    fused = gs.export_onnx(graph)
    onnx.checker.check_model(fused)
    x = (np.random.default_rng(0).standard_normal((1, 2, 4, 4)) * 3).astype(np.float32)
    for got, want in zip(run_onnx(fused, x=x), run_onnx(model, x=x)):
        np.testing.assert_array_equal(got, want)
    return result, Counter(n.op_type for n in fused.graph.node)


def test_onnx_identity_requantization():
    model = _model(_qdq_nodes("x", "d", "s", "z", "in") + [
        helper.make_node("QuantizeLinear", ["d", "s", "z"], ["aq"], name="same_Q"),      # identity: removed
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["a"], name="a_DQ"),
        helper.make_node("QuantizeLinear", ["d", "s2", "z"], ["bq"], name="other_Q"),    # scale 0.1: declined
        helper.make_node("DequantizeLinear", ["bq", "s2", "z"], ["b"], name="b_DQ"),
    ], _INITS, {"a": [1, 2, 4, 4], "b": [1, 2, 4, 4]})
    result, ops = _run_onnx_pass(model)
    assert ops == Counter({"QuantizeLinear": 2, "DequantizeLinear": 3})
    assert result.details == [
        "applied at same_Q: identity requantization in_DQ → same_Q removed (scale 0.05, zero point 3, int8) (the "
        "dequantize stays for 1 other reader(s))",
        "declined at other_Q: scales differ (0.05 vs 0.1)",
    ]


def test_onnx_data_movement_runs_on_int8():
    model = _model(_qdq_nodes("x", "d", "s", "z", "in") + [
        helper.make_node("MaxPool", ["d"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        *_qdq_nodes("f", "a", "s", "z", "a"),                                           # moved onto int8
        helper.make_node("Transpose", ["d"], ["t"], name="tr", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"], name="reshape"),
        *_qdq_nodes("r", "b", "s2", "z", "b"),                                          # scale 0.1: declined
        helper.make_node("Transpose", ["d"], ["u"], name="tr_shared", perm=[0, 1, 3, 2]),
        *_qdq_nodes("u", "c", "s", "z", "c"),                                           # u also an output
        helper.make_node("QuantizeLinear", ["x", "sc", "zc"], ["xc"], name="pc_Q", axis=1),
        helper.make_node("DequantizeLinear", ["xc", "sc", "zc"], ["dc"], name="pc_DQ", axis=1),
        helper.make_node("Transpose", ["dc"], ["v"], name="tr_pc", perm=[0, 2, 3, 1]),
        *_qdq_nodes("v", "e", "s", "z", "e"),                                           # per channel: declined
    ], _INITS, {"a": [1, 8], "b": [1, 32], "c": [1, 2, 4, 4], "u": [1, 2, 4, 4], "e": [1, 4, 4, 2]})
    result, ops = _run_onnx_pass(model)
    assert ops == Counter({"QuantizeLinear": 5, "DequantizeLinear": 6, "MaxPool": 1, "Flatten": 1,
                           "Transpose": 3, "Reshape": 1})
    assert result.details == [
        "applied at pool: MaxPool → Flatten runs on the int8 tensor, a quantize/dequantize pair removed (the "
        "dequantize stays for 2 other reader(s))",
        "declined at tr: scales differ (0.05 vs 0.1)",
        "declined at tr_shared: the float output of tr_shared has other readers",
        "declined at tr_pc: per-channel dequantize (axis 1): its scales are tied to an axis Transpose may move",
    ]
    graph = gs.import_onnx(model)
    run_pass("fuse_qdq", "onnx", graph)
    pool = next(n for n in graph.nodes if n.name == "pool")
    assert pool.inputs[0].inputs[0].op == "QuantizeLinear" and pool.outputs[0].dtype == np.int8
    flat_out = next(n for n in graph.nodes if n.name == "flat").outputs[0]
    assert flat_out.dtype == np.int8 and [c.op for c in flat_out.outputs] == ["DequantizeLinear"]


def test_onnx_activation_absorbed_into_quantize():
    model = _model(_qdq_nodes("x", "d", "s", "z128", "in") + [
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        *_qdq_nodes("r", "a", "s", "z128", "a"),                     # relu dropped, then DQ → Q is the identity
        helper.make_node("Clip", ["x", "zero", "six"], ["k"], name="relu6"),
        *_qdq_nodes("k", "b", "s6", "z128", "b"),                    # Clip(0, 6) dropped
        helper.make_node("Relu", ["x"], ["r2"], name="relu_zp3"),
        *_qdq_nodes("r2", "c", "s", "z", "c"),                       # zero point 3: declined
        helper.make_node("Clip", ["x", "zero", "one"], ["k2"], name="clip1"),
        *_qdq_nodes("k2", "e", "s6", "z128", "e"),                   # bound 1 inside [0, 6]: declined
    ], _INITS, {o: [1, 2, 4, 4] for o in "abce"})
    result, ops = _run_onnx_pass(model)
    assert ops == Counter({"QuantizeLinear": 4, "DequantizeLinear": 4, "Relu": 1, "Clip": 1})
    assert result.details == [
        "applied at relu: Relu absorbed into the quantize (zero point -128 = qmin: it clamps negative values "
        "already)",
        "applied at a_Q: identity requantization in_DQ → a_Q removed (scale 0.05, zero point -128, int8)",
        "applied at relu6: Clip(0, 6) absorbed into the quantize (its bounds cover the quantize's range [0, 6])",
        "declined at relu_zp3: zero point 3 is above qmin -128: the quantize keeps negative values the activation "
        "removes",
        "declined at clip1: upper bound 1 is inside the quantize's range (qmax 127 is 6)",
    ]


# ---- end to end: a digits-like CNN through quantize_static then fuse_qdq ---------------------------------------
class _DigitsLike(torch.nn.Module):
    """examples/01_digits_cnn's layers (batch norms already folded): conv-relu, conv-relu, max-pool, conv-relu,
    flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = F.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        return self.fc(torch.relu(self.conv3(y)).flatten(1))


def _calib(n=32, seed=0):
    return np.random.default_rng(seed).random((n, 1, 8, 8)).astype(np.float32)


def _ctx(kind, name):
    return PassContext(selects=make_selector(kind), datasets={"calib": Dataset("calib", {name: _calib()}, None)},
                       example_inputs={name: np.zeros((1, 1, 8, 8), np.float32)}, log=lambda *_: None)


def _digits_onnx(net):
    inits = [numpy_helper.from_array(p.detach().numpy(), n) for n, p in net.named_parameters()]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "conv3.weight", "conv3.bias"], ["c3"], name="conv3", pads=[1] * 4),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_end_to_end_digits_like_cnn_fewer_qdq_same_outputs():
    torch.manual_seed(0)
    net = _DigitsLike().eval()
    x = _calib(8, seed=1)

    gm = torch.export.export(net, (torch.zeros(1, 1, 8, 8),)).module()
    get_pass("quantize_static")(data="calib", samples=32).run("fx", gm, _ctx("fx", "x"))
    ref = copy.deepcopy(gm)
    before = fx_ops(gm)
    result = run_pass("fuse_qdq", "fx", gm)
    after = fx_ops(gm)
    # max-pool (into conv3) and flatten (into fc) move onto int8; the three ReLUs before zero point -128 go
    assert (before[Q], before[DQ], before[DQC], before["aten.relu"]) == (6, 6, 4, 3)
    assert (after[Q], after[DQ], after[DQC], after["aten.relu"]) == (4, 4, 4, 0)
    assert result.summary == ("removed 2 quantize/dequantize pair(s) (2 moves onto integers, 0 identity "
                              "requantizations), absorbed 3 activation(s)")
    with torch.no_grad():
        for i in range(len(x)):
            xi = torch.from_numpy(x[i:i + 1])
            assert torch.equal(gm(xi), ref(xi))

    graph = gs.import_onnx(_digits_onnx(net))
    get_pass("quantize_static")(data="calib", samples=32).run("onnx", graph, _ctx("onnx", "image"))
    quantized = gs.export_onnx(graph)
    result = run_pass("fuse_qdq", "onnx", graph)
    fused = gs.export_onnx(graph)
    onnx.checker.check_model(fused)
    ops_before = Counter(n.op_type for n in quantized.graph.node)
    ops_after = Counter(n.op_type for n in fused.graph.node)
    assert (ops_before["QuantizeLinear"], ops_before["DequantizeLinear"], ops_before["Relu"]) == (6, 14, 3)
    assert (ops_after["QuantizeLinear"], ops_after["DequantizeLinear"], ops_after["Relu"]) == (4, 12, 0)
    assert result.summary == ("removed 2 quantize/dequantize pair(s) (2 moves onto integers, 0 identity "
                              "requantizations), absorbed 3 activation(s)")
    for i in range(len(x)):
        np.testing.assert_array_equal(run_onnx(fused, image=x[i:i + 1])[0], run_onnx(quantized, image=x[i:i + 1])[0])


@pytest.mark.slow
def test_host_build_of_int8_digits_with_fuse_qdq(tmp_path):
    """examples/06_int8's schedule with ``pass fuse_qdq`` after quantize_static still builds and keeps accuracy;
    the max-pool kernel no longer requantizes (about 8 s: one host build)."""
    from aglmc.compiler.pipeline import BuildOptions, build

    digits = Path(__file__).resolve().parents[1] / "examples" / "01_digits_cnn"
    sched = tmp_path / "digits_int8_fused.sched"
    sched.write_text(f"""model "{digits / 'model.py'}:build"
input x: float32[1, 1, 8, 8]
dataset heldout = "{digits / 'data.py'}:heldout"
dataset calib = "{digits / 'data.py'}:calibration"
evaluate {{
    data = heldout
    metric = accuracy
    metric_drop = 0.01
}}
pass fold_batchnorm
pass quantize_static on conv2d, linear {{ data = calib  method = percentile  check_target = arm_dotprod }}
pass fuse_qdq
target host {{ threads = 1 }}
""")
    result = build(sched, BuildOptions(out_dir=tmp_path / "out", log=lambda _m: None))
    v = result.verification
    assert v.metric_original - v.metric_compiled <= 0.01 and v.metric_transformed == v.metric_compiled
    step = next(p for p in result.passes if p.name == "fuse_qdq")
    assert step.result.summary == ("removed 2 quantize/dequantize pair(s) (2 moves onto integers, 0 identity "
                                   "requantizations), absorbed 3 activation(s)")
    report = (result.out_dir / "report.md").read_text()
    pool = re.findall(r"^\| (fused_max_pool2d\w*) \|", report, re.M)
    assert len(pool) == 1 and "round" not in pool[0], pool  # max-pool on int8: no dequantize/requantize around it
    assert len(re.findall(r"^\| fused_int8_matmul\w* \| int8_matmul \|", report, re.M)) == 4
