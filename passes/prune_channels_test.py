"""prune_channels on FX and ONNX: the graph before and after, numerics against the masked oracle (the unpruned
model with the removed channels' consumer columns zeroed), ratio 0 exact, dead channels removed losslessly,
every importance criterion, round_to / min_channels / global scope, per-group ratios from a file."""

import json
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from torch import nn

from aglmc.compiler.data import Dataset
from aglmc.errors import PassError
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.channel_graph import build_channel_graph
from aglmc.passes.prune_channels import clone_graph, masked_copy, prune
from aglmc.passes.prune_importance import CRITERIA, unit_importance
from aglmc.passes.select import fx_op_name, make_selector


class Net(nn.Module):
    """Residual add, depthwise conv, concat, a squeeze-excite gate with a literal view, flatten → linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc1 = nn.Linear(12, 4)
        self.fc2 = nn.Linear(4, 12)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body(x)) + x
        y = torch.cat([torch.relu(self.dw(x)), self.side(x)], 1)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        y = y * g.view(2, 12, 1, 1)
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 2).flatten(1))


def _net(seed=0):
    torch.manual_seed(seed)
    net = Net().eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    net.bn.weight.data.uniform_(0.5, 1.5)
    net.bn.bias.data.uniform_(-0.5, 0.5)
    return net


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _ctx(kind="fx", datasets=None, **kw):
    return PassContext(selects=make_selector(kind, **kw), datasets=datasets or {}, log=lambda m: None)


def _ops(gm):
    return Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")


def _weight_shapes(gm):
    shapes = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and fx_op_name(n) in ("aten.conv2d", "aten.linear"):
            shapes[n.name] = tuple(gm.get_buffer(n.args[1].target).shape if n.args[1].target.startswith("_aglmc")
                                   else gm.get_parameter(n.args[1].target).shape)
    return shapes


def test_prune_fx_before_after_and_numerics():
    net = _net()
    reference = net(X)
    gm = torch.export.export(net, (X,)).module()
    original = clone_graph("fx", gm)
    before_ops, before = _ops(gm), _weight_shapes(gm)
    assert before == {"conv2d": (8, 3, 3, 3), "conv2d_1": (8, 8, 3, 3), "conv2d_2": (8, 1, 3, 3),
                      "conv2d_3": (4, 8, 1, 1), "linear": (4, 12), "linear_1": (12, 4), "linear_2": (5, 48)}

    result = get_pass("prune_channels")(ratio=0.5, importance="l1").run("fx", gm, _ctx())

    gm.graph.lint()
    # two groups: stem/body (residual) + dw (depthwise) + side (concat) + fc2 (SE gate) share 12 units; fc1's 4
    assert result.changed and result.summary.startswith("pruned 2 of 2 channel group(s) by l1")
    assert result.details == ["stem: stem 8 → 5, body 8 → 5, dw 8 → 5, side 4 → 1, fc2 12 → 6", "fc1: 4 → 2"]
    assert _ops(gm) == before_ops  # same ops, smaller weights
    assert _weight_shapes(gm) == {"conv2d": (5, 3, 3, 3), "conv2d_1": (5, 5, 3, 3), "conv2d_2": (5, 1, 3, 3),
                                  "conv2d_3": (1, 5, 1, 1), "linear": (2, 6), "linear_1": (6, 2),
                                  "linear_2": (5, 24)}
    dw = next(n for n in gm.graph.nodes if n.name == "conv2d_2")
    view = next(n for n in gm.graph.nodes if n.name == "view")
    assert dw.args[6] == 5 and view.args[1] == [2, 6, 1, 1]  # depthwise groups and the view's literal sizes
    assert tuple(view.meta["val"].shape) == (2, 6, 1, 1)  # metadata follows
    # numerics: exactly what the unpruned model computes with the removed channels' consumer columns zeroed
    cg = build_channel_graph("fx", original)
    cg2, plan = prune("fx", original, ratio=0.5, importance="l1", cg=cg)
    out = gm(X)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, masked_copy("fx", clone_graph("fx", torch.export.export(net, (X,)).module()),
                                                cg, plan)(X), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(X), reference, rtol=0, atol=0)  # the original module is untouched


@pytest.mark.parametrize("kind", ["fx", "onnx"])
def test_ratio_zero_reproduces_outputs_exactly(kind, tmp_path):
    net = _net()
    if kind == "fx":
        gm = torch.export.export(net, (X,)).module()
        ref = gm(X)
        result = get_pass("prune_channels")(ratio=0.0).run("fx", gm, _ctx())
        assert not result.changed and "nothing to prune" in result.summary
        torch.testing.assert_close(gm(X), ref, rtol=0, atol=0)
        return
    graph, model = _onnx_graph(net, tmp_path)
    result = get_pass("prune_channels")(ratio=0.0).run("onnx", graph, _ctx("onnx"))
    assert not result.changed
    np.testing.assert_array_equal(_ort(gs.export_onnx(graph)), _ort(model))


def _onnx_graph(net, tmp_path):
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (X,), str(path), dynamo=False, do_constant_folding=False)
    model = onnx.load(str(path))
    return gs.import_onnx(model), model


def _ort(model):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]


def test_prune_onnx_before_after_and_numerics(tmp_path):
    graph, model = _onnx_graph(_net(), tmp_path)
    original = graph.copy()
    ops = Counter(n.op for n in graph.nodes if n.op not in ("Constant", "Identity"))
    cg = build_channel_graph("onnx", original)

    result = get_pass("prune_channels")(ratio=0.5, importance="l1").run("onnx", graph, _ctx("onnx"))

    assert result.changed
    pruned = gs.export_onnx(graph)
    onnx.checker.check_model(pruned, full_check=True)
    assert Counter(n.op for n in graph.nodes if n.op not in ("Constant", "Identity")) == ops
    conv = {n.name: n for n in graph.nodes if n.op == "Conv"}
    assert conv["/dw/Conv"].attrs["group"] == 5 and conv["/dw/Conv"].inputs[1].shape == (5, 1, 3, 3)
    assert conv["/body/Conv"].inputs[1].shape == (5, 5, 3, 3) and conv["/side/Conv"].inputs[1].shape[0] == 1
    reshape = next(n for n in graph.nodes if n.op == "Reshape")
    assert reshape.inputs[1].values.tolist() == [2, 6, 1, 1]
    _, plan = prune("onnx", original.copy(), ratio=0.5, importance="l1", cg=cg)
    out = _ort(pruned)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, _ort(gs.export_onnx(masked_copy("onnx", original, cg, plan))),
                               rtol=1e-5, atol=1e-5)


class Dead(nn.Module):
    """Two concatenated branches; some of their channels are dead (zero weights and bias)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(7, 4, 1)
        self.fc = nn.Linear(4 * 36, 3)
        with torch.no_grad():
            for conv, dead in ((self.a, [1, 3]), (self.b, [0])):
                conv.weight[dead] = 0
                conv.bias[dead] = 0

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.head(y)).flatten(1))


