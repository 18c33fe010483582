"""Rule for 2-D convolutions with a full channel reduction (1x1 and kxk, any stride, padding, dilation)."""

from __future__ import annotations

import math

import tvm
from tvm import s_tir

from ..isa import VectorISA
from tvm.s_tir.dlight.gpu.matmul import IterKind

from .base import CpuRule, layout_free_params, single_reduction
from .gemm_kernel import DirectConv, GemmMatch, match_gemm, schedule_gemm


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
    On x86 an NCHW k x k convolution with a long reduction runs directly instead (:class:`DirectConv`):
    output channels on the vector side, input values broadcast from the padded input in place, no packing.
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
        direct = self._direct(sch, match, isa, block, int(window)) if windowed else None
        if direct is not None:
            return schedule_gemm(sch, GemmMatch(main, IterKind.kIter_J), isa, direct=direct)
        return schedule_gemm(sch, match, isa, row_width=int(width) if windowed else None)

    @staticmethod
    def _direct(sch: s_tir.Schedule, match: GemmMatch, isa: VectorISA, block, window: int) -> DirectConv | None:
        """How to run an NCHW k x k convolution with constant weights directly on x86, if it pays (see
        :class:`DirectConv`). NEON keeps the packed kernel: it multiplies by lane, from packed rows."""
        if isa.fma_by_lane or match.vector_side != IterKind.kIter_I or len(block.writes[0].source.shape) != 4:
            return None
        data, weight = block.reads[0].source, block.reads[1].source
        if not any(weight.same_as(c) for c in layout_free_params(sch)):
            return None
        in_channels = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in (data.shape[1], weight.shape[1])]
        if len(data.shape) != 4 or None in in_channels or in_channels[0] != in_channels[1]:
            return None  # grouped: the GEMM has a group axis, the tile would be sized for all channels
        dims = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in block.writes[0].source.shape]
        if None in dims or dims[0] != 1:
            return None
        reduction = int(math.prod(int(d) for d in weight.shape[1:]))
        return DirectConv.for_conv(isa, str(block.writes[0].source.dtype), dims[1], dims[2] * dims[3], reduction,
                                   window)
