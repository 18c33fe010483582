"""Checking a built model against the original on real inputs: numeric error and the task metric.

Three models answer the same evaluation batches: the *original* (torch eager or onnxruntime on the unmodified
file), the *transformed* graph after the schedule's passes, and each *compiled* library. The report gives the
max-abs error of compiled vs original (what the user's tolerance bounds), of compiled vs transformed (the
compiler's own correctness, bounded by :data:`LOWERING_RTOL` whatever the schedule says) and the metric of all
three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import time

import numpy as np

from aglmc.errors import VerifyError

#: lowering must reproduce the transformed graph to this error relative to the output's magnitude
LOWERING_RTOL = 1e-3


def _accuracy(outputs, labels, reference, k=1) -> float:
    logits = outputs[0].reshape(len(labels), -1)
    topk = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean([label in row for label, row in zip(labels, topk)]))


def _cosine(outputs, labels, reference) -> float:
    a = outputs[0].reshape(len(outputs[0]), -1).astype(np.float64)
    b = reference[0].reshape(len(reference[0]), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def _agreement(outputs, labels, reference) -> float:
    return float(np.mean(outputs[0].argmax(-1) == reference[0].argmax(-1)))


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    fn: Optional[Callable]
    needs_labels: bool


METRICS: Dict[str, Metric] = {m.name: m for m in (
    Metric("none", "no task metric; only the numeric error is reported", None, False),
    Metric("accuracy", "top-1 accuracy of the first output's argmax against the data set's labels",
           _accuracy, True),
    Metric("top5_accuracy", "top-5 accuracy of the first output against the labels",
           lambda o, l, r: _accuracy(o, l, r, k=5), True),
    Metric("cosine", "mean cosine similarity of the first output to the original model's, per sample",
           _cosine, False),
    Metric("top1_agreement", "fraction of positions where the first output's argmax (last axis) equals the "
           "original model's, e.g. next-token agreement of a language model", _agreement, False),
)}


@dataclass
class Outputs:
    """Outputs of one model over all evaluation batches, concatenated along the batch axis."""

    arrays: List[np.ndarray] = field(default_factory=list)

    @staticmethod
    def collect(run: Callable[[Sequence[np.ndarray]], List[np.ndarray]], batches) -> "Outputs":
        """Run every ``(arrays, labels)`` batch through ``run``."""
        return Outputs.concat([run(arrays) for arrays, _ in batches])

    @staticmethod
    def concat(chunks: Sequence[Sequence[np.ndarray]]) -> "Outputs":
        """Per-batch output lists joined along the batch axis."""
        if not chunks:
            return Outputs([])
        return Outputs([np.concatenate([np.asarray(c[i]) for c in chunks]) for i in range(len(chunks[0]))])


def max_abs(a: Outputs, b: Outputs) -> float:
    if len(a.arrays) != len(b.arrays):
        raise VerifyError(f"the compiled model returns {len(a.arrays)} output(s), the original {len(b.arrays)}")
    err = 0.0
    for x, y in zip(a.arrays, b.arrays):
        if x.shape != y.shape:
            raise VerifyError(f"output shape {x.shape} differs from the original's {y.shape}")
        if x.size:
            err = max(err, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return err


def scale(a: Outputs) -> float:
    return max((float(np.max(np.abs(x))) for x in a.arrays if x.size), default=0.0)


def metric_value(name: str, outputs: Outputs, labels: Optional[np.ndarray], reference: Outputs) -> Optional[float]:
    metric = METRICS[name]
    if metric.fn is None or (metric.needs_labels and labels is None) or not outputs.arrays:
        return None
    return metric.fn(outputs.arrays, labels, reference.arrays)


def measure_latency(run: Callable[[Sequence[np.ndarray]], object], inputs: Sequence[np.ndarray], *,
                    min_runs: int = 10, min_seconds: float = 0.3, max_runs: int = 1000) -> float:
    """Median wall-clock milliseconds of ``run(inputs)`` after one warm-up call (at least ``min_runs`` calls
    and ``min_seconds`` of calls)."""
    run(inputs)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
