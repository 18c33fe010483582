"""Loop-level steps shared by the rules: which loops are safe to parallelise, how wide to vectorise.

Every step here is safe on any block: it only parallelises loops that bind data-parallel iterators, and
it only vectorises with a width that divides the loop, so no loop gets a tail predicate (TVM scalarises a
vectorised loop that carries one, and ``reverse_compute_at`` over an overhanging tile drops it altogether:
see shared/PERF.md, "Traps").
"""

from __future__ import annotations

from math import prod

from tvm import s_tir, tirx
from tvm_ffi import get_global_func
from tvm.s_tir.schedule import LoopRV, SBlockRV, ScheduleError
from tvm.tirx.analysis import undefined_vars

from ..isa import VectorISA
from .base import static_extent

MIN_PARALLEL_WORK = 8192
"""Iterations below which a thread-pool launch (a few microseconds) costs more than it saves."""

CHUNKS_PER_CORE = 4
"""Parallel chunks wanted per core, so that uneven chunks still balance."""

_get_sblock_realize = get_global_func("s_tir.schedule.GetSBlockRealize")


def spatial_loop_flags(sch: s_tir.Schedule, block: SBlockRV) -> list[bool]:
    """For each loop above ``block``: True when it feeds only data-parallel iterators of the block."""
    realize = _get_sblock_realize(sch, block)
    reduce_vars: set[tirx.Var] = set()
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if iv.iter_type != tirx.IterVar.DataPar:
            reduce_vars.update(undefined_vars(value))
    return [sch.get(loop).loop_var not in reduce_vars for loop in sch.get_loops(block)]


def vector_width(extent: int | None, lanes: int) -> int | None:
    """The vector width for a loop of ``extent`` iterations, or None to leave it scalar.

    A multiple of the register width when it divides, else half or a quarter of it (down to 4 lanes), else
    the whole loop when it is short (LLVM splits an odd-sized vector into legal pieces); never a width that
    leaves a tail.
    """
    if extent is None or extent < 2:
        return None
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and extent % width == 0:
            return width
    return extent if extent <= 2 * lanes else None


def vectorize_inner(sch: s_tir.Schedule, block: SBlockRV, isa: VectorISA, dtype: str = "float32") -> bool:
    """Vectorise the innermost data-parallel loop of ``block``, first fusing trailing loops when it is short
    (only loops that hold this block alone: a loop shared by a compute_at'ed nest stays as it is).

    Returns whether a vectorised loop was made.
    """
    loops = sch.get_loops(block)
    flags = spatial_loop_flags(sch, block)
    if not loops or not flags[-1] or len(sch.get_child_blocks(loops[-1])) != 1:
        return False
    lanes = isa.lanes(dtype)
    start = len(loops) - 1
    # Fuse trailing spatial loops while the innermost is shorter than a few vectors (7x7 feature maps).
    while start > 0 and flags[start - 1] and len(sch.get_child_blocks(loops[start - 1])) == 1:
        extents = [static_extent(sch, loop) for loop in loops[start - 1 :]]
        if None in extents or prod(extents[1:]) >= 4 * lanes:
            break
        start -= 1
    inner_loop = sch.fuse(*loops[start:]) if start < len(loops) - 1 else loops[-1]
    width = vector_width(static_extent(sch, inner_loop), lanes)
    if width is None:
        return False
    if width != static_extent(sch, inner_loop):
        _, inner_loop = sch.split(inner_loop, [None, width])
    sch.vectorize(inner_loop)
    return True


def parallelize_outer(sch: s_tir.Schedule, block: SBlockRV, isa: VectorISA, *, keep_inner: int = 1) -> LoopRV | None:
    """Fuse the leading data-parallel loops of ``block`` into one parallel loop.

    Fuses just enough loops for ``CHUNKS_PER_CORE`` chunks per core, never touches the innermost
    ``keep_inner`` loops (the vector loop), and does nothing on a one-core target or for small work.
    """
    if not isa.parallel:
        return None
    loops = sch.get_loops(block)
    flags = spatial_loop_flags(sch, block)
    extents = [static_extent(sch, loop) for loop in loops]
    if None in extents or prod(extents) < MIN_PARALLEL_WORK:
        return None
    chosen: list[LoopRV] = []
    for loop, spatial, extent in zip(loops[: len(loops) - keep_inner], flags, extents):
        if not spatial:
            break
        chosen.append(loop)
        if prod(extents[: len(chosen)]) >= CHUNKS_PER_CORE * isa.num_cores:
            break
    if not chosen or prod(extents[: len(chosen)]) < 2:
        return None
    fused = sch.fuse(*chosen) if len(chosen) > 1 else chosen[0]
    try:
        sch.parallel(fused)
    except ScheduleError:
        return None
    return fused


def schedule_loop_nest(sch: s_tir.Schedule, block: SBlockRV, isa: VectorISA) -> None:
    """Vectorise the inner and parallelise the outer loops of one block, each step only where it is safe."""
    dtype = sch.get(block).writes[0].source.dtype if sch.get(block).writes else "float32"
    try:
        vectorized = vectorize_inner(sch, block, isa, str(dtype))
    except ScheduleError:
        vectorized = False
    parallelize_outer(sch, block, isa, keep_inner=1 if vectorized else 0)
