"""Q/DQ mechanics on ONNX graphs (onnx-graphsurgeon): the QDQ format onnxruntime runs.

    x ─ QuantizeLinear ─ DequantizeLinear ─┐
    W_int8 ─ DequantizeLinear(axis=0) ─────┼─ Conv ─ [Relu] ─ QuantizeLinear ─ DequantizeLinear ─ …
    B_int32 ─ DequantizeLinear(axis=0) ────┘      (bias scale = input scale × weight scale, zero point 0)

This is onnxruntime's own QDQ layout (``onnxruntime.quantization.quantize_static(quant_format=QDQ)``), so
onnxruntime fuses it into its integer kernels (QLinearConv, QGemm). Dynamic quantization writes
``DynamicQuantizeLinear → DequantizeLinear`` in front of the op. Per-axis DequantizeLinear needs opset 13.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from aglmc.errors import PassError
from aglmc.passes.onnx_utils import constant_value, redirect_readers
from aglmc.passes.quant_spec import QuantSpec
from aglmc.passes.select import onnx_op_kind

QUANTIZABLE = {"Conv", "Gemm", "MatMul"}
PASSTHROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
FUSED_ACTIVATIONS = {"Relu"}
_NP = {"int8": np.int8, "uint8": np.uint8, "int4": np.int8, "uint4": np.uint8}
_counter = itertools.count()


def _uid(base: str) -> str:
    return f"{base}_{next(_counter)}"


class OnnxQuantGraph:
    """The ONNX side of the quantization passes' graph interface (tensors are named by tensor name).

    See :class:`aglmc.passes.quant_fx.FxQuantGraph` for the FX side; both answer the same questions.
    """

    kind = "onnx"

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        opset = graph.opset or 0
        if opset < 13:
            raise PassError(f"quantizing an ONNX model needs opset 13 or newer (per-channel DequantizeLinear); "
                            f"this model is opset {opset}", hint="re-export the model with opset_version=13+")

    def _tensors(self) -> Dict[str, gs.Tensor]:
        return self.graph.tensors()

    # planning
    def sites(self, selects, need_weight: bool = False) -> List[gs.Node]:
        out = []
        for node in self.graph.nodes:
            if node.op not in QUANTIZABLE or not selects(node):
                continue
            if any(t.inputs and t.inputs[0].op == "DequantizeLinear" for t in node.inputs[:2]
                   if isinstance(t, gs.Variable)):
                continue  # already quantized
            if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                                      or node.attrs.get("beta", 1.0) != 1.0):
                continue
            if need_weight and self.weight(node) is None:
                continue
            out.append(node)
        return out

    def output_layers(self, ops):
        wanted = {id(n) for n in ops}
        outputs = {t.name for t in self.graph.outputs}
        reaches: Dict[int, bool] = {}
        for node in reversed(self.graph.nodes):  # graphsurgeon keeps nodes topologically sorted
            reaches[id(node)] = any(t.name in outputs for t in node.outputs) or any(
                reaches.get(id(c), False) and id(c) not in wanted for t in node.outputs for c in t.outputs)
        return [op for op in ops if reaches.get(id(op), False)]

    def site_name(self, op) -> str:
        return op.name or op.outputs[0].name

    def op_kind(self, op) -> str:
        return onnx_op_kind(op)

    def op_key(self, op) -> str:
        return op.outputs[0].name

    def site_by_key(self, key: str) -> gs.Node:
        return next(n for n in self.graph.nodes if n.outputs and n.outputs[0].name == key)

    def weight(self, op) -> Optional[Tuple[int, np.ndarray, int]]:
        for idx in ((1,) if op.op in ("Conv", "Gemm") else (1, 0)):
            value = constant_value(op.inputs[idx]) if len(op.inputs) > idx else None
            if value is not None and value.dtype.kind == "f":
                if op.op == "Conv":
                    axis = 0
                elif op.op == "Gemm":
                    axis = 0 if op.attrs.get("transB", 0) else 1
                else:
                    axis = value.ndim - 1 if idx == 1 else value.ndim - 2
                return idx, value.astype(np.float32), axis
        return None

    def act_inputs(self, op) -> List[str]:
        w = self.weight(op)
        idx = [0] if op.op in ("Conv", "Gemm") else [i for i in (0, 1) if w is None or i != w[0]]
        return [op.inputs[i].name for i in idx if constant_value(op.inputs[i]) is None]

    def out_tensor(self, op) -> str:
        out = op.outputs[0]
        if len(out.outputs) == 1 and out.outputs[0].op in FUSED_ACTIVATIONS and \
                not any(t is out for t in self.graph.outputs):
            return out.outputs[0].outputs[0].name
        return out.name

    def is_graph_output(self, key: str) -> bool:
        return any(t.name == key for t in self.graph.outputs)

    def passthrough_source(self, key: str) -> Optional[str]:
        t = self._tensors()[key]
        if len(t.inputs) == 1 and t.inputs[0].op in PASSTHROUGH and isinstance(t.inputs[0].inputs[0], gs.Variable):
            return t.inputs[0].inputs[0].name
        return None

    def has_bias(self, op) -> bool:
        return op.op in ("Conv", "Gemm") and len(op.inputs) > 2 and constant_value(op.inputs[2]) is not None \
            and constant_value(op.inputs[2]).ndim == 1

    # data
    def _session(self, keys: Sequence[str]):
        import onnxruntime as ort

        g = self.graph.copy()
        tensors = g.tensors()
        g.outputs = [tensors[k].to_variable(dtype=np.float32) if not isinstance(tensors[k], gs.Variable)
                     else tensors[k] for k in keys] or g.outputs
        for t in g.outputs:
            if t.dtype is None:
                t.dtype = np.float32
        model = gs.export_onnx(g)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def record(self, batches, keys, on_value) -> None:
        keys = list(dict.fromkeys(keys))
        sess = self._session(keys)
        names = [i.name for i in sess.get_inputs()]
        for arrays in batches:
            for key, value in zip(keys, sess.run(keys, dict(zip(names, arrays)))):
                on_value(key, np.asarray(value, np.float32))

    def run(self, arrays) -> List[np.ndarray]:
        import onnxruntime as ort

        sess = ort.InferenceSession(gs.export_onnx(self.graph).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return [np.asarray(o, np.float32) for o in sess.run(None, dict(zip(names, arrays)))]

    def copy(self) -> "OnnxQuantGraph":
        return OnnxQuantGraph(self.graph.copy())

    # rewriting
    def _reroute(self, tensor: gs.Variable, new: gs.Variable, skip: gs.Node) -> None:
        """Every reader of ``tensor`` except ``skip`` reads ``new``; a graph output moves to ``new`` (by name)."""
        redirect_readers(tensor, new, skip)
        for i, t in enumerate(self.graph.outputs):
            if t is tensor:  # keep the model's output name on what it now returns
                name = tensor.name
                tensor.name = _uid(name + "_float")
                new.name = name
                self.graph.outputs[i] = new

    def insert_qdq(self, key: str, spec: QuantSpec, scale: float, zp: int) -> None:
        if spec.bits != 8:
            raise PassError(f"ONNX QDQ activations are 8-bit here, not {spec.dtype}")
        tensor = self._tensors()[key]
        s = gs.Constant(_uid(f"{key}_scale"), np.array(scale, np.float32))
        z = gs.Constant(_uid(f"{key}_zero_point"), np.array(zp, _NP[spec.dtype]))
        q_out = gs.Variable(_uid(f"{key}_quantized"), dtype=_NP[spec.dtype], shape=tensor.shape)
        dq_out = gs.Variable(_uid(f"{key}_dequantized"), dtype=np.float32, shape=tensor.shape)
        q = gs.Node("QuantizeLinear", _uid(f"{key}_QuantizeLinear"), inputs=[tensor, s, z], outputs=[q_out])
        dq = gs.Node("DequantizeLinear", _uid(f"{key}_DequantizeLinear"), inputs=[q_out, s, z], outputs=[dq_out])
        self._reroute(tensor, dq_out, q)
        self.graph.nodes.extend([q, dq])

    def insert_dynamic_qdq(self, key: str, spec: QuantSpec) -> None:
        if spec.dtype != "uint8" or spec.symmetric:
            raise PassError("ONNX DynamicQuantizeLinear quantizes to affine uint8 only",
                            hint="set activations = uint8 for dynamic quantization of an ONNX model")
        tensor = self._tensors()[key]
        q_out = gs.Variable(_uid(f"{key}_quantized"), dtype=np.uint8, shape=tensor.shape)
        s_out = gs.Variable(_uid(f"{key}_scale"), dtype=np.float32, shape=[])
        z_out = gs.Variable(_uid(f"{key}_zero_point"), dtype=np.uint8, shape=[])
        dq_out = gs.Variable(_uid(f"{key}_dequantized"), dtype=np.float32, shape=tensor.shape)
        q = gs.Node("DynamicQuantizeLinear", _uid(f"{key}_DynamicQuantizeLinear"), inputs=[tensor],
                    outputs=[q_out, s_out, z_out])
        dq = gs.Node("DequantizeLinear", _uid(f"{key}_DequantizeLinear"), inputs=[q_out, s_out, z_out],
                     outputs=[dq_out])
        self._reroute(tensor, dq_out, q)
        self.graph.nodes.extend([q, dq])

    def quantize_weight(self, op, index: int, spec: QuantSpec, qparams):
        if spec.group_size is not None or spec.bits != 8:
            raise PassError("ONNX weights are quantized to 8 bits per channel or per tensor here; group-wise "
                            "int4 (blocked DequantizeLinear) is not supported by TVM's ONNX frontend")
        _, w, axis = self.weight(op)
        spec = QuantSpec(**{**spec.__dict__, "axis": None if spec.axis is None else axis})
        q, scale, zp = qparams(w, spec)
        base = self.site_name(op)
        attrs = {} if spec.axis is None else {"axis": axis}
        wq = gs.Constant(_uid(f"{base}_W_quantized"), np.ascontiguousarray(q))
        s = gs.Constant(_uid(f"{base}_W_scale"), np.asarray(scale, np.float32))
        z = gs.Constant(_uid(f"{base}_W_zero_point"), np.asarray(zp).astype(_NP[spec.dtype]))
        out = gs.Variable(_uid(f"{base}_W_dequantized"), dtype=np.float32, shape=list(w.shape))
        self.graph.nodes.append(gs.Node("DequantizeLinear", _uid(f"{base}_W_DequantizeLinear"),
                                        inputs=[wq, s, z], outputs=[out], attrs=attrs))
        op.inputs[index] = out
        shape = [1] * w.ndim
        if spec.axis is not None:
            shape[axis] = -1
        approx = (q.astype(np.float32) - np.asarray(zp).reshape(shape)) * np.asarray(scale).reshape(shape)
        return w, approx.astype(np.float32)

    def snap_bias(self, op, input_scale: float, weight_scales: np.ndarray) -> None:
        """The bias as int32 with scale ``input_scale * weight_scale`` behind a DequantizeLinear (ORT's layout)."""
        b = constant_value(op.inputs[2]).astype(np.float64)
        step = np.float64(input_scale) * np.broadcast_to(np.asarray(weight_scales, np.float64), b.shape)
        bq = np.clip(np.round(b / step), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        base = self.site_name(op)
        s = gs.Constant(_uid(f"{base}_B_scale"), step.astype(np.float32))
        z = gs.Constant(_uid(f"{base}_B_zero_point"), np.zeros(b.shape, np.int32))
        out = gs.Variable(_uid(f"{base}_B_dequantized"), dtype=np.float32, shape=list(b.shape))
        self.graph.nodes.append(gs.Node("DequantizeLinear", _uid(f"{base}_B_DequantizeLinear"),
                                        inputs=[gs.Constant(_uid(f"{base}_B_quantized"), bq), s, z],
                                        outputs=[out], attrs={"axis": 0}))
        op.inputs[2] = out

    def finish(self) -> None:
        self.graph.cleanup().toposort()
