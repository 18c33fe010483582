"""Rule for 2-D convolutions with a full channel reduction (1x1 and kxk, any stride, padding, dilation)."""

from __future__ import annotations

import tvm
from tvm import s_tir

from ..isa import VectorISA
from .base import CpuRule, single_reduction
from .gemm_kernel import match_gemm, schedule_gemm


class Conv2d(CpuRule):
    """Matches a PrimFunc with one reduction block that reads as a GEMM over a window: output pixels
    (and batch) are I, output channels are J, input channels times the kernel window are K, as in
    ``conv2d_nchw`` / ``conv2d_nhwc`` and grouped convolutions with more than one channel per group.
    The padding block and the epilogue (bias, batch-norm scale, activation, residual) must be injective.

    Scheduled as the GEMM kernel of :mod:`.gemm_kernel` on the im2col view: for NCHW the vector side is the
    output pixels, so NR consecutive pixels of the input window are packed per k into a ``[K, NR]`` panel
    inside the parallel panel loop (the padding is folded into that packing, so the kernel has no
    bounds checks), and MR output channels of the constant weight (repacked to ``[C_out, K]`` at compile
    time) are broadcast against it. A 1x1 convolution is the same kernel with a plain copy as packing.
    Depthwise convolutions have no J axis and go to :class:`DepthwiseConv2d`.
    """

    name = "conv2d"

    def schedule(self, sch: s_tir.Schedule, isa: VectorISA) -> str | None:
        reduction, reason = single_reduction(sch)
        if reduction is None:
            return reason
        main = reduction
        if not any(len(r.region) == 4 for r in sch.get(main).reads):
            return "no 4-D operand"
        match = match_gemm(sch, main)
        if isinstance(match, str):
            return match
        block = sch.get(main)
        weight, width = block.reads[1].source.shape, block.writes[0].source.shape[-1]  # OIHW; NCHW's W
        window = weight[2] * weight[3] if len(weight) == 4 else 1
        windowed = isinstance(window, tvm.tirx.IntImm) and window.value > 1 and isinstance(width, tvm.tirx.IntImm)
        return schedule_gemm(sch, match, isa, row_width=int(width) if windowed else None)
