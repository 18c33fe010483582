"""Running an FX GraphModule on a data set, for the passes that learn from data (pruning importance, distill).

``torch.export`` modules check that every call has the traced batch size (``_guards_fn``). :func:`batch_free`
returns a copy of the module's graph without that guard, sharing its parameters and buffers, so calibration data
can go through in large batches; :func:`workable_batch` falls back to the traced batch size when the graph itself
fixes the batch (a view with a literal batch size).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from aglmc.errors import PassError


def batch_free(gm):
    """A GraphModule running ``gm``'s graph without the export guard on input shapes (attributes are shared)."""
    import torch.fx as fx

    import warnings

    with warnings.catch_warnings():  # torch's pytree spec deprecation chatter on deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            graph.erase_node(node)
    free = fx.GraphModule(gm, graph)
    free.eval()
    return free


def input_names(gm, example_inputs: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The model's input names in call order: the context's ``example_inputs`` keys, else the placeholders."""
    if example_inputs:
        return list(example_inputs)
    return [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]


def traced_batch(gm) -> int:
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            if val is not None and len(val.shape):
                return int(val.shape[0])
    return 1


def dataset_arrays(dataset, names: Sequence[str], what: str) -> List[np.ndarray]:
    """The data set's arrays for the model inputs ``names``, in order (float32 where the data is floating)."""
    missing = [n for n in names if n not in dataset.inputs]
    if missing:
        raise PassError(f"{what}: data set '{dataset.name}' has no array for input(s) {', '.join(missing)}")
    out = []
    for n in names:
        a = np.asarray(dataset.inputs[n])
        out.append(a.astype(np.float32) if a.dtype.kind == "f" else a)
    return out


def chunks(arrays: Sequence[np.ndarray], size: int) -> Iterator[List[np.ndarray]]:
    count = len(arrays[0])
    for start in range(0, count - size + 1, size):
        yield [a[start:start + size] for a in arrays]


def workable_batch(free_gm, arrays: Sequence[np.ndarray], batch: int, traced: int) -> int:
    """``batch`` when ``free_gm`` runs on that many samples at once, else the traced batch size (a graph with a
    literal batch size in a view only runs at that size)."""
    import torch

    batch = min(batch, len(arrays[0]))
    if batch == traced:
        return batch
    try:
        with torch.no_grad():
            free_gm(*[torch.from_numpy(np.ascontiguousarray(a[:batch])) for a in arrays])
        return batch
    except Exception:
        return traced


def torch_chunks(arrays: Sequence[np.ndarray], size: int) -> Iterator[List[Any]]:
    import torch

    for chunk in chunks(arrays, size):
        yield [torch.from_numpy(np.ascontiguousarray(a)) for a in chunk]


def first_output(out):
    """The first tensor of a module's output (a tensor, tuple, list or dict of tensors)."""
    import torch
    from torch.utils import _pytree

    leaves = [x for x in _pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise PassError("the model returns no tensor")
    return leaves[0]
