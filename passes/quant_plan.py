"""What the quantization passes share: the graph interface for FX and ONNX, calibration batches, applying a
plan (Q/DQ on tensors, integer weights, int32-grid biases) and measuring it per layer (SQNR).

The passes (``quantize_static``, ``quantize_dynamic``, ``quantize_weights``) decide *which* layers and specs;
this module and :mod:`~aglmc.passes.quant_fx` / :mod:`~aglmc.passes.quant_onnx` do it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from aglmc.errors import PassError
from aglmc.passes.quant_calib import weight_qparams
from aglmc.passes.quant_spec import QuantSpec, sqnr_db


def quant_graph(kind: str, graph):
    """The FX or ONNX implementation of the graph interface the quantization passes use."""
    if kind == "fx":
        from aglmc.passes.quant_fx import FxQuantGraph

        return FxQuantGraph(graph)
    from aglmc.passes.quant_onnx import OnnxQuantGraph

    return OnnxQuantGraph(graph)


def calibration_batches(ctx, data: str, samples: int) -> List[List[np.ndarray]]:
    """At most ``samples`` samples of data set ``data``, in batches of the model's example batch size, inputs in
    the model's order."""
    if data not in ctx.datasets:
        raise PassError(f"no data set named '{data}' (declared: {', '.join(ctx.datasets) or 'none'})")
    dataset = ctx.datasets[data]
    examples = dict(ctx.example_inputs)
    if not examples:
        raise PassError("calibration needs the model's example inputs")
    batch = next(iter(examples.values())).shape[0] if next(iter(examples.values())).ndim else 1
    count = min(samples, len(dataset))
    out = []
    for start in range(0, count - batch + 1, batch):
        out.append([np.ascontiguousarray(dataset.inputs[name][start:start + batch].astype(ex.dtype, copy=False))
                    for name, ex in examples.items()])
    if not out:
        raise PassError(f"data set '{data}' has {len(dataset)} sample(s), fewer than one batch of {batch}")
    return out


def shared_source(g, key: str, quantized: set) -> str:
    """The tensor whose scale ``key`` reuses: the nearest quantized tensor it is copied from through
    passthrough ops (max-pool, reshape ...), else ``key`` itself."""
    src = g.passthrough_source(key)
    while src is not None:
        if src in quantized:
            return shared_source(g, src, quantized)
        src = g.passthrough_source(src)
    return key


@dataclass
class LayerRecord:
    """One quantized (or kept-float) layer, for PassResult.details and the report."""

    name: str
    kind: str
    scheme: str
    method: str
    weight_sqnr: Optional[float] = None
    output_sqnr: Optional[float] = None
    sensitivity_sqnr: Optional[float] = None
    kept_float: str = ""  # why, when kept in float

    def line(self) -> str:
        if self.kept_float:
            extra = f", alone {self.sensitivity_sqnr:.1f} dB" if self.sensitivity_sqnr is not None else ""
            return f"float: {self.name} [{self.kind}]: {self.kept_float}{extra}"
        parts = [f"int: {self.name} [{self.kind}]: {self.scheme}; calibration {self.method}"]
        if self.weight_sqnr is not None:
            parts.append(f"weight SQNR {self.weight_sqnr:.1f} dB")
        if self.output_sqnr is not None:
            parts.append(f"output SQNR {self.output_sqnr:.1f} dB")
        if self.sensitivity_sqnr is not None:
            parts.append(f"alone {self.sensitivity_sqnr:.1f} dB")
        return "; ".join(parts)


@dataclass
class WeightResult:
    scales: np.ndarray
    sqnr: float


def quantize_site_weight(g, site, spec: QuantSpec) -> Optional[WeightResult]:
    """Replace ``site``'s constant weight by integers + DequantizeLinear; None when it has no constant weight."""
    found = g.weight(site)
    if found is None:
        return None
    index, w, axis = found
    if spec.axis is not None:
        spec = QuantSpec(**{**spec.__dict__, "axis": axis})
    _, scales, _ = weight_qparams(w, spec)
    w, approx = g.quantize_weight(site, index, spec, weight_qparams)
    return WeightResult(np.asarray(scales, np.float32), sqnr_db(w, approx))


def output_sqnr(reference_graph, quantized_graph, sites_keys: Sequence[str], batches) -> Dict[str, float]:
    """SQNR of each key's value in ``quantized_graph`` against ``reference_graph`` over ``batches``."""
    ref: Dict[str, List[np.ndarray]] = {}
    got: Dict[str, List[np.ndarray]] = {}
    keys = list(dict.fromkeys(sites_keys))
    reference_graph.record(batches, keys, lambda k, v: ref.setdefault(k, []).append(v))
    quantized_graph.record(batches, [k for k in keys], lambda k, v: got.setdefault(k, []).append(v))
    return {k: sqnr_db(np.concatenate(ref[k]), np.concatenate(got[k])) for k in keys if k in ref and k in got}


def model_sqnr(reference_graph, graph, batches) -> float:
    """SQNR of the model's outputs (all concatenated) against the reference over ``batches``."""
    ref = [np.concatenate([o.ravel() for o in reference_graph.run(b)]) for b in batches]
    got = [np.concatenate([o.ravel() for o in graph.run(b)]) for b in batches]
    return sqnr_db(np.concatenate(ref), np.concatenate(got))


def summarize(records: Sequence[LayerRecord]) -> Tuple[int, int]:
    q = sum(1 for r in records if not r.kept_float)
    return q, len(records) - q


@dataclass
class TensorPlan:
    """Activation tensors to quantize, each with the tensor whose scale it uses."""

    order: List[str] = field(default_factory=list)
    source: Dict[str, str] = field(default_factory=dict)
    params: Dict[str, Tuple[float, int]] = field(default_factory=dict)

    def add(self, key: str) -> None:
        if key not in self.source:
            self.order.append(key)
            self.source[key] = key

    def calibrated(self) -> List[str]:
        return list(dict.fromkeys(self.source[k] for k in self.order))
