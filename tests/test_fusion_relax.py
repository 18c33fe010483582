"""targets/relax_fusion.py: kernel counts before/after on the digits CNN and MobileNetV2, outputs unchanged.

Each model goes through aglmc's torch frontend (``targets.frontend.relax_from_torch``), TVM's
``DecomposeOpsForInference`` and ``FoldConstant``; the kernel count is the number of PrimFuncs after TVM's CPU
legalization and fusion (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR). Both the module
with and the one without :func:`fuse_patterns` are built with ``tvm.compile`` for plain LLVM and must agree to
1e-5 (relative to the output's magnitude), and with torch.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import EXAMPLES, reinit_for_numerics

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from aglmc.passes.base import PassContext, get_pass  # noqa: E402
from aglmc.passes.select import make_selector  # noqa: E402
from aglmc.targets.frontend import relax_from_torch  # noqa: E402
from aglmc.targets.relax_fusion import RULES, FusePatterns, count_kernels, fuse_patterns  # noqa: E402

torch.set_num_threads(1)


def _digits():
    spec = importlib.util.spec_from_file_location("aglmc_example_digits_model", EXAMPLES / "01_digits_cnn" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, _ = module.build()
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (1, 1, 8, 8)).astype(np.float32))
    return model, (x,)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def _mobilenet_v2():
    """transformers' MobileNetV2 at a tiny config, re-initialised so its logits depend on the input (the
    library's own init makes them ~1e-25)."""
    import transformers as T

    config = T.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10)
    torch.manual_seed(0)
    model = T.MobileNetV2ForImageClassification(config).eval()
    reinit_for_numerics(model, seed=1)
    return _Logits(model).eval(), (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)),)


def _relax(model, args, fold_batchnorm=False):
    """The Relax module the CPU pipeline fuses: imported, batch norms decomposed, constants folded (folding
    first keeps the test fast: each constant expression is compiled once, not once per kernel count)."""
    if fold_batchnorm:  # what a schedule's `pass fold_batchnorm` leaves (and a faster test)
        model = torch.export.export(model, args).module()
        result = get_pass("fold_batchnorm")().run("fx", model, PassContext(selects=make_selector("fx")))
        assert result.changed
    mod = relax.transform.DecomposeOpsForInference()(relax_from_torch(model, args))
    return relax.transform.FoldConstant()(mod)


def _run(mod, args):
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _check_outputs(model, args, before, after):
    with torch.no_grad():
        reference = model(*args).numpy()
    scale = max(1.0, float(np.abs(reference).max()))
    unfused, fused = _run(before, args), _run(after, args)
    assert np.abs(fused - unfused).max() <= 1e-5 * scale
    assert np.abs(fused - reference).max() <= 1e-4 * scale


@pytest.mark.slow
def test_digits_cnn_kernel_count():
    model, args = _digits()
    mod = _relax(model, args)
    assert count_kernels(mod) == 6  # 3 conv+bn+relu, max_pool2d, reshape, matmul+add

    fused, report = fuse_patterns(mod)
    assert count_kernels(fused) == 5  # the flatten joined the dense layer
    assert report.lines() == ["flatten_dense: applied at lv24 = matmul -> 1x10"]

    pooled, report = fuse_patterns(mod, RULES)  # conv2d_pool too (off by default: see the module docstring)
    assert count_kernels(pooled) == 4
    assert "conv2d_pool: applied at lv12 = nn.max_pool2d -> 1x32x4x4" in report.lines()
    _check_outputs(model, args, mod, fused)
    _check_outputs(model, args, mod, pooled)


@pytest.mark.slow
def test_mobilenet_v2_kernel_count():
    model, args = _mobilenet_v2()
    mod = _relax(model, args, fold_batchnorm=True)
    assert count_kernels(mod) == 52

    step = FusePatterns()  # the module-pass form a pipeline uses
    fused = step(mod)
    assert count_kernels(fused) == 32  # 52 pads folded into their convolutions; flatten joined the classifier
    assert step.report.summary() == ("fold_pad_conv2d 52 applied / 0 declined; "
                                     "flatten_dense 1 applied / 0 declined")
    _check_outputs(model, args, mod, fused)


class _NearMisses(torch.nn.Module):
    """A pad with ones (a convolution pads with zeros), a flatten read twice, and a pool after a pool."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        y = self.conv(torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0))
        y = torch.nn.functional.max_pool2d(torch.relu(self.conv2(y)), 2)
        y = torch.nn.functional.max_pool2d(y, 2)
        flat = y.flatten(1)
        return self.fc(flat), flat * 2


def test_declined_sites_say_why():
    torch.manual_seed(0)
    model = _NearMisses().eval()
    args = (torch.randn(1, 2, 8, 8),)
    fused, report = fuse_patterns(_relax(model, args), RULES)
    lines = report.lines()

    def has(prefix, text):
        return any(line.startswith(prefix) and text in line for line in lines)

    assert has("fold_pad_conv2d: declined at", "pads with 1.0, not 0 (a convolution pads with zeros)"), lines
    assert has("flatten_dense: declined at", "is also read elsewhere"), lines
    assert has("conv2d_pool: applied at", ""), lines
    assert has("conv2d_pool: declined at", "not from a conv2d and its epilogue"), lines
    assert report.applied() == 1
