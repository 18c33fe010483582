"""targets/cpu/fold_numpy.py: constant calls folded with numpy give the constants TVM's FoldConstant gives, bit for
bit, without compiling a kernel per call (MobileNetV2's 313 batch-norm calls took FoldConstant 8 s)."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax

from aglmc.targets import frontend
from aglmc.targets.cpu.fold_numpy import fold_constants_numpy


class _ConvBn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        with torch.no_grad():
            for t in (self.bn.weight, self.bn.bias, self.bn.running_mean):
                t.copy_(torch.randn(8, generator=g))
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.1)
        self.scale = torch.nn.Parameter(torch.randn(4, 2, generator=g))

    def forward(self, x):
        y = self.bn(self.conv(x))
        s = (self.scale.t().reshape(8) * 2.0 - 1.0) / 3.0  # constant-only arithmetic and data movement
        return y * s.view(1, 8, 1, 1)


def _calls(mod):
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                names.append(value.op.name)
    return names


def _constants(mod):
    out = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            for arg in getattr(binding.value, "args", []):
                if isinstance(arg, tvm.ir.expr.Constant):
                    out.append(arg.value.numpy())
    return out


def test_constant_calls_fold_as_fold_constant_folds_them():
    model = _ConvBn().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mod = relax.transform.DecomposeOpsForInference()(frontend.relax_from_torch(model, (x,)))
    before = _calls(mod)
    folded = fold_constants_numpy(mod)
    after = _calls(folded)
    print("\nbefore:", before, "\nafter: ", after)
    assert before.count("relax.sqrt") == 1 and "relax.sqrt" not in after  # sqrt(var + eps) is a constant now
    assert "relax.expand_dims" not in after and "relax.permute_dims" not in after
    assert len(after) < len(before)
    assert {"relax.nn.conv2d", "relax.multiply"} <= set(after)  # what reads x stays

    # the same constants as TVM's FoldConstant computes (one compiled kernel per call), bit for bit
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        reference = relax.transform.FoldConstant()(relax.transform.LegalizeOps()(mod))
        ours = relax.transform.FoldConstant()(relax.transform.LegalizeOps()(folded))
    ref_consts = sorted((c for c in _constants(reference)), key=lambda a: (a.shape, a.ravel()[:1].tolist()))
    our_consts = sorted((c for c in _constants(ours)), key=lambda a: (a.shape, a.ravel()[:1].tolist()))
    assert [c.shape for c in ref_consts] == [c.shape for c in our_consts]
    for a, b in zip(ref_consts, our_consts):
        np.testing.assert_array_equal(a, b)

    # and the compiled module computes what torch does
    exe = tvm.compile(folded, target)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
