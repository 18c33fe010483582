"""INT8 on the TVM side: importing Q/DQ graphs and lowering them to integer kernels.

- :data:`TORCH_QDQ_CONVERTERS` (``torch_qdq.py``): the exported-program frontend's ``custom_convert_map`` for
  ``torch.ops.quantized_decomposed`` (the FX form of aglmc's quantization passes).
- :func:`lower_qdq` (``lower_qdq.py``): dequantize → conv2d / matmul → … chains become int8 × int8 → int32
  compute with requantization. Run it on the imported module before the CPU pipeline's legalization.
"""

from .torch_qdq import TORCH_QDQ_CONVERTERS

__all__ = ["TORCH_QDQ_CONVERTERS"]
