"""Rule for functions made only of injective blocks: fused elementwise chains, broadcasts, reshapes."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

from ..isa import VectorISA
from .base import CpuRule, is_spatial, root_blocks
from .loops import schedule_loop_nest


class Elementwise(CpuRule):
    """Matches a PrimFunc whose blocks are all data-parallel (FuseOps' injective and elementwise groups).

    Every block that TVM can inline is inlined into its consumer, so a chain such as
    ``subtract → divide → multiply → add → relu`` (an unfolded batch norm) becomes one loop nest that reads
    each input once. Each remaining nest is then flattened, vectorised along its contiguous inner loops and
    parallelised over its outer loops.
    """

    name = "elementwise"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        blocks = root_blocks(sch)
        if not blocks:
            return "no blocks"
        if not all(is_spatial(sch, block) for block in blocks):
            return "has a reduction block"
        infos = normalize_prim_func(sch)
        if infos is None:
            return "blocks are not normalisable"
        try_inline(sch, infos)
        for block in root_blocks(sch):
            schedule_loop_nest(sch, block, isa)
        return None
