"""Op kinds and selectors: the vocabulary a schedule uses to pick parts of a model, for FX and ONNX alike.

A schedule step ``pass lowrank on linear in "encoder.**"`` selects the nodes whose *op kind* is ``linear`` and
whose *path* matches the glob (``*`` within one dotted component, ``**`` across components). Op kinds are aglmc's own names, shared by both graph forms, so one schedule reads
the same whether the model came from PyTorch or from an ONNX file:

- FX (ATen ops from ``torch.export``): the path is the module path from ``nn_module_stack``
  (``features.0.conv``); the kind comes from the ATen op (``aten.conv2d`` → ``conv2d``, or
  ``depthwise_conv2d`` when ``groups`` equals the input channels).
- ONNX: the path is the node's name (``/features/features.0/Conv`` as torch.onnx writes it); the kind comes
  from ``op_type``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

#: Every op kind a selector may name, with a short description (``aglmc passes`` prints them).
OP_KINDS = {
    "conv2d": "2-D convolution (any groups)",
    "depthwise_conv2d": "2-D convolution with one group per input channel",
    "conv1d": "1-D convolution",
    "conv_transpose2d": "2-D transposed convolution",
    "linear": "fully connected layer (x @ W^T + b)",
    "matmul": "matrix product of two activations or an activation and a weight",
    "batchnorm": "batch normalization (inference)",
    "layernorm": "layer normalization",
    "rmsnorm": "RMS normalization",
    "embedding": "embedding lookup",
    "relu": "ReLU / ReLU6 / clamp activations",
    "gelu": "GELU",
    "silu": "SiLU / swish",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "add": "elementwise addition",
    "mul": "elementwise multiplication",
    "pool": "max / average / adaptive pooling",
    "concat": "concatenation",
    "reshape": "reshape / view / flatten",
    "transpose": "transpose / permute",
}

_FX_KINDS = {
    "aten.conv2d": "conv2d",
    "aten.convolution": "conv2d",
    "aten.conv1d": "conv1d",
    "aten.conv_transpose2d": "conv_transpose2d",
    "aten.linear": "linear",
    "aten.addmm": "linear",
    "aten.matmul": "matmul",
    "aten.mm": "matmul",
    "aten.bmm": "matmul",
    "aten.batch_norm": "batchnorm",
    "aten._native_batch_norm_legit_no_training": "batchnorm",
    "aten.layer_norm": "layernorm",
    "aten.rms_norm": "rmsnorm",
    "aten.embedding": "embedding",
    "aten.relu": "relu",
    "aten.relu_": "relu",
    "aten.hardtanh": "relu",
    "aten.hardtanh_": "relu",
    "aten.clamp": "relu",
    "aten.gelu": "gelu",
    "aten.silu": "silu",
    "aten.silu_": "silu",
    "aten.sigmoid": "sigmoid",
    "aten.tanh": "tanh",
    "aten.softmax": "softmax",
    "aten._softmax": "softmax",
    "aten.add": "add",
    "aten.add_": "add",
    "aten.mul": "mul",
    "aten.max_pool2d": "pool",
    "aten.avg_pool2d": "pool",
    "aten.adaptive_avg_pool2d": "pool",
    "aten.mean": "pool",
    "aten.cat": "concat",
    "aten.concat": "concat",
    "aten.view": "reshape",
    "aten.reshape": "reshape",
    "aten.flatten": "reshape",
    "aten.transpose": "transpose",
    "aten.permute": "transpose",
    "aten.t": "transpose",
}

_ONNX_KINDS = {
    "Conv": "conv2d",
    "ConvTranspose": "conv_transpose2d",
    "Gemm": "linear",
    "MatMul": "matmul",
    "BatchNormalization": "batchnorm",
    "LayerNormalization": "layernorm",
    "RMSNormalization": "rmsnorm",
    "Gather": "embedding",
    "Relu": "relu",
    "Clip": "relu",
    "Gelu": "gelu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "Add": "add",
    "Mul": "mul",
    "MaxPool": "pool",
    "AveragePool": "pool",
    "GlobalAveragePool": "pool",
    "Concat": "concat",
    "Reshape": "reshape",
    "Flatten": "reshape",
    "Transpose": "transpose",
}


def fx_op_name(node) -> str:
    """``aten.conv2d`` for a call_function node on ``torch.ops.aten.conv2d.default`` (overload dropped)."""
    target = node.target
    name = getattr(target, "name", None)
    if callable(name):  # OpOverload.name() -> "aten::conv2d"
        return name().replace("::", ".").split(".default")[0]
    return getattr(target, "__name__", str(target))


def fx_op_kind(node) -> Optional[str]:
    if node.op != "call_function":
        return None
    base = fx_op_name(node)
    kind = _FX_KINDS.get(base)
    if kind is None:
        parts = base.split(".")
        kind = _FX_KINDS.get(".".join(parts[:2]))
    if kind == "conv2d" and _fx_is_depthwise(node):
        return "depthwise_conv2d"
    return kind


def _fx_is_depthwise(node) -> bool:
    args = node.args
    groups = args[6] if len(args) > 6 and fx_op_name(node) == "aten.conv2d" else node.kwargs.get("groups", 1)
    if fx_op_name(node) == "aten.convolution":
        groups = args[8] if len(args) > 8 else 1
    x = args[0]
    val = x.meta.get("val") if hasattr(x, "meta") else None
    in_channels = val.shape[1] if val is not None and len(val.shape) > 1 else None
    return isinstance(groups, int) and groups > 1 and groups == in_channels


def fx_path(node) -> str:
    """The module path of the innermost module that produced ``node`` ("" at the top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        if node.op == "get_attr":
            return str(node.target).rsplit(".", 1)[0]
        return ""
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def _clean_path(path: str) -> str:
    # torch.export writes e.g. "L['self'].layers[0].attn" in some versions and "layers.0.attn" in others.
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").strip(".")


def onnx_op_kind(node) -> Optional[str]:
    kind = _ONNX_KINDS.get(node.op)
    if kind == "conv2d":
        group = node.attrs.get("group", 1)
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        shape = getattr(weight, "shape", None)
        if shape is not None and len(shape) == 3:
            return "conv1d"
        if group > 1 and shape is not None and shape[1] == 1:
            return "depthwise_conv2d"
    return kind


def onnx_path(node) -> str:
    return node.name or ""


@lru_cache(maxsize=256)
def path_pattern(glob: str, sep: str = ".") -> "re.Pattern":
    """A path glob as a regex. Paths are made of components joined by ``sep`` ("." for FX module paths such as
    ``encoder.layer.3.output.dense``, "/" for ONNX node names such as ``/features/features.0/Conv``): ``*``
    matches within one component, ``**`` across components, ``?`` one character, ``[...]`` a character set.
    So ``encoder.layer.*.output.dense`` selects each layer's FFN output and not ``...attention.output.dense``.
    """
    one = f"[^{re.escape(sep)}]"
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(one + "*")
        elif c == "?":
            out.append(one)
        elif c == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def make_selector(kind: str, ops: Sequence[str] = (), path: Optional[str] = None) -> Callable[[Any], bool]:
    """A predicate over nodes of graph form ``kind`` ("fx" or "onnx") for the given op kinds and path glob.

    ``conv2d`` also selects depthwise convolutions (they are convolutions); ``depthwise_conv2d`` selects only
    them. The path glob follows :func:`path_pattern`; ONNX node names are "/"-separated paths
    (``/features/**`` selects everything under ``features``). An empty selector selects every node.
    """
    op_kind = fx_op_kind if kind == "fx" else onnx_op_kind
    node_path = fx_path if kind == "fx" else onnx_path
    sep = "." if kind == "fx" else "/"
    wanted = set(ops)
    if "conv2d" in wanted:
        wanted.add("depthwise_conv2d")

    def selects(node) -> bool:
        if wanted and op_kind(node) not in wanted:
            return False
        if path is not None and not path_pattern(path, sep).match(node_path(node)):
            return False
        return True

    return selects
