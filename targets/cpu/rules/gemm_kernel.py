"""The register-tiled GEMM kernel that the matmul and conv2d rules schedule onto.

Any block of the form ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` (after TVM's reindexing: batch matmul,
dense, conv2d read as im2col) becomes::

    parallel for s, panel:                     # column panels of NR vector-side elements
      [pack the stream operand's panel: K x NR, contiguous]   (or at compile time, for constants)
      for tile:                                # MR rows of the broadcast side
        acc[MR, NR] = 0                        # MR * NR / lanes vector registers
        for k:                                 # k outside the tile: one load of NR per k ...
          for r in unroll(MR):                 # ... reused by MR broadcast FMAs
            for v in vectorized(NR):
              acc[r, v] += bcast[r, k] * panel[k, v]
        C[tile] = epilogue(acc)                # bias, activation, residual folded into the store

"Vector side" is whichever of I and J holds the output's innermost (contiguous) axis: J for a matmul,
the pixels (I) for an NCHW convolution. Its operand is the *stream* operand and is packed into
``[S, V/NR, K, NR]`` panels; the other is the *broadcast* operand. Padding (``pad_einsum``) rounds V up to
NR and the other side up to MR, so every tile is whole: the kernel never carries a predicate and every
write-back is a box (the cache_write/reverse_compute_at trap of shared/PERF.md cannot occur). Padding of
constant operands happens at compile time with the packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.gpu.matmul import IterKind, IterTrait, detect_iter_traits, make_iter_fusion_index_map
from tvm.s_tir.schedule import SBlockRV

from ..isa import VectorISA
from .base import (
    inline_spatial_consumers,
    inline_spatial_producers,
    layout_free_params,
    root_blocks,
    static_extent,
)
from .loops import schedule_loop_nest

MIN_PARALLEL_MACS = 1 << 19
"""Multiply-adds below which a GEMM runs on one core: waking the thread pool costs a few microseconds, what
half a million multiply-adds take one core."""

PREPROC = "meta_schedule.layout_rewrite_preproc"
"""Block annotation that makes ``SplitLayoutRewritePreproc`` move a block out to run on constants."""


@dataclass(frozen=True)
class RegisterTile:
    """An MR x NR accumulator tile: MR broadcast rows by NR = vectors x lanes stream columns.

    AVX-512: half the register file holds accumulators, 4 rows x 4 vectors, the 4 x 64 tile that measured
    fastest (shared/PERF.md: 167 GFLOP/s, 96 % of MKL; 8 x 32 was close); its broadcasts are memory operands
    of the FMA and cost no instruction. With 16 registers (AVX2, SSE) 12 accumulators leave room for the
    stream loads and one broadcast: the classic 6 x 16 AVX2 kernel. Small problems shrink the tile rather
    than pad it far.

    NEON multiplies by a vector *lane* (``fmla v.4s, b.4s, a.s[i]``), so broadcast values are loaded a
    vector at a time (``lane_rows``, see :func:`_lane_tile`): from a constant operand packed at compile time
    as ``[M/MR, K, MR]`` (MR rows of one k per load: 8 x 3 or 6 x 4 vectors, like ncnn's and onnxruntime's
    aarch64 kernels), or from a run-time operand in place, four k of one row per load (which costs a
    register per row: 4 x 16, 5 x 16, 7 x 12 ...).
    """

    mr: int
    nr: int
    lane_rows: str | None = None  # NEON: "packed" ([M/MR, K, MR]) or "in place" (four k of a row); else None

    @staticmethod
    def for_problem(
        isa: VectorISA, dtype: str, vector_extent: int, row_extent: int, *, constant_rows: bool = True,
        row_width: int | None = None,
    ) -> RegisterTile:
        """The tile for a GEMM whose vector side has ``vector_extent`` and other side ``row_extent``;
        ``constant_rows``: the broadcast operand is a constant (NEON packs it at compile time);
        ``row_width`` (x86): prefer the widest tile whose width divides it (see :func:`schedule_gemm`)."""
        lanes = isa.lanes(dtype)
        if isa.fma_by_lane:
            return _lane_tile(lanes, vector_extent, row_extent, constant_rows, isa.registers)
        accumulators = isa.registers // 2 if isa.registers >= 32 else isa.registers - 4
        vectors = 4 if isa.registers >= 32 else 2
        vectors = max(1, min(vectors, -(-vector_extent // lanes)))
        if row_width and row_width % (vectors * lanes):
            vectors = next((v for v in range(vectors, 0, -1) if row_width % (v * lanes) == 0), vectors)
        mr = max(1, min(accumulators // vectors, 8, row_extent))
        return RegisterTile(mr=mr, nr=vectors * lanes)


def _lane_tile(lanes: int, vector_extent: int, row_extent: int, packed: bool, registers: int) -> RegisterTile:
    """NEON: the tile with the fewest instructions for the padded problem, among those whose accumulators,
    broadcast registers and stream registers fit the register file. Per four steps of k (the kernel unrolls
    up to 16) it issues 4·MR·V FMAs, 4·⌈V/2⌉ stream loads (``ldp`` loads two vectors), 3 of loop control and
    broadcast loads: packed, one (MR ≤ 4, or an ``ldp`` of 8) or two per k; in place, one per row (four k).
    A run-time operand is read in place only, so there MR must divide the rows (a padded row would be read
    past the end of the operand)."""
    best, best_cost = None, None
    for mr in range(1, min(8, row_extent) + 1):
        if not packed and row_extent % mr:
            continue
        for vectors in range(1, min(4, -(-vector_extent // lanes)) + 1):
            bcast_regs = -(-mr // 4) if packed else mr
            if mr * vectors > 24 or mr * vectors + bcast_regs + vectors > registers - 2:
                continue
            fmas = 4 * mr * vectors
            bcast_loads = (4 if mr <= 4 or mr == 8 else 8) if packed else mr
            per_fma = (fmas + bcast_loads + 4 * -(-vectors // 2) + 3) / fmas
            cost = _padded(row_extent, mr) * _padded(vector_extent, vectors * lanes) * per_fma
            if best_cost is None or cost < best_cost - 1e-9:
                best, best_cost = RegisterTile(mr, vectors * lanes, "packed" if packed else "in place"), cost
    return best


def _padded(extent: int, tile: int) -> int:
    return -(-extent // tile) * tile


@dataclass(frozen=True)
class DirectConv:
    """How :func:`schedule_gemm` runs a convolution directly (its ``direct``): the register tile, the window
    (kh * kw) the k loop is split by, and the write-back order."""

    tile: RegisterTile
    window: int
    pixel_writeback: bool  # write each channel's MR pixels together (else each pixel's NR channels)

    @staticmethod
    def for_conv(isa: VectorISA, dtype: str, channels: int, pixels: int, reduction: int,
                 window: int) -> DirectConv | None:
        """The direct form of an NCHW conv with ``reduction`` = C_in/groups * kh * kw, or None where the packed
        GEMM is faster: below ``DIRECT_MIN_K`` the write-back, a transposition of each MR x NR tile into
        NCHW, costs more than the packing saves (3 -> 64 3x3 on 224^2, K = 27: 0.76 ms packed, 1.49 direct).
        The write-back goes pixel-major below ``PIXEL_WRITEBACK_MAX_K`` (ResNet's 7x7 stem, K = 147:
        1.45 -> 0.91 ms), channel-major (one strided vector store per pixel) above (K = 576: 0.80 vs 0.84)."""
        tile = direct_tile(isa, dtype, channels, pixels)
        if tile is None or reduction < DIRECT_MIN_K:
            return None
        return DirectConv(tile, window, reduction < PIXEL_WRITEBACK_MAX_K)


DIRECT_MIN_K = 128
PIXEL_WRITEBACK_MAX_K = 384


def direct_tile(isa: VectorISA, dtype: str, channels: int, pixels: int) -> RegisterTile | None:
    """The tile of a direct convolution (see :func:`schedule_gemm`'s ``direct``): NR output channels (the
    vector side, weights packed at compile time) by MR output pixels read in place from the padded input.

    MR divides the pixel count (a padded pixel row would put a bounds check into the kernel); per step of k
    the tile issues MR·V FMAs, V weight loads and MR broadcasts, and pads the channels to NR: the cheapest
    padded tile whose accumulators leave room for the loads wins (4 x 64 on AVX-512 for 64..512 channels,
    7 x 48 on a 7 x 7 map). None when no MR > 1 divides the pixels (a prime count)."""
    lanes = isa.lanes(dtype)
    budget = isa.registers - 8 if isa.registers >= 32 else isa.registers - 4
    best, best_cost = None, None
    for mr in range(1, 9):
        if pixels % mr:
            continue
        for vectors in range(1, 5):
            if mr * vectors + vectors > budget:
                continue
            cost = _padded(channels, vectors * lanes) / channels * (mr * vectors + vectors + mr) / (mr * vectors)
            if best_cost is None or cost < best_cost - 1e-9:
                best, best_cost = RegisterTile(mr, vectors * lanes), cost
    return best if best is not None and best.mr > 1 else None


@dataclass(frozen=True)
class GemmMatch:
    """A block that reads as a GEMM, and which of its operands is on the vector side."""

    block: SBlockRV
    vector_side: IterKind  # kIter_I or kIter_J


def gemm_traits(block: s_tir.SBlock) -> tuple[list[IterTrait], ...] | None:
    """TVM's ``detect_iter_traits``, also accepting a GEMM whose I axis has extent 1 (batch-1 dense).

    TVM's detector marks every unit iterator trivial and then wants I, J and K; a dense layer on one
    row has no I left. Here a unit iterator that indexes A and C becomes I, so the same kernel runs with
    MR = 1 instead of leaving the commonest layer of a classifier or decoder to the fallback.
    """
    traits = detect_iter_traits(block)
    if traits is not None or len(block.reads) != 2 or len(block.writes) != 1:
        return traits
    a_vars, b_vars, c_vars = (_index_vars(region) for region in (*block.reads, block.writes[0]))
    units = [iv for iv in block.iter_vars if isinstance(iv.dom.extent, tirx.IntImm) and iv.dom.extent.value == 1]
    as_i = [iv for iv in units if iv.var in a_vars and iv.var in c_vars and iv.var not in b_vars]
    if not as_i:
        return None
    # Re-run TVM's detector on a copy of the block whose unit I iterator has extent 2: only the kinds
    # matter, and the extent is restored below.
    widened = [
        tirx.IterVar(_range(str(iv.dom.extent.ty), 2), iv.var, iv.iter_type) if iv.same_as(as_i[0]) else iv
        for iv in block.iter_vars
    ]
    traits = detect_iter_traits(_with_iter_vars(block, widened))
    if traits is None:
        return None
    restore = {id(t) for t in traits[3] if t.kind == IterKind.kIter_I}
    for group in traits:
        for trait in group:
            if id(trait) in restore:
                trait.extent = as_i[0].dom.extent
    return traits


def _index_maps(traits: tuple[list[IterTrait], ...]) -> tuple[tirx.IndexMap, ...]:
    """Index maps to the normal form: block (s, i, j, k), A' [s, i, k], B' [s, j, k], C' [s, i, j]."""
    a_traits, b_traits, c_traits, block_traits = traits
    S, I, J, K = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K
    return (
        make_iter_fusion_index_map(block_traits, [S, I, J, K]),
        make_iter_fusion_index_map(a_traits, [S, I, K]),
        make_iter_fusion_index_map(b_traits, [S, J, K]),
        make_iter_fusion_index_map(c_traits, [S, I, J]),
    )


