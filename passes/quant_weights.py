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
from aglmc.passes.base import PassContext, PassResult, register_pass
from aglmc.passes.quant_pass import CHECK_TARGET, SQNR_DATA, WEIGHT_KINDS, QuantPass, keep_output_float_param
from aglmc.passes.quant_plan import LayerRecord
from aglmc.passes.quant_spec import QuantScheme, QuantSpec


@register_pass
class QuantizeWeights(QuantPass):
    """Weight-only int8 per channel or group-wise int4 for linear / matmul weights; activations stay float."""

    name = "quantize_weights"
    params = (
        Param("bits", "int", default=8, min=4, max=8, check=lambda b: None if b in (4, 8) else "bits is 4 or 8",
              doc="4 (int4, -8..7) or 8 (int8, -127..127)"),
        Param("group_size", "int", default=0, min=0,
              doc="one scale per this many input elements of each output channel; 0: per channel"),
        keep_output_float_param("the layers that produce the model's outputs (an LM head)"),
        *SQNR_DATA,
        CHECK_TARGET,
    )

    def scheme(self, kind: str = "fx") -> QuantScheme:
        """The scheme this step's parameters ask for (the same for FX and ONNX graphs)."""
        o = self.options
        group = o["group_size"] or None
        if group is not None and group < 2:
            raise PassError(f"group_size must be 0 (per channel) or >= 2, got {group}")
        dtype = "int4" if o["bits"] == 4 else "int8"
        return QuantScheme(weights=QuantSpec(dtype, symmetric=True, axis=0, group_size=group,
                                             narrow_range=dtype == "int8"))

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        o = self.options
        scheme, g = self.begin(kind, graph)
        sites = [s for s in g.sites(ctx.selects, need_weight=True) if g.op_kind(s) in WEIGHT_KINDS]
        sites, kept = self.keep_outputs(g, sites)
        records: List[LayerRecord] = list(kept.values())
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
        quantized, sqnr = self.quantize_weights_of(g, sites, scheme, ctx, "weights only (min/max)")
        self.layers = records + quantized
        what = f"int4 groups of {group}" if o["bits"] == 4 and group else \
            f"int{o['bits']} {'groups of ' + str(group) if group else 'per channel'}"
        summary = f"quantized {len(sites)} weight(s) to {what} (weight-only)"
        return PassResult(True, summary + (f"; {sqnr}" if sqnr else ""), [r.line() for r in self.layers])
