"""Calibration: the range of each activation from data, by min-max, percentile, entropy (KL) or MSE.

Mechanism only (the spec says which method): a :class:`RangeCollector` sees every calibration batch of the
tensors it watches, in two sweeps when the method needs a histogram —

1. ``observe_minmax``: running min and max (all ``minmax`` needs);
2. ``observe_histogram``: a 2048-bin histogram of ``|x|`` over ``[0, max|x|]`` (of ``x`` itself over
   ``[0, max]`` when the tensor is never negative and the spec is affine: one-sided, all levels usable).
   Exact zeros are left out: zero is exact at every scale, and ReLU's spike there would make the KL search
   clip far too much.

:func:`choose_range` then turns one tensor's statistics into ``[lo, hi]``:

- ``minmax``      the observed extremes;
- ``percentile``  the threshold below which ``spec.percentile`` % of the magnitudes fall;
- ``entropy``     TensorRT's KL-divergence threshold: the clipped histogram ``P`` against its requantized copy
                  ``Q`` (as many levels as the type has on that side), smallest ``KL(P || Q)`` wins;
- ``mse``         the threshold whose fake-quantization error (clipping plus rounding, expected over the
                  histogram) is smallest.

For the last three the threshold ``t`` gives ``[-t, t]`` (symmetric), or ``[max(lo, -t), min(hi, t)]`` (affine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, Optional, Tuple

import numpy as np

from aglmc.passes.quant_spec import QuantSpec

BINS = 2048


@dataclass
class TensorStats:
    lo: float = float("inf")
    hi: float = float("-inf")
    hist: Optional[np.ndarray] = None
    edge: float = 0.0  # the histogram covers [0, edge]
    one_sided: bool = False
    count: int = 0


@dataclass
class RangeCollector:
    """Statistics of many tensors over the calibration batches, keyed by any hashable name."""

    bins: int = BINS
    stats: Dict[Hashable, TensorStats] = field(default_factory=dict)

    def observe_minmax(self, key: Hashable, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        s = self.stats.setdefault(key, TensorStats())
        s.lo = min(s.lo, float(x.min()))
        s.hi = max(s.hi, float(x.max()))
        s.count += x.size

    def observe_histogram(self, key: Hashable, x: np.ndarray, spec: QuantSpec) -> None:
        """Second sweep (after every ``observe_minmax``): accumulate the magnitude histogram of ``key``."""
        s = self.stats[key]
        if s.hist is None:
            s.one_sided = s.lo >= 0.0 and not spec.symmetric
            s.edge = max(abs(s.lo), abs(s.hi)) or 1.0
            s.hist = np.zeros(self.bins, np.float64)
        values = np.asarray(x, np.float64).ravel()
        values = values[values != 0.0]  # zero is exact at any scale; ReLU's spike there would skew KL and MSE
        mags = values if s.one_sided else np.abs(values)
        s.hist += np.histogram(mags, bins=self.bins, range=(0.0, s.edge))[0]

    def range(self, key: Hashable, spec: QuantSpec) -> Tuple[float, float]:
        return choose_range(self.stats[key], spec)


def needs_histogram(spec: QuantSpec) -> bool:
    return spec.method != "minmax"


def choose_range(s: TensorStats, spec: QuantSpec) -> Tuple[float, float]:
    """``[lo, hi]`` for one tensor's statistics under ``spec.method`` (see the module docstring)."""
    if not np.isfinite(s.lo):
        return 0.0, 0.0
    if spec.method == "minmax" or s.hist is None or s.hist.sum() == 0:
        return s.lo, s.hi
    width = s.edge / len(s.hist)
    if spec.method == "percentile":
        cdf = np.cumsum(s.hist) / s.hist.sum()
        i = int(np.searchsorted(cdf, spec.percentile / 100.0))
        t = min(i + 1, len(s.hist)) * width
    elif spec.method == "entropy":
        t = _kl_threshold(s.hist, _levels(s, spec)) * width
    else:
        t = _mse_threshold(s.hist, width, _levels(s, spec))
    if spec.symmetric:
        return -t, t
    return max(s.lo, -t), min(s.hi, t)


