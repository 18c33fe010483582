"""The base class of aglmc's CPU schedule rules and the block queries they share."""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.s_tir.schedule import SBlockRV, ScheduleError
from tvm.target import Target

from ..isa import VectorISA, vector_isa

logger = logging.getLogger(__name__)

RULE_ATTR = "aglmc.schedule_rule"
"""PrimFunc attribute naming the rule that scheduled the function (read by :class:`ScheduleReport`)."""


class CpuRule(ScheduleRule):
    """A dlight rule for LLVM CPU targets that names itself on the functions it schedules.

    Subclasses set ``name`` and implement :meth:`schedule`, which works on a fresh ``Schedule`` and returns
    ``None`` when it applied, or a short reason when the function is not its kind (``--explain`` material,
    logged at debug level). A TVM ``ScheduleError`` raised part-way also declines: the schedule is thrown
    away and the next rule sees the untouched function, so a rule can never leave a half-scheduled function.
    """

    name: str = ""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        try:
            declined = self.schedule(sch, vector_isa(target))
            if declined is None:
                # Re-parsing the result verifies it is well-formed TIR.
                return s_tir.Schedule(sch.mod["main"].with_attr(RULE_ATTR, self.name))
        except (ScheduleError, tvm.error.InternalError) as err:
            declined = f"TVM refused a step: {str(err).splitlines()[0]}"
        logger.debug("%s declined a function: %s", self.name, declined)
        return None

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        """Schedule ``sch`` in place; return None when applied, or why the function does not match."""
        raise NotImplementedError


def root_blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
    """The blocks directly under the function's root block, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_reduction(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether the block has a reduction iterator."""
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def is_spatial(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether every iterator of the block is data-parallel (an injective block)."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def single_reduction(sch: s_tir.Schedule) -> tuple[SBlockRV | None, str | None]:
    """``(block, None)`` when the function has exactly one reduction block and every other block is injective
    (the shape the kernel rules schedule), else ``(None, why not)``."""
    blocks = root_blocks(sch)
    reductions = [b for b in blocks if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None, f"{len(reductions)} reduction blocks, want 1"
    if not all(is_spatial(sch, b) for b in blocks if b not in reductions):
        return None, "a block is neither injective nor the reduction"
    return reductions[0], None


def static_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent when it is a compile-time constant."""
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def layout_free_params(sch: s_tir.Schedule) -> list[tirx.Var]:
    """Parameter buffers that Relax binds to constants (marked by ``AttachAttrLayoutFreeBuffers``)."""
    func = sch.mod["main"]
    indices = [int(i) for i in func.attrs.get("layout_free_buffers", [])] if func.attrs else []
    return [func.params[i] for i in indices]


def inline_spatial_producers(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """Inline every injective producer of ``block`` (transitively) that TVM allows to inline."""
    changed = True
    while changed:
        changed = False
        for producer in sch.get_producers(block):
            if not is_spatial(sch, producer):
                continue
            try:
                sch.compute_inline(producer)
            except ScheduleError:
                continue
            changed = True
            break


def inline_spatial_consumers(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """Fold the injective consumer chain of ``block`` into it with ``reverse_compute_inline``, while the
    chain has a single reader.

    A value read by two consumers (GELU reads ``x`` in ``x * (1 + erf(x))`` twice) stops the chain:
    TVM 0.27's ``reverse_compute_inline`` accepts that case and leaves the other reader pointing at a
    buffer nobody writes (ill-formed TIR).
    """
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1 or not is_spatial(sch, consumers[0]):
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except ScheduleError:
            return
