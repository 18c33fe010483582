"""The rule that always applies: parallel outer loops and vectorised inner loops, block by block."""

from __future__ import annotations

from tvm import s_tir

from ..isa import VectorISA
from .base import CpuRule, root_blocks
from .loops import schedule_loop_nest


class Fallback(CpuRule):
    """Matches every PrimFunc; runs last.

    Each root block keeps its own loop nest (nothing is inlined or reordered, so no dataflow changes). Its
    leading data-parallel loops are fused into one parallel loop and its innermost data-parallel loop is
    vectorised with a width that divides it (see :mod:`.loops`); a step that TVM refuses for a block is
    skipped for that block. Reduction loops are never parallelised or vectorised.
    """

    name = "fallback"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        for block in root_blocks(sch):
            schedule_loop_nest(sch, block, isa)
        return None
