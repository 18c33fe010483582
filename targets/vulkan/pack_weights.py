"""PackWeights: int8 / int4 weight constants are stored in 32-bit words and unpacked inside the kernel that uses them.

WGSL has no 8-bit storage, so the vulkan target cannot keep an int8 weight as it is; left alone, a quantized
model's ``dequantize`` of a constant weight is folded by FoldConstant into a float32 constant, four (int8) or
eight (int4) times the bytes. This pass rewrites, before legalization, every conv2d / matmul whose weight is such a
dequantized integer constant into one kernel that reads the integers packed into ``u32`` words and dequantizes
them as it multiplies (the way MLC / WebLLM run quantized models on WebGPU)::

    matmul(x, permute_dims(dequantize(Wq[N, K], s[N], 0, axis=0)))                           (FX linear)
    matmul(x, dequantize(Wq[K, N], s[N], 0, axis=1))                                          (ONNX MatMul)
    matmul(x, permute_dims(reshape(dequantize(reshape(Wq, [N·G, g]), s, 0, 0), [N, K])))      (group-wise)
      →  matmul_packed(x, P, S)[.., n] = Σ_k x[.., k] · unpack(P, n, k) · S[n, k // g]
    conv2d(x, dequantize(Wq[O, I, kh, kw], s[O], 0, axis=0))      (NCHW / OIHW, any groups, strides, padding)
      →  conv2d_packed(x, P, S): the same with the weight as rows [O, I·kh·kw]

When ``x`` is itself a static dequantize of an 8-bit tensor, ``dequantize(xq, sx, zx)`` with one constant scale
and zero point (``quantize_static``), the kernel is integer and the rescale follows, as on the CPU targets
(:mod:`aglmc.targets.quant.lower_qdq`)::

    → astype(matmul_packed_int(astype(xq, int32), P), float32) · (sx · s)      Σ_k (xq - zx) · Wq exact in int32

so the vulkan library sums exactly what the host library sums. A reshape / permute_dims between that
dequantize and the matmul (``linear`` on 3-D inputs) is moved onto the integers.

Packing (:func:`pack`): the weight as rows ``[R, C]``; values in -8..7 take 4 bits (8 per word), other int8 values
8 bits (4 per word); element ``c`` of row ``r`` is bits ``b·(c mod m) .. b·(c mod m) + b - 1`` of word
``P[r, c div m]`` (``m = 32 / b``), the first element in the lowest bits, as MLC's ``q4f16`` layout. Unpacking
(:func:`unpack_expr`) is a shift, a mask and a sign extension ``(v xor 2^(b-1)) - 2^(b-1)``; the dequantizing stage
is inlined into the multiply by dlight's GPU schedules, so no float copy of a weight is ever stored.

Example: ``Wq = [[-1, 2, 7, -8, 0, 0, 0, 1]]`` (int4) is the one word ``0x1000872f``.

Requires: a Relax module straight from a frontend (before LegalizeOps and FoldConstant; flat functions, as
:func:`~aglmc.targets.quant.lower_qdq.lower_qdq` requires). Run first in the vulkan target's ``prepare``.
Guarantees: every matched weight is a ``uint32`` constant (plus its ``float32`` scales) read only by the kernel
that multiplies with it; results equal the Q/DQ graph's up to float rounding (exactly the host's integer sums on
the integer path). A weight in another form (zero point not 0, unsigned, consumed by another op) is left as it is
and listed in the :class:`PackReport` with the reason: it still runs, as a float constant after FoldConstant.
A module without a dequantized constant is returned unchanged (same object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import tvm
from tvm import relax, te

from aglmc.errors import TargetError
from aglmc.targets.relax_bindings import BindingView, replace_functions
from aglmc.targets.relax_bindings import op_name as _op_name

_DQ = "relax.dequantize"
_VIEWS = ("relax.reshape", "relax.permute_dims")
#: the names the kernels get (the dequantizing stage is inlined into the multiply by dlight)
MATMUL_KERNEL, CONV_KERNEL = "matmul_packed", "conv2d_packed"


# ---- the packed layout ------------------------------------------------------------------------------------
def weight_bits(q: np.ndarray) -> int:
    """4 when every value fits a signed nibble (-8..7), else 8 (the values must fit int8)."""
    lo, hi = int(q.min(initial=0)), int(q.max(initial=0))
    if lo < -128 or hi > 127:
        raise TargetError(f"PackWeights: weight values {lo}..{hi} do not fit 8 bits")
    return 4 if lo >= -8 and hi <= 7 else 8


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """``uint32[R, ceil(C / m)]`` words holding the signed ``bits``-bit values of ``q[R, C]`` (``m = 32 / bits``,
    the first value of a word in its lowest bits; a short last word is padded with zeros)."""
    rows, cols = q.shape
    m = 32 // bits
    words = -(-cols // m)
    padded = np.zeros((rows, words * m), np.int64)
    padded[:, :cols] = q
    fields = (padded & ((1 << bits) - 1)).astype(np.uint64).reshape(rows, words, m)
    shifts = np.arange(m, dtype=np.uint64) * np.uint64(bits)
    return np.bitwise_or.reduce(fields << shifts, axis=2).astype(np.uint32)


def unpack(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """The inverse of :func:`pack` (numpy; the kernels do the same per element with :func:`unpack_expr`)."""
    m, half = 32 // bits, 1 << (bits - 1)
    shifts = np.arange(m, dtype=np.uint32) * np.uint32(bits)
    fields = (words[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    return ((fields ^ np.uint32(half)).astype(np.int32) - half).reshape(words.shape[0], -1)[:, :cols]


def unpack_expr(words: te.Tensor, row, col, bits: int) -> tvm.tirx.PrimExpr:
    """The int32 value at ``(row, col)`` of a packed weight, as a TIR expression: shift, mask, sign-extend."""
    m, half = 32 // bits, 1 << (bits - 1)
    u32 = "uint32"
    shift = ((col % m) * bits).astype(u32)
    value = (words[row, col // m] >> shift) & tvm.tirx.const((1 << bits) - 1, u32)
    return (value ^ tvm.tirx.const(half, u32)).astype("int32") - tvm.tirx.const(half, "int32")


@dataclass
class PackedWeight:
    """A weight as ``rows`` × ``cols`` signed integers in packed words, and the scales that dequantize it:
    ``W[r, c] = unpack(words)[r, c] · scale[r, c // group]``."""

    words: np.ndarray  # uint32 [rows, ceil(cols / (32 / bits))]
    bits: int
    cols: int
    scale: np.ndarray  # float32 [rows, cols // group]
    group: int

    @classmethod
    def of(cls, q: np.ndarray, scale: np.ndarray, group: int) -> "PackedWeight":
        bits = weight_bits(q)
        return cls(pack(q, bits), bits, q.shape[1], np.ascontiguousarray(scale, np.float32), group)

    @property
    def rows(self) -> int:
        return int(self.words.shape[0])

    def describe(self) -> str:
        kind = f"groups of {self.group}" if self.group < self.cols else "per channel"
        return (f"int{self.bits} {kind}, {self.rows}x{self.cols}: {self.words.nbytes + self.scale.nbytes:,} B "
                f"packed ({self.rows * self.cols * 4:,} B as float32)")


@dataclass
class PackReport:
    """What :func:`pack_weights` did: the weights it packed, and those it left as float with the reason."""

    packed: List[str] = field(default_factory=list)
    left: List[str] = field(default_factory=list)
    packed_bytes: int = 0  # the words and scales of the packed weights
    float_bytes: int = 0  # the same weights as float32

    def to_json(self) -> dict:
        return {"packed": list(self.packed), "left_as_float": list(self.left), "packed_bytes": self.packed_bytes,
                "float32_bytes": self.float_bytes}


# ---- kernels ----------------------------------------------------------------------------------------------
def _dequantize_stage(w: PackedWeight, pt: te.Tensor, st: Optional[te.Tensor]) -> te.Tensor:
    """``W[r, c]``: float32 (``st`` given) or int32 (integer path); dlight inlines it into the multiply."""
    g = w.group

    def value(r, c):
        q = unpack_expr(pt, r, c, w.bits)
        return q if st is None else q.astype("float32") * st[r, c // g]

    return te.compute((w.rows, w.cols), value, name="dequantize")


def _matmul(w: PackedWeight, zx: Optional[int]):
    """``C[.., n] = Σ_k x[.., k] · W[n, k]``; with ``zx`` (integer path) ``Σ_k (x[.., k] - zx) · W[n, k]`` in int32."""
    def kernel(xt, pt, *st):
        wt = _dequantize_stage(w, pt, st[0] if st else None)
        k = te.reduce_axis((0, w.cols), name="k")
        x = (lambda i: xt[(*i[:-1], k)]) if not zx else (lambda i: xt[(*i[:-1], k)] - zx)
        return te.compute(list(xt.shape[:-1]) + [w.rows], lambda *i: te.sum(x(i) * wt[i[-1], k], axis=k),
                          name=MATMUL_KERNEL)

    return kernel


def _conv2d(w: PackedWeight, zx: Optional[int], kernel_hw, attrs, out_shape):
    """NCHW conv2d reading the packed ``[O, I/groups·kh·kw]`` rows; padding taps read 0 (``zx`` on the integer
    path, whose terms are ``x - zx``)."""
    kh, kw = kernel_hw
    top, left = int(attrs.padding[0]), int(attrs.padding[1])
    (sh, sw), (dh, dw) = [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation]
    groups = int(attrs.groups)
    per_group = w.cols // (kh * kw)
    out_per_group = w.rows // groups

    def kernel(xt, pt, *st):
        _, _, h, wd = xt.shape
        wt = _dequantize_stage(w, pt, st[0] if st else None)
        rc = te.reduce_axis((0, per_group), name="rc")
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")
        zero = tvm.tirx.const(0, xt.dtype)

        def tap(b, o, y, x_):
            iy, ix = y * sh + ry * dh - top, x_ * sw + rx * dw - left
            inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
            v = xt[b, o // out_per_group * per_group + rc, iy, ix]
            v = v - zx if zx else v
            return tvm.tirx.if_then_else(inside, v, zero) * wt[o, (rc * kh + ry) * kw + rx]

        return te.compute(out_shape, lambda b, o, y, x_: te.sum(tap(b, o, y, x_), axis=[rc, ry, rx]),
                          name=CONV_KERNEL)

    return kernel


# ---- matching ---------------------------------------------------------------------------------------------
def _ints(values) -> List[int]:
    return [int(v) for v in values]


@dataclass
class _Activation:
    """A static per-tensor dequantize of 8-bit data: the integers (new vars) and the constant parameters."""

    data: relax.Expr
    scale: float
    zero_point: int
    views: List[relax.Call]  # reshape / permute_dims calls between the dequantize and the multiply, in order


class _Packer(BindingView):
    """Rebuilds one flat Relax function with its dequantized integer weights packed (see the module docstring)."""

    def __init__(self, bb: relax.BlockBuilder, func: relax.Function, name: str, report: PackReport):
        self.bb, self.func, self.name, self.report = bb, func, name, report
        self.defs: Dict[tvm.ir.Var, relax.Expr] = {}
        self.remap: Dict[tvm.ir.Var, relax.Expr] = {}
        self.declined: Dict[tvm.ir.Var, str] = {}  # dequantize binding -> why its consumer was not rewritten

    # ---- looking through bindings (old expressions; _value, _const: BindingView) --------------------------
    def _decline(self, weight, reason: str) -> None:
        """Remember why the weight operand ``weight`` (a dequantize, possibly behind views) stays float."""
        e = weight
        while True:
            if isinstance(e, tvm.ir.Var) and e in self.defs:
                if _op_name(self.defs[e]) == _DQ:
                    self.declined.setdefault(e, reason)
                    return
                e = self.defs[e]
            elif _op_name(e) in _VIEWS:
                e = e.args[0]
            else:
                return

    def _int_dequantize(self, expr) -> Optional[Tuple[np.ndarray, np.ndarray, int]]:
        """``(q, scale, axis)`` of a dequantize of a constant symmetric int8 tensor to float32, else None."""
        call = self._value(expr)
        if _op_name(call) != _DQ:
            return None
        q, s, z = (self._const(a) for a in call.args)
        if q is None:
            return None  # an activation
        reason = None
        if s is None or z is None:
            reason = "its scale or zero point is computed at run time"
        elif str(call.args[0].ty.dtype) != "int8":
            reason = f"its integers are {call.args[0].ty.dtype}, not int8"
        elif np.any(z != 0):
            reason = "its zero point is not 0 (asymmetric weights)"
        elif str(call.attrs.out_dtype) != "float32":
            reason = f"it dequantizes to {call.attrs.out_dtype}"
        if reason:
            self._decline(expr, reason)
            return None
        return q.astype(np.int8), np.asarray(s, np.float32), int(call.attrs.axis) % max(q.ndim, 1)

    def _matmul_weight(self, expr) -> Optional[PackedWeight]:
        """matmul's second operand as a packed ``[N, K]`` weight, else None."""
        e, value = expr, self._value(expr)
        transposed = _op_name(value) == "relax.permute_dims"
        if transposed:
            if value.attrs.axes is not None and _ints(value.attrs.axes) != [1, 0]:
                self._decline(expr, "a permute_dims that is not a 2-D transpose")
                return None
            e = value.args[0]
            value = self._value(e)
        if _op_name(value) == "relax.reshape":  # group-wise: reshape(dequantize(reshape(Wq, [N·G, g]), s, 0, 0), [N, K])
            found = self._int_dequantize(value.args[0])
            if found is None:
                return None
            q, s, axis = found
            rows, cols = _ints(value.ty.shape)
            if not transposed or q.ndim != 2 or axis != 0 or s.size not in (1, q.shape[0]) \
                    or q.size != rows * cols or cols % q.shape[1]:
                self._decline(expr, "a reshaped weight that is not [N·G, g] groups of a linear's [N, K] weight")
                return None
            g = q.shape[1]
            scale = np.broadcast_to(s.reshape(-1), (q.shape[0],)).reshape(rows, cols // g)
            return PackedWeight.of(q.reshape(rows, cols), scale, g)
        found = self._int_dequantize(e)
        if found is None:
            return None
        q, s, axis = found
        channel_axis = 0 if transposed else 1  # the N axis in the dequantize's own layout
        if q.ndim != 2 or (s.size > 1 and axis != channel_axis):
            self._decline(expr, f"a {q.ndim}-D matmul weight" if q.ndim != 2 else
                          "its scales run along the reduction axis")
            return None
        q_nk = np.ascontiguousarray(q if transposed else q.T)
        scale = np.broadcast_to(s.reshape(-1), (q_nk.shape[0],)).reshape(-1, 1)
        return PackedWeight.of(q_nk, scale, q_nk.shape[1])

    def _conv_weight(self, expr) -> Optional[PackedWeight]:
        found = self._int_dequantize(expr)
        if found is None:
            return None
        q, s, axis = found
        if q.ndim != 4 or (s.size > 1 and axis != 0):
            self._decline(expr, "conv2d weight scales not per output channel")
            return None
        scale = np.broadcast_to(s.reshape(-1), (q.shape[0],)).reshape(-1, 1)
        rows = q.reshape(q.shape[0], -1)
        return PackedWeight.of(rows, scale, rows.shape[1])

    def _static_activation(self, expr) -> Optional[_Activation]:
        """``dequantize(xq, sx, zx)`` of 8-bit data with one constant scale and zero point, also behind reshapes
        and permute_dims (which commute with a per-tensor dequantize)."""
        views = []
        e = self._value(expr)
        while _op_name(e) in _VIEWS:
            views.append(e)
            e = self._value(e.args[0])
        if _op_name(e) != _DQ or str(e.attrs.out_dtype) != "float32":
            return None
        data, scale, zp = e.args
        s, z = self._const(scale), self._const(zp)
        if s is None or z is None or s.size != 1 or z.size != 1 or self._const(data) is not None \
                or str(data.ty.dtype) not in ("int8", "uint8"):
            return None
        return _Activation(self._new(data), float(s.reshape(-1)[0]), int(z.reshape(-1)[0]), views[::-1])

    def _new(self, expr):
        return self.remap.get(expr, expr) if isinstance(expr, tvm.ir.Var) else expr

    # ---- rewriting ----------------------------------------------------------------------------------------
    def run(self, tmp_name: str) -> None:
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError(f"PackWeights: function '{self.name}' is not in binding-block form")
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with self.bb.function(tmp_name, list(self.func.params), attrs=attrs, pure=True):
            for block in body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    with self.bb.dataflow():
                        self._block(block, dataflow=True)
                else:
                    self._block(block, dataflow=False)
            self.bb.emit_func_output(self._rebuild(body.body))

    def _block(self, block, dataflow: bool) -> None:
        bb = self.bb
        for binding in block.bindings:
            old = binding.var
            self.defs[old] = binding.value
            exported = dataflow and not isinstance(old, relax.DataflowVar)
            if isinstance(binding, relax.MatchCast):
                new = bb.match_cast(self._rebuild(binding.value), binding.struct_info)
                new = bb.emit_output(new, name_hint=old.name) if exported else new
            else:
                op = _op_name(binding.value)
                new = (self._matmul(binding.value, old.name) if op == "relax.matmul" else
                       self._conv(binding.value, old.name) if op == "relax.nn.conv2d" else None)
                if new is not None:
                    new = bb.emit_output(new, name_hint=old.name) if exported else new
                else:
                    emit = bb.emit_output if exported else bb.emit
                    new = emit(self._rebuild(binding.value), name_hint=old.name)
            self.remap[old] = new

    def _record(self, name: str, what: str, w: PackedWeight) -> None:
        self.report.packed.append(f"{self.name}/{name}: {what} {w.describe()}")
        self.report.packed_bytes += w.words.nbytes + w.scale.nbytes
        self.report.float_bytes += w.rows * w.cols * 4

    def _integer_input(self, act: _Activation):
        """``astype(xq, int32)`` with the views re-applied (int32: WGSL stores it, the astype fuses upstream)."""
        x = self.bb.emit(relax.op.astype(act.data, "int32"))
        for view in act.views:
            x = self.bb.emit(relax.Call(view.op, [x] + list(view.args[1:]), view.attrs, view.ty_args))
        return x

    def _emit(self, kernel, x, w: PackedWeight, integer: bool, name: str):
        args = [x, relax.const(w.words)] + ([] if integer else [relax.const(w.scale)])
        return self.bb.emit(self.bb.call_te(kernel, *args, primfunc_name_hint=name))

    def _rescale(self, acc, act: _Activation, w: PackedWeight, shape: List[int]):
        """``astype(acc, float32) · (sx · s)``, the factor computed as the CPU targets compute it."""
        factor = (act.scale * w.scale[:, 0].astype(np.float64)).astype(np.float32).reshape(shape)
        accf = self.bb.emit(relax.op.astype(acc, "float32"))
        return self.bb.emit(relax.op.multiply(accf, relax.const(factor)))

    def _float_input(self, call):
        """The float32 activation of a float32 conv2d / matmul, else None (the reason recorded).

        Read through an ``astype(x, float32)`` (fused away in float32 builds): with ``fp16 = true``,
        ToMixedPrecision makes ``x`` float16 and then fails on a ``call_tir`` that reads it directly ("Expected
        TensorType, but got R.Callable"); behind the astype the kernel keeps float32 arithmetic."""
        x = self._new(call.args[0])
        if str(x.ty.dtype) != "float32" or str(call.ty.dtype) != "float32":
            self._decline(call.args[1], f"the {_op_name(call)[6:]} computes in {call.ty.dtype}")
            return None
        return self.bb.emit(relax.op.astype(x, "float32"))

    def _matmul(self, call, name: str):
        w = self._matmul_weight(call.args[1])
        if w is None:
            return None
        act = self._static_activation(call.args[0]) if w.group == w.cols else None
        if act is not None:
            acc = self._emit(_matmul(w, act.zero_point), self._integer_input(act), w, True,
                             f"{MATMUL_KERNEL}_int{w.bits}_int")
            self._record(name, "matmul, int8 activations x", w)
            return self._rescale(acc, act, w, [w.rows])
        x = self._float_input(call)
        if x is None:
            return None
        self._record(name, "matmul, float x", w)
        return self._emit(_matmul(w, None), x, w, False, f"{MATMUL_KERNEL}_int{w.bits}")

    def _conv(self, call, name: str):
        attrs = call.attrs
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" \
                or str(attrs.out_layout) not in ("NCHW", ""):
            self._decline(call.args[1], f"conv2d layout {attrs.data_layout}/{attrs.kernel_layout}")
            return None
        w = self._conv_weight(call.args[1])
        if w is None:
            return None
        kernel_hw = _ints(call.args[1].ty.shape)[2:]
        out_shape = list(call.ty.shape)
        act = self._static_activation(call.args[0])
        if act is not None:
            acc = self._emit(_conv2d(w, act.zero_point, kernel_hw, attrs, out_shape), self._integer_input(act), w,
                             True, f"{CONV_KERNEL}_int{w.bits}_int")
            self._record(name, "conv2d, int8 activations x", w)
            return self._rescale(acc, act, w, [1, w.rows, 1, 1])
        x = self._float_input(call)
        if x is None:
            return None
        self._record(name, "conv2d, float x", w)
        return self._emit(_conv2d(w, None, kernel_hw, attrs, out_shape), x, w, False, f"{CONV_KERNEL}_int{w.bits}")

    def consumers(self, var) -> List[str]:
        """The ops that read ``var`` (through reshape / permute_dims), for the report."""
        found = []
        for v, value in self.defs.items():
            if var in _operands(value):
                found += self.consumers(v) if _op_name(value) in _VIEWS else [_op_name(value) or "a tuple"]
        return found


def _dequantized_constants(func: relax.Function) -> Dict[tvm.ir.Var, str]:
    """The variables bound to a dequantize whose integers are a constant (through astype / reshape), with the
    dequantized shape as text."""
    defs = {}
    found = {}

    def is_const(e):
        while isinstance(e, tvm.ir.Var) and e in defs:
            e = defs[e]
        if isinstance(e, tvm.ir.expr.GenericConst):
            return True
        return _op_name(e) in ("relax.astype", "relax.reshape", "relax.permute_dims") and is_const(e.args[0])

    for block in func.body.blocks:
        for b in block.bindings:
            defs[b.var] = b.value
            if _op_name(b.value) == _DQ and is_const(b.value.args[0]):
                found[b.var] = "x".join(str(int(d)) if isinstance(d, tvm.tirx.IntImm) else str(d)
                                        for d in b.value.ty.shape)
    return found


def _used_vars(func: relax.Function) -> set:
    used = set()
    relax.analysis.post_order_visit(func, lambda e: used.add(e) if isinstance(e, tvm.ir.Var) else None)
    return used


def _operands(expr) -> List[tvm.ir.Var]:
    if isinstance(expr, tvm.ir.Call):
        return [a for a in expr.args if isinstance(a, tvm.ir.Var)]
    if isinstance(expr, tvm.ir.Tuple):
        return [f for f in expr.fields if isinstance(f, tvm.ir.Var)]
    return [expr] if isinstance(expr, tvm.ir.Var) else []


def pack_weights(mod: tvm.IRModule, report: Optional[PackReport] = None) -> tvm.IRModule:
    """Rewrite every Relax function of ``mod`` (see the module docstring); other functions are kept.

    ``report`` (optional) receives the packed weights and those left as float, with the reason. Run before
    LegalizeOps and FoldConstant.
    """
    report = report if report is not None else PackReport()
    todo = [(gv, f) for gv, f in mod.functions_items()
            if isinstance(f, relax.Function) and isinstance(f.body, relax.SeqExpr) and _dequantized_constants(f)]
    if not todo:
        return mod
    # one builder for every function (prefill and decode both make kernels): kernel names stay unique
    bb = relax.BlockBuilder(mod)
    tmp, packers = {}, {}
    for gv, func in todo:
        tmp[gv] = f"__pack_weights_{gv.name_hint}"
        packers[gv] = _Packer(bb, func, gv.name_hint, report)
        packers[gv].run(tmp[gv])
    out = replace_functions(bb.get(), tmp)
    out = relax.transform.DeadCodeElimination()(out)
    for gv, func in todo:  # what is still dequantized from a constant will be folded into a float32 constant
        packer, used = packers[gv], _used_vars(out[gv.name_hint])
        for var, shape in _dequantized_constants(func).items():
            if packer.remap.get(var) in used:
                reason = packer.declined.get(var) or (f"read by {', '.join(sorted(set(packer.consumers(var))))}, "
                                                      f"which PackWeights does not rewrite")
                report.left.append(f"{gv.name_hint}/{var.name} ({shape}): {reason}")
    return out


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
def pack_weights_pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """:func:`pack_weights` as a module pass (for ``tvm.transform.Sequential``)."""
    return pack_weights(mod)
