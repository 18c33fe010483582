"""Model statistics for ``aglmc inspect`` and the report: op counts, parameters, MACs, a per-layer table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from aglmc.passes.select import fx_op_kind, fx_op_name, fx_path, onnx_op_kind


@dataclass
class Layer:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


@dataclass
class Stats:
    ops: Dict[str, int]
    params: int
    macs: int
    layers: List[Layer] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ops": dict(sorted(self.ops.items())), "params": self.params, "macs": self.macs,
                "nodes": sum(self.ops.values())}

    def table(self, limit: Optional[int] = None) -> str:
        rows = ["| layer | kind | output | params | MACs |", "|---|---|---|---:|---:|"]
        shown = self.layers if limit is None else self.layers[:limit]
        for layer in shown:
            rows.append(f"| {layer.name} | {layer.kind} | {list(layer.output_shape)} | {layer.params:,} | "
                        f"{layer.macs:,} |")
        if limit is not None and len(self.layers) > limit:
            rows.append(f"| … {len(self.layers) - limit} more | | | | |")
        return "\n".join(rows)


def model_stats(model) -> Stats:
    """Statistics of an :class:`aglmc.compiler.model.Model`'s current graph (shapes from a real run)."""
    if model.kind == "fx":
        return fx_stats(model.graph, model.example_inputs)
    return onnx_stats(model.onnx_model())


def fx_stats(gm, example_inputs: Sequence[np.ndarray]) -> Stats:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(*[torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs])
    ops: Counter = Counter()
    layers: List[Layer] = []
    seen_params = set()
    total_params = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            tensor = _attr(gm, str(node.target))
            if isinstance(tensor, torch.Tensor) and id(tensor) not in seen_params:
                seen_params.add(id(tensor))
                total_params += tensor.numel()
            continue
        if node.op != "call_function":
            continue
        ops[fx_op_name(node)] += 1
        kind = fx_op_kind(node)
        if kind not in ("conv2d", "depthwise_conv2d", "conv1d", "linear", "matmul"):
            continue
        meta = node.meta.get("tensor_meta")
        out_shape = tuple(getattr(meta, "shape", ())) if meta is not None else ()
        params = sum(_attr(gm, str(a.target)).numel() for a in node.args
                     if getattr(a, "op", None) == "get_attr" and isinstance(_attr(gm, str(a.target)), torch.Tensor))
        macs = _fx_macs(node, kind, out_shape)
        layers.append(Layer(fx_path(node) or node.name, kind, out_shape, params, macs))
    return Stats(dict(ops), total_params, sum(l.macs for l in layers), layers)


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _shape(node) -> tuple:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(getattr(meta, "shape", ())) if meta is not None else ()


def _fx_macs(node, kind: str, out_shape: tuple) -> int:
    out = int(np.prod(out_shape)) if out_shape else 0
    if kind in ("conv2d", "depthwise_conv2d", "conv1d"):
        w = _shape(node.args[1])
        return out * int(np.prod(w[1:])) if w else 0
    if kind == "linear":
        w = _shape(node.args[1])
        return out * (w[-1] if w else 0)
    a = _shape(node.args[0])
    return out * (a[-1] if a else 0)


def onnx_stats(model) -> Stats:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value for d in dims)
    inits = {i.name: i for i in model.graph.initializer}
    for i in inits.values():
        shapes[i.name] = tuple(i.dims)
    total_params = sum(int(np.prod(i.dims)) if i.dims else 1 for i in inits.values())
    ops: Counter = Counter()
    layers: List[Layer] = []

    class _N:  # onnx_op_kind reads graphsurgeon-like attributes
        def __init__(self, n):
            self.op, self.name = n.op_type, n.name
            self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            self.inputs = [type("T", (), {"shape": shapes.get(x)})() for x in n.input]

    for n in model.graph.node:
        ops[n.op_type] += 1
        kind = onnx_op_kind(_N(n))
        if kind not in ("conv2d", "depthwise_conv2d", "conv1d", "linear", "matmul"):
            continue
        out_shape = shapes.get(n.output[0], ())
        out = int(np.prod(out_shape)) if out_shape else 0
        params = sum(int(np.prod(inits[x].dims)) for x in n.input if x in inits)
        if kind in ("conv2d", "depthwise_conv2d", "conv1d"):
            w = shapes.get(n.input[1], ())
            macs = out * int(np.prod(w[1:])) if w else 0
        else:
            a = shapes.get(n.input[0], ())
            macs = out * (a[-1] if a else 0)
        layers.append(Layer(n.name or n.output[0], kind, out_shape, params, macs))
    return Stats(dict(ops), total_params, sum(l.macs for l in layers), layers)
