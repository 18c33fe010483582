"""Int8Matmul: the CPU schedule rule for the int8 × int8 → int32 products that :func:`lower_qdq` writes.

:func:`~aglmc.targets.quant.lower_qdq.lower_qdq` writes every integer product as one "NT" kernel,
``C[.., m, n] = Σ_k int32(A[.., m, k]) · int32(B[n, k])``: the reduction runs over the last, contiguous axis of
*both* int8 operands. This rule keeps it that way and arranges the loops so that LLVM's loop vectorizer sees a
dot product::

    parallel for (.., m_outer, n_outer):    # fused, when there is enough work and more than one core
      C[4m.., 4n..] = 0
      for k:                                # innermost loop: 16 int8 x int8 -> int32 reduction chains
        for i in unroll(4): for j in unroll(4):
          C[4m + i, 4n + j] += A[4m + i, k] * B[4n + j, k]
    epilogue (zero-point correction, rescale, bias, ReLU, requantize): its own vectorised loop nest

LLVM turns that k loop into ``sdot`` on aarch64 with ``+dotprod`` (``smull``/``sadalp`` without it) and into
``vpmaddwd``/``vpdpbusd`` on x86 (measured: ``aarch64-linux-gnu-objdump -d`` shows sdot in these kernels for a
cortex-a76 +dotprod target). The int8 blocks the float rules decline (their GEMM kernel accumulates in float)
would otherwise fall to the generic reduction rule, which leaves the k loop scalar and the stores in memory.

Matches: one reduction block writing int32 whose two operands are 8-bit integers indexed by the reduction
variable in their last axis, and injective blocks only around it. Register it before the float rules:
``[Int8Matmul(), *default_rules()]``.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from aglmc.targets.cpu.isa import VectorISA
from aglmc.targets.cpu.rules.base import CpuRule, is_spatial, root_blocks, single_reduction, static_extent
from aglmc.targets.cpu.rules.loops import parallelize_outer, schedule_loop_nest

_INT8 = ("int8", "uint8")


class Int8Matmul(CpuRule):
    """int8 x int8 -> int32 dot-product kernels (NT layout), with the k loop left for LLVM's dot products."""

    name = "int8_matmul"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        main, why = single_reduction(sch)
        if main is None:
            return why
        why = _check_block(sch, main)
        if why:
            return why
        loops = sch.get_loops(main)
        *spatial, k = loops
        if len(spatial) < 2:
            return "no row axis"
        m, n = spatial[-2], spatial[-1]
        m_extent, n_extent = static_extent(sch, m), static_extent(sch, n)
        if m_extent is None or n_extent is None:
            return "dynamic output shape"
        # a tile of rows x columns whose dot products share each loaded k-chunk of A and of B
        mt = next((t for t in (4, 2) if m_extent % t == 0), 1)
        nt = next((t for t in (4, 2) if n_extent % t == 0), 1)
        m_outer, m_inner = sch.split(m, [None, mt])
        n_outer, n_inner = sch.split(n, [None, nt])
        sch.reorder(m_outer, n_outer, k, m_inner, n_inner)
        sch.unroll(m_inner)
        sch.unroll(n_inner)
        sch.decompose_reduction(main, k)
        for block in root_blocks(sch):
            if block != main and is_spatial(sch, block):
                schedule_loop_nest(sch, block, isa)
        parallelize_outer(sch, main, isa, keep_inner=4)  # never k or the unrolled tile loops
        return None


def _check_block(sch: s_tir.Schedule, block) -> str | None:
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or str(stmt.writes[0].source.dtype) != "int32":
        return "does not accumulate in int32"
    reads = [r for r in stmt.reads if r.source != stmt.writes[0].source]
    if len(reads) != 2 or any(str(r.source.dtype) not in _INT8 for r in reads):
        return "operands are not two 8-bit integer buffers"
    reduce_vars = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    if len(reduce_vars) != 1:
        return "not a single reduction axis"
    for region in reads:
        last = region.region[-1].min
        if not (isinstance(last, tirx.Var) and last.same_as(reduce_vars[0])):
            return "the reduction axis is not the operands' last (contiguous) axis"
    if sch.get_loops(block) and len(sch.get_loops(block)) < 2:
        return "no output axis"
    return None


class WeightOnlyMatmul(CpuRule):
    """The weight-only kernel of :func:`~aglmc.targets.quant.lower_qdq.lower_qdq` (float activations times
    int8 / packed int4 weights stored ``[K, N]``), recognised by its block name::

        parallel for (.., m_outer, n_outer):
          acc[4, NR] = 0                                  # registers: NR = two vectors of float lanes
          for k:
            for i in unroll(4): for j in vectorized(NR):
              acc[i, j] += x[4m + i, k] * float(W[k, n + j]) (* s[k // g, n + j])
          C[4m.., n..] = acc

    x is broadcast, a run of W is converted in registers (sign-extended, nibbles unpacked with shifts) and
    streamed: the float GEMM kernel's shape with the dequantization in its inner loop.
    """

    name = "weight_only_matmul"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        from .lower_qdq import WEIGHT_ONLY_BLOCK

        main, why = single_reduction(sch)
        if main is None:
            return why
        if not sch.get(main).name_hint.startswith(WEIGHT_ONLY_BLOCK):
            return f"not aglmc's weight-only kernel (block {sch.get(main).name_hint})"
        *spatial, k = sch.get_loops(main)
        n = spatial[-1]
        m = spatial[-2] if len(spatial) > 1 else None
        n_extent = static_extent(sch, n)
        m_extent = static_extent(sch, m) if m is not None else 1
        if n_extent is None or m_extent is None:
            return "dynamic output shape"
        lanes = isa.lanes("float32")
        nt = next((t for t in (2 * lanes, lanes, lanes // 2, 4) if t and n_extent % t == 0), 1)
        mt = next((t for t in (4, 2) if m_extent % t == 0), 1)
        n_outer, n_inner = sch.split(n, [None, nt])
        if m is not None:
            m_outer, m_inner = sch.split(m, [None, mt])
            sch.reorder(m_outer, n_outer, k, m_inner, n_inner)
        else:
            sch.reorder(n_outer, k, n_inner)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, n_outer)
        if m is not None:
            sch.unroll(m_inner)
        if nt > 1:  # before decompose_reduction: TVM vectorises a reduction block's spatial loop only then
            sch.vectorize(n_inner)
            sch.vectorize(sch.get_loops(acc)[-1])
        init = sch.decompose_reduction(main, k)
        for block in root_blocks(sch):
            if block not in (main, init, acc) and is_spatial(sch, block):
                schedule_loop_nest(sch, block, isa)
        parallelize_outer(sch, main, isa, keep_inner=3 if m is not None else 2)
        return None
