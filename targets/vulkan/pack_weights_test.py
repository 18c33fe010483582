"""PackWeights: dequantized int8 / int4 weight constants become u32 words unpacked inside one kernel per conv2d /
matmul (before/after on Relax), no float copy of a weight survives constant folding, and the numerics equal the
Q/DQ graph's (the integer path: the host's integer kernels')."""

import re
from collections import Counter

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import make_selector
from aglmc.targets.frontend import relax_from_torch
from aglmc.targets.quant.lower_qdq import lower_qdq
from aglmc.targets.vulkan.pack_weights import PackReport, pack, pack_weights, unpack, weight_bits


def _ops(mod) -> Counter:
    """Relax ops and called kernels (by name without the suffix that keeps names unique) of every Relax function."""
    found = Counter()

    def visit(e):
        if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op):
            name = str(e.op.name)
            if name == "relax.call_tir":
                name = re.sub(r"(_int[48](?:_int)?)\d*$", r"\1", e.args[0].name_hint)
            found[name] += 1

    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return found


def _constants(mod) -> Counter:
    """(dtype, size) of every constant in main after legalization and constant folding: what a library stores."""
    with tvm.target.Target("llvm"):
        folded = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.FoldConstant()])(mod)
    found = Counter()
    relax.analysis.post_order_visit(folded["main"], lambda e: found.update([(str(e.ty.dtype), int(
        np.prod(e.value.shape)))]) if isinstance(e, tvm.ir.expr.GenericConst) else None)
    return found


def _compiled(mod):
    """``main`` of ``mod`` built for this CPU, as a function of numpy arrays returning the first output."""
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())

    def run(*args):
        out = vm["main"](*[tvm.runtime.tensor(a) for a in args])
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    return run


def _run(mod, x):
    return _compiled(mod)(x)


def _quantized(net, x, kind, **params):
    """``net`` through an aglmc quantization pass, imported to Relax as every target receives it."""
    gm = torch.export.export(net.eval(), (x,)).module()
    from aglmc.compiler.data import Dataset

    data = np.random.default_rng(0).standard_normal((16,) + tuple(x.shape[1:])).astype(np.float32)
    ctx = PassContext(selects=make_selector("fx"), datasets={"calib": Dataset("calib", {"x": data}, None)},
                      example_inputs={"x": x.numpy()})
    get_pass(kind)(**params).run("fx", gm, ctx)
    return relax_from_torch(gm, (x,))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 40))


