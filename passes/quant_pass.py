"""What the quantization passes share: their target check, the output layers kept float, and the common settings.

``quantize_static``, ``quantize_dynamic`` and ``quantize_weights`` derive from :class:`QuantPass`. A subclass
states its ``scheme(kind)`` (a :class:`~aglmc.passes.quant_spec.QuantScheme`) and ``quantize(kind, g, sites,
scheme, records, ctx)``; the base checks the scheme against ``check_target`` (a located error at build time, and
at ``aglmc check`` through :func:`aglmc.passes.quant_spec.check_schedule_schemes`), wraps the graph for both
graph kinds (:func:`~aglmc.passes.quant_plan.quant_graph`) and records the layers ``keep_output_float`` keeps.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from aglmc.dsl.params import Param
from aglmc.passes.base import Pass, PassContext, PassResult
from aglmc.passes.quant_plan import (LayerRecord, calibration_batches, model_sqnr, output_sqnr, quant_graph,
                                     quantize_site_weight)
from aglmc.passes.quant_spec import QuantScheme, check_scheme

#: what ``check_target`` may name
TARGETS = ("any", "host", "arm", "arm_dotprod")


def target_of(option: str):
    """``(kind, features)`` of the ``check_target`` parameter, None for ``any``."""
    if option == "any":
        return None
    if option == "arm_dotprod":
        return "arm", ("+neon", "+dotprod")
    return option, ()


def keep_output_float_param(what: str = "the layers that produce the model's outputs") -> Param:
    return Param("keep_output_float", "bool", default=False, doc=f"keep {what} in float")


CHECK_TARGET = Param("check_target", "enum", default="any", choices=TARGETS,
                     doc="check the scheme against what this target runs fast (any: no check)")
#: the optional SQNR report of the passes that need no calibration data
SQNR_DATA = (Param("data", "dataset", default=None, doc="optional: data set for the per-layer SQNR in the report"),
             Param("samples", "int", default=8, min=1, doc="samples of `data` used for the SQNR"))

#: the ops the weight-quantizing passes (dynamic, weight-only) take
WEIGHT_KINDS = ("linear", "matmul")


class QuantPass(Pass):
    """Base of the quantization passes (see the module docstring)."""

    graph_kinds = ("fx", "onnx")
    guarantees = ("quantized",)

    def __init__(self, **params):
        super().__init__(**params)
        self.layers: List[LayerRecord] = []

    def scheme(self, kind: str = "fx") -> QuantScheme:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        return self._run("fx", gm, ctx)

    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        return self._run("onnx", graph, ctx)

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---- shared steps ----------------------------------------------------------------------------------
    def begin(self, kind: str, graph):
        """The scheme (checked against ``check_target``) and the graph wrapped for quantization."""
        scheme = self.scheme(kind)
        target = target_of(self.options["check_target"])
        if target is not None:
            check_scheme(scheme, *target)
        return scheme, quant_graph(kind, graph)

    def keep_outputs(self, g, sites: Sequence) -> Tuple[list, Dict[str, LayerRecord]]:
        """``sites`` without the output layers when ``keep_output_float`` is set, and records of those kept."""
        if not self.options["keep_output_float"]:
            return list(sites), {}
        kept = {g.op_key(s): LayerRecord(g.site_name(s), g.op_kind(s), "", "",
                                         kept_float="output layer (keep_output_float)")
                for s in g.output_layers(sites)}
        return [s for s in sites if g.op_key(s) not in kept], kept

    def quantize_weights_of(self, g, sites: list, scheme: QuantScheme, ctx: PassContext, how: str,
                            before_weights=None) -> Tuple[List[LayerRecord], Optional[str]]:
        """Quantize the weights of ``sites`` (after ``before_weights(g)``, e.g. run-time activation Q/DQ), finish
        the graph and measure the optional SQNR on ``data``: the layers' records and a summary suffix."""
        o = self.options
        batches = calibration_batches(ctx, o["data"], o["samples"]) if o["data"] else None
        reference = g.copy() if batches else None
        keys = [g.op_key(s) for s in sites]
        info = [(g.site_name(s), g.op_kind(s)) for s in sites]
        if before_weights is not None:
            before_weights(g)
        weight_sqnr = [quantize_site_weight(g, s, scheme.weights).sqnr for s in sites]
        g.finish()
        per_layer = output_sqnr(reference, g, keys, batches) if batches else {}
        records = [LayerRecord(name, kind_, scheme.short(), how, weight_sqnr=w, output_sqnr=per_layer.get(key))
                   for key, (name, kind_), w in zip(keys, info, weight_sqnr)]
        suffix = None
        if batches:
            suffix = (f"model output SQNR {model_sqnr(reference, g, batches):.1f} dB on "
                      f"{sum(len(b[0]) for b in batches)} sample(s) of '{o['data']}'")
        return records, suffix
