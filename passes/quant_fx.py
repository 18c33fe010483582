"""Q/DQ mechanics on aglmc's FX form: where quantizable ops read and write, inserting quantize/dequantize,
quantizing constant weights, and recording activations for calibration.

Q/DQ are PyTorch's decomposed quantization ops (``torch.ops.quantized_decomposed``, what pt2e's
``convert_pt2e`` writes), so the quantized graph still runs in PyTorch (fake-quant numerics in float) and is
what TVM sees after export; :mod:`aglmc.targets.quant` maps them to Relax ``quantize``/``dequantize``:

    x ─ quantize_per_tensor ─ dequantize_per_tensor ─┐
    W_int8 ─ dequantize_per_channel ──────────────────┴─ conv2d / linear ─ [relu] ─ quantize ─ dequantize ─ …

Passes choose *what* (:mod:`aglmc.passes.quant_spec`); this module only does it.
"""

from __future__ import annotations

import operator
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from aglmc.passes.fx_utils import add_constant, get_constant
from aglmc.passes.quant_spec import PER_TOKEN, QuantSpec
from aglmc.passes.select import fx_op_kind, fx_op_name, fx_path

QD = torch.ops.quantized_decomposed
TORCH_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int4": torch.int8, "uint4": torch.uint8}

#: op kinds whose inputs and weights a static or dynamic scheme quantizes
QUANTIZABLE = ("conv2d", "depthwise_conv2d", "conv1d", "linear", "matmul")
#: ops that move values without changing them: their output reuses their input's scale and zero point
PASSTHROUGH = {"aten.max_pool2d", "aten.view", "aten.reshape", "aten.flatten", "aten.permute", "aten.transpose",
               "aten.t", "aten._unsafe_view", "aten.squeeze", "aten.unsqueeze", "aten.contiguous"}
#: activations folded into the op before the output is quantized (conv → relu → Q)
FUSED_ACTIVATIONS = {"aten.relu", "aten.relu_", "aten.hardtanh", "aten.hardtanh_", "aten.relu6"}

_Q_OPS = {"quantized_decomposed.quantize_per_tensor", "quantized_decomposed.quantize_per_channel",
          "quantized_decomposed.quantize_per_token"}
_DQ_OPS = {"quantized_decomposed.dequantize_per_tensor", "quantized_decomposed.dequantize_per_channel",
           "quantized_decomposed.dequantize_per_channel_group", "quantized_decomposed.dequantize_per_token"}


def _qdq_name(node) -> str:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return ""
    name = fx_op_name(node)  # "quantized_decomposed.quantize_per_tensor" (.default dropped) or "....tensor"
    return name.rsplit(".", 1)[0] if name.endswith((".tensor", ".tensor2")) else name


def is_quantize(node) -> bool:
    return _qdq_name(node) in _Q_OPS


def is_dequantize(node) -> bool:
    return _qdq_name(node) in _DQ_OPS


def site_name(node: fx.Node) -> str:
    return f"{fx_path(node) or '<top>'} ({node.name})"


# ---- what a quantizable op reads ------------------------------------------------------------------------
def weight_index(gm: fx.GraphModule, op: fx.Node) -> Optional[int]:
    """The argument index of ``op``'s constant weight (conv/linear: 1; matmul: whichever is constant)."""
    kind = fx_op_kind(op)
    if kind in ("conv2d", "depthwise_conv2d", "conv1d", "linear"):
        return 1 if len(op.args) > 1 and get_constant(gm, op.args[1]) is not None else None
    if kind == "matmul":
        for i in (1, 0):
            if get_constant(gm, op.args[i]) is not None:
                return i
    return None


def weight_channel_axis(op: fx.Node, index: int, ndim: int) -> int:
    """The output-channel axis of the weight: 0 for conv/linear ([out, in, ...]), the last for ``x @ W``."""
    if fx_op_kind(op) == "matmul":
        return ndim - 1 if index == 1 else ndim - 2
    return 0


def activation_inputs(gm: fx.GraphModule, op: fx.Node) -> List[fx.Node]:
    """The non-constant tensor inputs of ``op`` that a scheme quantizes (the data, not the weight or bias)."""
    kind = fx_op_kind(op)
    widx = weight_index(gm, op)
    if kind == "matmul":
        idx = [i for i in (0, 1) if i != widx]
    else:
        idx = [0]
    return [op.args[i] for i in idx if isinstance(op.args[i], fx.Node) and get_constant(gm, op.args[i]) is None]


