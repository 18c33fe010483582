"""lowrank_svd on FX and ONNX: graphs before/after, exactness at full rank, error vs rank, data-aware SVD."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from aglmc.compiler.data import Dataset
from aglmc.errors import PassError
from aglmc.passes._testing import fx_ops, run_onnx, run_pass
from aglmc.passes.base import get_pass
from aglmc.passes.select import fx_op_name
from onnx import TensorProto, helper, numpy_helper

torch.set_num_threads(1)



def _run(kind, graph, **kwargs):
    return run_pass("lowrank_svd", kind, graph, **kwargs)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1, stride=2)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)  # grouped: declined
        self.pw = torch.nn.Conv2d(16, 24, 1)
        self.fc = torch.nn.Linear(24 * 4 * 4, 32)
        self.head = torch.nn.Linear(32, 10, bias=False)

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.conv(x))))))
        return self.head(torch.relu(self.fc(y.flatten(1))))


def _net_and_input():
    torch.manual_seed(0)
    return _Net().eval(), torch.randn(2, 3, 8, 8)


def test_fx_full_rank_reproduces_outputs_and_shows_the_factored_graph():
    net, x = _net_and_input()
    reference = net(x)
    gm = torch.export.export(net, (x,)).module()
    before = fx_ops(gm)
    assert (before["aten.conv2d"], before["aten.linear"]) == (3, 2)

    result = _run("fx", gm, rank_ratio=1.0, require_saving=False)

    after = fx_ops(gm)
    assert (after["aten.conv2d"], after["aten.linear"]) == (5, 4)  # conv, pw and both linears became two ops
    assert result.summary.startswith("factored 4 layer(s)") and result.summary.endswith("declined 1")
    assert "declined at dw: grouped convolution (groups=16)" in result.details[1]
    assert result.details[0].startswith("applied at conv: conv 16x3x3x3 -> rank 16 of 16, kept energy 1.0000")
    torch.testing.assert_close(gm(x), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), reference, rtol=0, atol=0)  # the original module is untouched


def test_fx_declines_where_factors_save_nothing():
    net, x = _net_and_input()
    gm = torch.export.export(net, (x,)).module()
    result = _run("fx", gm, ops=("linear",), rank_ratio=1.0)
    assert not result.changed and result.summary == "factored 0 layer(s), declined 2"
    assert result.details == [
        "declined at fc: rank 32 of 32 costs r(m+n) = 13,312 MACs per position, not less than mn = 12,288: "
        "no saving",
        "declined at head: rank 10 of 10 costs r(m+n) = 420 MACs per position, not less than mn = 320: no saving",
    ]


def test_fx_selector_and_rank_rounding():
    net, x = _net_and_input()
    gm = torch.export.export(net, (x,)).module()
    result = _run("fx", gm, ops=("linear",), path="fc", rank=5, round_to=8)
    assert result.summary == "factored 1 layer(s): weights 12,288 -> 3,328 (-72.9%)"
    assert result.details[0].startswith("applied at fc: linear 32x384 -> rank 8 of 32")
    assert fx_ops(gm)["aten.linear"] == 3
    # the new nodes carry the module path and static shapes, for selectors and later passes
    shapes = {n.name: tuple(n.meta["val"].shape) for n in gm.graph.nodes if fx_op_name(n) == "aten.linear"}
    assert sorted(shapes.values()) == [(2, 8), (2, 10), (2, 32)]


def _decaying_linear(m=48, n=64, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    sigma = 1.0 / (1.0 + np.arange(min(m, n)))
    w = (u[:, : len(sigma)] * sigma) @ v[:, : len(sigma)].T
    layer = torch.nn.Linear(n, m)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w).float())
    return layer.eval()


def test_fx_error_decreases_with_rank_and_energy_picks_the_rank():
    layer = _decaying_linear()
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = layer(x)
    errors = []
    for rank in (2, 4, 8, 16, 24):
        gm = torch.export.export(layer, (x,)).module()
        _run("fx", gm, rank=rank)
        with torch.no_grad():
            errors.append(float((gm(x) - reference).norm() / reference.norm()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors

    sigma2 = (1.0 / (1.0 + np.arange(48))) ** 2
    want = int(np.searchsorted(np.cumsum(sigma2) / sigma2.sum(), 0.9)) + 1
    gm = torch.export.export(layer, (x,)).module()
    result = _run("fx", gm, energy=0.9)
    assert f"rank {want} of 48" in result.details[0]
    kept = float(result.details[0].split("kept energy ")[1].split(",")[0])
    assert 0.9 <= kept < 0.9 + sigma2[want - 1] / sigma2.sum()


def _skewed(rng, count, n):
    scales = np.geomspace(0.02, 20.0, n)
    rng.shuffle(scales)
    return (rng.standard_normal((count, n)) * scales).astype(np.float32), scales


def test_fx_data_aware_svd_beats_plain_svd_on_skewed_activations():
    """Inputs whose features differ in scale by 1000x: weighting by the data keeps the loud directions."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32)).eval()
    scales = np.geomspace(0.02, 20.0, 64)
    rng.shuffle(scales)
    calib = (rng.standard_normal((256, 64)) * scales).astype(np.float32)
    heldout = torch.from_numpy((rng.standard_normal((256, 64)) * scales).astype(np.float32))
    example = calib[:16]
    with torch.no_grad():
        reference = net(heldout)

    errors = {}
    for name, data in (("plain", {}), ("whiten", {"weighting": "whiten"}), ("diag", {"weighting": "diag"})):
        gm = torch.export.export(net, (torch.from_numpy(example),)).module()
        if data:
            data = {**data, "data": "calib"}
        result = _run("fx", gm, ops=("linear",), path="0", rank=6,
                      datasets={"calib": Dataset("calib", {"x": calib}, None)}, example={"x": example}, **data)
        assert result.changed
        with torch.no_grad():
            out = torch.cat([gm(heldout[i:i + 16]) for i in range(0, 256, 16)])
        errors[name] = float((out - reference).norm() / reference.norm())
    assert errors["whiten"] < 0.6 * errors["plain"], errors
    assert errors["diag"] < 0.6 * errors["plain"], errors


