"""quantize_dynamic: dynamic INT8 for Linear/MatMul-heavy models — int8 weights per channel, activations
quantized at run time from their own range.

For every selected linear / matmul with a constant weight (the step's selector picks them):

- the weight becomes int8 behind a per-channel dequantize (symmetric, zero point 0, [-127, 127]);
- its input gets a run-time quantization: ``choose_qparams → quantize → dequantize`` (FX,
  ``torch.ops.quantized_decomposed``) or ``DynamicQuantizeLinear → DequantizeLinear`` (ONNX, what
  ``onnxruntime.quantization.quantize_dynamic`` writes in QDQ form): one scale and zero point per tensor, from
  the tensor's min and max on every call, so no calibration data is needed. ``granularity = per_token`` (FX)
  takes one scale and zero point per row instead (per token of a sequence, XNNPACK's dynamic scheme), which
  keeps one outlier token from costing every other token its resolution. A tensor read by several layers
  (the hidden state feeding q/k/v) is quantized once.

The output stays float (no requantization), and so does the bias. TVM lowering (:mod:`aglmc.targets.quant`)
runs these layers as int8 × int8 → int32 matmuls with the run-time scale folded into the epilogue.

Guarantees: ``quantized``. The result's details give, per layer, the scheme and its weight SQNR (and the output
SQNR on ``data`` when a data set is named).
"""

from __future__ import annotations

from typing import List

from aglmc.dsl.params import Param
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.quant_plan import (LayerRecord, calibration_batches, model_sqnr, output_sqnr, quant_graph,
                                     quantize_site_weight)
from aglmc.errors import PassError
from aglmc.passes.quant_spec import PER_TOKEN, QuantScheme, QuantSpec, check_scheme
from aglmc.passes.quant_static import TARGETS, target_of

KINDS = ("linear", "matmul")


@register_pass
class QuantizeDynamic(Pass):
    """Dynamic INT8: int8 weights per channel, activations quantized at run time (linear / matmul)."""

    name = "quantize_dynamic"
    graph_kinds = ("fx", "onnx")
    guarantees = ("quantized",)
    params = (
        Param("granularity", "enum", default="per_tensor", choices=("per_tensor", "per_token"),
              doc="one run-time scale per tensor, or per token (row; FX only, int8, as XNNPACK)"),
        Param("activations", "enum", default="auto", choices=("auto", "uint8", "int8"),
              doc="run-time activation type; auto: int8 on FX, uint8 on ONNX (DynamicQuantizeLinear's)"),
        Param("weights_per_channel", "bool", default=True, doc="one weight scale per output channel"),
        Param("keep_output_float", "bool", default=False,
              doc="keep the layers that produce the model's outputs in float"),
        Param("data", "dataset", default=None, doc="optional: data set for the per-layer SQNR in the report"),
        Param("samples", "int", default=8, min=1, doc="samples of `data` used for the SQNR"),
        Param("check_target", "enum", default="any", choices=TARGETS,
              doc="check the scheme against what this target runs fast (any: no check)"),
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.layers: List[LayerRecord] = []

    def scheme(self, kind: str = "fx") -> QuantScheme:
        o = self.options
        acts = o["activations"] if o["activations"] != "auto" else ("int8" if kind == "fx" else "uint8")
        per_token = o["granularity"] == "per_token"
        if per_token and (kind != "fx" or acts != "int8"):
            raise PassError("per-token dynamic quantization is for PyTorch models with int8 activations "
                            f"(this is {'an ONNX model' if kind != 'fx' else 'activations = ' + acts})",
                            hint="granularity = per_tensor")
        return QuantScheme(weights=QuantSpec("int8", symmetric=True, axis=0 if o["weights_per_channel"] else None,
                                             narrow_range=True),
                           activations=QuantSpec(acts, axis=PER_TOKEN if per_token else None), dynamic=True)

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        return self._run("fx", gm, ctx)

    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        return self._run("onnx", graph, ctx)

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        o = self.options
        scheme = self.scheme(kind)
        target = target_of(o["check_target"])
        if target is not None:
            check_scheme(scheme, *target)
        g = quant_graph(kind, graph)
        sites = [s for s in g.sites(ctx.selects, need_weight=True) if g.op_kind(s) in KINDS and g.act_inputs(s)]
        records = []
        if o["keep_output_float"]:
            outputs = {g.op_key(s) for s in g.output_layers(sites)}
            records += [LayerRecord(g.site_name(s), g.op_kind(s), "", "", kept_float="output layer "
                                    "(keep_output_float)") for s in sites if g.op_key(s) in outputs]
            sites = [s for s in sites if g.op_key(s) not in outputs]
        if not sites:
            return PassResult(False, "no linear/matmul with a constant weight to quantize",
                              [r.line() for r in records])
        batches = calibration_batches(ctx, o["data"], o["samples"]) if o["data"] else None
        reference = g.copy() if batches else None
        keys = [g.op_key(s) for s in sites]
        info = [(g.site_name(s), g.op_kind(s)) for s in sites]
        for key in dict.fromkeys(k for s in sites for k in g.act_inputs(s)):
            g.insert_dynamic_qdq(key, scheme.activations)
        weight_sqnr = [quantize_site_weight(g, s, scheme.weights).sqnr for s in sites]
        g.finish()
        per_layer = output_sqnr(reference, g, keys, batches) if batches else {}
        for key, (name, kind_), w in zip(keys, info, weight_sqnr):
            records.append(LayerRecord(name, kind_, scheme.short(), "run time (min/max per call)", weight_sqnr=w,
                                       output_sqnr=per_layer.get(key)))
        self.layers = records
        summary = f"quantized {len(sites)} layer(s) to int8 (dynamic activations)"
        if batches:
            summary += f"; model output SQNR {model_sqnr(reference, g, batches):.1f} dB on " \
                       f"{sum(len(b[0]) for b in batches)} sample(s) of '{o['data']}'"
        return PassResult(True, summary, [r.line() for r in records])
