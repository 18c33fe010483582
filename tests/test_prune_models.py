"""prune_channels at 30 % on whole networks, in FX and after ONNX export: a network with residual adds,
depthwise and grouped convolutions, a concat and a squeeze-excite gate, and transformers' MobileNetV2 and ResNet
(tiny configurations, re-initialised so outputs depend on inputs). Every pruned graph lints / passes the ONNX
checker, keeps its output shape, and computes what the unpruned model computes with the removed channels'
consumer columns zeroed; ratio 0 reproduces the outputs exactly."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from torch import nn

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.channel_graph import build_channel_graph
from aglmc.passes.prune_channels import clone_graph, count_params, masked_copy, prune
from aglmc.passes.select import make_selector


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1)))))


class Mixed(nn.Module):
    """Residual adds, a depthwise conv with channel multiplier 2, a grouped conv, a concat, an SE gate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.ReLU())
        self.side = nn.Conv2d(16, 8, 1)
        self.se = SE(32)
        self.head = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x) + x
        x = self.pw(self.dw(x)) + x
        y = self.se(torch.cat([self.grouped(x), self.side(x)], 1))
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.head(y)), 2)
        return self.fc(y.flatten(1))


def _reinit(model):
    """Kaiming weights and random batch-norm statistics: transformers' own init makes outputs nearly constant."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class Logits(nn.Module):
    """transformers' models return an output object; export and compare its logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=10)
    return Logits(_reinit(MobileNetV2ForImageClassification(cfg)))


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], layer_type="basic",
                       num_labels=10)
    return Logits(_reinit(ResNetForImageClassification(cfg)))


MODELS = {"mixed": (lambda: _reinit(Mixed()), (1, 3, 8, 8)), "mobilenet_v2": (_mobilenet_v2, (1, 3, 32, 32)),
          "resnet": (_resnet, (1, 3, 32, 32))}


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_prune_30_percent_fx_and_onnx(name, tmp_path):
    make, shape = MODELS[name]
    net = make()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = net(x)
        other = net(torch.randn(*shape))
    assert (reference - other).abs().max() > 0.1 * reference.abs().max()  # outputs depend on the input

    # FX
    gm = torch.export.export(net, (x,)).module()
    unpruned = clone_graph("fx", gm)
    ctx = PassContext(selects=make_selector("fx"), log=lambda m: None)
    assert not get_pass("prune_channels")(ratio=0.0).run("fx", gm, ctx).changed
    torch.testing.assert_close(gm(x), reference, rtol=0, atol=0)
    cg = build_channel_graph("fx", gm)
    assert len(cg.prunable_groups) >= 3 and not cg.groups[-1].prunable  # the classifier keeps its classes
    before = count_params("fx", gm)
    _, plan = prune("fx", gm, ratio=0.3, cg=cg)
    gm.graph.lint()
    assert count_params("fx", gm) < 0.8 * before
    with torch.no_grad():
        out = gm(x)
        oracle = masked_copy("fx", unpruned, cg, plan)(x)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, oracle, rtol=1e-4, atol=1e-4 * float(oracle.abs().max()))
    assert (out - reference).abs().max() > 0  # something was removed

    # ONNX, exported by torch.onnx (TorchScript exporter, no constant folding)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, do_constant_folding=False)
    model = onnx.load(str(path))
    graph = gs.import_onnx(model)
    xn = x.numpy()
    assert not get_pass("prune_channels")(ratio=0.0).run("onnx", graph, PassContext(selects=make_selector("onnx"))
                                                         ).changed
    np.testing.assert_array_equal(_ort(gs.export_onnx(graph), xn), _ort(model, xn))
    original = graph.copy()
    ocg = build_channel_graph("onnx", graph)
    assert [g.n_units for g in ocg.prunable_groups] == [g.n_units for g in cg.prunable_groups]
    _, oplan = prune("onnx", graph, ratio=0.3, cg=ocg)
    pruned = gs.export_onnx(graph)
    onnx.checker.check_model(pruned, full_check=True)
    out = _ort(pruned, xn)
    assert out.shape == tuple(reference.shape)
    oracle = _ort(gs.export_onnx(masked_copy("onnx", original, ocg, oplan)), xn)
    np.testing.assert_allclose(out, oracle, rtol=1e-4, atol=1e-4 * float(np.abs(oracle).max()))
