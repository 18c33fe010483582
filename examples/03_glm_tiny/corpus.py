"""The text the trained GLM-style model learns from: Python's own language reference, as it ships with Python.

``pydoc_data.topics`` (in every CPython's standard library; ``help("assert")`` prints from it) holds the
language reference's topics as plain text: about 460 kB of English prose and grammar on Python 3.11. Tokens
are UTF-8 bytes (vocabulary 256). Every tenth topic, in sorted order, is held out: the model never trains on
it, and its perplexity is measured there. The text differs a little between Python versions, so perplexities
are comparable within one version (``trained.json`` records the one it was trained under).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

HELD_OUT_EVERY = 10


def topics() -> Dict[str, str]:
    from pydoc_data.topics import topics as all_topics

    return dict(sorted(all_topics.items()))


def split() -> Tuple[List[str], List[str]]:
    """(training topic names, held-out topic names)."""
    names = list(topics())
    held = names[::HELD_OUT_EVERY]
    return [n for n in names if n not in held], held


def byte_stream(names: List[str]) -> np.ndarray:
    """The topics' texts, separated by blank lines, as uint8 tokens."""
    text = topics()
    return np.frombuffer("\n\n".join(text[n] for n in names).encode("utf-8"), dtype=np.uint8).copy()


def train_stream() -> np.ndarray:
    return byte_stream(split()[0])


def heldout_stream() -> np.ndarray:
    return byte_stream(split()[1])


def heldout_rows(seq_len: int = 128, rows: int = 0) -> np.ndarray:
    """Non-overlapping held-out windows [N, seq_len] int64 (all of them, or the first ``rows``)."""
    stream = heldout_stream()
    count = len(stream) // seq_len
    if rows:
        count = min(count, rows)
    return stream[: count * seq_len].reshape(count, seq_len).astype(np.int64)
