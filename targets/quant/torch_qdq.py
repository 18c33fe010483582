"""Relax converters for PyTorch's decomposed quantization ops (``torch.ops.quantized_decomposed``).

TVM 0.27's exported-program frontend has no converter for them ("Unsupported function types
['quantize_per_tensor.default', ...]"), so an FX graph that ``quantize_static`` / ``quantize_dynamic`` /
``quantize_weights`` rewrote would not import. :data:`TORCH_QDQ_CONVERTERS` is the ``custom_convert_map``
that maps them onto Relax's own ``quantize`` / ``dequantize`` (what the ONNX frontend produces for
QuantizeLinear / DequantizeLinear), so :func:`aglmc.targets.quant.lower_qdq` sees one form for both:

=================================================  ==================================================
quantize_per_tensor(x, s, z, qmin, qmax, dtype)     astype(clip(round(x * (1/s)) + z, qmin, qmax)) (torch's rounding)
quantize_per_tensor.tensor (run-time s, z)          the same, with run-time s and z
dequantize_per_tensor(q, s, z, ...)                 R.dequantize(q, s, z)
dequantize_per_channel(q, S, Z, axis, ...)          R.dequantize(q, S, Z, axis)
dequantize_per_channel_group(q[N,K], S[N,G], ...)   reshape(R.dequantize(reshape(q, [N*G, K/G]), S, Z, 0), [N, K])
choose_qparams(.tensor / _symmetric.tensor)         the scale and zero point from min/max (run time)
choose_qparams_per_token_asymmetric                 the same per row, PyTorch's (XNNPACK's) zero-point rule
quantize_per_token(x, S, Z, ...)                    astype(clip(round(x · (1/S) + Z)))  in float64, as PyTorch
dequantize_per_token(q[.., K], S, Z, ...)           reshape(R.dequantize(reshape(q, [T, K]), S, Z, 0), q.shape)
=================================================  ==================================================
"""

from __future__ import annotations

import numpy as np
from tvm import relax

def _dtype(torch_dtype) -> str:
    return str(torch_dtype).replace("torch.", "")


def _arg(importer, value):
    from torch import fx

    return importer.env[value] if isinstance(value, fx.Node) else value


def _zp(importer, value, dtype: str):
    """A zero point as a Relax expression of the integer type ``dtype`` (Relax wants it typed like the data)."""
    v = _arg(importer, value)
    if isinstance(v, (int, np.integer)):
        return relax.const(int(v), dtype)
    if v is None:
        return relax.const(0, dtype)
    return importer.block_builder.emit(relax.op.astype(v, dtype))


def _scale(importer, value):
    v = _arg(importer, value)
    if isinstance(v, (float, int, np.floating)):
        return relax.const(float(v), "float32")
    return v


def _scalar(importer, expr):
    """A [1]-shaped run-time scale or zero point as a scalar (Relax's quantize reads scalars or 1-D per axis)."""
    return importer.block_builder.emit(relax.op.reshape(expr, ()))


def _quantize_per_tensor(node, importer):
    x, scale, zp, qmin, qmax, dtype = node.args[:6]
    out = _dtype(dtype)
    bb = importer.block_builder
    if not node.target.__name__.endswith("tensor"):
        # PyTorch computes round(x * float32(1 / scale)) (half to even); Relax's quantize divides. Written out, the
        # compiled library rounds exactly as the FX graph it was verified against.
        xq = relax.op.round(relax.op.multiply(_arg(importer, x), relax.const(float(np.float32(1.0 / scale)),
                                                                             "float32")))
        xq = relax.op.add(xq, relax.const(float(zp), "float32"))
        return bb.emit(relax.op.astype(relax.op.clip(xq, int(qmin), int(qmax)), out))
    # run-time scale and zero point (dynamic quantization): the same formula with run-time operands
    s = _scalar(importer, _scale(importer, scale))
    z = _scalar(importer, _zp(importer, zp, "float32"))
    inv = bb.emit(relax.op.divide(relax.const(1.0, "float32"), s))
    xq = relax.op.add(relax.op.round(relax.op.multiply(_arg(importer, x), inv)), z)
    return bb.emit(relax.op.astype(relax.op.clip(xq, int(qmin), int(qmax)), out))


def _dequantize_per_tensor(node, importer):
    q, scale, zp, _qmin, _qmax, dtype = node.args[:6]
    out = _dtype(dtype)
    s, z = _scale(importer, scale), _zp(importer, zp, out)
    if node.target.__name__.endswith("tensor"):
        s, z = _scalar(importer, s), _scalar(importer, z)
    return importer.block_builder.emit(relax.op.dequantize(_arg(importer, q), s, z, axis=-1,
                                                           out_dtype="float32"))


def _dequantize_per_channel(node, importer):
    q, scales, zps, axis, _qmin, _qmax, dtype = node.args[:7]
    out = _dtype(dtype)
    return importer.block_builder.emit(relax.op.dequantize(_arg(importer, q), _scale(importer, scales),
                                                           _zp(importer, zps, out), axis=int(axis),
                                                           out_dtype="float32"))


def _dequantize_per_channel_group(node, importer):
    q, scales, zps, _qmin, _qmax, dtype, group_size = node.args[:7]
    out = _dtype(dtype)
    bb = importer.block_builder
    qv = _arg(importer, q)
    rows, cols = (int(d) for d in qv.ty.shape)
    groups = cols // int(group_size)
    flat_q = bb.emit(relax.op.reshape(qv, (rows * groups, int(group_size))))
    flat_s = bb.emit(relax.op.reshape(_scale(importer, scales), (rows * groups,)))
    flat_z = bb.emit(relax.op.reshape(_zp(importer, zps, out), (rows * groups,)))
    dq = bb.emit(relax.op.dequantize(flat_q, flat_s, flat_z, axis=0, out_dtype="float32"))
    return bb.emit(relax.op.reshape(dq, (rows, cols)))