@pytest.mark.parametrize("importance", CRITERIA)
def test_dead_channels_go_first_and_losslessly(importance):
    torch.manual_seed(0)
    net = Dead().eval()
    gm = torch.export.export(net, (X,)).module()
    calib = Dataset("calib", {"x": torch.randn(8, 3, 6, 6).numpy()}, None)
    cg = build_channel_graph("fx", gm)
    scores = unit_importance(cg, importance, calib, names=["x"])
    cat = cg.group("a")
    v = scores.values["a"]
    assert v.shape == (7,) and sorted(np.argsort(v, kind="stable")[:3].tolist()) == [1, 3, 4]  # dead units
    assert np.allclose(v[[1, 3, 4]], 0) and (v[[0, 2, 5, 6]] > 0).all()
    assert cat.indices([4])["cat axis 1"].tolist() == [4]  # b's channel 0 sits at 4 in the concat
    _, plan = prune("fx", gm, ratio=0.0, ratios={"a": 3 / 7 + 1e-6}, cg=cg, scores=scores)  # 'a' alone
    assert plan.rows(cg) == ["a: a 4 → 2, b 3 → 2"]
    torch.testing.assert_close(gm(X), net(X), rtol=1e-6, atol=1e-6)  # dead channels: nothing changes


def test_round_to_min_channels_and_global_scope():
    net = _net()

    def kept(**params):
        gm = torch.export.export(net, (X,)).module()
        cg, plan = prune("fx", gm, **params)
        shapes = _weight_shapes(gm)
        return {g.name: g.n_units - len(plan.removed.get(g.name, ())) for g in cg.prunable_groups}, shapes

    assert kept(ratio=0.5)[0] == {"stem": 6, "fc1": 2}
    assert kept(ratio=0.5, round_to=5)[0] == {"stem": 10, "fc1": 4}  # 6 → 10 (a multiple of 5); 2 → all 4
    units, shapes = kept(ratio=0.9, min_channels=3)
    assert all(shapes[c][0] >= 3 for c in ("conv2d", "conv2d_1", "conv2d_2", "conv2d_3", "linear"))
    assert units == {"stem": 6, "fc1": 3}  # stem keeps 3 of its own and 3 of side's units
    assert sum(kept(ratio=0.5, scope="global")[0].values()) == 16 - 8  # half of all units, wherever lowest


