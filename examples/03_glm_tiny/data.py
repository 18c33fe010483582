"""Prompts for the tiny GLM: 16 seeded random token sequences of length 32 (the model is untrained, so any
tokens are as good as text; the point is that every position's next-token choice must survive compilation)."""

import numpy as np


def prompts():
    rng = np.random.default_rng(7)
    return {"input_ids": rng.integers(0, 256, size=(16, 32), dtype=np.int64)}
