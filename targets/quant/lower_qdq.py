"""LowerQDQ: dequantize → conv2d / matmul chains become integer kernels with requantization.

A quantized model arrives in Relax in Q/DQ form (ONNX QuantizeLinear/DequantizeLinear, or PyTorch's decomposed
ops through :data:`~aglmc.targets.quant.TORCH_QDQ_CONVERTERS`): every conv2d / matmul computes in float on
dequantized values. Left alone, FoldConstant would even turn the int8 weights back into float constants. This
pass rewrites, before legalization:

**static / dynamic** (both operands dequantized, the weight a constant with zero point 0)::

    matmul(dequantize(xq, sx, zx), permute_dims(dequantize(Wq, sw, 0, axis=0)))      (FX linear, ONNX Gemm)
    matmul(dequantize(xq, sx, zx), dequantize(Wq, sw, 0, axis=1))                     (ONNX MatMul)
      →  astype(int8_matmul(xq, Wq) - zx·ΣW, float32) · (sx·sw)
    conv2d(dequantize(xq, sx, zx), dequantize(Wq, sw, 0, axis=0))                     (groups = 1)
      →  the same with Wq as [out, in·kh·kw] times im2col(pad(xq, zx)) [pixels, in·kh·kw]: NCHW out
    conv2d with groups > 1 (depthwise)  →  conv2d(pad(xq, zx), Wq, out_dtype=int32), rescaled alike

``int8_matmul(A, W)[.., n] = Σ_k int32(A[.., k]) · int32(W[n, k])`` keeps both 8-bit operands contiguous along
the reduction, the form :class:`~aglmc.targets.quant.int8_rule.Int8Matmul` schedules and LLVM turns into
``sdot`` (aarch64 +dotprod) or ``vpdpbusd`` (x86 VNNI). So the multiply-accumulate is integer, exact in int32,
and the float epilogue (scale, bias add, ReLU, the next ``quantize``) is the requantization, fused into the
kernel by FuseOps. ``sx`` and ``zx`` may be run-time scalars (dynamic quantization), also behind a reshape
(``linear`` on 3-D inputs). Activations are moved to the byte type the target multiplies (int8 on aarch64,
uint8 on x86: ``x ± 128`` with the zero point, no value changes). The padding value of an asymmetric input is
its zero point (float 0), hence the explicit pad.

**weight-only** (float activation, dequantized constant weight)::

    matmul(x, permute_dims(dequantize(Wq, sw, 0, axis=0)))  →  matmul_int_weights(x, Wqᵀ) · sw
    matmul(x, permute_dims(reshape(dequantize(reshape(Wq, [N·G, g]), s, 0, 0), [N, K])))   (group-wise)
      →  matmul_int_weights(x, Wqᵀ, s):  Σ_k x[m,k] · Wq[n,k] · s[n, k // g]

one kernel that reads the integer weights (int4 packed two per byte) and converts them as it multiplies, so the
library stores integers, not float copies.

Everything else (dequantize → max_pool → quantize, activation × activation matmuls, ops without Q/DQ) is left
as it is and stays correct: TVM legalizes quantize/dequantize to float arithmetic.

Requires: a Relax module straight from a frontend (before LegalizeOps and FoldConstant), flat functions.
Guarantees: the numerics of the Q/DQ graph up to float rounding of the rescale (the integer sums are exact).
Run: first, before the CPU pipeline (``targets/cpu/pipeline.py``) legalizes; see :func:`lower_qdq`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import tvm
from tvm import relax, te

from aglmc.errors import TargetError
from aglmc.targets.relax_bindings import BindingView
from aglmc.targets.relax_bindings import op_name as _op_name

_DQ = "relax.dequantize"
#: the block name of the weight-only kernel (the schedule rule recognises it by name)
WEIGHT_ONLY_BLOCK = "aglmc_weight_only_matmul"



@dataclass
class _Dequant:
    """A resolved ``dequantize(data, scale, zero_point, axis)``; constants as numpy, run-time values as exprs."""

    data: relax.Expr
    data_const: Optional[np.ndarray]
    scale: relax.Expr
    scale_const: Optional[np.ndarray]
    zp: relax.Expr
    zp_const: Optional[np.ndarray]
    axis: int
    dtype: str
    #: per-row (per-token) parameters: the data's leading shape the scale vector spans, else None
    rows: Optional[List[int]] = None


@dataclass
class LoweringReport:
    """What :func:`lower_qdq` did, per function: integer convs/matmuls, weight-only matmuls, and left alone."""

    integer: List[str] = field(default_factory=list)
    weight_only: List[str] = field(default_factory=list)
    left: List[str] = field(default_factory=list)


class _Lowerer(BindingView):
    def __init__(self, func: relax.Function, name: str, report: LoweringReport, activation_dtype: str = "int8",
                 bb: Optional[relax.BlockBuilder] = None):
        self.activation_dtype = activation_dtype
        self.func = func
        self.name = name
        self.report = report
        self.defs: Dict[tvm.ir.Var, relax.Expr] = {}
        self.remap: Dict[tvm.ir.Var, relax.Expr] = {}
        self.bb: Optional[relax.BlockBuilder] = bb  # shared by the functions of one module: kernel names stay unique

    # ---- looking through bindings (_value, _const: BindingView) ----------------------------------------
    def _dequant(self, expr) -> Optional[_Dequant]:
        expr = self._value(expr)
        if _op_name(expr) != _DQ or str(expr.attrs.out_dtype) != "float32":
            return None
        data, scale, zp = expr.args
        dq = _Dequant(self._new(data), self._const(data), self._new(scale), self._const(scale), self._new(zp),
                      self._const(zp), int(expr.attrs.axis), str(data.ty.dtype))
        shape = [int(d) for d in data.ty.shape]
        scale_shape = [int(d) for d in scale.ty.shape]
        if len(shape) == 2 and dq.axis == 0 and scale_shape == [shape[0]] and shape[0] > 1 \
                and dq.scale_const is None:
            dq.rows = [shape[0]]  # run-time scale per row: per-token dynamic quantization
        return dq

    def _activation_dequant(self, expr) -> Optional[_Dequant]:
        """A per-tensor dequantize, also seen through a reshape / permute_dims (``linear`` on 3-D inputs is
        imported as reshape → matmul): those commute with a per-tensor dequantize, so the integers are reshaped."""
        value = self._value(expr)
        op = _op_name(value)
        if op in ("relax.reshape", "relax.permute_dims"):
            inner = self._activation_dequant(value.args[0])
            if inner is None:
                return None
            if inner.rows is not None:  # rows survive a reshape that keeps the last (reduction) axis
                old, new = [int(d) for d in value.args[0].ty.shape], [int(d) for d in value.ty.shape]
                if op != "relax.reshape" or old[-1] != new[-1]:
                    return None
                inner.data = self.bb.emit(relax.op.reshape(inner.data, new))
                inner.rows = new[:-1]
                return inner
            if not self._per_tensor(inner):
                return None
            moved = relax.Call(value.op, [inner.data] + list(value.args[1:]), value.attrs, value.ty_args)
            inner.data = self.bb.emit(moved)
            return inner
        return self._dequant(expr)

    def _weight_dequant(self, expr) -> Optional[Tuple[_Dequant, bool]]:
        """``(dequantize of a constant, transposed?)`` for matmul's second operand, else None."""
        expr = self._value(expr)
        transposed = False
        if _op_name(expr) == "relax.permute_dims":
            axes = expr.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
            transposed = True
            expr = self._value(expr.args[0])
        dq = self._dequant(expr)
        if dq is None or dq.data_const is None or dq.scale_const is None or dq.zp_const is None:
            return None
        return dq, transposed

    def _group_weight(self, expr):
        """Group-wise weight: ``[permute_dims](reshape(dequantize(reshape(Wq, [N*G, g]), s, z, 0), [N, K]))``."""
        expr = self._value(expr)
        transposed = False
        if _op_name(expr) == "relax.permute_dims":
            transposed = True
            expr = self._value(expr.args[0])
        if _op_name(expr) != "relax.reshape":
            return None
        dq = self._dequant(expr.args[0])
        if dq is None or dq.data_const is None or dq.scale_const is None or dq.zp_const is None:
            return None
        if dq.data_const.ndim != 2 or dq.axis != 0 or dq.scale_const.ndim != 1:
            return None
        rows, cols = (int(d) for d in expr.ty.shape)
        g = dq.data_const.shape[1]
        q = dq.data_const.reshape(rows, cols)
        s = dq.scale_const.reshape(rows, cols // g)
        z = np.broadcast_to(dq.zp_const, (rows * (cols // g),)).reshape(rows, cols // g)
        return q, s.astype(np.float32), z, g, transposed

    def _new(self, expr):
        if isinstance(expr, tvm.ir.Var):
            return self.remap.get(expr, expr)
        return expr

    # ---- rewriting ------------------------------------------------------------------------------------
    def run(self) -> tvm.IRModule:
        """A module holding the rewritten function and any kernels it now calls."""
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError(f"LowerQDQ: function '{self.name}' is not in binding-block form")
        if self.bb is None:
            self.bb = relax.BlockBuilder()
        bb = self.bb
        attrs = dict(self.func.attrs) if self.func.attrs is not None else {}
        with bb.function(self.name, list(self.func.params), attrs=attrs, pure=True):
            for block in body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    with bb.dataflow():
                        self._block(block, dataflow=True)
                else:
                    self._block(block, dataflow=False)
            bb.emit_func_output(self._rebuild(body.body))
        return bb.get()

    def _block(self, block, dataflow: bool) -> None:
        bb = self.bb
        for binding in block.bindings:
            self.defs[binding.var] = binding.value
            if isinstance(binding, relax.MatchCast):
                new = bb.match_cast(self._rebuild(binding.value), binding.struct_info)
            else:
                lowered = self._lower(binding.value, binding.var.name)
                new = lowered if lowered is not None else bb.emit(self._rebuild(binding.value),
                                                                  name_hint=binding.var.name)
            if dataflow and not isinstance(binding.var, relax.DataflowVar):
                new = bb.emit_output(new, name_hint=binding.var.name)
            self.remap[binding.var] = new

    def _lower(self, value, name: str):
        op = _op_name(value)
        if op == "relax.nn.conv2d":
            return self._conv2d(value, name)
        if op == "relax.matmul":
            return self._matmul(value, name)
        return None

    # activations: int8 view, zero point
    def _int8_activation(self, dq: _Dequant):
        """``(8-bit data of the wanted signedness, zero point as int or int32 expr)``.

        The kernels multiply activations of type ``self.activation_dtype`` by int8 weights: int8 for sdot
        (aarch64 +dotprod), uint8 for vpdpbusd (x86 VNNI). The other 8-bit type is moved by 128, with its zero
        point, which changes no dequantized value.
        """
        bb = self.bb
        want = self.activation_dtype
        if dq.dtype not in ("int8", "uint8"):
            return None, None
        data = dq.data
        shift = 0 if dq.dtype == want else (-128 if want == "int8" else 128)
        if shift:
            data = bb.emit(relax.op.astype(relax.op.add(relax.op.astype(data, "int16"), relax.const(shift, "int16")),
                                           want))
        if dq.zp_const is not None:
            return data, int(np.asarray(dq.zp_const).reshape(-1)[0]) + shift
        zexpr = bb.emit(relax.op.astype(dq.zp, "int32"))  # run time (dynamic quantization)
        if shift:
            zexpr = bb.emit(relax.op.add(zexpr, relax.const(shift, "int32")))
        return data, zexpr

    def _per_tensor(self, dq: _Dequant) -> bool:
        if dq.scale_const is not None:
            return np.asarray(dq.scale_const).size == 1
        shape = getattr(dq.scale.ty, "shape", None)
        return shape is not None and all(int(d) == 1 for d in shape)

    def _rescale(self, acc, dq: _Dequant, w_scale: np.ndarray, shape: List[int]):
        """``astype(acc, float32) * (sx * sw)`` with ``sw`` reshaped to ``shape``."""
        bb = self.bb
        accf = bb.emit(relax.op.astype(acc, "float32"))
        sw = w_scale.astype(np.float64).reshape(shape)
        if dq.scale_const is not None:
            factor = relax.const((float(np.asarray(dq.scale_const).reshape(-1)[0]) * sw).astype(np.float32))
        else:
            sx = bb.emit(relax.op.reshape(dq.scale, self._param_shape(dq, shape)))
            factor = bb.emit(relax.op.multiply(sx, relax.const(sw.astype(np.float32))))
        return bb.emit(relax.op.multiply(accf, factor))

    @staticmethod
    def _param_shape(dq: _Dequant, shape: List[int]) -> List[int]:
        """How a run-time scale or zero point broadcasts against the accumulator: one value, or one per row."""
        return list(dq.rows) + [1] if dq.rows is not None else [1] * len(shape)

    def _zero_point_correction(self, acc, zp, wsum: np.ndarray, shape: List[int], zp_shape=None):
        """``acc - zp * Σ W`` (per output channel; ``zp`` one value or, with ``zp_shape``, one per row), exact
        in int32."""
        if isinstance(zp, int):
            if zp == 0:
                return acc
            return self.bb.emit(relax.op.subtract(acc, relax.const((zp * wsum).astype(np.int32).reshape(shape))))
        corr = relax.op.multiply(relax.op.reshape(zp, zp_shape or [1] * len(shape)),
                                 relax.const(wsum.astype(np.int32).reshape(shape)))
        return self.bb.emit(relax.op.subtract(acc, corr))

    def _conv2d(self, call, name: str):
        attrs = call.attrs
        x, w = self._dequant(call.args[0]), self._dequant(call.args[1])
        if x is None or w is None or w.data_const is None or w.scale_const is None or w.zp_const is None:
            return None
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or w.dtype != "int8" \
                or np.any(w.zp_const != 0) or not self._per_tensor(x) or w.axis != 0 and w.scale_const.size > 1:
            self.report.left.append(f"{name}: conv2d not in the int8 NCHW/OIHW symmetric-weight form")
            return None
        if x.zp_const is None:
            self.report.left.append(f"{name}: conv2d with a run-time zero point")
            return None
        data, zp = self._int8_activation(x)
        if data is None:
            return None
        bb = self.bb
        padding = [int(p) for p in attrs.padding]  # top, left, bottom, right
        if zp != 0 and any(padding):
            top, left, bottom, right = padding
            data = bb.emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zp)))
            padding = [0, 0, 0, 0]
        wq = w.data_const.astype(np.int8)
        out_ch = wq.shape[0]
        scale = np.broadcast_to(np.asarray(w.scale_const, np.float32).reshape(-1), (out_ch,))
        strides, dilation = [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation]
        terms = wq.shape[1] * wq.shape[2] * wq.shape[3]
        if int(attrs.groups) == 1:
            return self._conv2d_im2col(data, wq, zp, x, scale, padding, strides, dilation, call, name)
        acc = bb.emit(relax.op.nn.conv2d(data, relax.const(wq), strides=strides, padding=padding,
                                         dilation=dilation, groups=int(attrs.groups), out_dtype="int32"))
        acc = self._zero_point_correction(acc, zp, wq.astype(np.int64).sum(axis=(1, 2, 3)), [1, out_ch, 1, 1])
        self.report.integer.append(f"{name}: conv2d int8 x int8 -> int32 ({terms}-term dot products, "
                                   f"{out_ch} channels)")
        return self._rescale(acc, x, scale, [1, out_ch, 1, 1])

    def _conv2d_im2col(self, data, wq, zp, x, scale, padding, strides, dilation, call, name):
        """conv2d as ``matmul(im2col(x), W[OC, K]ᵀ)``: every dot product runs over contiguous int8 in both
        operands, the shape LLVM turns into ``sdot`` (aarch64 +dotprod) / ``vpdpbusd`` (x86 VNNI)."""
        bb = self.bb
        if any(padding):
            top, left, bottom, right = padding
            data = bb.emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zp)))
        n, c, h, w_ = (int(d) for d in data.ty.shape)
        oc, _, kh, kw = wq.shape
        oh, ow = int(call.ty.shape[2]), int(call.ty.shape[3])
        (sh, sw), (dh, dw) = strides, dilation
        k = c * kh * kw

        def im2col(xt):
            return te.compute((n, oh * ow, k), lambda b, p, r: xt[
                b, r // (kh * kw), (p // ow) * sh + (r // kw) % kh * dh, (p % ow) * sw + r % kw * dw], name="im2col")

        # opaque to FuseOps: fused into the gather, the producer's requantization would run once per im2col copy
        # (kh·kw times), element by element
        cols = bb.emit(bb.call_te(im2col, data, primfunc_name_hint="im2col", primfunc_attrs={"op_pattern": 8}))
        w_mk = np.ascontiguousarray(wq.reshape(oc, k), np.int8)

        def weights_by_cols(wt, ct):  # C[b, o, y, x] = Σ_k W[o, k] · cols[b, y·ow + x, k]: NCHW, no transpose
            r = te.reduce_axis((0, k), name="k")  # (and no reshape, which would keep the epilogue from fusing)
            return te.compute((n, oc, oh, ow), lambda b, o, y, x_: te.sum(
                wt[o, r].astype("int32") * ct[b, y * ow + x_, r].astype("int32"), axis=r), name="int8_matmul")

        acc = bb.emit(bb.call_te(weights_by_cols, relax.const(w_mk), cols, primfunc_name_hint="int8_matmul"))
        acc = self._zero_point_correction(acc, zp, w_mk.astype(np.int64).sum(axis=1), [1, oc, 1, 1])
        self.report.integer.append(f"{name}: conv2d as im2col + matmul int8 x int8 -> int32 ({k}-term dot "
                                   f"products, {oc} channels)")
        return self._rescale(acc, x, scale, [1, oc, 1, 1])

    def _matmul(self, call, name: str):
        a = self._activation_dequant(call.args[0])
        weight = self._weight_dequant(call.args[1])
        if weight is None:
            group = self._group_weight(call.args[1])
            if group is not None and a is None:
                return self._group_matmul(call, group, name)
            return None
        w, transposed = weight
        if w.dtype != "int8" or np.any(w.zp_const != 0) or w.data_const.ndim != 2:
            self.report.left.append(f"{name}: matmul weight not symmetric int8 2-D")
            return None
        wq = w.data_const.astype(np.int8)
        w_kn = wq.T if transposed else wq  # [K, N]
        channel_axis = 0 if transposed else 1  # the N axis in the dequantize's own layout
        scale = np.asarray(w.scale_const, np.float32).reshape(-1)
        if scale.size > 1 and w.axis % 2 != channel_axis:
            self.report.left.append(f"{name}: matmul weight scaled along its reduction axis")
            return None
        n = w_kn.shape[1]
        scale = np.broadcast_to(scale, (n,))
        bb = self.bb
        rank = len(call.ty.shape)
        shape = [1] * (rank - 1) + [n]
        if a is None:  # weight-only: float activations times int8 weights, rescaled per output channel
            x = self._new(call.args[0])
            if str(x.ty.dtype) != "float32":
                return None
            y = self._weight_only(x, w_kn, None, None)
            bits = 4 if w_kn.min() >= -8 and w_kn.max() <= 7 else 8
            self.report.weight_only.append(f"{name}: matmul float x int{bits} weights per channel "
                                           f"({w_kn.shape[0]}x{n})")
            return bb.emit(relax.op.multiply(y, relax.const(scale.astype(np.float32).reshape(shape))))
        if a.rows is None and not self._per_tensor(a):
            return None
        data, zp = self._int8_activation(a)
        if data is None:
            return None
        if a.rows is not None and [int(d) for d in list(data.ty.shape)[:-1]] != list(a.rows):
            return None
        acc = self._int8_nt(data, w_kn.T)
        acc = self._zero_point_correction(acc, zp, w_kn.astype(np.int64).sum(axis=0), shape,
                                          self._param_shape(a, shape))
        self.report.integer.append(f"{name}: matmul int8 x int8 -> int32 ({w_kn.shape[0]}-term dot products, "
                                   f"{n} columns{', a scale per row' if a.rows is not None else ''})")
        return self._rescale(acc, a, scale, shape)

    def _int8_nt(self, data, w_nk: np.ndarray):
        """``C[.., n] = Σ_k int32(data[.., k]) · int32(W[n, k])``: both int8 operands contiguous along k, the form
        :class:`~aglmc.targets.quant.int8_rule.Int8Matmul` schedules into dot products."""
        n, k = w_nk.shape

        def kernel(xt, wt):
            r = te.reduce_axis((0, k), name="k")
            return te.compute(list(xt.shape[:-1]) + [n], lambda *i: te.sum(
                xt[(*i[:-1], r)].astype("int32") * wt[i[-1], r].astype("int32"), axis=r), name="int8_matmul")

        return self.bb.emit(self.bb.call_te(kernel, data, relax.const(np.ascontiguousarray(w_nk, np.int8)),
                                            primfunc_name_hint="int8_matmul"))

    def _group_matmul(self, call, group, name: str):
        q, s, z, g, transposed = group
        x = self._new(call.args[0])
        if not transposed or str(x.ty.dtype) != "float32" or np.any(z != 0):
            return None
        n, k = q.shape
        bits = 4 if q.min() >= -8 and q.max() <= 7 else 8
        self.report.weight_only.append(f"{name}: matmul float x int{bits} weights, groups of {g} ({k}x{n})")
        return self._weight_only(x, np.ascontiguousarray(q.T), np.ascontiguousarray(s.T), g)

    def _weight_only(self, x, w_kn: np.ndarray, group_scales: Optional[np.ndarray], group: Optional[int]):
        """``C[.., n] = Σ_k x[.., k] · W[k, n] (· s[k // g, n])`` reading the integer weights in the kernel.

        W is stored ``[K, N]`` so that a run of output columns is contiguous (the kernel vectorises over n and
        broadcasts x, :class:`~aglmc.targets.quant.int8_rule.WeightOnlyMatmul`); int4 values are packed two
        per byte, column j in the low and column j + N/2 in the high nibble, sign-extended with shifts.
        """
        k, n = w_kn.shape
        int4 = w_kn.min() >= -8 and w_kn.max() <= 7 and n % 2 == 0
        half = n // 2
        if int4:  # byte [k, j] holds column j (low nibble) and column j + N/2 (high nibble)
            lo, hi = w_kn[:, :half].astype(np.int32) & 0xF, w_kn[:, half:].astype(np.int32) & 0xF
            stored = ((hi << 4) | lo).astype(np.uint8).view(np.int8)  # [K, N/2]
        else:
            stored = w_kn.astype(np.int8)

        def weight(wt, r, col):
            if not int4:
                return wt[r, col].astype("float32")
            # a run of columns reads consecutive bytes and one nibble of each: two vector shifts, no shuffles
            c24, c28 = tvm.tirx.const(24, "int32"), tvm.tirx.const(28, "int32")  # int32 shifts: >> sign-extends
            byte = wt[r, col % half].astype("int32")  # one load in bounds for both halves
            low, high = (byte << c28) >> c28, (byte << c24) >> c28
            return tvm.tirx.Select(col < half, low, high).astype("float32")

        def kernel(xt, wt, *scale):
            def dequantized(kk, col):
                w = weight(wt, kk, col)
                return w * scale[0][kk // group, col] if scale else w

            # a stage of its own: the schedule computes it one [K, NR] panel at a time, reused by every row
            panel = te.compute((k, n), dequantized, name=WEIGHT_ONLY_BLOCK + "_dequantize")
            r = te.reduce_axis((0, k), name="k")
            return te.compute(list(xt.shape[:-1]) + [n], lambda *i: te.sum(xt[(*i[:-1], r)] * panel[r, i[-1]],
                                                                           axis=r), name=WEIGHT_ONLY_BLOCK)

        args = [x, relax.const(stored)] + ([relax.const(group_scales.astype(np.float32))] if group else [])
        return self.bb.emit(self.bb.call_te(kernel, *args, primfunc_name_hint="matmul_int_weights"))


def lower_qdq(mod: tvm.IRModule, report: Optional[LoweringReport] = None, *,
              activations: str = "int8") -> tvm.IRModule:
    """Rewrite every Relax function of ``mod`` (see the module docstring); other functions are kept.

    ``activations`` is the 8-bit type the kernels multiply by the int8 weights: "int8" for aarch64 (``sdot``),
    "uint8" for x86 (``vpdpbusd`` / ``pmaddubsw`` take unsigned x signed bytes); see :func:`activation_type`.

    Where it must run: on the module a frontend produced, before LegalizeOps / FoldConstant — i.e. as the
    first step of :func:`aglmc.targets.cpu.pipeline.pipeline_steps`. A module without dequantize is returned
    unchanged (same object).
    """
    report = report if report is not None else LoweringReport()
    if not _has_dequantize(mod):
        return mod
    # one builder for every function (prefill and decode of a language model both make kernels): it names each
    # new kernel uniquely, next to the module's existing non-Relax functions
    others = {gv: func for gv, func in mod.functions.items() if not isinstance(func, relax.Function)}
    bb = relax.BlockBuilder(tvm.IRModule(others))
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            _Lowerer(func, gv.name_hint, report, activations, bb).run()
    out = bb.get()
    for key, value in (dict(mod.attrs) if mod.attrs is not None else {}).items():
        out = out.with_attr(key, value)
    return relax.transform.DeadCodeElimination()(out)


def _has_dequantize(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr):
        if _op_name(expr) == _DQ:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
            if found:
                return True
    return False


def activation_type(target: Optional[tvm.target.Target]) -> str:
    """The activation byte type whose products with int8 weights ``target``'s dot-product instructions take:
    int8 on aarch64 (sdot with +dotprod; smull/sadalp without), uint8 elsewhere (x86 vpdpbusd, pmaddubsw)."""
    triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
    if triple.startswith(("aarch64", "arm64")):
        return "int8"
    return "uint8" if target is not None else "int8"


def lower_qdq_pass(target: Optional[tvm.target.Target] = None) -> tvm.transform.Pass:
    """:func:`lower_qdq` as a module pass for ``target`` (which picks the activation type), for
    ``tvm.transform.Sequential``: the first step of the CPU pipeline."""
    activations = activation_type(target)

    @tvm.transform.module_pass(opt_level=0, name="LowerQDQ")
    def _lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return lower_qdq(mod, activations=activations)

    return _lower
