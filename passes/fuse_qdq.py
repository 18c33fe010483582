"""fuse_qdq: fold quantize / dequantize pairs the integer back end would otherwise compute, exactly.

Quantization commutes with ops that only move values, and a quantize clamps: so on a Q/DQ graph (what
``quantize_static`` / ``quantize_dynamic`` write, or a QDQ ONNX model) three patterns are rewritten without
changing a single output bit:

1. **identity requantization**: ``Q(DQ(x; s, z), s, z)`` is ``x`` when scale, zero point, integer type and range
   (and, per channel, the axis) are the same: ``round((x - z)·s / s) + z = x`` in float32 for 8-bit values. Both
   ops go (the DQ stays while other ops read it).
2. **data movement on the integer tensor**: ``Q(move(DQ(x)))`` with the same per-tensor parameters is
   ``move(x)`` (``move`` = a chain of reshape / view / flatten / permute / transpose / squeeze / unsqueeze /
   max-pool: they copy values, and max commutes with the increasing DQ), so ``x_int8 → move → DQ`` replaces
   ``x_int8 → DQ → move → Q → DQ``: one Q/DQ pair less, and the op moves a quarter of the bytes. The next
   conv / matmul now reads a DQ of integers directly, the chain :mod:`aglmc.targets.quant.lower_qdq` turns
   into an integer kernel. A DQ that other ops still read stays for them.
3. **activation absorbed into the quantize**: ``Q(relu(y))`` is ``Q(y)`` when the zero point is at most qmin
   (uint8 zero point 0, int8 -128): the quantize clamps negative values to the zero point already. Likewise
   ``hardtanh / relu6 / clamp`` (ONNX ``Clip`` with constant bounds) when its bounds cover the quantize's
   representable range ``[(qmin - z)·s, (qmax - z)·s]`` (with half a step of margin). The activation goes;
   it may read anything (a DQ, or the conv / linear whose output quantize_static quantizes after its ReLU), and
   may sit behind moves of pattern 2 (``relu → flatten → Q``).

Each quantize is tried for 3, then 2, then 1, so ``DQ → relu → max_pool → Q`` becomes ``max_pool(int8) → DQ``.

FX patterns (``torch.ops.quantized_decomposed``, as :mod:`aglmc.passes.quant_fx` writes them):
``quantize_per_tensor[.tensor] | quantize_per_channel`` reading ``dequantize_per_tensor[.tensor] |
dequantize_per_channel`` (1); ``aten.view | reshape | _unsafe_view | flatten | permute | transpose | t |
squeeze | unsqueeze | max_pool2d`` chains (2); ``aten.relu | relu6 | hardtanh | clamp | clamp_min`` (3).
ONNX patterns (``QuantizeLinear`` / ``DequantizeLinear``, as :mod:`aglmc.passes.quant_onnx` writes them):
the same with ``Reshape | Flatten | Transpose | Squeeze | Unsqueeze | MaxPool | Identity`` (2) and
``Relu | Clip`` (3).

Requires: nothing (a graph without Q/DQ is left as it is; an ONNX model that arrives in QDQ form works too).
Guarantees: nothing new (``quantized`` still holds). Parameters ``identity``, ``move``, ``activations`` turn
the three patterns off one by one.
Declined, with the reason: scales, zero points, integer types, ranges or per-channel axes differ; a
per-channel DQ before a move (its scales are tied to an axis the move may change); scales computed at run time
by different ops (dynamic quantization); an op of the chain, or the activation, whose float output other ops
also read; activation bounds inside the quantize's range (e.g. ``relu`` before a zero point above qmin);
bounds that are not constants; an identity quantize that writes an ONNX graph output; MaxPool before opset 12
(no integer MaxPool).
Selector: applies to the moved ops (``on pool, reshape``), to the activation (``on relu``) and, for identity
pairs, to the quantize (which has no op kind: selected by an empty selector or a path only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs
import torch
import torch.fx as fx
from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from aglmc.dsl.params import Param
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.fx_utils import finish, get_constant
from aglmc.passes.onnx_utils import constant_value, is_graph_output, redirect_readers
from aglmc.passes.select import fx_op_name, fx_path

_aten = torch.ops.aten
_QD = torch.ops.quantized_decomposed


def _overloads(packet, names) -> set:
    return {getattr(packet, n) for n in names if hasattr(packet, n)}


# (``.tensor2``, with quant_min / quant_max as tensors, is left alone: its range is not known here)
_FX_Q_TENSOR = _overloads(_QD.quantize_per_tensor, ("default", "tensor"))
_FX_DQ_TENSOR = _overloads(_QD.dequantize_per_tensor, ("default", "tensor"))
_FX_Q_CHANNEL = {_QD.quantize_per_channel.default}
_FX_DQ_CHANNEL = {_QD.dequantize_per_channel.default}
_FX_MOVES = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.flatten.using_ints,
             _aten.permute.default, _aten.transpose.int, _aten.t.default, _aten.squeeze.dim, _aten.squeeze.dims,
             _aten.squeeze.default, _aten.unsqueeze.default, _aten.max_pool2d.default}
_FX_ACTIVATIONS = {_aten.relu.default, _aten.relu_.default, _aten.relu6.default, _aten.hardtanh.default,
                   _aten.hardtanh_.default, _aten.clamp.default, _aten.clamp_min.default}
_ONNX_MOVES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity")
_ONNX_ACTIVATIONS = ("Relu", "Clip")
#: the margin (in quantization steps) by which activation bounds must clear half a step: float rounding of
#: ``x / s`` (or ``x · (1/s)``) in any runtime stays far below it
_MARGIN = 1e-3


@dataclass
class _QParams:
    """The parameters of one Q or DQ: scale / zero point as numpy arrays (None when computed at run time) and
    the graph values they come from (to compare run-time ones by identity)."""

    per_channel: bool
    scale: Optional[np.ndarray]
    zp: Optional[np.ndarray]
    scale_ref: Any
    zp_ref: Any
    axis: Optional[int]
    qmin: Optional[int]
    qmax: Optional[int]
    dtype: str
    out_float32: bool = True

    def range_text(self) -> str:
        return f"[{self.qmin}, {self.qmax}]"


@register_pass
class FuseQDQ(Pass):
    """Fold Q/DQ pairs exactly: identity requantizations, moves on int8 tensors, activations the Q clamps."""

    name = "fuse_qdq"
    graph_kinds = ("fx", "onnx")
    params = (
        Param("identity", "bool", default=True, doc="remove DQ → Q pairs with equal parameters"),
        Param("move", "bool", default=True,
              doc="run reshape / transpose / max-pool chains between equal DQ and Q on the integer tensor"),
        Param("activations", "bool", default=True,
              doc="drop a relu / clamp before a Q whose range it does not cut (zero point = qmin)"),
    )

    # ---- FX ---------------------------------------------------------------------------------------------
    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for q in [n for n in gm.graph.nodes if _fx_is_q(n)]:
            details.extend(self._per_quantize(
                q, lambda: self._activation_fx(gm, q, ctx), lambda: self._move_fx(gm, q, ctx),
                lambda: self._identity_fx(gm, q, ctx)))
        if any(d.startswith("applied") for d in details):
            finish(gm)
        return _result(details)

    def _per_quantize(self, q, activation, move, identity) -> List[str]:
        """The three patterns for one quantize: activations (repeatedly), then a move, else an identity."""
        lines: List[str] = []
        if self.options["activations"]:
            while True:
                line = activation()
                if line:
                    lines.append(line)
                if not line or not line.startswith("applied"):
                    break
        if self.options["move"]:
            line = move()
            if line:
                lines.append(line)
                if line.startswith("applied"):
                    return lines
        if self.options["identity"]:
            line = identity()
            if line:
                lines.append(line)
        return lines

    def _activation_fx(self, gm, q, ctx) -> Optional[str]:
        act = q.args[0]
        while _fx_is_move(act) and len(act.users) == 1:
            act = act.args[0]
        if not (isinstance(act, fx.Node) and act.op == "call_function" and act.target in _FX_ACTIVATIONS):
            return None
        if not ctx.selects(act):
            return None
        site = _fx_site(act)
        if len(act.users) != 1 or _fx_is_output(act):
            return f"declined at {site}: its float output has other readers (kept for them)"
        qp = _fx_qparams(gm, q)
        if qp.scale is None or qp.zp is None:
            return f"declined at {site}: the quantize's scale is computed at run time"
        bounds = _fx_bounds(act)
        if bounds is None:
            return f"declined at {site}: bounds are not constants"
        problem = _cuts_range(*bounds, qp)
        if problem:
            return f"declined at {site}: {problem}"
        act.replace_all_uses_with(act.args[0])
        gm.graph.erase_node(act)
        return f"applied at {site}: {_absorbed(_fx_short(act), *bounds, qp)}"

    def _move_fx(self, gm, q, ctx) -> Optional[str]:
        chain: List[fx.Node] = []
        cur = q.args[0]
        while _fx_is_move(cur):
            chain.insert(0, cur)
            cur = cur.args[0]
        if not chain or not _fx_is_dq(cur) or not all(ctx.selects(n) for n in chain):
            return None
        what = " → ".join(_fx_short(n) for n in chain)
        site = _fx_site(chain[0])
        shared = next((n for n in chain if len(n.users) != 1 or _fx_is_output(n)), None)
        if shared is not None:
            return f"declined at {site}: the float output of {shared.name} has other readers"
        dqp, qp = _fx_qparams(gm, cur), _fx_qparams(gm, q)
        problem = _move_problem(dqp, qp, what, any(n.target is _aten.max_pool2d.default for n in chain))
        if problem:
            return f"declined at {site}: {problem}"
        x = cur.args[0]
        chain[0].replace_input_with(cur, x)
        dtype = getattr(torch, dqp.dtype)
        for node in chain:
            _fx_set_dtype(node, dtype)
        q.replace_all_uses_with(chain[-1])
        gm.graph.erase_node(q)
        return f"applied at {site}: {what} runs on the {dqp.dtype} tensor, a quantize/dequantize pair removed" + \
            _kept(len(cur.users))

    def _identity_fx(self, gm, q, ctx) -> Optional[str]:
        dq = q.args[0]
        if not _fx_is_dq(dq) or not ctx.selects(q):
            return None
        site = _fx_site(q)
        dqp, qp = _fx_qparams(gm, dq), _fx_qparams(gm, q)
        problem = _mismatch(dqp, qp, _fx_rank(dq.args[0]))
        if problem:
            return f"declined at {site}: {problem}"
        x = dq.args[0]
        full = _full_range(qp.dtype)
        if (qp.qmin, qp.qmax) != full and not _fx_within(gm, x, qp.qmin, qp.qmax):
            return (f"declined at {site}: the integers may lie outside the quantize's range {qp.range_text()} "
                    f"(it would clamp them)")
        q.replace_all_uses_with(x)
        gm.graph.erase_node(q)
        return f"applied at {site}: identity requantization {dq.name} → {q.name} removed ({_params_text(qp)})" + \
            _kept(len(dq.users))

    # ---- ONNX -------------------------------------------------------------------------------------------
    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
            details.extend(self._per_quantize(
                q, lambda: self._activation_onnx(graph, q, ctx), lambda: self._move_onnx(graph, q, ctx),
                lambda: self._identity_onnx(graph, q, ctx)))
        if any(d.startswith("applied") for d in details):
            graph.cleanup().toposort()
        return _result(details)

    def _activation_onnx(self, graph, q, ctx) -> Optional[str]:
        if not q.outputs:
            return None
        act = _producer(q.inputs[0])
        while act is not None and act.op in _ONNX_MOVES and _sole_reader(graph, act.outputs[0]):
            act = _producer(act.inputs[0])
        if act is None or act.op not in _ONNX_ACTIVATIONS or not ctx.selects(act):
            return None
        site = _onnx_site(act)
        out = act.outputs[0]
        if not _sole_reader(graph, out):
            return f"declined at {site}: its float output has other readers (kept for them)"
        qp = _onnx_qparams(q)
        if qp.scale is None or qp.zp is None:
            return f"declined at {site}: the quantize's scale is computed at run time"
        if qp.qmin is None:
            return f"declined at {site}: the quantize's type {qp.dtype} is not an integer type"
        bounds = _onnx_bounds(graph, act)
        if bounds is None:
            return f"declined at {site}: Clip bounds are not constants"
        problem = _cuts_range(*bounds, qp)
        if problem:
            return f"declined at {site}: {problem}"
        redirect_readers(out, act.inputs[0])
        act.outputs.clear()
        return f"applied at {site}: {_absorbed(act.op, *bounds, qp)}"

    def _move_onnx(self, graph, q, ctx) -> Optional[str]:
        if not q.outputs:
            return None
        chain: List[gs.Node] = []
        cur = _producer(q.inputs[0])
        while cur is not None and cur.op in _ONNX_MOVES and cur.inputs:
            chain.insert(0, cur)
            cur = _producer(cur.inputs[0])
        if not chain or cur is None or cur.op != "DequantizeLinear" or not all(ctx.selects(n) for n in chain):
            return None
        what = " → ".join(n.op for n in chain)
        site = _onnx_site(chain[0])
        shared = next((n for n in chain if not _sole_reader(graph, n.outputs[0])), None)
        if shared is not None:
            return f"declined at {site}: the float output of {_onnx_site(shared)} has other readers"
        pool = next((n for n in chain if n.op == "MaxPool"), None)
        if pool is not None and any(len(t.outputs) or is_graph_output(graph, t) for t in pool.outputs[1:]):
            return f"declined at {site}: MaxPool's indices output is read"
        if pool is not None and (graph.opset or 0) < 12:
            return f"declined at {site}: MaxPool on integers needs opset 12 (this model: {graph.opset})"
        dqp, qp = _onnx_qparams(cur), _onnx_qparams(q)
        problem = _move_problem(dqp, qp, what, pool is not None)
        if problem:
            return f"declined at {site}: {problem}"
        x = cur.inputs[0]
        chain[0].inputs[0] = x
        dtype = x.dtype or np.dtype(dqp.dtype)
        for node in chain[:-1]:
            node.outputs[0].dtype = dtype
        q_out = q.outputs[0]
        q_out.dtype = q_out.dtype or dtype
        q.outputs.clear()
        chain[-1].outputs[0] = q_out  # the last op now writes the integers the quantize wrote (its readers, name)
        return f"applied at {site}: {what} runs on the {dqp.dtype} tensor, a quantize/dequantize pair removed" + \
            _kept(_live_readers(cur.outputs[0]))

    def _identity_onnx(self, graph, q, ctx) -> Optional[str]:
        if not q.outputs:
            return None
        dq = _producer(q.inputs[0])
        if dq is None or dq.op != "DequantizeLinear" or not ctx.selects(q):
            return None
        site = _onnx_site(q)
        dqp, qp = _onnx_qparams(dq), _onnx_qparams(q)
        x = dq.inputs[0]
        problem = _mismatch(dqp, qp, len(x.shape) if x.shape is not None else None)
        if problem:
            return f"declined at {site}: {problem}"
        out = q.outputs[0]
        if is_graph_output(graph, out):
            return f"declined at {site}: the quantize writes a graph output"
        redirect_readers(out, x)
        q.outputs.clear()
        return f"applied at {site}: identity requantization {_onnx_site(dq)} → {site} removed ({_params_text(qp)})" + \
            _kept(_live_readers(dq.outputs[0]))


# ---- comparing parameters (both graph kinds) -------------------------------------------------------------
def _same(a: Optional[np.ndarray], a_ref, b: Optional[np.ndarray], b_ref) -> bool:
    if a_ref is b_ref and a_ref is not None:
        return True
    if a is None or b is None:
        return False
    return a.size == b.size and np.array_equal(a.ravel().astype(np.float64), b.ravel().astype(np.float64))


def _mismatch(dq: _QParams, q: _QParams, rank: Optional[int]) -> Optional[str]:
    """Why ``Q(DQ(x))`` is not ``x`` (None when it is)."""
    if dq.per_channel != q.per_channel:
        return "per-channel dequantize before a per-tensor quantize" if dq.per_channel else \
            "per-tensor dequantize before a per-channel quantize"
    if dq.dtype != q.dtype:
        return f"integer types differ ({dq.dtype} vs {q.dtype})"
    if (dq.qmin, dq.qmax) != (q.qmin, q.qmax):
        return f"ranges differ ({dq.range_text()} vs {q.range_text()})"
    if dq.per_channel:
        a, b = dq.axis, q.axis
        if rank:
            a, b = a % rank, b % rank
        if a != b:
            return f"per-channel axes differ ({dq.axis} vs {q.axis})"
    if not _same(dq.scale, dq.scale_ref, q.scale, q.scale_ref):
        if dq.scale is None or q.scale is None:
            return "scales are computed at run time by different ops"
        return f"scales differ ({_num(dq.scale)} vs {_num(q.scale)})"
    if not _same(dq.zp, dq.zp_ref, q.zp, q.zp_ref):
        if dq.zp is None or q.zp is None:
            return "zero points are computed at run time by different ops"
        return f"zero points differ ({_num(dq.zp)} vs {_num(q.zp)})"
    if not dq.out_float32:
        return "the dequantize does not produce float32"
    return None


def _move_problem(dq: _QParams, q: _QParams, what: str, has_pool: bool) -> Optional[str]:
    if dq.per_channel:
        return f"per-channel dequantize (axis {dq.axis}): its scales are tied to an axis {what} may move"
    if q.per_channel:
        return "per-channel quantize"
    problem = _mismatch(dq, q, None)
    if problem:
        return problem
    if has_pool and dq.scale is not None and not np.all(dq.scale > 0):
        return "max-pool needs a positive scale (the dequantize must be increasing)"
    return None


def _cuts_range(lo: float, hi: float, qp: _QParams) -> Optional[str]:
    """Why ``Q(clamp(y, lo, hi))`` may differ from ``Q(y)`` (None when the bounds cover Q's range)."""
    s, z = qp.scale.astype(np.float64), qp.zp.astype(np.float64)
    if lo > -math.inf and np.any(lo / s + z > qp.qmin + 0.5 - _MARGIN):
        if lo == 0:
            return (f"zero point {_num(qp.zp)} is above qmin {qp.qmin}: the quantize keeps negative values "
                    f"the activation removes")
        return f"lower bound {lo:g} is inside the quantize's range (qmin {qp.qmin} is {_num((qp.qmin - z) * s)})"
    if hi < math.inf and np.any(hi / s + z < qp.qmax - 0.5 + _MARGIN):
        return f"upper bound {hi:g} is inside the quantize's range (qmax {qp.qmax} is {_num((qp.qmax - z) * s)})"
    return None


def _absorbed(what: str, lo: float, hi: float, qp: _QParams) -> str:
    if lo == 0 and hi == math.inf:
        return (f"{what} absorbed into the quantize (zero point {_num(qp.zp)} = qmin: it clamps negative values "
                f"already)")
    s, z = qp.scale.astype(np.float64), qp.zp.astype(np.float64)
    return (f"{what}({lo:g}, {hi:g}) absorbed into the quantize (its bounds cover the quantize's range "
            f"[{_num((qp.qmin - z) * s)}, {_num((qp.qmax - z) * s)}])")


def _full_range(dtype: str) -> Tuple[Optional[int], Optional[int]]:
    try:
        info = np.iinfo(np.dtype(dtype))
    except (TypeError, ValueError):
        return None, None
    return int(info.min), int(info.max)


def _params_text(qp: _QParams) -> str:
    return f"scale {_num(qp.scale)}, zero point {_num(qp.zp)}, {qp.dtype}" if qp.scale is not None and \
        qp.zp is not None else f"run-time scale, {qp.dtype}"


def _num(value) -> str:
    a = np.asarray(value).ravel()
    if a.size == 1:
        return f"{float(a[0]):.6g}"
    return f"[{', '.join(f'{float(v):.4g}' for v in a[:3])}{', ...' if a.size > 3 else ''}]"


def _kept(readers: int) -> str:
    return f" (the dequantize stays for {readers} other reader(s))" if readers else ""


def _result(details: List[str]) -> PassResult:
    applied = [d for d in details if d.startswith("applied")]
    moved = sum("runs on the" in d for d in applied)
    identity = sum("identity requantization" in d for d in applied)
    absorbed = len(applied) - moved - identity
    summary = (f"removed {moved + identity} quantize/dequantize pair(s) ({moved} moves onto integers, {identity} "
               f"identity requantizations), absorbed {absorbed} activation(s)")
    if len(details) > len(applied):
        summary += f", declined {len(details) - len(applied)}"
    return PassResult(changed=bool(applied), summary=summary, details=details)


# ---- FX helpers ----------------------------------------------------------------------------------------
def _fx_is_q(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and \
        (node.target in _FX_Q_TENSOR or node.target in _FX_Q_CHANNEL)


def _fx_is_dq(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and \
        (node.target in _FX_DQ_TENSOR or node.target in _FX_DQ_CHANNEL)


def _fx_is_move(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in _FX_MOVES and \
        bool(node.args) and isinstance(node.args[0], fx.Node)


def _fx_arg(node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _fx_value(gm, value) -> Optional[np.ndarray]:
    if isinstance(value, fx.Node):
        t = get_constant(gm, value)
        return None if t is None else t.double().numpy()
    if isinstance(value, (int, float)):
        return np.asarray(value, np.float64)
    return None


def _fx_qparams(gm, node) -> _QParams:
    per_channel = node.target in _FX_Q_CHANNEL or node.target in _FX_DQ_CHANNEL
    base = 4 if per_channel else 3  # where quant_min sits
    scale, zp = node.args[1], node.args[2]
    dtype = _fx_arg(node, base + 2, "dtype")
    out_dtype = node.kwargs.get("out_dtype")
    return _QParams(per_channel=per_channel, scale=_fx_value(gm, scale), zp=_fx_value(gm, zp), scale_ref=scale,
                    zp_ref=zp, axis=int(node.args[3]) if per_channel else None,
                    qmin=int(_fx_arg(node, base, "quant_min")), qmax=int(_fx_arg(node, base + 1, "quant_max")),
                    dtype=str(dtype).replace("torch.", ""),
                    out_float32=out_dtype in (None, torch.float32))


def _fx_bounds(act) -> Optional[Tuple[float, float]]:
    t = act.target
    if t in (_aten.relu.default, _aten.relu_.default):
        return 0.0, math.inf
    if t is _aten.relu6.default:
        return 0.0, 6.0
    if t in (_aten.hardtanh.default, _aten.hardtanh_.default):
        lo, hi = _fx_arg(act, 1, "min_val", -1.0), _fx_arg(act, 2, "max_val", 1.0)
    elif t is _aten.clamp.default:
        lo, hi = _fx_arg(act, 1, "min"), _fx_arg(act, 2, "max")
    else:  # clamp_min
        lo, hi = _fx_arg(act, 1, "min"), None
    if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
        return None
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


def _fx_within(gm, node, qmin: int, qmax: int) -> bool:
    """Whether ``node``'s integers are known to lie in ``[qmin, qmax]`` (a quantize clamped them, or constants)."""
    while _fx_is_move(node):
        node = node.args[0]
    if _fx_is_q(node):
        p = _fx_qparams(gm, node)
        return p.qmin >= qmin and p.qmax <= qmax
    t = get_constant(gm, node)
    return t is not None and t.numel() > 0 and int(t.min()) >= qmin and int(t.max()) <= qmax


def _fx_rank(node) -> Optional[int]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return len(val.shape) if val is not None and hasattr(val, "shape") else None


def _fx_set_dtype(node, dtype) -> None:
    """The node now computes on integers: keep its ``val`` / ``tensor_meta`` (shape, module stack) truthful."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        try:
            node.meta["val"] = val.to(dtype)
        except Exception:  # a fake tensor that cannot convert: drop it rather than lie about the dtype
            node.meta.pop("val", None)
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "_replace"):
        node.meta["tensor_meta"] = meta._replace(dtype=dtype)


def _fx_is_output(node) -> bool:
    return any(u.op == "output" for u in node.users)


def _fx_site(node) -> str:
    return f"{fx_path(node) or '<top>'} ({node.name})"


def _fx_short(node) -> str:
    return fx_op_name(node).split(".")[1] if "." in fx_op_name(node) else fx_op_name(node)


# ---- ONNX helpers --------------------------------------------------------------------------------------
_ONNX_DTYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32"}


def _producer(tensor) -> Optional[gs.Node]:
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        return tensor.inputs[0]
    return None


def _sole_reader(graph, tensor) -> bool:
    return len(tensor.outputs) == 1 and not is_graph_output(graph, tensor)


def _onnx_input(node, index: int):
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def _onnx_qparams(node) -> _QParams:
    scale_t, zp_t = node.inputs[1], _onnx_input(node, 2)
    scale = constant_value(scale_t)
    zp = constant_value(zp_t) if zp_t is not None else None
    if zp_t is None:  # no zero point: 0 of the output type (uint8 unless Q's output_dtype says otherwise)
        dtype = _ONNX_DTYPES.get(int(node.attrs.get("output_dtype", 0) or 2), "unsupported")
        zp = np.zeros((), dtype if dtype != "unsupported" else np.uint8)
    elif zp is not None:
        dtype = str(zp.dtype)
    else:
        dtype = str(np.dtype(zp_t.dtype)) if zp_t.dtype is not None else "unknown"
    shape = scale.shape if scale is not None else (scale_t.shape or ())
    per_channel = len(shape) >= 1 and int(np.prod(shape)) > 1
    if node.attrs.get("block_size", 0):
        dtype = f"{dtype} (blocked)"  # never equal to a plain one: blocked Q/DQ are left alone
    qmin, qmax = _full_range(dtype) if "(" not in dtype else (None, None)
    return _QParams(per_channel=per_channel, scale=None if scale is None else scale.astype(np.float64),
                    zp=None if zp is None else zp.astype(np.float64), scale_ref=scale_t, zp_ref=zp_t,
                    axis=int(node.attrs.get("axis", 1)) if per_channel else None, qmin=qmin, qmax=qmax, dtype=dtype)


def _onnx_bounds(graph, act) -> Optional[Tuple[float, float]]:
    if act.op == "Relu":
        return 0.0, math.inf
    if (graph.opset or 13) < 11:
        return float(act.attrs.get("min", -math.inf)), float(act.attrs.get("max", math.inf))
    out = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        t = _onnx_input(act, index)
        if t is None:
            out.append(default)
            continue
        value = constant_value(t)
        if value is None or value.size != 1:
            return None
        out.append(float(value.reshape(-1)[0]))
    return out[0], out[1]


def _live_readers(tensor) -> int:
    """How many nodes still read ``tensor`` (nodes this pass cut off, without outputs, do not count)."""
    return sum(1 for c in tensor.outputs if c.outputs)


def _onnx_site(node) -> str:
    return node.name or node.outputs[0].name