def _choose_qparams(node, importer, symmetric: bool):
    x, qmin, qmax, eps, _dtype_ = node.args[:5]
    bb = importer.block_builder
    xv = _arg(importer, x)
    zero = relax.const(0.0, "float32")
    lo = bb.emit(relax.op.minimum(relax.op.min(xv), zero))
    hi = bb.emit(relax.op.maximum(relax.op.max(xv), zero))
    eps_c = relax.const(float(eps), "float32")
    if symmetric:
        amax = bb.emit(relax.op.maximum(relax.op.negative(lo), hi))
        scale = bb.emit(relax.op.maximum(relax.op.divide(amax, relax.const((qmax - qmin) / 2.0, "float32")), eps_c))
        zp = relax.const(np.zeros((1,), np.int64))
    else:
        scale = bb.emit(relax.op.maximum(relax.op.divide(relax.op.subtract(hi, lo),
                                                         relax.const(float(qmax - qmin), "float32")), eps_c))
        zp_f = relax.op.subtract(relax.const(float(qmin), "float32"), relax.op.round(relax.op.divide(lo, scale)))
        zp = bb.emit(relax.op.astype(relax.op.clip(zp_f, int(qmin), int(qmax)), "int64"))
        zp = bb.emit(relax.op.reshape(zp, (1,)))
    scale = bb.emit(relax.op.reshape(scale, (1,)))
    return bb.emit(relax.Tuple([scale, zp]))


def _choose_qparams_per_token(node, importer):
    """PyTorch's ``choose_qparams_per_token_asymmetric`` (XNNPACK's rule), in float32 like PyTorch, returned
    as float64 scales and int64 zero points of shape ``[..., 1]``."""
    x = _arg(importer, node.args[0])
    bb = importer.block_builder
    f32 = lambda v: relax.const(float(v), "float32")  # noqa: E731
    lo = relax.op.minimum(relax.op.min(x, axis=-1, keepdims=True), f32(0))
    hi = relax.op.maximum(relax.op.max(x, axis=-1, keepdims=True), f32(0))
    lo, hi = bb.emit(lo), bb.emit(hi)
    scale = bb.emit(relax.op.maximum(relax.op.divide(relax.op.subtract(hi, lo), f32(255)),
                                     f32(np.finfo(np.float32).eps)))
    dmin, dmax = bb.emit(relax.op.divide(lo, scale)), bb.emit(relax.op.divide(hi, scale))
    from_min = relax.op.add(f32(-128), dmin)
    from_max = relax.op.add(f32(127), dmax)
    zp = relax.op.where(relax.op.greater(relax.op.add(from_min, from_max), f32(0)),
                        relax.op.subtract(f32(-128), dmin), relax.op.subtract(f32(127), dmax))
    zp = bb.emit(relax.op.round(relax.op.clip(zp, -128, 127)))
    return bb.emit(relax.Tuple([bb.emit(relax.op.astype(scale, "float64")), bb.emit(relax.op.astype(zp, "int64"))]))


def _quantize_per_token(node, importer):
    x, scales, zps, qmin, qmax, dtype = node.args[:6]
    bb = importer.block_builder
    inv = relax.op.divide(relax.const(1.0, "float64"), _arg(importer, scales))
    xq = relax.op.add(relax.op.multiply(relax.op.astype(_arg(importer, x), "float64"), inv),
                      relax.op.astype(_arg(importer, zps), "float64"))
    return bb.emit(relax.op.astype(relax.op.clip(relax.op.round(xq), int(qmin), int(qmax)), _dtype(dtype)))


def _dequantize_per_token(node, importer):
    """As Relax's dequantize over rows (``[tokens, K]``, axis 0), reshaped back: the form LowerQDQ reads."""
    q, scales, zps = (_arg(importer, a) for a in node.args[:3])
    dtype = _dtype(node.args[5])
    bb = importer.block_builder
    shape = [int(d) for d in q.ty.shape]
    tokens = int(np.prod(shape[:-1]))
    rows = bb.emit(relax.op.reshape(q, (tokens, shape[-1])))
    s = bb.emit(relax.op.reshape(relax.op.astype(scales, "float32"), (tokens,)))
    z = bb.emit(relax.op.reshape(relax.op.astype(zps, dtype), (tokens,)))
    dq = bb.emit(relax.op.dequantize(rows, s, z, axis=0, out_dtype="float32"))
    return bb.emit(relax.op.reshape(dq, shape))


TORCH_QDQ_CONVERTERS = {
    "quantize_per_tensor.default": _quantize_per_tensor,
    "quantize_per_tensor.tensor": _quantize_per_tensor,
    "dequantize_per_tensor.default": _dequantize_per_tensor,
    "dequantize_per_tensor.tensor": _dequantize_per_tensor,
    "dequantize_per_channel.default": _dequantize_per_channel,
    "dequantize_per_channel_group.default": _dequantize_per_channel_group,
    "choose_qparams.tensor": lambda node, importer: _choose_qparams(node, importer, symmetric=False),
    "choose_qparams_symmetric.tensor": lambda node, importer: _choose_qparams(node, importer, symmetric=True),
    "choose_qparams_per_token_asymmetric.default": _choose_qparams_per_token,
    "quantize_per_token.default": _quantize_per_token,
    "dequantize_per_token.default": _dequantize_per_token,
}
