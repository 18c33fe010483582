"""fuse_linear_add: fold a constant added after a linear / convolution layer into that layer's bias.

``linear(x, W, b) + c`` is ``linear(x, W, b + c)`` when ``c`` is a constant that varies at most along the
output channel (a per-channel vector, or a scalar); the same holds for ``conv2d`` with ``c`` shaped like
``[1, m, 1, 1]``, and for ``- c``. The graph does one elementwise op less per site. In ONNX the pass also turns
``MatMul(x, W) + c`` into one ``Gemm(x, W, c)`` when ``x`` is 2-D, the form exporters write for ``nn.Linear``
of a 2-D input and the one every runtime has a fused kernel for.

This is the graph-level half of "conv/linear + bias + activation": the activation itself has no fused form in
ATen or standard ONNX, and TVM's FuseOps already puts conv/matmul, bias and activation in one kernel once the
graph is lowered (see ``aglmc.targets.relax_fusion`` for the patterns it misses).

FX pattern: ``aten.add.Tensor(aten.linear|aten.conv2d(...), c)`` (either operand order), ``aten.sub.Tensor(
layer, c)``, with ``c`` a ``get_attr`` constant or a Python number.
ONNX pattern: ``Add(Conv|Gemm|MatMul, c)`` (either order), ``Sub(Conv|Gemm|MatMul, c)``, ``c`` an initializer.

Requires: nothing. Guarantees: nothing (a schedule may run it anywhere; fold_batchnorm first lets it also fold
what the batch norm left). Declined sites, with the reason: the layer's output has other readers (or is a
graph output), the addend is an activation (a residual) or does not broadcast along the output channel only,
the layer output is subtracted *from* the constant, dtypes differ, ``MatMul`` of an N-D input (Gemm is 2-D).
Selector: applies to the linear / conv node (``on conv2d`` folds only into convolutions).
"""

from __future__ import annotations

import numbers
from typing import List, Optional, Tuple

import numpy as np
import torch

from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.fx_utils import add_constant, finish, get_constant
from aglmc.passes.onnx_utils import constant_value, is_graph_output, single_consumer
from aglmc.passes.select import fx_op_name, fx_path

_FX_LAYERS = {torch.ops.aten.linear.default: "linear", torch.ops.aten.conv2d.default: "conv2d"}
_FX_ADD = torch.ops.aten.add.Tensor
_FX_SUB = torch.ops.aten.sub.Tensor
_ONNX_LAYERS = ("Conv", "Gemm", "MatMul")