def bias_node(op: fx.Node) -> Optional[fx.Node]:
    if fx_op_kind(op) not in ("conv2d", "depthwise_conv2d", "conv1d", "linear"):
        return None
    b = op.args[2] if len(op.args) > 2 else op.kwargs.get("bias")
    return b if isinstance(b, fx.Node) else None


def output_tensor(op: fx.Node) -> fx.Node:
    """What the op's output quantization applies to: the op, or the ReLU it feeds alone (conv → relu → Q)."""
    users = list(op.users)
    if len(users) == 1 and users[0].op == "call_function" and _base_name(users[0]) in FUSED_ACTIVATIONS:
        return users[0]
    return op


def _base_name(node: fx.Node) -> str:
    """``aten.flatten`` for ``aten.flatten.using_ints`` (the overload dropped)."""
    return ".".join(fx_op_name(node).split(".")[:2])


def passthrough_source(node: fx.Node) -> Optional[fx.Node]:
    """The input a passthrough op (max-pool, reshape ...) copies values from, else None."""
    if node.op == "call_function" and _base_name(node) in PASSTHROUGH and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def quantizable_ops(gm: fx.GraphModule, selects: Callable[[fx.Node], bool],
                    need_weight: bool = False) -> List[fx.Node]:
    """Selected conv/linear/matmul nodes, in graph order (with a constant weight when ``need_weight``)."""
    ops = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or fx_op_kind(node) not in QUANTIZABLE or not selects(node):
            continue
        if any(is_dequantize(a) for a in node.args if isinstance(a, fx.Node)):
            continue  # already quantized by an earlier step
        if need_weight and weight_index(gm, node) is None:
            continue
        ops.append(node)
    return ops


def output_layers(gm: fx.GraphModule, ops: Sequence[fx.Node]) -> List[fx.Node]:
    """The ops of ``ops`` from which a graph output is reached without passing through another of them."""
    wanted = set(ops)
    reaches: Dict[fx.Node, bool] = {}
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "output":
            reaches[node] = True
            continue
        reaches[node] = any(reaches.get(u, False) and u not in wanted for u in node.users) or \
            any(u.op == "output" for u in node.users)
    return [op for op in ops if reaches.get(op, False)]


# ---- inserting Q/DQ ---------------------------------------------------------------------------------------
def insert_qdq(gm: fx.GraphModule, tensor: fx.Node, spec: QuantSpec, scale: float, zp: int) -> Tuple[fx.Node, fx.Node]:
    """``tensor → quantize_per_tensor → dequantize_per_tensor``; every reader of ``tensor`` reads the DQ."""
    graph = gm.graph
    args = (float(scale), int(zp), spec.qmin, spec.qmax, TORCH_DTYPES[spec.dtype])
    users = list(tensor.users)
    with graph.inserting_after(tensor):
        q = graph.call_function(QD.quantize_per_tensor.default, (tensor,) + args)
    with graph.inserting_after(q):
        dq = graph.call_function(QD.dequantize_per_tensor.default, (q,) + args)
    for meta in ("nn_module_stack", "stack_trace"):
        if meta in tensor.meta:
            q.meta[meta] = dq.meta[meta] = tensor.meta[meta]
    if "val" in tensor.meta:
        dq.meta["val"] = tensor.meta["val"]
    for user in users:
        user.replace_input_with(tensor, dq)
    return q, dq


