"""Helpers for the pass tests beside each pass: run a pass by name, count FX ops, build and run ONNX graphs.

(Not a pass module: the leading underscore keeps the pass registry from importing it.)
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aglmc.passes.base import PassContext, PassResult, get_pass
from aglmc.passes.select import fx_op_name, make_selector


def run_pass(name: str, kind: str, graph, ops: Sequence[str] = (), path: Optional[str] = None,
             datasets: Optional[Mapping] = None, example: Optional[Mapping] = None, **params) -> PassResult:
    """Run pass ``name`` with ``params`` on ``graph`` with a selector of ``ops`` and ``path``."""
    ctx = PassContext(selects=make_selector(kind, ops, path), datasets=datasets or {}, example_inputs=example or {})
    return get_pass(name)(**params).run(kind, graph, ctx)


def fx_ops(gm) -> Counter:
    """How many nodes of each ATen op (``aten.conv2d``) the GraphModule calls."""
    return Counter(fx_op_name(n) for n in gm.graph.nodes if n.op == "call_function")


def onnx_model(nodes, inputs: Dict[str, Sequence[int]], outputs: Dict[str, Sequence[int]],
               initializers: Mapping[str, np.ndarray], *, infer_shapes: bool = False) -> onnx.ModelProto:
    """A checked opset-17 float32 model of ``nodes`` with the given input/output shapes and initializers."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(a, dtype=np.float32), n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if infer_shapes:
        model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def run_onnx(model: onnx.ModelProto, **feeds: np.ndarray):
    """The outputs of ``model`` on ``feeds`` under onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
