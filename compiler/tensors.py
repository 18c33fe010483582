"""Tensor descriptions shared by the compiler's stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, static shape and numpy dtype name."""

    name: str
    shape: Tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def of(name: str, array: np.ndarray) -> "TensorSpec":
        return TensorSpec(name, tuple(int(d) for d in array.shape), str(array.dtype))
