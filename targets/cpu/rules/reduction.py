"""Rule for row-wise reductions and normalisations: softmax, layer norm, RMSNorm, mean, global pooling."""

from __future__ import annotations

from math import prod

from tvm import s_tir
from tvm.s_tir.schedule import ScheduleError

from ..isa import VectorISA
from .base import CpuRule, is_reduction, is_spatial, root_blocks, static_extent
from .loops import spatial_loop_flags, vectorize_inner
from .window import single_core


class Reduction(CpuRule):
    """Matches a PrimFunc of reduction blocks (``max``, ``sum``, ``sum of squares``) and injective blocks
    that all share leading data-parallel axes (the rows), the last block injective: softmax is
    ``max → exp → sum → divide`` per row, layer norm ``sum → mean → var → normalise``.

    Scheduled row by row, as TVM's ``dlight.cpu.Reduction`` does: the rows of the last block are
    parallelised, every other block is computed at the row, so a row is read from cache by each pass;
    injective blocks are vectorised along the row. A reduction over a multiple of the vector width is
    first split into vector partial results (rfactor, while the blocks are still at the root: rfactor
    cannot work under the shared row loop) and a final reduction of the lanes.
    """

    name = "reduction"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        blocks = root_blocks(sch)
        if not any(is_reduction(sch, b) for b in blocks):
            return "no reduction block"
        if not is_spatial(sch, blocks[-1]):
            return "last block is a reduction"
        rows = _row_loops(sch, blocks)
        if isinstance(rows, str):
            return rows
        partials = [p for p in (_vector_partials(sch, b, isa) for b in blocks if is_reduction(sch, b)) if p]
        blocks = root_blocks(sch)
        last = blocks[-1]
        row_loops = sch.get_loops(last)[:rows]
        row = sch.fuse(*row_loops) if rows > 1 else row_loops[0]
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row, preserve_unit_loops=True)
        inner = single_core(isa)
        for block in sch.get_child_blocks(row):
            if is_spatial(sch, block):
                vectorize_inner(sch, block, inner)
        for partial in partials:  # its loops under the row: (lane, k / lanes) -> (k / lanes, lane)
            lane, step = [loop for loop in sch.get_loops(partial)[1:] if static_extent(sch, loop) != 1]
            sch.reorder(step, lane)
            sch.vectorize(lane)
        if isa.parallel:
            sch.parallel(row)
        return None


def _vector_partials(sch: s_tir.Schedule, block, isa: VectorISA):
    """Turn a row reduction over a multiple of the vector width into ``lanes`` partial results (rfactor: a
    vector accumulated with vector adds or maxes along the row) and a reduction of those lanes; return the
    partial block, or None where it does not apply. The scalar loop waits on the previous add at every
    element. Done before the blocks are computed at the row: rfactor puts its block at the root."""
    loops = sch.get_loops(block)
    extent = static_extent(sch, loops[-1]) if loops else None
    lanes = isa.lanes(str(sch.get(block).writes[0].source.dtype))
    if extent is None or extent % lanes or extent < 2 * lanes:
        return None
    _, lane = sch.split(loops[-1], [None, lanes])
    try:
        return sch.rfactor(lane, 0)
    except ScheduleError:
        sch.fuse(*sch.get_loops(block)[-2:])
        return None


def _row_loops(sch: s_tir.Schedule, blocks: list) -> int | str:
    """How many leading loops of the last block span exactly the rows of the first reduction.

    The rows are the reduction's data-parallel iterations (``[256, 1]`` for a keepdim mean over
    ``[256, 64]``); the last block's leading loops must multiply up to the same count, so that computing
    every block at the fused row loop computes each row once.
    """
    first = next(b for b in blocks if is_reduction(sch, b))
    flags = spatial_loop_flags(sch, first)
    row_extents = [static_extent(sch, loop) for loop, f in zip(sch.get_loops(first), flags) if f]
    last_extents = [static_extent(sch, loop) for loop in sch.get_loops(blocks[-1])]
    if None in row_extents or None in last_extents:
        return "dynamic extents"
    rows, count, product = prod(row_extents), 0, 1
    while count < len(last_extents) and product * last_extents[count] <= rows and product < rows:
        product *= last_extents[count]
        count += 1
    if product != rows or count == 0:
        return "the last block's leading loops do not line up with the reduction's rows"
    return count