def _range(dtype: str, extent: int) -> tvm.ir.Range:
    return tvm.ir.Range(tirx.IntImm(dtype, 0), tirx.IntImm(dtype, extent))


def _index_vars(region) -> set:
    return {v for rng in region.region for v in tirx.analysis.undefined_vars(rng.min)}


def _with_iter_vars(block: s_tir.SBlock, iter_vars: list) -> s_tir.SBlock:
    return s_tir.SBlock(
        iter_vars, block.reads, block.writes, block.name_hint, block.body, block.init,
        block.alloc_buffers, block.match_buffers, block.annotations,
    )


def match_gemm(sch: s_tir.Schedule, block: SBlockRV) -> GemmMatch | str:
    """Check that ``block`` is ``C[S, I, J] += A[S, I, K] * B[S, J, K]``; return the match or why not."""
    stmt = sch.get(block)
    traits = gemm_traits(stmt)
    if traits is None:
        return "not C[S,I,J] += A[S,I,K] * B[S,J,K]"
    if not isinstance(stmt.body, tirx.BufferStore) or not _is_multiply_accumulate(stmt.body):
        return "update is not a multiply-accumulate"
    dtype = str(stmt.writes[0].source.dtype)
    if dtype not in ("float32", "float16"):
        return f"accumulates in {dtype}"
    *_, block_traits = traits
    inner_index = stmt.writes[0].region[-1].min
    kinds = {iv.var: trait.kind for iv, trait in zip(stmt.iter_vars, block_traits)}
    inner_vars = [v for v in tirx.analysis.undefined_vars(inner_index) if v in kinds]
    if len(inner_vars) != 1 or kinds[inner_vars[0]] not in (IterKind.kIter_I, IterKind.kIter_J):
        return "output's innermost axis is neither I nor J"
    return GemmMatch(block, kinds[inner_vars[0]])


