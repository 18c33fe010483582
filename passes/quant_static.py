"""quantize_static: post-training static INT8 quantization — Q/DQ around conv / linear / matmul, calibrated.

For every selected conv2d / linear / matmul (the step's selector picks them; ``on linear in "encoder.*"``):

- its weight becomes int8 integers behind a per-channel DequantizeLinear (symmetric, zero point 0, [-127, 127]);
- its activation input(s) and its output (after a ReLU that alone reads it; not a model output, which stays
  float) get ``quantize → dequantize`` with one scale and zero point per tensor, found on the schedule's data
  (``data = calib``) by ``method``: minmax | percentile | entropy (KL) | mse (see :mod:`aglmc.passes.quant_calib`);
- tensors copied through max-pool / reshape / flatten / transpose reuse their source's scale;
- its bias is rounded to the int32 grid ``input scale × weight scale`` (ONNX: int32 behind a DequantizeLinear),
  so the graph computes exactly what an int8 × int8 → int32 kernel with requantization computes.

Layers stay float when the selector leaves them out, when ``keep_output_float`` is set (the layers that feed the
model's outputs directly), or when ``min_sqnr`` is set and quantizing the layer alone drops the model's output
SQNR below it (a sensitivity test on the calibration data). The result's details give, per layer, the scheme,
the calibration method, the weight SQNR and the SQNR of the layer's output in the quantized model.

Works on FX (PyTorch's ``quantized_decomposed`` ops, as pt2e writes them) and on ONNX (the QDQ format
onnxruntime runs). With ``check_target = arm`` (or host, arm_dotprod) the scheme is first checked against what
that target runs fast (:func:`aglmc.passes.quant_spec.check_scheme`).

Requires: batch norms already folded (``pass fold_batchnorm`` first) for conv → relu output quantization.
Guarantees: ``quantized`` (Q/DQ form; TVM lowering turns it into integer kernels, see
:mod:`aglmc.targets.quant`).
"""

from __future__ import annotations

from typing import Dict, List

from aglmc.dsl.params import Param
from aglmc.passes.base import PassContext, PassResult, register_pass
from aglmc.passes.quant_calib import RangeCollector, needs_histogram
from aglmc.passes.quant_pass import CHECK_TARGET, QuantPass, keep_output_float_param
from aglmc.passes.quant_plan import (LayerRecord, TensorPlan, calibration_batches, model_sqnr, output_sqnr,
                                     quantize_site_weight, shared_source, summarize)
from aglmc.passes.quant_spec import RANGE_METHODS, QuantScheme, QuantSpec


