"""aglmc's CPU schedule rules: each rule against a numpy/torch reference, on shapes that divide its tiles
and shapes that do not, with the scheduled TIR checked for the rule, parallel loops and vector loops; then
whole small models, which must leave no function unscheduled."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.relax.frontend.torch import from_exported_program
from tvm.target.codegen import llvm_get_system_cpu

from aglmc.errors import TargetError
from aglmc.targets.cpu import compile_cpu, pipeline_steps, vector_isa
from aglmc.targets.cpu.rules.gemm_kernel import MIN_PARALLEL_MACS, RegisterTile

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": 2})
torch.set_num_threads(1)


def _torch_module(model: torch.nn.Module, *inputs: torch.Tensor) -> tvm.IRModule:
    exported = torch.export.export(model.eval(), tuple(inputs))
    return from_exported_program(exported, keep_params_as_input=False)


def _scheduled(mod: tvm.IRModule) -> tvm.IRModule:
    """The module right after the schedule step (PrimFuncs still hold their packing blocks)."""
    with TARGET:
        for name, step in pipeline_steps(TARGET):
            mod = step(mod)
            if name == "schedule":
                return mod
    raise AssertionError("pipeline has no schedule step")


def _loop_kinds(func: tirx.PrimFunc) -> set[tirx.ForKind]:
    sch = tvm.s_tir.Schedule(func)
    kinds = set()

    def walk(parent):
        for block in sch.get_child_blocks(parent):
            for loop in sch.get_loops(block):
                kinds.add(tirx.ForKind(int(sch.get(loop).kind)))
            walk(block)

    walk(sch.get_sblock("root"))
    return kinds


def _run(mod: tvm.IRModule, *inputs: np.ndarray) -> tuple[np.ndarray, object]:
    executable, report = compile_cpu(mod, TARGET)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    if not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy(), report


def _check_rule(mod: tvm.IRModule, rule: str, *, parallel: bool = True, vector: bool = True) -> None:
    """The function(s) of ``mod`` went to ``rule`` and carry vector and parallel loops (where expected:
    small work is not parallelised, and a row of prime length > 2 vectors is not vectorised)."""
    scheduled = _scheduled(mod)
    funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)]
    ruled = [f for f in funcs if f.attrs.get("aglmc.schedule_rule") == rule]
    assert ruled, f"no function went to {rule}: {[f.attrs.get('aglmc.schedule_rule') for f in funcs]}"
    for func in ruled:
        kinds = _loop_kinds(func)
        if vector:
            assert tirx.ForKind.VECTORIZED in kinds, kinds
        if parallel:
            assert tirx.ForKind.PARALLEL in kinds, kinds


# ---------------------------------------------------------------------------------------------- target
def test_vector_isa_and_register_tiles():
    avx512 = vector_isa(tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}))
    avx2 = vector_isa(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    neon = vector_isa(
        tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"]})
    )
    assert (avx512.name, avx512.lanes(), avx512.registers, avx512.num_cores) == ("avx512", 16, 32, 2)
    assert (avx2.name, avx2.lanes(), avx2.registers, avx2.num_cores) == ("avx2", 8, 16, 1)
    assert (neon.name, neon.lanes(), neon.registers) == ("neon", 4, 32)
    assert RegisterTile.for_problem(avx512, "float32", 512, 512) == RegisterTile(4, 64)
    assert RegisterTile.for_problem(avx2, "float32", 512, 512) == RegisterTile(6, 16)
    # NEON: a constant broadcast operand is packed at compile time (8 x 3 vectors: 24 accumulators); a
    # run-time one is read in place, four k per row, and its tile rows divide the operand's rows
    assert RegisterTile.for_problem(neon, "float32", 2304, 32) == RegisterTile(8, 12, "packed")
    assert RegisterTile.for_problem(neon, "float32", 256, 256, constant_rows=False) == RegisterTile(4, 16, "in place")
    assert RegisterTile.for_problem(neon, "float32", 100, 250, constant_rows=False).mr == 5
    assert RegisterTile.for_problem(avx512, "float32", 10, 1) == RegisterTile(1, 16)


def test_non_cpu_target_is_a_target_error():
    with pytest.raises(TargetError, match="llvm target"):
        vector_isa(tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))


# ---------------------------------------------------------------------------------------------- matmul
def _dense_module(m: int, n: int, k: int, rng) -> tuple[tvm.IRModule, np.ndarray, np.ndarray]:
    weight = rng.standard_normal((k, n)).astype("float32")
    bias = rng.standard_normal((n,)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(weight)))
            y = bb.emit(relax.op.add(y, relax.const(bias)))
            y = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    return bb.get(), weight, bias


def _dense_matches_numpy(m: int, n: int, k: int, seed: int):
    """Build relu(x @ W + b) with the rules, check it against numpy and that the matmul rule took it."""
    rng = np.random.default_rng(seed)
    mod, weight, bias = _dense_module(m, n, k, rng)
    x = rng.standard_normal((m, k)).astype("float32")
    out, report = _run(mod, x)
    np.testing.assert_allclose(out, np.maximum(x @ weight + bias, 0), rtol=1e-4, atol=1e-4)
    assert {e.rule for e in report.functions} == {"matmul"}
    return mod, report


@pytest.mark.parametrize("m,n,k", [(64, 128, 32), (37, 53, 29), (1, 10, 16), (128, 256, 64)])
def test_matmul_dense_bias_relu(m, n, k):
    mod, report = _dense_matches_numpy(m, n, k, seed=0)
    assert [e.macs for e in report.functions] == [m * n * k]
    _check_rule(mod, "matmul", parallel=m * n * k >= MIN_PARALLEL_MACS)  # small GEMMs stay on one core


@pytest.mark.parametrize("b,m,n,k", [(2, 17, 33, 20), (3, 64, 64, 16)])
def test_batch_matmul_transposed_runtime_operands(b, m, n, k):
    """Attention's Q @ K^T: both operands are activations, B is read transposed and packed at run time."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((b, m, k), "float32"))
    kt = relax.Var("k", relax.TensorType((b, n, k), "float32"))
    with bb.function("main", [q, kt]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(q, relax.op.permute_dims(kt, [0, 2, 1])))
        bb.emit_func_output(y)
    mod = bb.get()
    qv = rng.standard_normal((b, m, k)).astype("float32")
    kv = rng.standard_normal((b, n, k)).astype("float32")
    out, report = _run(mod, qv, kv)
    np.testing.assert_allclose(out, qv @ kv.transpose(0, 2, 1), rtol=1e-4, atol=1e-4)
    assert "matmul" in {e.rule for e in report.functions}
    _check_rule(mod, "matmul", parallel=False)


