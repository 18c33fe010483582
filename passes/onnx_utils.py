"""Helpers shared by ONNX passes working on onnx-graphsurgeon graphs."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs


def constant_value(tensor) -> Optional[np.ndarray]:
    """The array of a gs.Constant (an initializer, a Constant node's output, or an Identity of one), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        if producer.op == "Constant":
            value = producer.attrs.get("value")
            if isinstance(value, gs.Constant):
                return np.asarray(value.values)
        if producer.op == "Identity":  # torch.onnx writes Identity nodes for shared or unfolded weights
            return constant_value(producer.inputs[0])
    return None


def single_consumer(tensor):
    """The one node reading ``tensor``, or None when it has several readers or is a graph output."""
    if len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def redirect_readers(tensor, new, skip=None) -> None:
    """Every node reading ``tensor`` (except ``skip``) reads ``new`` instead; graph outputs are left alone."""
    for consumer in list(tensor.outputs):
        if consumer is skip:
            continue
        for i, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[i] = new


def is_graph_output(graph: gs.Graph, tensor) -> bool:
    return any(t is tensor for t in graph.outputs)
