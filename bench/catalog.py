"""The benchmark's model list: which factory, which inputs, which metric, how close every runtime must be."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str                         # function in bench/models.py
    title: str                           # what the table calls it
    input_names: List[str] = field(default_factory=list)
    eval_set: Optional[str] = None       # function in bench/models.py returning ([arrays], labels)
    metric: Optional[str] = None         # accuracy | cosine (on the evaluation set)
    #: a runtime is "wrong" when its max-abs error exceeds rtol × max(1, largest |torch output|)
    rtol: float = 1e-3
    #: a kernel, not a model: GFLOP/s is the headline (and torch eager there is torch.mm)
    kernel: bool = False


MODELS: Dict[str, ModelSpec] = {m.name: m for m in [
    ModelSpec("digits", "digits", "digits CNN 1×1×8×8", ["x"], eval_set="digits_eval", metric="accuracy"),
    ModelSpec("mobilenetv2", "mobilenetv2", "MobileNetV2 224² (transformers)", ["pixel_values"]),
    ModelSpec("resnet18", "resnet18", "ResNet-18 224² (transformers)", ["pixel_values"]),
    ModelSpec("minilm", "minilm", "MiniLM-L6 seq 128 (real weights)", ["input_ids", "attention_mask"],
              eval_set="minilm_eval", metric="cosine"),
    ModelSpec("glm", "glm", "GLM-style decoder, prefill 128", ["input_ids"]),
    ModelSpec("matmul1024", "matmul1024", "matmul 1024³ (x @ W)", ["x"], kernel=True),
    ModelSpec("matmul256", "matmul256", "matmul 256³ (x @ W)", ["x"], kernel=True),
    # ARM instruction-count workloads (--arm)
    ModelSpec("mobilenetv2_96", "mobilenetv2_96", "MobileNetV2 96² (transformers)", ["pixel_values"]),
    ModelSpec("matmul256_inputs", "matmul256_inputs", "matmul 256³ (a @ b, both inputs)", ["a", "b"],
              kernel=True),
]}

#: the full host benchmark
DEFAULT_MODELS: Tuple[str, ...] = ("digits", "mobilenetv2", "resnet18", "minilm", "glm", "matmul1024")
#: --quick: small enough for CI
QUICK_MODELS: Tuple[str, ...] = ("digits", "matmul256")
#: --arm: tools/armcount workloads
ARM_MODELS: Tuple[str, ...] = ("matmul256_inputs", "matmul256", "mobilenetv2_96")
