"""Rule for 2-D pooling windows (max and average pooling, NCHW)."""

from __future__ import annotations

from tvm import s_tir

from ..isa import VectorISA
from .base import CpuRule, single_reduction, static_extent
from .window import schedule_window


class Pool2d(CpuRule):
    """Matches a PrimFunc with one reduction block that reads a single 4-D tensor into a 4-D output over
    a window (``pool_max``, ``pool_sum`` of avg_pool2d), with injective producers and epilogue (the
    average's division, padding).

    Scheduled as the sliding-window kernel of :mod:`.window`: vectorised along the output row, window
    unrolled, parallel over channels. Global pooling (1x1 output) has nothing to vectorise along the
    row and is left to :class:`Reduction`.
    """

    name = "pool2d"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        reduction, reason = single_reduction(sch)
        if reduction is None:
            return reason
        main = sch.get(reduction)
        if len(main.reads) != 1 or len(main.reads[0].region) != 4 or len(main.writes[0].region) != 4:
            return "not a 4-D to 4-D window over one input"
        loops = sch.get_loops(reduction)
        if len(loops) < 4 or (static_extent(sch, loops[3]) or 0) < 2:
            return "output rows of width < 2 (global pooling: see reduction)"
        return schedule_window(sch, reduction, isa)
