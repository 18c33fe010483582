"""The GLM-style decoder of model.py, trained on Python's language reference (``train.py``, ``corpus.py``).

Factories for schedules and tests:

- ``build()``: ``(model, (input_ids,))`` with the trained weights, input_ids the first 64 held-out bytes [1, 64];
- ``heldout()``: held-out text as token rows ``{"input_ids": [16, 64]}`` (perplexity, agreement);
- ``prompts()``: 4 held-out prompts of 32 bytes ``{"input_ids": [4, 32]}`` to generate from.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "trained.npz"

#: model.py's GlmTinyConfig for the trained model (byte vocabulary)
TRAINED_CONFIG = dict(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=24, partial_rotary_factor=0.5,
                      max_position_embeddings=256)


def glm_module():
    """model.py, imported by path under a name of its own (other examples have a model.py too)."""
    name = "aglmc_example_glm_tiny_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up in sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _corpus():
    name = "aglmc_example_glm_tiny_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "corpus.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_weights(path: Path = WEIGHTS):
    """The trained model (eval mode, float32) from ``path``."""
    import torch

    m = glm_module()
    model = m.GlmTiny(m.GlmTinyConfig(**TRAINED_CONFIG))
    with np.load(path) as npz:
        state = {k: torch.from_numpy(npz[k].astype(np.float32)) for k in npz.files}
    model.load_state_dict(state)
    return model.eval()


def build(seq_len: int = 64):
    import torch

    model = load_weights()
    ids = torch.from_numpy(_corpus().heldout_stream()[:seq_len].astype(np.int64))[None]
    return model, (ids,)


def heldout(seq_len: int = 64, rows: int = 16):
    return {"input_ids": _corpus().heldout_rows(seq_len, rows)}


def prompts(length: int = 32, count: int = 4):
    """Prompts that start at held-out sentence starts (after a blank line), so the continuation means something."""
    stream = _corpus().heldout_stream()
    starts = [i + 2 for i in range(len(stream) - 2) if stream[i] == 10 and stream[i + 1] == 10
              and stream[i + 2] not in (10, 32)]
    picks = starts[:: max(1, len(starts) // count)][:count]
    return {"input_ids": np.stack([stream[s:s + length] for s in picks]).astype(np.int64)}