@register_pass
class FuseLinearAdd(Pass):
    """Fold a constant added after a linear / conv layer into its bias (ONNX: MatMul + Add -> Gemm)."""

    name = "fuse_linear_add"
    graph_kinds = ("fx", "onnx")

    # ---- FX ---------------------------------------------------------------------------------------------
    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in (_FX_ADD, _FX_SUB):
                continue
            layer, other = _fx_operands(node)
            if layer is None or not ctx.selects(layer):
                continue  # not a candidate: no linear/conv operand in the selector
            site = f"{fx_path(layer) or layer.name} + {fx_op_name(node).split('.')[1]} ({node.name})"
            reason = self._fold_fx(gm, node, layer, other)
            details.append(f"declined at {site}: {reason}" if reason else f"applied at {site}")
        if _applied(details):
            finish(gm)
        return _result(details)

    def _fold_fx(self, gm, node, layer, other) -> Optional[str]:
        if node.target is _FX_SUB and node.args[0] is not layer:
            return "the layer output is subtracted from the constant (would negate the weights)"
        if len(layer.users) != 1:
            return f"{fx_op_name(layer)} output has {len(layer.users)} readers"
        alpha = node.kwargs.get("alpha", 1)
        sign = -1.0 if node.target is _FX_SUB else 1.0
        weight = get_constant(gm, layer.args[1])
        if weight is None:
            return "weight is not a constant"
        bias_node = layer.args[2] if len(layer.args) > 2 else layer.kwargs.get("bias")
        bias = get_constant(gm, bias_node) if bias_node is not None else None
        if bias_node is not None and bias is None:
            return "bias is not a constant"
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            addend = torch.tensor(float(other), dtype=torch.float64)
        else:
            addend = get_constant(gm, other)
            if addend is None:
                return f"adds an activation ({getattr(other, 'name', other)}), not a constant"
            if addend.dtype != weight.dtype and addend.dim() > 0:
                return f"constant is {addend.dtype}, the layer {weight.dtype} (the add would promote)"
        out = layer.meta.get("val")
        if out is None:
            return "the layer's output shape is unknown"
        channel_axis = out.dim() - 1 if _FX_LAYERS[layer.target] == "linear" else 1
        per_channel = _per_channel(tuple(addend.shape), tuple(out.shape), channel_axis)
        if isinstance(per_channel, str):
            return per_channel
        channels = weight.shape[0]
        b0 = bias.double() if bias is not None else torch.zeros(channels, dtype=torch.float64)
        new_bias = (b0 + sign * float(alpha) * addend.double().reshape(per_channel).expand(channels)).to(weight.dtype)
        b_node = add_constant(gm, new_bias, f"{layer.args[1].target}_bias_fold", before=layer)
        args = list(layer.args)
        if len(args) > 2:
            args[2] = b_node
        elif _FX_LAYERS[layer.target] == "linear" or not layer.kwargs:
            args.append(b_node)
        else:
            layer.kwargs = {**layer.kwargs, "bias": b_node}
        layer.args = tuple(args)
        node.replace_all_uses_with(layer)
        gm.graph.erase_node(node)
        return None

    # ---- ONNX -------------------------------------------------------------------------------------------
    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for node in [n for n in graph.nodes if n.op in ("Add", "Sub")]:
            layer, index = _onnx_operands(node)
            if layer is None or not ctx.selects(layer):
                continue
            site = f"{layer.name or layer.outputs[0].name} + {node.op} ({node.name or node.outputs[0].name})"
            reason = self._fold_onnx(graph, node, layer, index)
            details.append(f"declined at {site}: {reason}" if reason else f"applied at {site}")
        if _applied(details):
            graph.cleanup().toposort()
        return _result(details)

    def _fold_onnx(self, graph, node, layer, index: int) -> Optional[str]:
        import onnx_graphsurgeon as gs

        y = layer.outputs[0]
        if single_consumer(y) is not node or is_graph_output(graph, y):
            return f"{layer.op} output has other readers"
        if node.op == "Sub" and index != 0:
            return "the layer output is subtracted from the constant (would negate the weights)"
        addend = constant_value(node.inputs[1 - index])
        if addend is None:
            return f"adds an activation ({node.inputs[1 - index].name}), not a constant"
        weight = constant_value(layer.inputs[1])
        if weight is None:
            return "weight is not a constant"
        if addend.dtype != weight.dtype and addend.ndim > 0:
            return f"constant is {addend.dtype}, the layer {weight.dtype}"
        sign = -1.0 if node.op == "Sub" else 1.0
        if layer.op == "Conv":
            rank = weight.ndim
            channels, axis = weight.shape[0], 1
        elif layer.op == "Gemm":
            rank = 2
            channels, axis = (weight.shape[0] if layer.attrs.get("transB", 0) else weight.shape[1]), 1
        else:
            x_shape = layer.inputs[0].shape
            if weight.ndim != 2 or constant_value(layer.inputs[0]) is not None:
                return "MatMul is not x·W with a 2-D constant W"
            if x_shape is None or len(x_shape) != 2:
                dims = "unknown" if x_shape is None else f"{len(x_shape)}-D"
                return f"MatMul input is {dims}; Gemm takes 2-D (left as MatMul + Add)"
            rank = 2
            channels, axis = weight.shape[1], 1
        out_shape = tuple(y.shape) if y.shape is not None else (None,) * rank
        per_channel = _per_channel(addend.shape, out_shape, axis, channels)
        if isinstance(per_channel, str):
            return per_channel
        add = sign * np.broadcast_to(addend.astype(np.float64).reshape(per_channel), (channels,))
        base = layer.name or y.name
        if layer.op == "Conv":
            b0 = constant_value(layer.inputs[2]) if len(layer.inputs) > 2 else None
            if len(layer.inputs) > 2 and b0 is None:
                return "bias is not a constant"
            b0 = np.zeros(channels) if b0 is None else b0.astype(np.float64)
            inputs = list(layer.inputs[:2]) + [gs.Constant(f"{base}_B_addfold", (b0 + add).astype(weight.dtype))]
            layer.inputs.clear()
            layer.inputs.extend(inputs)
        elif layer.op == "Gemm":
            beta = float(layer.attrs.get("beta", 1.0))
            c0 = constant_value(layer.inputs[2]) if len(layer.inputs) > 2 else None
            if len(layer.inputs) > 2 and c0 is None:
                return "Gemm's C is not a constant"
            c0 = np.zeros((channels,)) if c0 is None else beta * c0.astype(np.float64)
            if c0.ndim > 1 and c0.shape[0] != 1:
                return f"Gemm's C has shape {c0.shape}, not per output channel"
            new_c = (c0.reshape(-1) if c0.size == channels else np.broadcast_to(c0.reshape(-1), (channels,))) + add
            inputs = list(layer.inputs[:2]) + [gs.Constant(f"{base}_C_addfold", new_c.astype(weight.dtype))]
            layer.inputs.clear()
            layer.inputs.extend(inputs)
            layer.attrs["beta"] = 1.0
        else:  # MatMul(x, W) + c  ->  Gemm(x, W, c)
            layer.op = "Gemm"
            layer.attrs = {"transB": 0}
            layer.inputs.append(gs.Constant(f"{base}_C_addfold", add.astype(weight.dtype)))
        layer.outputs = [node.outputs[0]]
        node.outputs.clear()
        node.inputs.clear()
        return None


