"""The digits data set split once, deterministically: 1397 training images and 400 held out.

Pixels are scaled from 0..16 to 0..1; images are shaped (N, 1, 8, 8) for the model's input x: [1, 1, 8, 8].
"""

import numpy as np
from sklearn.datasets import load_digits

HELD_OUT = 400


def _split():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def train():
    x, y = _split()
    return x[HELD_OUT:], y[HELD_OUT:]


def heldout():
    """Evaluation set: {"x": images} and labels."""
    x, y = _split()
    return {"x": x[:HELD_OUT]}, y[:HELD_OUT]


def calibration():
    """128 training images, for passes that calibrate on data (no labels)."""
    x, _ = train()
    return {"x": x[:128]}
