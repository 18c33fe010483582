"""Rule for depthwise 2-D convolution (one input channel per output channel), NCHW."""

from __future__ import annotations

from tvm import s_tir

from ..isa import VectorISA
from .base import CpuRule, single_reduction
from .window import schedule_window


class DepthwiseConv2d(CpuRule):
    """Matches a PrimFunc with one reduction block reading a 4-D input and a 4-D weight, whose output
    channel indexes both (so there is no output-channel x input-channel GEMM to tile), plus an
    injective padding producer and epilogue.

    Scheduled as the sliding-window kernel of :mod:`.window`: vectorised along the output row (8 lanes
    divide 56/112/28-wide MobileNet rows; measured 0.44x onnxruntime's time on 144x56x56, shared/PERF.md),
    the kxk window unrolled, padding done per channel plane, parallel over channels.
    """

    name = "depthwise_conv2d"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        reduction, reason = single_reduction(sch)
        if reduction is None:
            return reason
        main = sch.get(reduction)
        if len(main.reads) != 2 or any(len(r.region) != 4 for r in main.reads) or len(main.writes[0].region) != 4:
            return "not a 4-D input and 4-D weight"
        channel = main.writes[0].region[1].min
        weight_channel = main.reads[1].region[0].min
        if not channel.same_as(weight_channel):
            return "output channel does not index the weight's first axis (not depthwise)"
        return schedule_window(sch, reduction, isa)
