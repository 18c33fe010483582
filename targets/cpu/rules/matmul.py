"""Rule for matmul, dense and batch matmul, with their fused epilogues (bias, activation, residual)."""

from __future__ import annotations

from tvm import s_tir, tirx

from ..isa import VectorISA
from .base import CpuRule, single_reduction
from .gemm_kernel import match_gemm, schedule_gemm


class Matmul(CpuRule):
    """Matches a PrimFunc with exactly one reduction block of the form ``C[S,I,J] += A[S,I,K] * B[S,J,K]``
    in which every buffer index is a plain loop variable (no windows: those are convolutions), surrounded
    by injective blocks only: producers such as a transpose, consumers such as ``+ bias``, ``relu``,
    ``+ residual``.

    It is scheduled as the register-tiled kernel of :mod:`.gemm_kernel`: for a dense layer with a
    constant weight, the weight is repacked into ``[N/NR, K, NR]`` panels at compile time; for an
    activation-by-activation product (attention) the panel is packed at run time, inside the parallel
    panel loop.
    """

    name = "matmul"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        reduction, reason = single_reduction(sch)
        if reduction is None:
            return reason
        main = reduction
        if not _plain_indices(sch, main):
            return "buffer indices are not plain loop variables (a window: see conv2d)"
        match = match_gemm(sch, main)
        if isinstance(match, str):
            return match
        return schedule_gemm(sch, match, isa)


def _plain_indices(sch: s_tir.Schedule, block) -> bool:
    stmt = sch.get(block)
    for region in list(stmt.reads) + list(stmt.writes):
        for rng in region.region:
            if not isinstance(rng.min, (tirx.Var, tirx.IntImm)):
                return False
    return True
