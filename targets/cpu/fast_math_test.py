"""FastMath: before, softmax and GELU are Relax ops that legalize to libm calls per element; after, they are
TOPI's polynomial kernels, within a few float32 ulps of PyTorch."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from aglmc.targets.cpu.fast_math import fast_math


class _Block(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x) + torch.softmax(x, -1) + torch.tanh(x) + torch.exp(-x * x)


def _ops(mod: tvm.IRModule) -> list[str]:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e.op.name)
                                    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return found


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fast_math_replaces_transcendentals_and_keeps_numerics(approximate):
    torch.manual_seed(0)
    x = torch.randn(8, 96) * 3

    class Model(_Block):
        def forward(self, x):
            return torch.nn.functional.gelu(x, approximate=approximate) + super().forward(x)

    model = Model().eval()
    before = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    after = fast_math(before)
    assert {"relax.nn.softmax", "relax.exp", "relax.tanh"} <= set(_ops(before))
    gelu = "relax.nn.gelu" if approximate == "none" else "relax.nn.gelu_tanh"
    assert gelu in _ops(before)
    assert not {"relax.nn.softmax", "relax.exp", "relax.tanh", gelu} & set(_ops(after))  # now call_tir
    target = tvm.target.Target({"kind": "llvm"})
    lib = tvm.compile(after, target)
    out = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    out = out[0] if not hasattr(out, "numpy") else out
    np.testing.assert_allclose(out.numpy(), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_non_float32_tensors_are_left_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.exp(x))
        bb.emit_func_output(y)
    mod = bb.get()
    assert _ops(fast_math(mod)) == ["relax.exp"]