def quantize_weight(gm: fx.GraphModule, op: fx.Node, index: int, spec: QuantSpec,
                    qparams: Callable[[np.ndarray, QuantSpec], Tuple[np.ndarray, np.ndarray, np.ndarray]]
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Replace ``op``'s constant argument ``index`` by ``dequantize(W_int)``; returns the float weight and its
    fake-quantized copy (for the report's weight SQNR)."""
    w_node = op.args[index]
    w = get_constant(gm, w_node).float().numpy()
    q, scale, zp = qparams(w, spec)
    hint = str(w_node.target)
    q_node = add_constant(gm, torch.from_numpy(q.copy()), f"{hint}_q", before=op)
    dtype = TORCH_DTYPES[spec.dtype]
    graph = gm.graph
    if spec.axis is None:
        with graph.inserting_before(op):
            dq = graph.call_function(QD.dequantize_per_tensor.default,
                                     (q_node, float(scale), int(zp), spec.qmin, spec.qmax, dtype))
        approx = (q.astype(np.float32) - float(zp)) * float(scale)
    else:
        s_node = add_constant(gm, torch.from_numpy(scale.astype(np.float32)), f"{hint}_scale", before=op)
        z_node = add_constant(gm, torch.from_numpy(zp.astype(np.int64)), f"{hint}_zp", before=op)
        with graph.inserting_before(op):
            if spec.group_size is not None:
                dq = graph.call_function(QD.dequantize_per_channel_group.default,
                                         (q_node, s_node, z_node, spec.qmin, spec.qmax, dtype, spec.group_size,
                                          torch.float32))
                g = spec.group_size
                approx = ((q.reshape(q.shape[0], -1, g).astype(np.float32) - zp[..., None]) * scale[..., None]
                          ).reshape(q.shape)
            else:
                axis = spec.axis % w.ndim
                dq = graph.call_function(QD.dequantize_per_channel.default,
                                         (q_node, s_node, z_node, axis, spec.qmin, spec.qmax, dtype))
                shape = [1] * w.ndim
                shape[axis] = -1
                approx = (q.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
    if "val" in w_node.meta:
        dq.meta["val"] = w_node.meta["val"]
    if "nn_module_stack" in op.meta:
        dq.meta["nn_module_stack"] = op.meta["nn_module_stack"]
    _replace_arg(op, index, dq)
    return w, approx.astype(np.float32)


def snap_bias(gm: fx.GraphModule, op: fx.Node, input_scale: float, weight_scales: np.ndarray) -> None:
    """Round ``op``'s constant bias to the int32 grid of ``input_scale * weight_scale`` (what an integer kernel
    adds, and what an ONNX QDQ model stores), so the float graph and the integer kernels agree."""
    b_node = bias_node(op)
    b = get_constant(gm, b_node) if b_node is not None else None
    if b is None:
        return
    step = (np.float64(input_scale) * np.asarray(weight_scales, np.float64)).reshape(-1)
    snapped = np.round(b.double().numpy() / step) * step
    new = add_constant(gm, torch.from_numpy(snapped.astype(np.float32)), f"{b_node.target}_q", before=op)
    if len(op.args) > 2:
        _replace_arg(op, 2, new)
    else:
        op.kwargs = {**op.kwargs, "bias": new}


def _replace_arg(node: fx.Node, index: int, value) -> None:
    args = list(node.args)
    args[index] = value
    node.args = tuple(args)


# ---- running the graph and recording values ---------------------------------------------------------------
class _Recorder(fx.Interpreter):
    def __init__(self, gm, watch: Iterable[fx.Node], on_value):
        super().__init__(gm)
        self.watch = set(watch)
        self.on_value = on_value

    def run_node(self, n):
        value = super().run_node(n)
        if n in self.watch and isinstance(value, torch.Tensor):
            self.on_value(n, value.detach())
        return value


def record(gm: fx.GraphModule, batches: Iterable[Sequence[np.ndarray]], watch: Iterable[fx.Node],
           on_value: Callable[[fx.Node, torch.Tensor], None]) -> None:
    """Run ``gm`` on every batch and call ``on_value(node, tensor)`` for each watched node's value."""
    recorder = _Recorder(gm, list(watch), on_value)
    with torch.no_grad():
        for arrays in batches:
            recorder.run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])


def node_values(gm: fx.GraphModule, batches: Sequence[Sequence[np.ndarray]], names: Iterable[str]
                ) -> Dict[str, np.ndarray]:
    """The values of the nodes named ``names`` over ``batches``, concatenated along the first axis."""
    wanted = set(names)
    nodes = [n for n in gm.graph.nodes if n.name in wanted]
    seen: Dict[str, List[np.ndarray]] = {}
    record(gm, batches, nodes, lambda n, v: seen.setdefault(n.name, []).append(v.float().numpy()))
    return {k: np.concatenate(v) for k, v in seen.items()}


# ---- the graph as the quantization passes see it --------------------------------------------------------
class FxQuantGraph:
    """The FX side of the quantization passes' graph interface (tensors are named by their node's name).

    :class:`aglmc.passes.quant_onnx.OnnxQuantGraph` answers the same questions for ONNX graphs, so the passes
    plan and calibrate once for both forms.
    """

    kind = "fx"

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def _node(self, key: str) -> fx.Node:
        for n in self.gm.graph.nodes:
            if n.name == key:
                return n
        raise KeyError(key)

    # planning
    def sites(self, selects, need_weight: bool = False) -> List[fx.Node]:
        return quantizable_ops(self.gm, selects, need_weight)

    def output_layers(self, ops):
        return output_layers(self.gm, ops)

    def site_name(self, op) -> str:
        return site_name(op)

    def op_kind(self, op) -> str:
        return fx_op_kind(op)

    def op_key(self, op) -> str:
        return op.name

    def site_by_key(self, key: str) -> fx.Node:
        return self._node(key)

    def act_inputs(self, op) -> List[str]:
        return [n.name for n in activation_inputs(self.gm, op)]

    def out_tensor(self, op) -> str:
        return output_tensor(op).name

    def is_graph_output(self, key: str) -> bool:
        return any(u.op == "output" for u in self._node(key).users)

    def passthrough_source(self, key: str) -> Optional[str]:
        src = passthrough_source(self._node(key))
        return src.name if src is not None else None

    def weight(self, op) -> Optional[Tuple[int, np.ndarray, int]]:
        idx = weight_index(self.gm, op)
        if idx is None:
            return None
        w = get_constant(self.gm, op.args[idx]).float().numpy()
        return idx, w, weight_channel_axis(op, idx, w.ndim)

    def has_bias(self, op) -> bool:
        b = bias_node(op)
        return b is not None and get_constant(self.gm, b) is not None

    # data
    def record(self, batches, keys, on_value) -> None:
        wanted = set(keys)
        nodes = [n for n in self.gm.graph.nodes if n.name in wanted]
        record(self.gm, batches, nodes, lambda n, v: on_value(n.name, v.float().numpy()))

    def run(self, arrays) -> List[np.ndarray]:
        with torch.no_grad():
            out = self.gm(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        from torch.utils import _pytree

        return [t.detach().float().numpy() for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

    def copy(self) -> "FxQuantGraph":
        import copy

        return FxQuantGraph(copy.deepcopy(self.gm))

    # rewriting
    def insert_qdq(self, key: str, spec: QuantSpec, scale: float, zp: int) -> None:
        insert_qdq(self.gm, self._node(key), spec, scale, zp)

    def insert_dynamic_qdq(self, key: str, spec: QuantSpec) -> None:
        insert_dynamic_qdq(self.gm, self._node(key), spec)

    def quantize_weight(self, op, index: int, spec: QuantSpec, qparams):
        return quantize_weight(self.gm, op, index, spec, qparams)

    def snap_bias(self, op, input_scale: float, weight_scales: np.ndarray) -> None:
        snap_bias(self.gm, op, input_scale, weight_scales)

    def finish(self) -> None:
        from aglmc.passes.fx_utils import finish

        finish(self.gm)


def insert_dynamic_qdq(gm: fx.GraphModule, tensor: fx.Node, spec: QuantSpec) -> None:
    """``tensor → choose_qparams → quantize → dequantize`` with the scale and zero point of the tensor's own range
    at run time: per tensor (``choose_qparams.tensor`` / ``_symmetric``, ``*_per_tensor.tensor``) or, for
    ``spec.axis == PER_TOKEN``, one per row (``choose_qparams_per_token_asymmetric``, ``*_per_token``: int8,
    XNNPACK's zero-point rule)."""
    graph = gm.graph
    dtype = TORCH_DTYPES[spec.dtype]
    per_token = spec.axis == PER_TOKEN
    if per_token:
        if spec.dtype != "int8" or spec.symmetric:
            raise ValueError("per-token dynamic quantization is affine int8")
        choose, choose_args = QD.choose_qparams_per_token_asymmetric.default, (tensor, dtype)
        quant, dequant = QD.quantize_per_token.default, QD.dequantize_per_token.default
    else:
        eps = float(torch.finfo(torch.float32).eps)
        choose = QD.choose_qparams_symmetric.tensor if spec.symmetric else QD.choose_qparams.tensor
        choose_args = (tensor, spec.qmin, spec.qmax, eps, dtype)
        quant, dequant = QD.quantize_per_tensor.tensor, QD.dequantize_per_tensor.tensor
    users = list(tensor.users)
    with graph.inserting_after(tensor):
        qp = graph.call_function(choose, choose_args)
    with graph.inserting_after(qp):
        scale = graph.call_function(operator.getitem, (qp, 0))
    with graph.inserting_after(scale):
        zp = graph.call_function(operator.getitem, (qp, 1))
    with graph.inserting_after(zp):
        q = graph.call_function(quant, (tensor, scale, zp, spec.qmin, spec.qmax, dtype))
    with graph.inserting_after(q):
        dq_args = (q, scale, zp, spec.qmin, spec.qmax, dtype) + ((torch.float32,) if per_token else ())
        dq = graph.call_function(dequant, dq_args)
    for node in (qp, scale, zp, q, dq):
        if "nn_module_stack" in tensor.meta:
            node.meta["nn_module_stack"] = tensor.meta["nn_module_stack"]
    if "val" in tensor.meta:
        dq.meta["val"] = tensor.meta["val"]
    for user in users:
        user.replace_input_with(tensor, dq)
