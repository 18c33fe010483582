"""The channel dependency graph: one group per coupling kind, checked as printed tables and as index sets, on
FX and on ONNX; frozen channels (model outputs, unknown ops, layers outside the selector); custom op rules."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torch import nn

from aglmc.passes.channel_graph import _CUSTOM, build_channel_graph, identity, register_coupling
from aglmc.passes.select import make_selector


def _fx(net, *shape):
    torch.manual_seed(0)
    return torch.export.export(net.eval(), (torch.randn(*shape),)).module()


def _onnx(net, *shape, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net.eval(), (torch.randn(*shape),), str(path), dynamo=False, do_constant_folding=False)
    return gs.import_onnx(onnx.load(str(path)))


def _idx(group, units):
    return {k: v.tolist() for k, v in group.indices(units).items()}


class Chain(nn.Module):  # conv -> BN -> ReLU -> conv -> flatten -> linear
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(2 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_chain_table_and_flatten_into_linear():
    cg = build_channel_graph("fx", _fx(Chain(), 1, 3, 2, 2))
    assert [g.name for g in cg.groups] == ["conv", "conv2", "fc"]
    assert str(cg.group("conv")) == """\
group 'conv': 4 channels in 4 units, 4 prunable
  space                  role    size  unit i (of 4) → elements
  conv2d axis 1          tensor     4  i
  conv.weight dim 0      out        4  i
  conv.bias dim 0        out        4  i
  batch_norm axis 1      tensor     4  i
  bn.weight dim 0        scale      4  i
  bn.bias dim 0          shift      4  i
  bn.running_mean dim 0  stat       4  i
  bn.running_var dim 0   stat       4  i
  relu axis 1            feeds      4  i
  conv2.weight dim 1     in         4  i
  sources: conv (aten.conv2d)"""
    # flatten: channel c of conv2 becomes features 4c … 4c+3 (2×2 spatial) of the linear's input
    flat = cg.group("conv2")
    assert "flatten axis 1" in str(flat) and "4i … 4i+3" in str(flat)
    assert _idx(flat, [1]) == {"conv2d_1 axis 1": [1], "conv2.weight dim 0": [1], "conv2.bias dim 0": [1],
                               "flatten axis 1": [4, 5, 6, 7], "fc.weight dim 1": [4, 5, 6, 7]}
    # the classifier's outputs are the model's: never pruned
    fc = cg.group("fc")
    assert not fc.prunable and set(fc.frozen) == {"model output"}
    assert "0 prunable (frozen: model output)" in str(fc)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = self.bn(self.b(y)) + y  # the add ties a's and b's channels
        return self.head(y)


def test_residual_add_ties_both_branches():
    g = build_channel_graph("fx", _fx(Residual(), 1, 3, 4, 4)).group("a")
    assert [s.path for s in g.sources] == ["a", "b"]
    assert g.n_units == 6 and g.prunable
    assert _idx(g, [2]) == {
        "conv2d axis 1": [2], "a.weight dim 0": [2], "a.bias dim 0": [2], "relu axis 1": [2],
        "b.weight dim 1": [2], "conv2d_1 axis 1": [2], "b.weight dim 0": [2], "b.bias dim 0": [2],
        "batch_norm axis 1": [2], "bn.weight dim 0": [2], "bn.bias dim 0": [2], "bn.running_mean dim 0": [2],
        "bn.running_var dim 0": [2], "add axis 1": [2], "head.weight dim 1": [2]}


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


@pytest.mark.parametrize("kind", ["fx", "onnx"])
def test_concat_offsets_indices(kind, tmp_path):
    graph = _fx(Concat(), 1, 3, 4, 4) if kind == "fx" else _onnx(Concat(), 1, 3, 4, 4, tmp_path=tmp_path)
    cg = build_channel_graph(kind, graph)
    g = cg.groups[0]
    assert g.n_units == 7 and len(g.sources) == 2
    table = str(g)
    assert "units 0-3: i; units 4-6: i-4" not in table  # per space, not mixed
    assert "units 4-6: i-4" in table and "units 0-3: i" in table
    got = _idx(g, [1, 5])
    if kind == "fx":
        assert got == {"conv2d axis 1": [1], "a.weight dim 0": [1], "a.bias dim 0": [1], "conv2d_1 axis 1": [1],
                       "b.weight dim 0": [1], "b.bias dim 0": [1], "cat axis 1": [1, 5], "head.weight dim 1": [1, 5]}
    else:
        assert got["a.weight dim 0"] == [1] and got["b.weight dim 0"] == [1]
        assert got["/Concat_output_0 axis 1"] == [1, 5] and got["head.weight dim 1"] == [1, 5]


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)  # channel multiplier 2
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))))


def test_depthwise_ties_input_channel_to_its_filters():
    g = build_channel_graph("fx", _fx(Depthwise(), 1, 3, 4, 4)).group("pw")
    assert [s.path for s in g.sources] == ["pw", "dw"]
    assert g.n_units == 4 and g.width == 1
    got = _idx(g, [3])
    assert got["pw.weight dim 0"] == [3] and got["relu axis 1"] == [3]
    assert got["dw.weight dim 0"] == [6, 7] and got["relu_1 axis 1"] == [6, 7]
    assert got["head.weight dim 1"] == [6, 7]
    assert "2i … 2i+1" in str(g)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.gc = nn.Conv2d(8, 6, 3, padding=1, groups=2)  # 4 inputs, 3 outputs per group
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.gc(torch.relu(self.pw(x))))


def test_grouped_conv_keeps_groups_uniform():
    cg = build_channel_graph("fx", _fx(Grouped(), 1, 3, 4, 4))
    inputs = cg.group("pw")  # gc's input: local index i of both groups goes together
    assert inputs.n_units == 4 and inputs.width == 2
    assert _idx(inputs, [1]) == {"conv2d axis 1": [1, 5], "pw.weight dim 0": [1, 5], "pw.bias dim 0": [1, 5],
                                 "relu axis 1": [1, 5], "gc.weight dim 1": [1]}
    outputs = cg.group("gc")  # gc's outputs: local index j of both groups
    assert outputs.n_units == 3
    assert _idx(outputs, [2])["gc.weight dim 0"] == [2, 5]
    assert "i + {0, 4}" in str(inputs)
    # a unit removes one channel from every group: 2 here, and ratios count channels
    assert inputs.unit_channels.tolist() == [2, 2, 2, 2] and inputs.channels == 8
    assert outputs.unit_channels.tolist() == [2, 2, 2] and outputs.channels == 6
    from aglmc.passes.prune_importance import Scores, plan_pruning

    plan = plan_pruning(cg, Scores("l2", {"pw": np.arange(4.0), "gc": np.arange(3.0)}), ratio=0.5)
    assert plan.removed["pw"].tolist() == [0, 1] and plan.removed["gc"].tolist() == [0]  # 8 → 4, 6 → 4


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 2)
        self.fc2 = nn.Linear(2, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        return self.head(y * g.view(y.shape[0], y.shape[1], 1, 1))  # a view with literal sizes


@pytest.mark.parametrize("kind", ["fx", "onnx"])
def test_squeeze_excite_gate_carries_channels(kind, tmp_path):
    graph = _fx(SqueezeExcite(), 1, 3, 4, 4) if kind == "fx" else _onnx(SqueezeExcite(), 1, 3, 4, 4,
                                                                          tmp_path=tmp_path)
    cg = build_channel_graph(kind, graph)
    main, squeeze = cg.groups[0], cg.groups[1]
    assert len(cg.groups) == 3 and main.n_units == 8 and squeeze.n_units == 2
    got = _idx(main, [5])
    assert got["conv.weight dim 0"] == [5] and got["fc1.weight dim 1"] == [5]
    assert got["fc2.weight dim 0"] == [5] and got["fc2.bias dim 0"] == [5] and got["head.weight dim 1"] == [5]
    gate = [k for k in got if k.startswith(("view", "mul", "/Reshape", "/Mul"))]
    assert len(gate) == 2 and all(got[k] == [5] for k in gate)
    squeezed = _idx(squeeze, [1])  # the squeeze width is a group of its own: fc1's rows, fc2's columns
    assert squeezed["fc1.weight dim 0"] == [1] and squeezed["fc2.weight dim 1"] == [1]
    assert all(v == [1] for v in squeezed.values()) and len(squeezed) == 5


def test_unknown_op_and_unselected_layers_freeze_channels():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            y = y - torch.logcumsumexp(y, 1)  # no rule for logcumsumexp along channels
            return self.head(torch.cat([y, torch.relu(self.b(x))], 1))

    gm = _fx(Odd(), 1, 3, 4, 4)
    g = build_channel_graph("fx", gm).group("a")
    assert g.free.tolist() == [False] * 4 + [True] * 4  # element-wise: only a's half of the concat is frozen
    assert set(g.frozen[:4]) == {"aten.logcumsumexp has no coupling rule"}
    only_head = build_channel_graph("fx", gm, make_selector("fx", path="head"))
    assert not only_head.group("a").prunable
    assert "b is not selected" in str(only_head.group("a"))


def test_register_coupling_for_a_custom_op():
    @torch.library.custom_op("aglmc_test::channel_scale", mutates_args=())
    def channel_scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * s.view(1, -1, 1, 1)

    @channel_scale.register_fake
    def _(x, s):
        return torch.empty_like(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.s = nn.Parameter(torch.rand(4))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(channel_scale(self.conv(x), self.s))

    gm = _fx(Net(), 1, 3, 4, 4)
    assert not build_channel_graph("fx", gm).group("conv").prunable  # unknown op: frozen

    @register_coupling("fx", "aglmc_test.channel_scale")
    def _rule(b, node):
        x, s = node.args
        out = b.space(node, 1)
        b.couple(b.space(x, 1), out)
        b.couple(b.space(s, 0, role="param"), out, identity(4))

    try:
        g = build_channel_graph("fx", gm).group("conv")
        assert g.prunable and _idx(g, [3])["s dim 0"] == [3] and _idx(g, [3])["head.weight dim 1"] == [3]
    finally:
        _CUSTOM["fx"].pop("aglmc_test.channel_scale")


def test_onnx_groups_match_fx(tmp_path):
    for net, shape in ((Residual(), (1, 3, 4, 4)), (Depthwise(), (1, 3, 4, 4)), (Grouped(), (1, 3, 4, 4))):
        fx_cg = build_channel_graph("fx", _fx(net, *shape))
        onnx_cg = build_channel_graph("onnx", _onnx(net, *shape, tmp_path=tmp_path))
        assert [(g.n_units, g.prunable, len(g.sources)) for g in fx_cg.groups] == \
               [(g.n_units, g.prunable, len(g.sources)) for g in onnx_cg.groups]
        for a, b in zip(fx_cg.groups, onnx_cg.groups):
            wa = {k: v.tolist() for k, v in a.indices(range(a.n_units)).items() if "weight dim" in k}
            wb = {k: v.tolist() for k, v in b.indices(range(b.n_units)).items() if "weight dim" in k}
            assert wa == wb
            assert np.array_equal(a.free, b.free)
