"""quantize_weights: weight-only quantization — int8 per channel, or group-wise int4 (the phone-LLM scheme).

For every selected linear / matmul with a constant weight, the weight becomes integers behind a dequantize and
the activations stay float:

- ``bits = 8``: symmetric int8, one scale per output channel;
- ``bits = 4  group_size = 32``: symmetric int4 (values -8..7, stored one per int8 byte in the graph), one scale
  per 32 consecutive input elements of each output channel — GPTQ/AWQ/llama.cpp Q4's layout, without their
  error correction (round to nearest);
- ``group_size`` also works with 8 bits.

The graph is FX (``dequantize_per_channel`` / ``dequantize_per_channel_group``) or ONNX (int8 per channel
only: TVM's ONNX frontend does not read blocked DequantizeLinear). TVM lowering
(:mod:`aglmc.targets.quant`) keeps the integers in the library and dequantizes inside the matmul kernel, so
weights take 1/4 (int8) or, once packed, 1/8 (int4) of their float size.

Guarantees: ``quantized``. Details: per layer, the scheme and the weight SQNR; the output SQNR with ``data``.
"""

from __future__ import annotations

from typing import List

from aglmc.dsl.params import Param
from aglmc.errors import PassError
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.quant_plan import (LayerRecord, calibration_batches, model_sqnr, output_sqnr, quant_graph,
                                     quantize_site_weight)
from aglmc.passes.quant_spec import QuantScheme, QuantSpec, check_scheme
from aglmc.passes.quant_static import TARGETS, target_of

KINDS = ("linear", "matmul")


@register_pass
class QuantizeWeights(Pass):
    """Weight-only int8 per channel or group-wise int4 for linear / matmul weights; activations stay float."""

    name = "quantize_weights"
    graph_kinds = ("fx", "onnx")
    guarantees = ("quantized",)
    params = (
        Param("bits", "int", default=8, min=4, max=8, check=lambda b: None if b in (4, 8) else "bits is 4 or 8",
              doc="4 (int4, -8..7) or 8 (int8, -127..127)"),
        Param("group_size", "int", default=0, min=0,
              doc="one scale per this many input elements of each output channel; 0: per channel"),
        Param("keep_output_float", "bool", default=False,
              doc="keep the layers that produce the model's outputs (an LM head) in float"),
        Param("data", "dataset", default=None, doc="optional: data set for the per-layer SQNR in the report"),
        Param("samples", "int", default=8, min=1, doc="samples of `data` used for the SQNR"),
        Param("check_target", "enum", default="any", choices=TARGETS,
              doc="check the scheme against what this target runs fast (any: no check)"),
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.layers: List[LayerRecord] = []

    def scheme(self, kind: str = "fx") -> QuantScheme:
        """The scheme this step's parameters ask for (the same for FX and ONNX graphs)."""
        o = self.options
        group = o["group_size"] or None
        if group is not None and group < 2:
            raise PassError(f"group_size must be 0 (per channel) or >= 2, got {group}")
        dtype = "int4" if o["bits"] == 4 else "int8"
        return QuantScheme(weights=QuantSpec(dtype, symmetric=True, axis=0, group_size=group,
                                             narrow_range=dtype == "int8"))

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        return self._run("fx", gm, ctx)

    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        return self._run("onnx", graph, ctx)

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        o = self.options
        scheme = self.scheme()
        target = target_of(o["check_target"])
        if target is not None:
            check_scheme(scheme, *target)
        g = quant_graph(kind, graph)
        sites = [s for s in g.sites(ctx.selects, need_weight=True) if g.op_kind(s) in KINDS]
        records: List[LayerRecord] = []
        if o["keep_output_float"]:
            outputs = {g.op_key(s) for s in g.output_layers(sites)}
            records += [LayerRecord(g.site_name(s), g.op_kind(s), "", "", kept_float="output layer "
                                    "(keep_output_float)") for s in sites if g.op_key(s) in outputs]
            sites = [s for s in sites if g.op_key(s) not in outputs]
        group = scheme.weights.group_size
        if group is not None:
            fits = []
            for s in sites:
                _, w, axis = g.weight(s)
                reason = None
                if w.ndim != 2 or axis != 0:
                    reason = "group-wise weights must be [out, in] (linear layout)"
                elif w.shape[1] % group:
                    reason = f"{w.shape[1]} inputs is not a multiple of group_size {group}"
                if reason:
                    records.append(LayerRecord(g.site_name(s), g.op_kind(s), "", "", kept_float=reason))
                else:
                    fits.append(s)
            sites = fits
        if not sites:
            return PassResult(False, "no linear/matmul weight to quantize", [r.line() for r in records])
        batches = calibration_batches(ctx, o["data"], o["samples"]) if o["data"] else None
        reference = g.copy() if batches else None
        keys = [g.op_key(s) for s in sites]
        info = [(g.site_name(s), g.op_kind(s)) for s in sites]
        weight_sqnr = [quantize_site_weight(g, s, scheme.weights).sqnr for s in sites]
        g.finish()
        per_layer = output_sqnr(reference, g, keys, batches) if batches else {}
        for key, (name, kind_), w in zip(keys, info, weight_sqnr):
            records.append(LayerRecord(name, kind_, scheme.short(), "weights only (min/max)", weight_sqnr=w,
                                       output_sqnr=per_layer.get(key)))
        self.layers = records
        what = f"int4 groups of {group}" if o["bits"] == 4 and group else \
            f"int{o['bits']} {'groups of ' + str(group) if group else 'per channel'}"
        summary = f"quantized {len(sites)} weight(s) to {what} (weight-only)"
        if batches:
            summary += f"; model output SQNR {model_sqnr(reference, g, batches):.1f} dB on " \
                       f"{sum(len(b[0]) for b in batches)} sample(s) of '{o['data']}'"
        return PassResult(True, summary, [r.line() for r in records])