def _fx_operands(node) -> Tuple[Optional[object], Optional[object]]:
    """(the linear/conv operand, the other operand) of an add/sub, or (None, None)."""
    a, b = node.args[0], node.args[1]
    for layer, other in ((a, b), (b, a)):
        if getattr(layer, "op", None) == "call_function" and layer.target in _FX_LAYERS:
            return layer, other
    return None, None


def _onnx_operands(node):
    for index, tensor in enumerate(node.inputs[:2]):
        if len(tensor.inputs) == 1 and tensor.inputs[0].op in _ONNX_LAYERS:
            return tensor.inputs[0], index
    return None, 0


def _per_channel(shape, out_shape, axis: int, channels: Optional[int] = None):
    """The shape to view the addend as, (-1,) or (1,), when it varies only along ``axis`` of the output;
    else the reason it does not."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > len(out_shape):
        return f"constant of shape {list(shape)} has more dimensions than the output ({len(out_shape)})"
    padded = (1,) * (len(out_shape) - len(shape)) + shape
    want = channels if channels is not None else out_shape[axis]
    for i, size in enumerate(padded):
        if i == axis:
            if size not in (1, want):
                return f"constant of shape {list(shape)} does not match the {want} output channels"
        elif size != 1:
            return f"constant of shape {list(shape)} varies along output axis {i}, not only the channel axis"
    return (-1,) if padded[axis] == want and want != 1 else (1,)


def _applied(details: List[str]) -> int:
    return sum(line.startswith("applied") for line in details)


def _result(details: List[str]) -> PassResult:
    """Per-site lines in graph order: ``applied at SITE`` / ``declined at SITE: reason``."""
    applied = _applied(details)
    summary = f"folded {applied} add(s) into biases"
    if len(details) > applied:
        summary += f", declined {len(details) - applied}"
    return PassResult(changed=applied > 0, summary=summary, details=details)