class _Block(torch.nn.Module):
    """conv, depthwise conv (stride 2), linear: the static int8 path."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.fc = torch.nn.Linear(8 * 3 * 3, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.dw(torch.relu(self.conv(x)))).flatten(1))


def test_pack_layout_is_mlc_style_and_round_trips():
    assert hex(pack(np.array([[-1, 2, 7, -8, 0, 0, 0, 1]]), 4)[0, 0]) == "0x1000872f"  # the docstring's word
    rng = np.random.default_rng(0)
    for bits, lo, hi in ((4, -8, 7), (8, -128, 127)):
        q = rng.integers(lo, hi + 1, size=(5, 37))  # 37: a short last word, zero-padded
        words = pack(q, bits)
        assert words.dtype == np.uint32 and words.shape == (5, -(-37 // (32 // bits)))
        assert np.array_equal(unpack(words, bits, 37), q) and weight_bits(q) == bits


def test_int4_groups_before_and_after():
    """Before: dequantize(reshape(Wq)) -> reshape -> permute_dims -> matmul per linear, Wq an int8 constant the
    folding turns into float32. After: one matmul_packed_int4 kernel per linear, reading u32 words."""
    x = torch.randn(1, 3, 64)
    before = _quantized(_mlp(), x, "quantize_weights", bits=4, group_size=32)
    report = PackReport()
    after = pack_weights(before, report)

    assert _ops(before)["relax.dequantize"] == 2 and _ops(before)["relax.matmul"] == 2
    ops = _ops(after)
    assert ops["relax.dequantize"] == 0 and ops["relax.matmul"] == 0 and ops["matmul_packed_int4"] == 2
    # a library stores the packed words and the group scales, never a float copy of a weight
    assert _constants(before)[("float32", 96 * 64)] == 1  # folded dequantize: the float copy
    stored = _constants(after)
    assert stored[("uint32", 96 * 64 // 8)] == 1 and stored[("uint32", 40 * 96 // 8)] == 1
    assert stored[("float32", 96 * 64)] == 0 and stored[("float32", 40 * 96)] == 0
    assert report.float_bytes == 4 * (96 * 64 + 40 * 96)
    assert report.packed_bytes == (96 * 64 + 40 * 96) // 2 + 4 * (96 * 2 + 40 * 3)  # nibbles + a scale per 32
    assert report.packed[0] == "main/lv8: matmul, float x int4 groups of 32, 96x64: 3,840 B packed (24,576 B as " \
                               "float32)" and report.left == []
    want = _run(before, x.numpy())
    assert np.abs(_run(after, x.numpy()) - want).max() <= 1e-6 * np.abs(want).max()


def test_int8_per_channel_uses_eight_bits():
    x = torch.randn(1, 3, 64)
    before = _quantized(_mlp(), x, "quantize_weights", bits=8)
    after = pack_weights(before)
    assert _ops(after)["matmul_packed_int8"] == 2
    assert _constants(after)[("uint32", 96 * 64 // 4)] == 1
    want = _run(before, x.numpy())
    assert np.abs(_run(after, x.numpy()) - want).max() <= 1e-6 * np.abs(want).max()


def test_static_int8_sums_in_int32_like_the_host():
    """Static Q/DQ: the activations are int8 too, so the kernels sum int32 products (zero point subtracted in the
    kernel, padding taps 0) and rescale after: the same integers the host's LowerQDQ kernels sum."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    before = _quantized(_Block(), x, "quantize_static", data="calib", samples=16)
    report = PackReport()
    after = pack_weights(before, report)
    ops = _ops(after)
    assert (ops["conv2d_packed_int8_int"], ops["matmul_packed_int8_int"], ops["relax.nn.conv2d"]) == (2, 1, 0)
    assert all(p.split(": ")[1].startswith(("conv2d, int8 activations", "matmul, int8 activations"))
               for p in report.packed)
    stored = _constants(after)
    assert stored[("float32", 8 * 4 * 9)] == 0 and stored[("float32", 16 * 72)] == 0 and stored[("uint32", 16 * 18)]
    host, packed = _compiled(lower_qdq(before)), _compiled(after)
    for sample in np.random.default_rng(1).standard_normal((4, 1, 4, 6, 6)).astype(np.float32):
        want = host(sample)
        assert np.abs(packed(sample) - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


def _hand_made(zero_point: int, table: bool, transposed: bool = True):
    """matmul(x, permute_dims(dequantize(Wq[8, 16], s, z, axis 0))) (FX linear; ``transposed=False``: the ONNX
    MatMul form matmul(x, dequantize(Wq[16, 8], s, z, axis 1))) and, optionally, a take from another dequantized
    constant (an int8 embedding table)."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 16], "float32"))
    ids = relax.Var("ids", relax.TensorType([2], "int32"))
    wq = rng.integers(-100, 100, (8, 16)).astype("int8")
    with bb.function("main", [x, ids]):
        with bb.dataflow():
            w = bb.emit(relax.op.dequantize(relax.const(wq if transposed else np.ascontiguousarray(wq.T)),
                                            relax.const(np.linspace(0.01, 0.02, 8, dtype="float32")),
                                            relax.const(np.full(8, zero_point, "int8")), axis=0 if transposed else 1),
                        name_hint="w")
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w, [1, 0]) if transposed else w), name_hint="y")
            if table:
                e = bb.emit(relax.op.dequantize(relax.const(rng.integers(-100, 100, (10, 8)).astype("int8")),
                                                relax.const(0.02, "float32"), relax.const(0, "int8")), name_hint="emb")
                y = bb.emit(relax.op.add(y, relax.op.take(e, ids, axis=0)), name_hint="z")
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def test_other_forms_are_left_as_float_and_reported():
    report = PackReport()
    after = pack_weights(_hand_made(zero_point=3, table=True), report)
    assert _ops(after)["relax.dequantize"] == 2 and report.packed == []
    assert report.left == ["main/w (8x16): its zero point is not 0 (asymmetric weights)",
                           "main/emb (10x8): read by relax.take, which PackWeights does not rewrite"]


@pytest.mark.parametrize("transposed", [True, False], ids=["linear", "onnx_matmul"])
def test_hand_made_symmetric_weight_is_packed(transposed):
    before = _hand_made(zero_point=0, table=False, transposed=transposed)
    after = pack_weights(before)
    assert _ops(after)["matmul_packed_int8"] == 1 and _ops(after)["relax.dequantize"] == 0
    x, ids = np.random.default_rng(2).standard_normal((2, 16)).astype("float32"), np.zeros(2, "int32")
    assert np.abs(_compiled(after)(x, ids) - _compiled(before)(x, ids)).max() < 1e-5


def test_a_module_without_dequantized_constants_is_the_same_object():
    plain = relax_from_torch(_mlp().eval(), (torch.randn(1, 64),))
    assert pack_weights(plain) is plain


@pytest.mark.parametrize("bits", [4, 8])
def test_symbolic_rows_keep_their_shape(bits):
    """prefill's token count is symbolic: the packed kernel keeps it (one kernel for every length)."""
    net = _mlp()
    gm = torch.export.export(net.eval(), (torch.randn(1, 5, 64),),
                             dynamic_shapes=({1: torch.export.Dim("n", min=1, max=32)},)).module()
    ctx = PassContext(selects=make_selector("fx"), example_inputs={"x": np.zeros((1, 5, 64), np.float32)})
    get_pass("quantize_weights")(bits=bits, group_size=32 if bits == 4 else 0).run("fx", gm, ctx)
    from tvm.relax.frontend.torch import from_exported_program

    from aglmc.targets.quant import TORCH_QDQ_CONVERTERS

    program = torch.export.export(gm, (torch.randn(1, 5, 64),),
                                  dynamic_shapes=({1: torch.export.Dim("n", min=1, max=32)},))
    before = from_exported_program(program, keep_params_as_input=False, custom_convert_map=TORCH_QDQ_CONVERTERS)
    after = pack_weights(before)
    assert _ops(after)[f"matmul_packed_int{bits}"] == 2
    x = np.random.default_rng(3).standard_normal((1, 7, 64)).astype("float32")
    want = _run(before, x)
    assert want.shape == (1, 7, 40) and np.abs(_run(after, x) - want).max() <= 1e-6 * np.abs(want).max()
