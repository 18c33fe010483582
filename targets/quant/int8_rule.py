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
from tvm.s_tir.schedule import ScheduleError

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
        groups = _operand_groups(sch, main)
        if groups is None:
            return "no axes of one operand followed by axes of the other"
        m, n = groups
        m_extent, n_extent = static_extent(sch, m), static_extent(sch, n)
        if m_extent is None or n_extent is None:
            return "dynamic output shape"
        # a tile of rows x columns whose dot products share each loaded k-chunk of A and of B
        mt = next((t for t in (4, 2) if m_extent % t == 0), 1)
        nt = next((t for t in (4, 2) if n_extent % t == 0), 1)
        m_outer, m_inner = sch.split(m, [None, mt])
        n_outer, n_inner = sch.split(n, [None, nt])
        k = sch.get_loops(main)[-1]
        sch.reorder(m_outer, n_outer, k, m_inner, n_inner)
        sch.unroll(m_inner)
        sch.unroll(n_inner)
        init = sch.decompose_reduction(main, k)
        _schedule_others(sch, isa, (main, init))
        parallelize_outer(sch, main, isa, keep_inner=4)  # never k or the unrolled tile loops
        return None


def _schedule_others(sch: s_tir.Schedule, isa: VectorISA, kernel_blocks) -> None:
    """Vectorise and parallelise the blocks outside the kernel (an epilogue that could not fuse, a reshape)."""
    mine = {sch.get(b).name_hint for b in kernel_blocks}
    for block in root_blocks(sch):
        if sch.get(block).name_hint not in mine and is_spatial(sch, block):
            schedule_loop_nest(sch, block, isa)


def _operand_groups(sch: s_tir.Schedule, block):
    """The output axes as ``(row loop, column loop)``: the trailing run of loops that index only one operand
    (fused into one), after the run that indexes only the other. For ``C[m, n] = Σ A[m, k] B[n, k]`` that is
    (m, n); for the NCHW conv ``C[b, o, y, x] = Σ W[o, k] cols[b, y·ow + x, k]`` it is (o, y·x)."""
    from tvm.tirx.analysis import undefined_vars

    stmt = sch.get(block)
    loops = sch.get_loops(block)[:-1]
    ivs = [iv.var for iv in stmt.iter_vars][:-1]
    reads = [r for r in stmt.reads if r.source != stmt.writes[0].source]

    def owner(var):
        used = [i for i, r in enumerate(reads)
                if any(var.same_as(v) for rng in r.region for v in undefined_vars(rng.min))]
        return used[0] if len(used) == 1 else None

    owners = [owner(v) for v in ivs]
    runs = []  # (operand, [loops]) from the innermost outwards
    for loop, who in zip(reversed(loops), reversed(owners)):
        if who is None:
            break
        if runs and runs[-1][0] == who:
            runs[-1][1].insert(0, loop)
        elif len(runs) < 2:
            runs.append((who, [loop]))
        else:
            break
    if len(runs) < 2:
        return None
    (_, cols), (_, rows) = runs
    fused = [sch.fuse(*group) if len(group) > 1 else group[0] for group in (rows, cols)]
    return fused[0], fused[1]


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
    int8 / packed int4 weights stored ``[K, N]``), recognised by its block names::

        parallel for n_outer:                               # a panel of NR output columns
          panel[K, NR] = float(W[:, n..n+NR]) (· s[k // g, n..])   # dequantized once, vectorised
          for m_outer:                                      # every row reuses the panel
            acc[4, NR] = 0                                  # registers
            for k:
              for i in unroll(4): for j in vectorized(NR):
                acc[i, j] += x[4m + i, k] * panel[k, j]
            C[4m.., n..] = acc

    the float GEMM kernel's shape with the dequantization hoisted out of the row loop: int4 unpacking and
    scaling cost once per weight, not once per weight and row (prefill); a decode step (one row) dequantizes
    each weight once, as it must.
    """

    name = "weight_only_matmul"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        from .lower_qdq import WEIGHT_ONLY_BLOCK

        blocks = root_blocks(sch)
        main = next((b for b in blocks if sch.get(b).name_hint == WEIGHT_ONLY_BLOCK), None)
        panel = next((b for b in blocks if sch.get(b).name_hint == WEIGHT_ONLY_BLOCK + "_dequantize"), None)
        if main is None or panel is None:
            return "not aglmc's weight-only kernel"
        *spatial, k = sch.get_loops(main)
        n = spatial[-1]
        m = spatial[-2] if len(spatial) > 1 else None  # leading batch loops stay outside
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
            sch.reorder(n_outer, m_outer, k, m_inner, n_inner)
        else:
            sch.reorder(n_outer, k, n_inner)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, m_outer if m is not None else n_outer)
        sch.compute_at(panel, n_outer)
        if nt > 1:
            sch.vectorize(sch.get_loops(panel)[-1])
        if m is not None:
            sch.unroll(m_inner)
        if nt > 1:  # before decompose_reduction: TVM vectorises a reduction block's spatial loop only then
            sch.vectorize(n_inner)
            sch.vectorize(sch.get_loops(acc)[-1])
        init = sch.decompose_reduction(main, k)
        _schedule_others(sch, isa, (main, init, acc, panel))
        if isa.parallel and (static_extent(sch, n_outer) or 1) > 1:
            try:  # each panel is private to its n_outer iteration only when nothing outside shares it
                sch.parallel(n_outer)
            except ScheduleError:
                pass
        return None