def test_fx_data_aware_conv_full_rank_is_exact():
    net, x = _net_and_input()
    reference = net(x)
    gm = torch.export.export(net, (x,)).module()
    calib = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    result = _run("fx", gm, ops=("conv2d",), rank_ratio=1.0, require_saving=False, data="calib",
                  datasets={"calib": Dataset("calib", {"x": calib}, None)}, example={"x": x.numpy()})
    assert "activation-weighted" in result.details[0]
    torch.testing.assert_close(gm(x), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("params", [{}, {"rank": 4, "energy": 0.9}, {"rank_ratio": 0.5, "rank": 2}])
def test_exactly_one_rank_parameter(params):
    with pytest.raises(PassError, match="needs exactly one of rank, rank_ratio, energy"):
        get_pass("lowrank_svd")(**params)


# ---- ONNX -----------------------------------------------------------------------------------------------
def _onnx_model(rng):
    def const(name, arr):
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    inits = [
        const("Wc", rng.standard_normal((16, 3, 3, 3)) * 0.3), const("Bc", rng.standard_normal(16)),
        const("Wdw", rng.standard_normal((16, 1, 3, 3))),
        const("W1", rng.standard_normal((40, 16 * 4 * 4)) * 0.1), const("B1", rng.standard_normal(40)),
        const("W2", rng.standard_normal((40, 24)) * 0.2), const("B2", rng.standard_normal(24)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "Wc", "Bc"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["c", "Wdw"], ["d"], name="dw", pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W1", "B1"], ["g"], name="fc1", transB=1),
        helper.make_node("MatMul", ["g", "W2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "B2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(nodes, "lowrank", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model



def test_onnx_full_rank_reproduces_outputs_and_shows_the_factored_graph():
    rng = np.random.default_rng(0)
    model = _onnx_model(rng)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    graph = gs.import_onnx(model)
    assert [n.op for n in graph.nodes] == ["Conv", "Conv", "Relu", "Flatten", "Gemm", "MatMul", "Add"]

    result = _run("onnx", graph, rank_ratio=1.0, require_saving=False)

    assert result.summary.startswith("factored 3 layer(s)") and result.summary.endswith("declined 1")
    assert result.details[1].startswith("declined at dw: grouped convolution (group=16)")
    assert Counter(n.op for n in graph.nodes) == Counter(
        {"Conv": 3, "Relu": 1, "Flatten": 1, "Gemm": 2, "MatMul": 2, "Add": 1})
    factored = gs.export_onnx(graph)
    onnx.checker.check_model(factored)
    np.testing.assert_allclose(run_onnx(factored, x=x)[0], run_onnx(model, x=x)[0], rtol=1e-5, atol=1e-5)


def test_onnx_low_rank_and_data_aware():
    rng = np.random.default_rng(0)
    model = _onnx_model(rng)
    scales = np.geomspace(0.05, 5.0, 3)[None, :, None, None]
    calib = (rng.standard_normal((16, 3, 8, 8)) * scales).astype(np.float32)
    heldout = (rng.standard_normal((2, 3, 8, 8)) * scales).astype(np.float32)
    reference = run_onnx(model, x=heldout)[0]
    errors = {}
    for name, extra in (("plain", {}), ("whiten", {"data": "calib"})):
        graph = gs.import_onnx(model)
        result = _run("onnx", graph, ops=("linear",), rank=4, datasets={"calib": Dataset("calib", {"x": calib}, None)},
                      example={"x": heldout}, **extra)
        assert result.summary.startswith("factored 1 layer(s): weights 10,240 -> 1,184 (-88.4%)")
        assert [n.op for n in graph.nodes].count("Gemm") == 2
        errors[name] = float(np.linalg.norm(run_onnx(gs.export_onnx(graph), x=heldout)[0] - reference))
    assert errors["whiten"] < 0.8 * errors["plain"], errors


def test_rank_choice_is_checked_with_the_schedule(tmp_path):
    """`aglmc check` already reports a step with two rank choices, at the step, before any model is loaded."""
    from aglmc.compiler.catalog import build_catalog
    from aglmc.dsl import check, parse_text
    from aglmc.errors import ScheduleError

    (tmp_path / "m.onnx").write_bytes(b"")
    text = 'model "m.onnx"\npass lowrank_svd { rank = 8  energy = 0.9 }\ntarget host\n'
    with pytest.raises(ScheduleError, match="needs exactly one of rank, rank_ratio, energy") as err:
        check(parse_text(text, tmp_path / "s.sched"), build_catalog())
    assert (err.value.location.line, err.value.location.col) == (2, 6)
