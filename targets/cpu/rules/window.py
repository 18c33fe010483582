"""The sliding-window kernel shared by depthwise convolution and pooling.

For a block ``out[n, c, y, x] (+)= f(in[n, c, y*s + ry, x*s + rx] (, w[c, ry, rx]))`` (NCHW)::

    parallel for n, c:
      pad[c] = padded input plane of channel c          # only this plane: it stays in cache; the border is
                                                        # filled, then the interior copied row by row
      for y:
        for xo:
          out[y, xo*W : xo*W+W] = init
          for ry, rx in unroll(window):
            for xi in vectorized(W):                     # W divides the row: no tail, no predicate
              out[y, xo*W + xi] (+)= ...
        epilogue(out[y, :])                              # bias, activation on the finished row

Accumulation happens in the output itself: the window loops are fully unrolled, so LLVM keeps the
W-wide accumulator in a register across them. The epilogue is attached per row, a box in the output,
so attaching it cannot overwrite neighbouring rows (shared/PERF.md, "Traps").
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.sym.pattern import detect_linear_equation
from tvm.s_tir.schedule import SBlockRV, ScheduleError

from ..isa import VectorISA
from .base import inline_spatial_consumers, is_spatial, static_extent
from .loops import schedule_loop_nest, spatial_loop_flags, vector_width

MAX_UNROLLED_WINDOW = 64
"""Largest window (kernel height x width) that is fully unrolled."""


def schedule_window(sch: s_tir.Schedule, main: SBlockRV, isa: VectorISA) -> str | None:
    """Schedule a 4-D NCHW window reduction ``main`` and its pad producer and epilogue consumers."""
    loops = sch.get_loops(main)
    flags = spatial_loop_flags(sch, main)
    spatial = [loop for loop, f in zip(loops, flags) if f]
    window = [loop for loop, f in zip(loops, flags) if not f]
    if len(spatial) != 4 or flags != sorted(flags, reverse=True):
        return "not a 4-D output with the window loops innermost"
    extents = [static_extent(sch, loop) for loop in loops]
    if None in extents:
        return "dynamic extents"
    n_loop, c_loop, y_loop, x_loop = spatial
    dtype = str(sch.get(main).writes[0].source.dtype)
    strided = _x_stride(sch, main) > 1
    window_size = 1
    for loop in window:
        window_size *= static_extent(sch, loop)
    if strided and window_size <= MAX_UNROLLED_WINDOW:
        # Strided windows: TVM would vectorise the column loop into a gather (one scalar load per lane);
        # with the unrolled window inside a plain column loop, LLVM's loop vectoriser loads the input row
        # contiguously and de-interleaves it with shuffles.
        for loop in window:
            sch.unroll(loop)
    else:
        width = vector_width(extents[3], isa.lanes(dtype))
        if width is not None and width < extents[3]:
            xo, xi = sch.split(x_loop, [None, width])
        else:
            xo, xi = None, x_loop
        sch.reorder(*([xo] if xo is not None else []), *window, xi)
        if window_size <= MAX_UNROLLED_WINDOW:
            for loop in window:
                sch.unroll(loop)
        if width is not None:
            sch.vectorize(xi)

    for producer in sch.get_producers(main):
        if is_spatial(sch, producer):
            sch.compute_at(producer, c_loop, preserve_unit_loops=True)
            blocks = _split_padding(sch, producer, c_loop)
            if len(blocks) == 2:  # the fill as one contiguous nest; the interior row by row
                schedule_loop_nest(sch, blocks[0], single_core(isa))
                _vectorize_rows(sch, blocks[1], isa, dtype)
            else:
                schedule_loop_nest(sch, producer, single_core(isa))
    consumers = sch.get_consumers(main)
    if consumers:
        epilogue = consumers[0]
        inline_spatial_consumers(sch, epilogue)
        sch.reverse_compute_at(epilogue, y_loop, preserve_unit_loops=True)
        schedule_loop_nest(sch, epilogue, single_core(isa))
    if isa.parallel:
        sch.parallel(sch.fuse(n_loop, c_loop))
    sch.decompose_reduction(main, window[0])
    return None


def _x_stride(sch: s_tir.Schedule, main: SBlockRV) -> int:
    """The stride of the output column ``x`` in the input's column index (``x * s + rx``)."""
    block = sch.get(main)
    index = block.reads[0].region[-1].min
    out_index = block.writes[0].region[-1].min
    coef = detect_linear_equation(index, [out_index]) if isinstance(out_index, tvm.tirx.Var) else []
    return int(coef[0]) if len(coef) == 2 and isinstance(coef[0], tvm.tirx.IntImm) else 1


def _split_padding(sch: s_tir.Schedule, pad: SBlockRV, c_loop) -> list:
    """A padding producer as two loop nests: the border filled with the pad value, then the interior copied
    row by row (contiguous, vectorised). As one nest, every element of the plane evaluated the bounds test and
    the fused loop's ``// W`` and ``% W`` lane by lane: on 56x56 planes that copy cost more than the 3x3
    convolution itself (MobileNetV2's 144x56x56 depthwise: 23.6 GF/s)."""
    loops = list(sch.get_loops(pad))
    anchor = sch.get(c_loop)
    below = [i for i, loop in enumerate(loops) if sch.get(loop).same_as(anchor)]
    loops = loops[below[0] + 1:] if below else []
    if not loops:
        return [pad]
    try:
        fill = sch.decompose_padding(pad, loops[0])
    except ScheduleError:  # not a padding block (no bounds test to split off)
        return [pad]
    return [fill, pad]


def _vectorize_rows(sch: s_tir.Schedule, block: SBlockRV, isa: VectorISA, dtype: str) -> None:
    """Vectorise a copy along its innermost (row) loop without fusing it with the rows above: the row is then
    contiguous in both buffers, where a fused loop indexes lane by lane with ``// W`` and ``% W``."""
    x = sch.get_loops(block)[-1]
    extent = static_extent(sch, x)
    if extent is None or extent < 2:
        return
    lanes = isa.lanes(dtype)
    width = extent if extent <= 4 * lanes else vector_width(extent, lanes)
    if width is None:
        return
    if width < extent:
        x = sch.split(x, [None, width])[1]
    sch.vectorize(x)


def single_core(isa: VectorISA) -> VectorISA:
    """The same ISA with one core: for loop nests that already sit inside a parallel loop."""
    return VectorISA(isa.name, isa.vector_bits, isa.registers, 1)