def _levels(s: TensorStats, spec: QuantSpec) -> int:
    """Quantization levels available over the histogram's side: all of them when one-sided, else half."""
    total = spec.qmax - spec.qmin + 1
    return total if s.one_sided else total // 2


def _kl_threshold(hist: np.ndarray, levels: int) -> int:
    """The bin count ``i`` whose clipped distribution loses least information at ``levels`` levels (TensorRT).

    For each candidate ``i``: ``P`` is ``hist[:i]`` with the outliers added to its last bin; ``Q`` merges
    ``P``'s bins into ``levels`` groups and spreads each group's mass evenly over its non-empty bins.
    """
    nbins = len(hist)
    if nbins <= levels:
        return nbins
    best_i, best_kl = nbins, np.inf
    total_tail = np.cumsum(hist[::-1])[::-1]  # total_tail[i] = sum(hist[i:])
    for i in range(levels, nbins + 1, max(1, (nbins - levels) // 256)):
        sliced = hist[:i].astype(np.float64)
        p = sliced.copy()
        if i < nbins:
            p[-1] += total_tail[i]
        nonzero = sliced > 0
        # Q: the *unclipped* slice merged into `levels` groups of (almost) equal width, spread back evenly over
        # the non-empty bins, so the mass clipped into P's last bin costs what it should (MXNet/TensorRT)
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=sliced, minlength=levels)
        filled = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(filled[group], 1.0), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        pn, qn = p / ps, q / qs
        support = pn > 0
        kl = float(np.sum(pn[support] * np.log(pn[support] / np.maximum(qn[support], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def _mse_threshold(hist: np.ndarray, width: float, levels: int, candidates: int = 128) -> float:
    """The threshold minimising the expected squared fake-quantization error over the histogram."""
    centers = (np.arange(len(hist)) + 0.5) * width
    weights = hist / hist.sum()
    top = len(hist) * width
    best_t, best_err = top, np.inf
    steps = max(levels - 1, 1)
    for t in np.linspace(top / candidates, top, candidates):
        step = t / steps
        clipped = np.minimum(centers, t)
        err = np.sum(weights * (np.round(clipped / step) * step - centers) ** 2)
        if err < best_err:
            best_err, best_t = err, t
    return float(best_t)


def weight_qparams(w: np.ndarray, spec: QuantSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a constant weight under ``spec``: ``(integers, scales, zero points)``.

    Per channel (``spec.axis``): min-max over every other axis. Group-wise (``spec.group_size``, 2-D weights
    with the channel axis 0): one scale per ``group_size`` consecutive elements of each row; scales and zero
    points are ``[channels, groups]``. Per tensor: scalars.
    """
    w = np.asarray(w, np.float32)
    if spec.axis is None:
        scale, zp = spec.qparams(w.min(), w.max())
        return spec.quantize(w, scale, zp), scale, zp
    axis = spec.axis % w.ndim
    if spec.group_size is not None:
        if w.ndim != 2 or axis != 0:
            raise ValueError("group-wise quantization takes 2-D weights with the channel axis 0")
        rows, cols = w.shape
        g = spec.group_size
        if cols % g:
            raise ValueError(f"reduction size {cols} is not a multiple of group_size {g}")
        grouped = w.reshape(rows, cols // g, g)
        scale, zp = spec.qparams(grouped.min(axis=2), grouped.max(axis=2))
        q = spec.quantize(grouped, scale[..., None], zp[..., None]).reshape(rows, cols)
        return q, scale, zp
    others = tuple(i for i in range(w.ndim) if i != axis)
    scale, zp = spec.qparams(w.min(axis=others), w.max(axis=others))
    shape = [1] * w.ndim
    shape[axis] = -1
    return spec.quantize(w, scale.reshape(shape), zp.reshape(shape)), scale, zp


def fake_quantize(x: np.ndarray, spec: QuantSpec, scale, zp) -> np.ndarray:
    """``dequantize(quantize(x))`` with broadcastable parameters (tests and error estimates)."""
    q = spec.quantize(x, scale, zp).astype(np.float64)
    return ((q - np.asarray(zp)) * np.asarray(scale, np.float64)).astype(np.float32)