def test_selector_picks_prunable_layers():
    result = get_pass("prune_channels")(ratio=0.5).run("fx", torch.export.export(_net(), (X,)).module(),
                                                       _ctx(ops=("linear",)))
    assert result.details == ["fc1: 4 → 2"]  # the conv group is left whole: its convs are not selected
    # with convs only, nothing moves: fc2 (a linear) produces the gated concat's channels, fc1 is a linear
    result = get_pass("prune_channels")(ratio=0.5).run("fx", torch.export.export(_net(), (X,)).module(),
                                                       _ctx(ops=("conv2d",)))
    assert not result.changed


def test_ratios_from_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = _net()
    (tmp_path / "sens.json").write_text(json.dumps({"ratios": {"stem": 0.25, "fc1": 0.5}}))
    gm = torch.export.export(net, (X,)).module()
    get_pass("prune_channels")(ratio=0.0, ratios_from="sens.json").run("fx", gm, _ctx())
    shapes = _weight_shapes(gm)
    assert shapes["conv2d"][0] + shapes["conv2d_3"][0] == 12 - 3 and shapes["linear"][0] == 2
    with pytest.raises(PassError, match="no file"):
        get_pass("prune_channels")(ratios_from="missing.json").run("fx", gm, _ctx())
    (tmp_path / "bad.json").write_text(json.dumps({"ratios": {"stme": 0.5}}))
    with pytest.raises(PassError, match="unknown group") as e:
        get_pass("prune_channels")(ratios_from="bad.json").run("fx", torch.export.export(net, (X,)).module(),
                                                               _ctx())
    assert "did you mean 'stem'" in e.value.hint


def test_activation_importance_on_onnx(tmp_path):
    graph, _ = _onnx_graph(Dead().eval(), tmp_path)
    calib = Dataset("calib", {graph.inputs[0].name: torch.randn(8, 3, 6, 6).numpy()}, None)
    cg = build_channel_graph("onnx", graph)
    v = unit_importance(cg, "activation", calib, names=[graph.inputs[0].name]).values[cg.groups[0].name]
    assert np.allclose(v[[1, 3, 4]], 0) and (v[[0, 2, 5, 6]] > 0).all()
    with pytest.raises(PassError, match="gradients"):
        unit_importance(cg, "taylor", calib, names=[graph.inputs[0].name])
