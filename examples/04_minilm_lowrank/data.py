"""Real English sentences (``sentences.txt``), tokenized with the model's own tokenizer at build time.

``sentences()`` are the 64 evaluation sentences; ``calibration()`` 32 others, for data-aware passes, so a pass
never calibrates on the sentences it is judged on. Arrays are ``(N, 128)`` int64 for the inputs
``input_ids`` and ``attention_mask``.
"""

import importlib.util
from pathlib import Path

import numpy as np

TEXT = Path(__file__).with_name("sentences.txt")
MARKER = "--- calibration ---"


def _split():
    lines = [ln.strip() for ln in TEXT.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    cut = lines.index(MARKER)
    return lines[:cut], lines[cut + 1:]


def _model_module():
    # by path, not `import model`: other examples have a model.py too, and sys.modules keeps the first
    path = Path(__file__).with_name("model.py")
    spec = importlib.util.spec_from_file_location("aglmc_example_minilm_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arrays(texts):
    ids, mask = _model_module().tokenize(texts)
    return {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}


def sentences():
    return _arrays(_split()[0])


def calibration():
    return _arrays(_split()[1])
