"""LowerQDQ and the int8 rule: Q/DQ chains become int8 x int8 -> int32 kernels (before/after on Relax), the
compiled numerics match the Q/DQ graph, sdot appears for a dotprod core, and the ARM libraries of the digits
int8 and GLM int4 builds run on the emulated board exactly as on the host."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import make_selector
from aglmc.targets.cpu import compile_cpu
from aglmc.targets.cpu.pipeline import cpu_pipeline
from aglmc.targets.frontend import relax_from_torch
from aglmc.targets.host import HostTarget
from aglmc.targets.quant.lower_qdq import LoweringReport, activation_type, lower_qdq

HOST = HostTarget.tvm_target({"threads": 1})
ARM_DOTPROD = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                                 "mattr": ["+neon", "+dotprod"], "num-cores": 1})


def _ops(mod) -> Counter:
    found = Counter()

    def visit(expr):
        if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
            name = str(expr.op.name)
            if name == "relax.call_tir":  # a kernel: count it by name (int8_matmul, im2col ...)
                name = expr.args[0].name_hint.rstrip("0123456789")
            found[name] += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8 * 6 * 6, 16)

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(y.flatten(1))


def _quantized(kind: str, **params):
    from aglmc.compiler.data import Dataset

    torch.manual_seed(0)
    net = _Block().eval()
    x = torch.randn(1, 4, 6, 6)
    gm = torch.export.export(net, (x,)).module()
    data = np.random.default_rng(0).standard_normal((16, 4, 6, 6)).astype(np.float32)
    ctx = PassContext(selects=make_selector("fx"), datasets={"calib": Dataset("calib", {"x": data}, None)},
                      example_inputs={"x": x.numpy()})
    get_pass(kind)(**params).run("fx", gm, ctx)
    return gm, x


def _run(exe, x):
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def test_static_qdq_becomes_integer_kernels_with_the_same_numerics():
    gm, x = _quantized("quantize_static", data="calib", samples=16)
    mod = relax_from_torch(gm, (x,))
    before = _ops(mod)
    assert before["relax.dequantize"] == 4 + 3  # x, relu1, relu2, flatten (fc's input); three weights
    assert before["relax.nn.conv2d"] == 2 and before["relax.matmul"] == 1
    report = LoweringReport()
    after = _ops(lower_qdq(mod, report, activations="int8"))
    # conv (groups 1) and fc: int8_matmul kernels; the depthwise conv: an int32-accumulating conv2d
    assert after["int8_matmul"] == 2 and after["im2col"] == 1 and after["relax.nn.conv2d"] == 1
    # what is left dequantized feeds the flatten, a float reshape between two Q/DQ
    assert after["relax.dequantize"] == 1 and after["relax.matmul"] == 0
    assert len(report.integer) == 3 and not report.left and not report.weight_only
    with torch.no_grad():
        reference = gm(x).numpy()
    exe, schedule = compile_cpu(mod, HOST)
    got = _run(exe, x.numpy())
    assert np.abs(got - reference).max() <= 1e-3 * max(1.0, np.abs(reference).max())
    assert str(schedule).count(" int8_matmul ") == 2  # both kernels scheduled by the int8 rule


def test_dynamic_and_weight_only_lowering():
    gm, x = _quantized("quantize_dynamic")
    report = LoweringReport()
    after = _ops(lower_qdq(relax_from_torch(gm, (x,)), report))
    assert after["int8_matmul"] == 1 and len(report.integer) == 1  # fc: run-time scale folded into the epilogue
    torch.manual_seed(0)  # per token: 8 rows (tokens), each with its own run-time scale and zero point
    x = torch.randn(1, 8, 16) * torch.logspace(-1, 1, 8)[None, :, None]
    gm = torch.export.export(torch.nn.Linear(16, 32).eval(), (x,)).module()
    get_pass("quantize_dynamic")(granularity="per_token").run(
        "fx", gm, PassContext(selects=make_selector("fx"), example_inputs={"x": x.numpy()}))
    report = LoweringReport()
    mod = relax_from_torch(gm, (x,))
    assert _ops(lower_qdq(mod, report))["int8_matmul"] == 1 and "a scale per row" in report.integer[0]
    with torch.no_grad():
        reference = gm(x).numpy()
    exe, _ = compile_cpu(mod, HOST)
    np.testing.assert_allclose(_run(exe, x.numpy()), reference, rtol=1e-4, atol=1e-4)
    gm, x = _quantized("quantize_weights", bits=4, group_size=32)
    mod = relax_from_torch(gm, (x,))
    report = LoweringReport()
    after = _ops(lower_qdq(mod, report))
    assert after["matmul_int_weights"] == 1 and "int4 weights, groups of 32" in report.weight_only[0]
    with torch.no_grad():
        reference = gm(x).numpy()
    exe, _ = compile_cpu(mod, HOST)
    np.testing.assert_allclose(_run(exe, x.numpy()), reference, rtol=1e-4, atol=1e-4)


def test_module_without_qdq_is_untouched():
    torch.manual_seed(0)
    net = _Block().eval()
    mod = relax_from_torch(net, (torch.zeros(1, 4, 6, 6),))
    assert lower_qdq(mod) is mod


def test_activation_type_follows_the_target():
    assert activation_type(ARM_DOTPROD) == "int8" and activation_type(HOST) == "uint8"


def test_int8_rule_lets_llvm_emit_sdot_on_dotprod():
    gm, x = _quantized("quantize_dynamic")
    lowered = cpu_pipeline(ARM_DOTPROD)(relax_from_torch(gm, (x,)))
    kernels = [(gv.name_hint, f) for gv, f in lowered.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and "int8_matmul" in gv.name_hint]
    assert kernels and all(f.attrs["aglmc.schedule_rule"] == "int8_matmul" for _, f in kernels)
    name, func = kernels[0]
    asm = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), ARM_DOTPROD) \
        .mod.inspect_source("asm")
    assert re.search(r"\bsdot\b", asm), f"no sdot in {name}"


def _example(folder: str, name: str):
    import importlib.util
    import sys

    from conftest import EXAMPLES

    spec = importlib.util.spec_from_file_location(f"aglmc_test_{folder}_{name}", EXAMPLES / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the module look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_int8_and_int4_arm_libraries_match_host_on_the_emulated_board(emulated_board, tmp_path):
    """The digits CNN with static int8 and the GLM-style decoder with int4 weights (groups of 32), built for a
    cortex-a76 +dotprod board: its outputs equal the host library's."""
    from aglmc.compiler.data import Dataset
    from aglmc.targets import board
    from aglmc.targets.arm import ArmTarget
    from aglmc.targets.run import HostRunner

    digits, digits_data = _example("01_digits_cnn", "model"), _example("01_digits_cnn", "data")
    net, (x,) = digits.build()
    gm = torch.export.export(net, (x,)).module()
    ctx = PassContext(selects=make_selector("fx"), example_inputs={"x": x.numpy()},
                      datasets={"calib": Dataset("calib", digits_data.calibration(), None)})
    get_pass("fold_batchnorm")().run("fx", gm, ctx)
    get_pass("quantize_static")(data="calib", samples=32).run("fx", gm, ctx)
    digits_in = [digits_data.heldout()[0]["x"][:1]]

    glm = _example("03_glm_tiny", "model")
    net, (ids,) = glm.build()
    glm_gm = torch.export.export(net, (ids,)).module()
    get_pass("quantize_weights")(bits=4, group_size=32).run(
        "fx", glm_gm, PassContext(selects=make_selector("fx"), example_inputs={"input_ids": ids.numpy()}))
    glm_in = [np.random.default_rng(1).integers(0, 256, (1, 32)).astype(np.int64)]

    arm = {"cpu": "cortex-a76", "features": ["+neon", "+dotprod"], "threads": 1}
    for name, model, example, inputs in (("digits", gm, x, digits_in), ("glm", glm_gm, ids, glm_in)):
        mod = relax_from_torch(model, (example,))
        HostTarget.build(mod, {"threads": 1}, tmp_path / f"{name}_host.so")
        ArmTarget.build(mod, arm, tmp_path / f"{name}_arm.so")
        want = HostRunner(tmp_path / f"{name}_host.so").run(inputs)
        got = board.run_on_board(tmp_path / f"{name}_arm.so", inputs, emulated_board.spec, timeout=300)
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) <= 1e-5, name