def test_matmul_writes_nothing_outside_its_output():
    """Padded tiles (37x53 over 4x64) must not spill: the output is a view into a canary-filled buffer."""
    rng = np.random.default_rng(2)
    mod, weight, bias = _dense_module(37, 53, 29, rng)
    scheduled = _scheduled(mod)
    (gvar,) = [g for g, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)]
    lib = tvm.compile(tvm.IRModule({"main": scheduled[gvar].with_attr("global_symbol", "main")}), TARGET)
    x = rng.standard_normal((37, 29)).astype("float32")
    canary = tvm.runtime.tensor(np.full(37 * 53 + 4096, 7.0, "float32"))
    out = canary._create_view((37, 53), "float32")
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight), tvm.runtime.tensor(bias), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(x @ weight + bias, 0), rtol=1e-4, atol=1e-4)
    assert (canary.numpy()[37 * 53 :] == 7.0).all()


# ---------------------------------------------------------------------------------------------- convolutions
@pytest.mark.parametrize(
    "cin,cout,hw,k,stride",
    [(16, 32, 16, 1, 1), (8, 13, 7, 1, 1), (3, 5, 9, 3, 2), (12, 16, 14, 3, 1)],
)
def test_conv2d_bias_relu6(cin, cout, hw, k, stride):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), torch.nn.ReLU6())
    x = torch.randn(1, cin, hw, hw)
    mod = _torch_module(model, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert {e.rule for e in report.functions} == {"conv2d"}
    _check_rule(mod, "conv2d", parallel=False)


class _ResidualConv(torch.nn.Module):
    """conv -> batch norm -> + residual -> relu, ResNet's block tail (the epilogue folds into the write-back)."""

    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = torch.nn.BatchNorm2d(cout)

    def forward(self, x, residual):
        return torch.relu(self.bn(self.conv(x)) + residual)


def _reads_padded_input_in_place(mod: tvm.IRModule) -> bool:
    """The direct form: the conv's multiply-accumulate block reads ``pad_temp`` itself, not a packed panel."""
    (func,) = [f for _, f in _scheduled(mod).functions_items()
               if isinstance(f, tirx.PrimFunc) and f.attrs.get("aglmc.schedule_rule") == "conv2d"]
    sch = tvm.s_tir.Schedule(func)
    update = sch.get(sch.get_sblock("conv2d_nchw_update"))
    return any(r.source.name == "pad_temp" for r in update.reads)


@pytest.mark.parametrize(
    "cin,cout,hw,k,stride,direct",
    [(16, 40, 14, 3, 1, True),    # K = 144: direct, pixel-major write-back; 40 channels pad to the tile
     (64, 24, 7, 3, 2, True),     # K = 576: channel-major write-back; 4 x 4 output pixels
     (64, 32, 7, 3, 1, True),     # 49 pixels: MR = 7
     (32, 16, 13, 3, 1, False),   # 169 pixels: no MR in 2..8 divides them, the packed kernel takes it
     (3, 16, 16, 3, 1, False)],   # K = 27: the write-back would cost more than the packing saves
)
def test_direct_conv2d_with_residual_epilogue(cin, cout, hw, k, stride, direct):
    """x86 k x k convolutions with a long reduction run directly (DirectConv): output channels as the vector
    side, input values broadcast from the padded input in place; the rest keep the packed GEMM."""
    torch.manual_seed(0)
    model = _ResidualConv(cin, cout, k, stride)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    x, residual = torch.randn(1, cin, hw, hw), torch.randn(1, cout, out_hw, out_hw)
    mod = _torch_module(model, x, residual)
    out, report = _run(mod, x.numpy(), residual.numpy())
    np.testing.assert_allclose(out, model(x, residual).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert "conv2d" in {e.rule for e in report.functions}
    if not vector_isa(TARGET).fma_by_lane:
        assert _reads_padded_input_in_place(mod) == direct
    _check_rule(mod, "conv2d", parallel=cin * k * k * cout * out_hw * out_hw >= MIN_PARALLEL_MACS)


def test_three_register_vectors_are_split_into_registers():
    """A 6x6 map is 36 pixels: a panel of three AVX-512 registers (48 floats). LLVM widens a <48 x float> and
    takes the accumulators apart lane by lane (measured 35x slower), so those loops are single registers."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(96, 64, 1), torch.nn.ReLU6())
    x = torch.randn(1, 96, 6, 6)
    mod = _torch_module(model, x)
    out, _ = _run(mod, x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    lanes = vector_isa(TARGET).lanes()
    (func,) = [f for _, f in _scheduled(mod).functions_items() if isinstance(f, tirx.PrimFunc)]
    sch = tvm.s_tir.Schedule(func)
    extents = []

    def walk(parent):
        for block in sch.get_child_blocks(parent):
            extents.extend(int(sch.get(loop).extent) for loop in sch.get_loops(block)
                           if tirx.ForKind(int(sch.get(loop).kind)) == tirx.ForKind.VECTORIZED)
            walk(block)

    walk(sch.get_sblock("root"))
    assert extents and all((e // lanes) & (e // lanes - 1) == 0 for e in extents if e > lanes), extents


@pytest.mark.parametrize("channels,hw,stride", [(16, 28, 1), (7, 7, 1), (24, 15, 2)])
def test_depthwise_conv2d(channels, hw, stride):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels), torch.nn.ReLU6()
    )
    x = torch.randn(1, channels, hw, hw)
    mod = _torch_module(model, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert {e.rule for e in report.functions} == {"depthwise_conv2d"}
    _check_rule(mod, "depthwise_conv2d", parallel=channels * hw * hw >= 8192)
    if stride > 1:
        _assert_packed_vector_code(mod)


@pytest.mark.parametrize(
    "pool,hw", [(torch.nn.MaxPool2d(2), 33), (torch.nn.MaxPool2d(3, stride=2, padding=1), 33), (torch.nn.AvgPool2d(3, 1, 1), 28)]
)
def test_pool2d(pool, hw):
    x = torch.randn(1, 16, hw, hw)
    mod = _torch_module(pool, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, pool(x).numpy(), rtol=1e-5, atol=1e-5)
    assert "pool2d" in {e.rule for e in report.functions}
    strided = pool.stride not in (1, (1, 1))
    _check_rule(mod, "pool2d", vector=not strided)
    if strided:  # the column loop is left to LLVM's loop vectoriser (contiguous loads + shuffles)
        _assert_packed_vector_code(mod)


def _assert_packed_vector_code(mod: tvm.IRModule) -> None:
    executable, _ = compile_cpu(mod, TARGET)
    assembly = "\n".join(m.inspect_source("s") for m in executable.mod.imports)
    assert re.search(r"\bv\w+ps\s.*%[yz]mm", assembly), "no packed 256/512-bit float instructions"


# ---------------------------------------------------------------------------------------------- reductions
class _RMSNorm(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


@pytest.mark.parametrize(
    "model,shape",
    [
        (torch.nn.Softmax(-1), (64, 128)),
        (torch.nn.Softmax(-1), (3, 37)),
        (torch.nn.LayerNorm(96), (128, 96)),
        (torch.nn.LayerNorm(29), (5, 29)),
        (_RMSNorm(64), (256, 64)),
    ],
)
def test_reductions(model, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    mod = _torch_module(model, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert "reduction" in {e.rule for e in report.functions}, report
    _check_rule(mod, "reduction", parallel=shape[0] >= 64, vector=shape[1] % 4 == 0)


# ---------------------------------------------------------------------------------------------- elementwise + fallback
def test_elementwise_chain_is_inlined_and_vectorised():
    x = torch.randn(2, 16, 32, 32)
    model = torch.nn.Sequential(torch.nn.Hardswish())
    mod = _torch_module(model, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert {e.rule for e in report.functions} == {"elementwise"}
    _check_rule(mod, "elementwise")


def test_fallback_schedules_what_no_rule_matches():
    """A lone reduction (sum over rows) matches no specific rule: the fallback parallelises its rows."""
    x = np.random.default_rng(3).standard_normal((256, 96)).astype("float32")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.sum(xv, axis=[1]))
        bb.emit_func_output(y)
    out, report = _run(bb.get(), x)
    np.testing.assert_allclose(out, x.sum(1), rtol=1e-4, atol=1e-4)
    assert {e.rule for e in report.functions} == {"fallback"}
    kinds = _loop_kinds([f for _, f in _scheduled(bb.get()).functions_items() if isinstance(f, tirx.PrimFunc)][0])
    assert tirx.ForKind.PARALLEL in kinds, kinds


# ---------------------------------------------------------------------------------------------- whole models
class _TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 24, 1)
        self.fc = torch.nn.Linear(24, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.nn.functional.max_pool2d(y, 2)
        y = torch.relu(self.pw(self.dw(y)))
        y = torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(y)


class _TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.Linear(96, 10))

    def forward(self, x):
        return self.net(x)


class _AttentionBlock(torch.nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return x + self.proj(y)


@pytest.mark.parametrize(
    "model,shape",
    [(_TinyCNN, (1, 3, 16, 16)), (_TinyMLP, (5, 48)), (_AttentionBlock, (1, 19, 32))],
    ids=["cnn", "mlp", "attention"],
)
def test_small_models_are_fully_scheduled(model, shape):
    torch.manual_seed(0)
    net = model().eval()
    x = torch.randn(*shape)
    mod = _torch_module(net, x)
    out, report = _run(mod, x.numpy())
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert report.unscheduled == [], str(report)
    assert sum(e.macs or 0 for e in report.functions) > 0


# ---------------------------------------------------------------------------------------------- aarch64, database
def test_aarch64_neon_build_uses_vector_fma():
    """Cross-compiles (no linking) and finds NEON vector FMAs in the matmul kernel's assembly."""
    arm = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"], "num-cores": 1}
    )
    mod, _, _ = _dense_module(32, 64, 48, np.random.default_rng(4))
    executable, report = compile_cpu(mod, arm)
    assert {e.rule for e in report.functions} == {"matmul"}
    assembly = "\n".join(m.inspect_source("s") for m in executable.mod.imports)
    assert re.search(r"\bfmla\s+v\d+\.4s", assembly), "no NEON fmla v.4s in the kernel"
    # the broadcast operand is multiplied by lane, four values per load (not one ld1r per value)
    assert re.search(r"\bfmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[3\]", assembly), "no fmla by element"


@pytest.fixture
def neon_rules(monkeypatch):
    """The rules schedule as for NEON (lane-broadcast GEMM tiles, single-register vectors) while the code is
    built for this host: the schedules' numerics are checked here, without an ARM machine."""
    from aglmc.targets.cpu.isa import VectorISA
    from aglmc.targets.cpu.rules import base

    monkeypatch.setattr(base, "vector_isa", lambda target: VectorISA("neon", 128, 32, 1))


@pytest.mark.parametrize("m,n,k", [(64, 128, 32), (37, 53, 29), (250, 100, 52), (1, 10, 16), (256, 256, 256)])
def test_neon_gemm_schedules_match_numpy(neon_rules, m, n, k):
    _dense_matches_numpy(m, n, k, seed=5)


def test_neon_batch_matmul_runtime_operands(neon_rules):
    rng = np.random.default_rng(6)
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((2, 20, 32), "float32"))
    kt = relax.Var("k", relax.TensorType((2, 33, 32), "float32"))
    with bb.function("main", [q, kt]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(q, relax.op.permute_dims(kt, [0, 2, 1])))
        bb.emit_func_output(y)
    qv, kv = rng.standard_normal((2, 20, 32)).astype("float32"), rng.standard_normal((2, 33, 32)).astype("float32")
    out, report = _run(bb.get(), qv, kv)
    np.testing.assert_allclose(out, qv @ kv.transpose(0, 2, 1), rtol=1e-4, atol=1e-4)
    assert "matmul" in {e.rule for e in report.functions}


@pytest.mark.parametrize(
    "cin,cout,hw,k,stride",
    [(96, 64, 6, 1, 1), (160, 40, 3, 1, 1), (3, 32, 20, 3, 2), (12, 16, 7, 3, 1), (16, 24, 48, 1, 1)],
)
def test_neon_conv2d_schedules_match_torch(neon_rules, cin, cout, hw, k, stride):
    """Pixels that wrap image rows (6x6, 3x3: vectors of 12 pixels over rows of 6 or 3), padded pixel
    tiles (49 over 12), a 27-long reduction (3x3x3: no run of four k) and MobileNetV2's 48x48 1x1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), torch.nn.ReLU6())
    x = torch.randn(1, cin, hw, hw)
    out, report = _run(_torch_module(model, x), x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert {e.rule for e in report.functions} == {"conv2d"}


def test_empty_database_leaves_everything_to_the_rules():
    mod, weight, bias = _dense_module(8, 16, 8, np.random.default_rng(5))
    executable, report = compile_cpu(mod, TARGET, database=ms.database.MemoryDatabase())
    assert {e.rule for e in report.functions} == {"matmul"}
    x = np.ones((8, 8), "float32")
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, np.maximum(x @ weight + bias, 0), rtol=1e-4, atol=1e-4)
