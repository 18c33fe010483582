"""Named data sets of a schedule: calibration and evaluation samples, with optional labels.

A data set is an ``.npz`` file or a Python factory ``file.py:fn``. Either gives one array per model input,
keyed by the input's name, whose first axis counts samples and whose other axes are the input's shape without
its batch axis, plus an optional ``labels`` array (one label per sample). A factory may also return
``(inputs, labels)`` where ``inputs`` is such a dict or, for a one-input model, a single array.
Samples are fed to the model in batches of the input's batch size; a remainder that does not fill a batch is
left out (and counted in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from aglmc.compiler.pyload import call_factory
from aglmc.compiler.tensors import TensorSpec
from aglmc.dsl.ast import DatasetDecl
from aglmc.errors import ScheduleError

LABELS = "labels"


@dataclass
class Dataset:
    name: str
    inputs: Dict[str, np.ndarray]
    labels: Optional[np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, specs: Sequence[TensorSpec], limit: Optional[int] = None
                ) -> Iterator[Tuple[List[np.ndarray], Optional[np.ndarray]]]:
        """Yield ``(arrays in input order, labels or None)`` for each full batch."""
        batch = specs[0].shape[0] if specs and specs[0].shape else 1
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count - batch + 1, batch):
            arrays = [self.inputs[s.name][start:start + batch].astype(s.dtype, copy=False) for s in specs]
            labels = None if self.labels is None else self.labels[start:start + batch]
            yield arrays, labels

    def used(self, specs: Sequence[TensorSpec], limit: Optional[int] = None) -> int:
        batch = specs[0].shape[0] if specs and specs[0].shape else 1
        count = len(self) if limit is None else min(limit, len(self))
        return count - count % batch


def load_dataset(decl: DatasetDecl, specs: Sequence[TensorSpec], source_text: str) -> Dataset:
    """Load and check one data set against the model's inputs; errors point at the declaration."""
    arrays, fail = _load_arrays(decl, specs, source_text)
    return dataset_from_arrays(decl.name, arrays, specs, fail)


def load_token_rows(decl: DatasetDecl, specs: Sequence[TensorSpec], source_text: str) -> Dataset:
    """Load a data set of token rows for a ``generate`` block (prompts, held-out text): one integer array
    [N, L] (or [N, 1, L]) whose length L need not be the forward input's."""
    arrays, fail = _load_arrays(decl, specs, source_text)
    arrays.pop(LABELS, None)
    if len(arrays) != 1:
        raise fail(f"a generate block reads one array of token rows; this data set has {len(arrays)} "
                   f"({', '.join(sorted(arrays))})")
    (name, rows), = arrays.items()
    if rows.ndim == 3 and rows.shape[1] == 1:
        rows = rows[:, 0]
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer) or rows.size == 0:
        raise fail(f"array '{name}' is {rows.dtype}{list(rows.shape)}; a generate block needs integer token rows "
                   "[N, L]")
    return Dataset(decl.name, {name: rows.astype(np.int64)}, None)


def _load_arrays(decl: DatasetDecl, specs: Sequence[TensorSpec], source_text: str):
    src = decl.source

    def fail(message: str, hint: Optional[str] = None) -> ScheduleError:
        return ScheduleError(f"dataset '{decl.name}': {message}", src.loc, hint=hint, source=source_text)

    if src.is_python:
        raw = call_factory(src, source_text, what=f"dataset '{decl.name}'")
        labels = None
        if isinstance(raw, tuple) and len(raw) == 2:
            raw, labels = raw
        if isinstance(raw, np.ndarray) and len(specs) == 1:
            raw = {specs[0].name: raw}
        if not isinstance(raw, dict):
            raise fail(f"{src.text} returned {type(raw).__name__}; expected a dict of arrays by input name, "
                       "or (inputs, labels)")
        arrays = {k: np.asarray(v) for k, v in raw.items()}
        if labels is not None:
            arrays[LABELS] = np.asarray(labels)
    else:
        try:
            with np.load(src.path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise fail(f"cannot read {src.path}: {e}") from e
    return arrays, fail


def dataset_from_arrays(name: str, arrays: Dict[str, np.ndarray], specs: Sequence[TensorSpec],
                        fail: Callable[..., Exception]) -> Dataset:
    """Check ``arrays`` (input name → samples-first array, plus optional labels) against the model's inputs.

    ``fail(message, hint=None)`` builds the error to raise, so each caller locates it its own way.
    """
    arrays = dict(arrays)
    labels = arrays.pop(LABELS, None)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise fail(f"has no array for input(s) {', '.join(missing)} (it has: {', '.join(sorted(arrays)) or 'none'})",
                   hint=f"an .npz data set holds one array per model input ({', '.join(names)}) and optionally "
                        f"'{LABELS}'")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise fail(f"has arrays that are not model inputs: {', '.join(extra)}",
                   hint=f"model inputs: {', '.join(names)}; labels go in '{LABELS}'")
    counts = set()
    for spec in specs:
        arr = arrays[spec.name]
        want = tuple(spec.shape[1:])
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != want:
            raise fail(f"array '{spec.name}' has shape {tuple(arr.shape)}; input {spec.name} needs "
                       f"(N, {', '.join(map(str, want))}) (samples first, then the input shape without its "
                       f"batch axis {spec.shape[0]})")
        if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
            raise fail(f"array '{spec.name}' is {arr.dtype}; input {spec.name} is {spec.dtype}")
        counts.add(len(arr))
    if labels is not None:
        counts.add(len(labels))
    if len(counts) != 1:
        raise fail(f"arrays have different sample counts: {sorted(counts)}")
    if counts == {0}:
        raise fail("is empty")
    return Dataset(name, {n: arrays[n] for n in names}, labels)