def _is_multiply_accumulate(store: tirx.BufferStore) -> bool:
    value = store.value
    if isinstance(value, tirx.Add):
        terms = (value.a, value.b)
        return any(isinstance(t, tvm.ir.TensorLoad) and t.source.same_as(store.buffer) for t in terms) and any(
            isinstance(_strip_cast(t), tirx.Mul) for t in terms
        )
    return False


def _strip_cast(expr: tirx.Expr) -> tirx.Expr:
    return expr.value if isinstance(expr, tirx.Cast) else expr


def schedule_gemm(
    sch: s_tir.Schedule, match: GemmMatch, isa: VectorISA, *, row_width: int | None = None,
    direct: DirectConv | None = None,
) -> str | None:
    """Schedule a matched GEMM block and its epilogues as the kernel above; return why not when it cannot.

    ``row_width``: the output image's width when the vector side is the pixels of a convolution with a
    window (kxk): a pixel panel that a row width is a multiple of keeps each panel inside one image row, so
    the im2col packing and the write-back index the row affinely instead of dividing by the width lane by
    lane (MobileNetV2's first 3x3 stride-2 conv, 112 wide: 0.47 -> 0.14 ms with panels of 16).

    ``direct``: a :class:`DirectConv` for a convolution scheduled with the output channels as the vector side
    (the match's J) although the output's innermost axis is the pixels: the weights are the stream operand,
    packed at compile time, and the pixels' input values are broadcast straight from the padded input, which is
    materialized once (no im2col packing at run time: for a k x k window that packing re-reads the input k^2
    times, with a division per lane where a pixel panel wraps an image row). The k loop is split by the
    window (kh * kw) and unrolled, so every input address is a per-pixel base plus a constant. ResNet-18's
    3x3 convs, 2 threads: 56^2 x 64 0.90 -> 0.80 ms, 7^2 x 512 1.09 -> 0.76, stride 2 64 -> 128 1.12 -> 0.52."""
    main = match.block
    constants = layout_free_params(sch)
    dtype = str(sch.get(main).writes[0].source.dtype)

    # 1. Normal form: loops (s, i, j, k) over reindexed A'[s,i,k], B'[s,j,k], C'[s,i,j].
    a_re = sch.reindex(main, ("read", 0))
    b_re = sch.reindex(main, ("read", 1))
    c_re = sch.reindex(main, ("write", 0))
    block_map, a_map, b_map, c_map = _index_maps(gemm_traits(sch.get(main)))
    sch.transform_layout(a_re, ("write", 0), a_map)
    sch.transform_layout(b_re, ("write", 0), b_map)
    sch.transform_layout(c_re, ("read", 0), c_map)
    sch.transform_block_layout(main, block_map)
    # The operand copies must iterate over (s, i|j, k) too: their original iteration space is the im2col
    # window (y, x, c, ...), over which compute_at of a pixel panel infers a wrong (too small) box.
    sch.transform_block_layout(a_re, a_map)
    sch.transform_block_layout(b_re, b_map)
    _, i_loop, j_loop, k_loop = sch.get_loops(main)

    # 2. Tile sizes, then padding so that every tile is whole.
    vector_on_j = match.vector_side == IterKind.kIter_J
    v_extent = static_extent(sch, j_loop if vector_on_j else i_loop)
    m_extent = static_extent(sch, i_loop if vector_on_j else j_loop)
    if v_extent is None or m_extent is None:
        return "dynamic I or J extent"
    bcast_constant = _reads_only(sch, a_re if vector_on_j else b_re, constants)
    if direct is not None:
        tile = direct.tile
    else:
        tile = RegisterTile.for_problem(isa, dtype, v_extent, m_extent, constant_rows=bcast_constant,
                                        row_width=None if vector_on_j else row_width)
    k_extent = static_extent(sch, k_loop)
    if tile.lane_rows == "in place" and (k_extent is None or k_extent % 4):
        tile = RegisterTile(tile.mr, tile.nr)  # no vector of four k: one scalar load per row and k
    pad_i, pad_j = (tile.mr, tile.nr) if vector_on_j else (tile.nr, tile.mr)
    sch.pad_einsum(main, [1, pad_i, pad_j, 1])
    a_pack = _merge_into_pack(sch, main, a_re, producers=direct is None)  # direct: the padded input stays
    b_pack = _merge_into_pack(sch, main, b_re)
    stream, bcast = (b_pack, a_pack) if vector_on_j else (a_pack, b_pack)

    # 3. Loops: s, panel, tile, k, r (unrolled), v (vectorised).
    s_loop, i_loop, j_loop, k_loop = sch.get_loops(main)
    v_loop, m_loop = (j_loop, i_loop) if vector_on_j else (i_loop, j_loop)
    panel, v_in = sch.split(v_loop, [None, tile.nr])
    row_tile, r_in = sch.split(m_loop, [None, tile.mr])
    sch.reorder(s_loop, panel, row_tile, k_loop, r_in, v_in)
    k_step = k_loop
    if direct is not None and k_extent is not None and direct.window > 1 and k_extent % direct.window == 0:
        k_loop, k_step = sch.split(k_loop, [None, direct.window])  # (kh, kw) unrolled: base + constant
        sch.unroll(k_step)
    elif tile.lane_rows:  # up to 16 steps of k per loop iteration (loop control per 16 x MR x V FMAs)
        k_unroll = next(u for u in (16, 8, 4, 3, 2, 1) if k_extent is not None and k_extent % u == 0 or u == 1)
        if k_unroll > 1:
            k_loop, k_step = sch.split(k_loop, [None, k_unroll])
            sch.unroll(k_step)

    # 4. Accumulate in registers; fold the unpadding, the C' reindex and the epilogue into the write-back.
    acc_out = sch.cache_write(main, 0, "global" if isa.fma_by_lane else "local")  # see the rows cache below
    if not vector_on_j:  # keep the accumulator's vector side contiguous: [s, j, i]
        sch.transform_layout(main, ("write", 0), lambda s, i, j: (s, j, i))
    sch.reverse_compute_at(acc_out, row_tile, preserve_unit_loops=True)
    inline_spatial_consumers(sch, acc_out)
    wb_r, wb_v = sch.get_loops(acc_out)[-2:]
    if not vector_on_j or (direct is not None and direct.pixel_writeback):
        sch.reorder(wb_v, wb_r)
    _vectorize(sch, sch.get_loops(acc_out)[-1], isa, dtype)
    # 5. Operands: the stream operand in [S, V/NR, K, NR] panels; constants packed at compile time.
    sch.transform_layout(stream, ("write", 0), lambda s, v, k: (s, v // tile.nr, k, v % tile.nr))
    if tile.lane_rows == "packed":
        sch.transform_layout(bcast, ("write", 0), lambda s, m, k: (s, m // tile.mr, k, m % tile.mr))
    bcast_out = sch.get(bcast).writes[0].source
    if bcast_constant:
        sch.annotate(bcast, PREPROC, True)
    else:
        sch.compute_inline(bcast)
    if tile.lane_rows:  # broadcast values in registers whose lanes the FMAs read (fmla by element)
        stream_out = sch.get(stream).writes[0].source
        index = next(i for i, r in enumerate(sch.get(main).reads)
                     if (r.source.same_as(bcast_out) if bcast_constant else not r.source.same_as(stream_out))
                     and not r.source.same_as(sch.get(main).writes[0].source))
        # "global" scope: a small constant-size buffer becomes an LLVM alloca, which LLVM keeps in
        # registers; "local" buffers are TVM workspace allocations, which it cannot.
        rows = sch.cache_read(main, index, "global")
        sch.compute_at(rows, k_step if tile.lane_rows == "packed" else k_loop, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(rows)[-1])
    sch.unroll(r_in)
    _vectorize(sch, v_in, isa, dtype)
    outer = sch.fuse(s_loop, panel)
    parallel = isa.parallel and (k_extent is None or v_extent * m_extent * k_extent >= MIN_PARALLEL_MACS)
    if _reads_only(sch, stream, constants):
        sch.annotate(stream, PREPROC, True)
        if parallel:
            sch.parallel(sch.fuse(outer, row_tile))
    elif parallel and static_extent(sch, outer) < 2 * isa.num_cores:
        # Fewer panels than twice the cores (a 7x7 feature map is one panel): the panels are packed first, by
        # a nest of their own, and the cores share the panels' row tiles. Packed per panel inside the
        # parallel panel loop, one core would do the whole layer.
        v_copy, k_copy = sch.get_loops(stream)[-2:]
        sch.reorder(k_copy, v_copy)  # scheduled with the other root nests below
        sch.parallel(sch.fuse(outer, row_tile))
    else:
        sch.compute_at(stream, outer, preserve_unit_loops=True)
        v_copy, k_copy = sch.get_loops(stream)[-2:]
        sch.reorder(k_copy, v_copy)  # write the panel row by row, NR contiguous lanes at a time
        _vectorize(sch, v_copy, isa, dtype)
        if parallel:
            sch.parallel(outer)
    sch.decompose_reduction(main, k_loop)
    # An epilogue that could not be folded into the write-back (a value read twice) runs on its own.
    kernel_nest = sch.get(sch.get_loops(main)[0])
    for block in root_blocks(sch):
        loops = sch.get_loops(block)
        if loops and not sch.get(loops[0]).same_as(kernel_nest) and PREPROC not in sch.get(block).annotations:
            schedule_loop_nest(sch, block, isa)
    return None


def _vectorize(sch: s_tir.Schedule, loop, isa: VectorISA, dtype: str) -> None:
    """Vectorize ``loop``; on NEON, and wherever it spans a number of registers that is not a power of two,
    as an unrolled run of single registers. LLVM legalizes a vector of three registers (12 floats on NEON, 48
    on AVX-512) by widening it, and then takes the accumulators apart lane by lane (a 1x1 conv on a 6x6 map
    ran 35x slower)."""
    lanes = isa.lanes(dtype)
    extent = static_extent(sch, loop)
    runs = extent // lanes if extent is not None else 0
    if extent is not None and extent > lanes and extent % lanes == 0 and (isa.fma_by_lane or runs & (runs - 1)):
        run, loop = sch.split(loop, [None, lanes])
        sch.unroll(run)
    sch.vectorize(loop)


def _merge_into_pack(
    sch: s_tir.Schedule, main: SBlockRV, reindex: SBlockRV, producers: bool = True
) -> SBlockRV:
    """One block that produces an operand of ``main``: reindex, padding and (``producers``) producers such as
    pad_temp."""
    pack = reindex
    consumer = sch.get_consumers(reindex)[0]
    if not sch.get(consumer).same_as(sch.get(main)):  # pad_einsum put a padding block in between
        sch.compute_inline(reindex)
        pack = consumer
    if producers:
        inline_spatial_producers(sch, pack)
    return pack


def _reads_only(sch: s_tir.Schedule, block: SBlockRV, buffers: list[tirx.Var]) -> bool:
    reads = [region.source for region in sch.get(block).reads]
    return bool(reads) and all(any(buf.same_as(c) for c in buffers) for buf in reads)