@register_pass
class QuantizeStatic(QuantPass):
    """Static INT8 PTQ: int8 weights per channel, activations calibrated per tensor, Q/DQ around conv/linear/matmul."""

    name = "quantize_static"
    params = (
        Param("data", "dataset", doc="calibration data set (samples of the model's inputs)"),
        Param("samples", "int", default=128, min=1, doc="at most this many calibration samples"),
        Param("method", "enum", default="minmax", choices=RANGE_METHODS,
              doc="activation range: minmax | percentile | entropy (KL) | mse"),
        Param("percentile", "float", default=99.99, min=50, max=100, min_open=True,
              doc="for method = percentile: the share of values (%) inside the range"),
        Param("activations", "enum", default="int8", choices=("int8", "uint8"), doc="activation integer type"),
        Param("activations_symmetric", "bool", default=False, doc="activation zero point fixed at 0"),
        Param("weights_symmetric", "bool", default=True,
              doc="weight zero point fixed at 0 (what fast int8 kernels need)"),
        Param("weights_per_channel", "bool", default=True, doc="one weight scale per output channel"),
        keep_output_float_param(),
        Param("min_sqnr", "float", default=0.0, min=0,
              doc="keep a layer float when quantizing it alone gives an output SQNR (dB) below this; 0: off"),
        CHECK_TARGET,
    )

    def __init__(self, **params):
        super().__init__(**params)
        self._alone: Dict[str, float] = {}  # key -> model output SQNR with that layer alone quantized

    def scheme(self, kind: str = "fx") -> QuantScheme:
        """The scheme this step's parameters ask for (the same for FX and ONNX graphs)."""
        o = self.options
        weights = QuantSpec("int8" if o["weights_symmetric"] else "uint8", symmetric=o["weights_symmetric"],
                            axis=0 if o["weights_per_channel"] else None, narrow_range=o["weights_symmetric"])
        acts = QuantSpec(o["activations"], symmetric=o["activations_symmetric"], method=o["method"],
                         percentile=o["percentile"])
        return QuantScheme(weights=weights, activations=acts)

    # ---------------------------------------------------------------------------------------------------
    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        o = self.options
        scheme, g = self.begin(kind, graph)
        sites, records = self.keep_outputs(g, [s for s in g.sites(ctx.selects) if g.act_inputs(s)])
        if not sites:
            return PassResult(False, "no conv/linear/matmul to quantize",
                              [r.line() for r in records.values()])

        batches = calibration_batches(ctx, o["data"], o["samples"])
        plan = self._plan(g, sites)
        self._calibrate(g, plan, batches, scheme.activations)
        reference = g.copy()
        check_batches = batches[: max(1, 32 // max(1, len(batches[0][0])))]

        if o["min_sqnr"] > 0:
            sites = self._drop_sensitive(g, reference, sites, plan, scheme, check_batches, records, ctx)
        keys = [g.op_key(s) for s in sites]
        weights = self._apply(g, sites, plan, scheme)
        per_layer = output_sqnr(reference, g, keys, check_batches)
        method = scheme.activations.method_name
        for site_key, (name, kind_, w) in zip(keys, weights):
            records[site_key] = LayerRecord(name, kind_, scheme.short(), method, weight_sqnr=w,
                                            output_sqnr=per_layer.get(site_key),
                                            sensitivity_sqnr=self._alone.get(site_key))
        total = model_sqnr(reference, g, check_batches)
        quantized, kept = summarize(list(records.values()))
        self.layers = list(records.values())
        summary = (f"quantized {quantized} layer(s) to int8 (static, {method}), {kept} kept float; "
                   f"model output SQNR {total:.1f} dB on {sum(len(b[0]) for b in check_batches)} calibration "
                   f"sample(s)")
        return PassResult(True, summary, [r.line() for r in records.values()])

    def _plan(self, g, sites) -> TensorPlan:
        plan = TensorPlan()
        for site in sites:
            for key in g.act_inputs(site) + [g.out_tensor(site)]:
                if not g.is_graph_output(key):  # the model's outputs stay float (no requantization error)
                    plan.add(key)
        quantized = set(plan.order)
        for key in plan.order:
            plan.source[key] = shared_source(g, key, quantized)
        return plan

    def _calibrate(self, g, plan: TensorPlan, batches, spec: QuantSpec) -> None:
        collector = RangeCollector()
        keys = plan.calibrated()
        g.record(batches, keys, collector.observe_minmax)
        if needs_histogram(spec):
            g.record(batches, keys, lambda k, v: collector.observe_histogram(k, v, spec))
        for key in keys:
            scale, zp = spec.qparams(*collector.range(key, spec))
            plan.params[key] = (float(scale), int(zp))

    def _apply(self, g, sites, plan: TensorPlan, scheme: QuantScheme) -> List[tuple]:
        """Q/DQ on the sites' tensors, integer weights, int32-grid biases; returns (name, kind, weight SQNR)."""
        info = [(g.site_name(s), g.op_kind(s), g.act_inputs(s)) for s in sites]
        keys = [k for s in sites for k in g.act_inputs(s) + [g.out_tensor(s)] if k in plan.source]
        for key in dict.fromkeys(keys):
            g.insert_qdq(key, scheme.activations, *plan.params[plan.source[key]])
        out = []
        for site, (name, kind, acts) in zip(sites, info):
            w = quantize_site_weight(g, site, scheme.weights)
            if w is not None and g.has_bias(site) and len(acts) == 1:
                g.snap_bias(site, plan.params[plan.source[acts[0]]][0], w.scales)
            out.append((name, kind, None if w is None else w.sqnr))
        g.finish()
        return out

    def _drop_sensitive(self, g, reference, sites, plan, scheme, batches, records, ctx) -> list:
        """Quantize each site alone on a copy; keep it float when the model's output SQNR falls below min_sqnr."""
        self._alone = {}
        kept = []
        for site in sites:
            key = g.op_key(site)
            trial = g.copy()
            self._apply(trial, [trial.site_by_key(key)], plan, scheme)
            self._alone[key] = model_sqnr(reference, trial, batches)
            if self._alone[key] < self.options["min_sqnr"]:
                records[key] = LayerRecord(g.site_name(site), g.op_kind(site), "", "",
                                           sensitivity_sqnr=self._alone[key],
                                           kept_float=f"sensitive (alone below min_sqnr "
                                                      f"{self.options['min_sqnr']:g} dB)")
            else:
                kept.append(site)
        ctx.log(f"     quantize_static: {len(sites) - len(kept)} of {len(sites)} layer(s) kept float by min_sqnr")
        return kept
