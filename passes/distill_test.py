"""distill: a pruned FX graph learns back from the original module; the original is never touched, the result
holds plain constants again, and a graph that fixes its batch size is trained in micro-batches."""

import pytest
import torch
from torch import nn

from aglmc.compiler.data import Dataset
from aglmc.errors import PassError
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import make_selector


class Net(nn.Module):
    def __init__(self, literal_batch=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)
        self.literal_batch = literal_batch

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.bn(self.conv(x)))))
        flat = y.view(self.literal_batch, -1) if self.literal_batch else y.flatten(1)  # view: batch fixed
        return self.fc(flat)


def _setup(literal_batch=None, labels=False):
    torch.manual_seed(0)
    net = Net(literal_batch).eval()
    for m in (net.conv, net.conv2, net.fc):  # logits of a useful size (default init gives near-uniform ones)
        nn.init.kaiming_normal_(m.weight)
    net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(64, 3, 4, 4)
    with torch.no_grad():
        y = torch.cat([net(x[i:i + 2]) for i in range(0, 64, 2)]).argmax(1).numpy()
    data = Dataset("train", {"x": x.numpy()}, y if labels else None)
    example = x[:literal_batch or 1]
    gm = torch.export.export(net, (example,)).module()
    logs = []
    ctx = PassContext(selects=make_selector("fx"), datasets={"train": data}, example_inputs={"x": example.numpy()},
                      log=logs.append)
    ctx.reference_module = net  # the build's original module (PassContext.reference_module)
    get_pass("prune_channels")(ratio=0.5).run("fx", gm, ctx)
    return net, gm, ctx, x, logs


def _gap(net, gm, x, batch):
    with torch.no_grad():
        return float(torch.cat([(gm(x[i:i + batch]) - net(x[i:i + batch])).pow(2).mean(1)
                                for i in range(0, len(x), batch)]).mean())


@pytest.mark.parametrize("literal_batch, labels", [(None, False), (2, True)])
def test_distill_closes_the_gap_to_the_original(literal_batch, labels):
    net, gm, ctx, x, logs = _setup(literal_batch, labels)
    batch = literal_batch or 1
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = _gap(net, gm, x, batch)

    steps, size = (40, 16) if literal_batch is None else (10, 4)  # micro-batches of 2 are slow: fewer
    result = get_pass("distill")(data="train", steps=steps, lr=3e-3, batch_size=size).run("fx", gm, ctx)

    gm.graph.lint()
    after = _gap(net, gm, x, batch)
    assert result.changed and after < (0.5 if literal_batch is None else 0.9) * before, (before, after)
    first, last = (float(v) for v in result.summary.split("loss ")[1].split(" → "))
    assert last < first or literal_batch  # 10 steps of 4 samples: too noisy to compare two steps
    assert ("with labels" if labels else "no labels") in result.details[0]
    assert f"micro-batches of {16 if literal_batch is None else 2}" in result.details[0]
    assert len([m for m in logs if f"/{steps} " in m]) == 10 and logs[-1].startswith(f"distill: step {steps}/")
    assert not list(gm.parameters())  # trained weights are plain constants again
    for k, v in net.state_dict().items():  # the original (the build's reference) is untouched
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_distill_needs_the_original_model():
    _, gm, ctx, _, _ = _setup()
    ctx.reference_module = None
    with pytest.raises(PassError, match="original model"):
        get_pass("distill")(data="train", steps=1).run("fx", gm, ctx)
