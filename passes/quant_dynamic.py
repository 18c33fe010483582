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

from aglmc.dsl.params import Param
from aglmc.errors import PassError
from aglmc.passes.base import PassContext, PassResult, register_pass
from aglmc.passes.quant_pass import CHECK_TARGET, SQNR_DATA, WEIGHT_KINDS, QuantPass, keep_output_float_param
from aglmc.passes.quant_spec import PER_TOKEN, QuantScheme, QuantSpec


@register_pass
class QuantizeDynamic(QuantPass):
    """Dynamic INT8: int8 weights per channel, activations quantized at run time (linear / matmul)."""

    name = "quantize_dynamic"
    params = (
        Param("granularity", "enum", default="per_tensor", choices=("per_tensor", "per_token"),
              doc="one run-time scale per tensor, or per token (row; FX only, int8, as XNNPACK)"),
        Param("activations", "enum", default="auto", choices=("auto", "uint8", "int8"),
              doc="run-time activation type; auto: int8 on FX, uint8 on ONNX (DynamicQuantizeLinear's)"),
        Param("weights_per_channel", "bool", default=True, doc="one weight scale per output channel"),
        keep_output_float_param(),
        *SQNR_DATA,
        CHECK_TARGET,
    )

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

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        scheme, g = self.begin(kind, graph)
        sites = [s for s in g.sites(ctx.selects, need_weight=True)
                 if g.op_kind(s) in WEIGHT_KINDS and g.act_inputs(s)]
        sites, kept = self.keep_outputs(g, sites)
        records = list(kept.values())
        if not sites:
            return PassResult(False, "no linear/matmul with a constant weight to quantize",
                              [r.line() for r in records])

        def activations(g):
            for key in dict.fromkeys(k for s in sites for k in g.act_inputs(s)):
                g.insert_dynamic_qdq(key, scheme.activations)

        quantized, sqnr = self.quantize_weights_of(g, sites, scheme, ctx, "run time (min/max per call)",
                                                   before_weights=activations)
        self.layers = records + quantized
        summary = f"quantized {len(sites)} layer(s) to int8 (dynamic activations)"
        return PassResult(True, summary + (f"; {sqnr}" if sqnr else ""), [r.line() for r in self.layers])
