"""How important each channel unit is, and which units a pruning ratio removes.

Criteria (``importance``):

- ``l1`` / ``l2``: the norm of the weight rows that produce the unit (every conv/linear source in the group:
  both branches of a residual add, the depthwise filters it feeds), summed over those layers.
- ``bn_scale``: ``|gamma|`` of the batch norms the unit passes through (network slimming); groups without a
  batch norm fall back to ``l2`` and say so.
- ``taylor``: first-order Taylor expansion of the loss (Molchanov et al., 2019), per sample (the Fisher
  form): the mean over calibration samples of ``(Σ w·∂L/∂w)²`` over every weight the unit owns (its rows, its BN
  entries, the next layer's columns). The loss is cross-entropy of the logits softened by
  ``TAYLOR_TEMPERATURE`` against the labels, or against the model's own top-1 when there are none (a 2-D first
  output; otherwise half the squared output). FX graphs only.
- ``activation``: mean ``|x|`` of the unit's channels in the tensors the next conv/linear reads, over the
  calibration data. FX and ONNX.

Choosing (:func:`plan_pruning`): with ``scope = layer`` every group loses ``floor(ratio · channels)`` channels,
its lowest-scoring units first (or its own ratio from ``ratios``); with ``scope = global`` scores are divided by
their group's mean and the lowest-scoring units go, wherever they are, until ``ratio`` of all channels are gone.
Either way a group keeps at least ``min_channels`` channels and a multiple of ``round_to`` (rounded up; a unit of
a grouped convolution removes several channels at once, so a multiple is met where units allow), every
conv/linear in it keeps at least ``min_channels`` outputs, no concat input disappears, and frozen units stay.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from aglmc.errors import PassError
from aglmc.passes.channel_graph import ChannelGraph, Group, Space

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation")
DATA_CRITERIA = ("taylor", "activation")


# ---- reading constants ----------------------------------------------------------------------------------------
def param_array(cg: ChannelGraph, space: Space, graph: Any = None) -> Optional[np.ndarray]:
    """The constant behind a param space of ``cg`` (read from ``graph``, default the graph ``cg`` was built on)."""
    graph = cg.model if graph is None else graph
    if space.kind != "param":
        return None
    if cg.kind == "fx":
        import torch

        from aglmc.passes.channel_graph import _fx_attr

        t = _fx_attr(graph, space.key[1])
        return t.detach().cpu().to(torch.float64).numpy() if isinstance(t, torch.Tensor) else None
    from aglmc.passes.onnx_utils import constant_value

    node = list(graph.nodes)[space.key[1]]
    v = constant_value(node.inputs[space.key[2]])
    return None if v is None else np.asarray(v, dtype=np.float64)


def _per_element(arr: np.ndarray, dim: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    moved = np.moveaxis(arr, dim, 0).reshape(arr.shape[dim], -1)
    return fn(moved)


def _per_unit(group: Group, space: Space, values: np.ndarray) -> np.ndarray:
    return np.bincount(group.units[space.id], weights=values, minlength=group.n_units)


# ---- criteria -------------------------------------------------------------------------------------------------
def magnitude(cg: ChannelGraph, group: Group, p: int) -> np.ndarray:
    score = np.zeros(group.n_units)
    for s in group.spaces:
        if not s.has_role("out"):
            continue
        arr = param_array(cg, s)
        if arr is None or arr.ndim < 2:
            continue
        if p == 1:
            score += _per_unit(group, s, _per_element(arr, s.axis, lambda m: np.abs(m).sum(1)))
        else:
            score += np.sqrt(_per_unit(group, s, _per_element(arr, s.axis, lambda m: (m * m).sum(1))))
    return score


def bn_scale(cg: ChannelGraph, group: Group) -> Optional[np.ndarray]:
    score = np.zeros(group.n_units)
    found = False
    for s in group.spaces:
        if s.has_role("scale"):
            arr = param_array(cg, s)
            if arr is not None:
                score += _per_unit(group, s, np.abs(arr).reshape(-1))
                found = True
    return score if found else None


def _trainable_spaces(group: Group) -> List[Space]:
    return [s for s in group.spaces if s.kind == "param" and (s.has_role("out") or s.has_role("in")
                                                              or s.has_role("scale") or s.has_role("shift"))]


#: logits are divided by this before the Taylor loss, so confidently classified samples still give gradients
TAYLOR_TEMPERATURE = 8.0


def taylor_fx(cg: ChannelGraph, data: List[np.ndarray], labels: Optional[np.ndarray],
              groups: Sequence[Group]) -> Dict[str, np.ndarray]:
    """Per-sample first-order Taylor (Fisher) importance: the mean over samples of ``(Σ w·∂L/∂w)²`` over each
    unit's weights, ``L`` the cross-entropy of ``logits / TAYLOR_TEMPERATURE`` against the label (or the model's
    own top-1). One backward pass per sample (per traced batch when the graph fixes its batch size)."""
    import torch
    import torch.fx as fx

    from aglmc.passes.channel_graph import _fx_attr
    from aglmc.passes.prune_runtime import batch_free, chunks, first_output, traced_batch

    gm = cg.model
    free = batch_free(gm)
    size = traced_batch(gm)
    targets = sorted({s.key[1] for g in groups for s in _trainable_spaces(g)})
    leaves = {t: _fx_attr(gm, t).detach().clone().float().requires_grad_(True) for t in targets}

    class _Run(fx.Interpreter):
        def fetch_attr(self, target):
            return leaves[target] if target in leaves else super().fetch_attr(target)

    scores = {g.name: np.zeros(g.n_units) for g in groups}
    lab = None if labels is None else np.asarray(labels)
    count = 0
    for start, chunk in zip(range(0, len(data[0]), size), chunks(data, size)):
        for leaf in leaves.values():
            leaf.grad = None
        out = first_output(_Run(free).run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in chunk]))
        if out.dim() == 2:
            target = (torch.from_numpy(lab[start:start + size]).long() if lab is not None
                      else out.detach().argmax(1))
            loss = torch.nn.functional.cross_entropy(out / TAYLOR_TEMPERATURE, target)
        else:
            loss = 0.5 * (out * out).sum()
        loss.backward()
        count += 1
        for g in groups:
            s_u = np.zeros(g.n_units)
            for s in _trainable_spaces(g):
                leaf = leaves[s.key[1]]
                if leaf.grad is None:
                    continue
                gw = (leaf.grad * leaf).detach().double().numpy()
                s_u += _per_unit(g, s, _per_element(gw, s.axis, lambda m: m.sum(1)))
            scores[g.name] += s_u ** 2
    return {k: v / max(count, 1) for k, v in scores.items()}


def _activation_spaces(group: Group) -> List[Space]:
    feeds = [s for s in group.spaces if s.kind == "tensor" and s.has_role("feeds")]
    return feeds or [s for s in group.spaces if s.kind == "tensor"]


def activation_fx(cg: ChannelGraph, data: List[np.ndarray], batch: int, groups: Sequence[Group]
                  ) -> Dict[str, np.ndarray]:
    import torch
    import torch.fx as fx

    from aglmc.passes.prune_runtime import batch_free, chunks, traced_batch, workable_batch

    gm = cg.model
    free = batch_free(gm)
    size = workable_batch(free, data, batch, traced_batch(gm))
    wanted: Dict[str, List[Space]] = {}
    for g in groups:
        for s in _activation_spaces(g):
            wanted.setdefault(s.key[1], []).append(s)
    sums: Dict[int, np.ndarray] = {}
    count = [0]

    class _Record(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            for s in wanted.get(n.name, ()):
                x = result.detach().abs().double()
                m = x.movedim(s.axis, 0).reshape(x.shape[s.axis], -1).mean(1).numpy()
                sums[s.id] = sums.get(s.id, 0) + m
            return result

    with torch.no_grad():
        for chunk in chunks(data, size):
            _Record(free).run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in chunk])
            count[0] += 1
    return {g.name: sum((_per_unit(g, s, sums[s.id] / count[0]) for s in _activation_spaces(g) if s.id in sums),
                        np.zeros(g.n_units)) for g in groups}


def activation_onnx(cg: ChannelGraph, data: List[np.ndarray], names: Sequence[str], groups: Sequence[Group]
                    ) -> Dict[str, np.ndarray]:
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    graph = cg.model
    wanted: Dict[str, List[Space]] = {}
    for g in groups:
        for s in _activation_spaces(g):
            wanted.setdefault(s.key[1], []).append(s)
    model = gs.export_onnx(graph)
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, cg.onnx_types.get(name, 1), None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    order = list(wanted)
    batch = int(graph.inputs[0].shape[0]) if graph.inputs and graph.inputs[0].shape else 1
    sums: Dict[int, np.ndarray] = {}
    count = 0
    from aglmc.passes.prune_runtime import chunks

    for chunk in chunks(data, batch):
        outs = sess.run(order, dict(zip(names, chunk)))
        count += 1
        for name, value in zip(order, outs):
            for s in wanted[name]:
                x = np.abs(np.asarray(value, dtype=np.float64))
                m = np.moveaxis(x, s.axis, 0).reshape(x.shape[s.axis], -1).mean(1)
                sums[s.id] = sums.get(s.id, 0) + m
    if count == 0:
        raise PassError(f"activation importance needs at least {batch} calibration samples")
    return {g.name: sum((_per_unit(g, s, sums[s.id] / count) for s in _activation_spaces(g) if s.id in sums),
                        np.zeros(g.n_units)) for g in groups}


@dataclass
class Scores:
    """Importance per unit of each group (by group name), with notes on fallbacks."""

    criterion: str
    values: Dict[str, np.ndarray]
    notes: List[str] = field(default_factory=list)


def unit_importance(cg: ChannelGraph, criterion: str, dataset: Any = None, *, names: Sequence[str] = (),
                    samples: int = 64, batch: int = 32, groups: Optional[Sequence[Group]] = None) -> Scores:
    """Importance of every unit of the prunable groups (or of ``groups``) under ``criterion``.

    ``dataset`` (a :class:`aglmc.compiler.data.Dataset`) feeds ``taylor`` and ``activation``; ``names`` are the
    model's input names in call order; ``samples`` bounds how many of its samples are used.
    """
    if criterion not in CRITERIA:
        raise PassError(f"unknown importance '{criterion}' (one of {', '.join(CRITERIA)})")
    groups = list(cg.prunable_groups if groups is None else groups)
    notes: List[str] = []
    if criterion in DATA_CRITERIA:
        if dataset is None:
            raise PassError(f"importance '{criterion}' needs calibration data", hint="set `data = NAME` to a "
                            "data set declared in the schedule")
        from aglmc.passes.prune_runtime import dataset_arrays

        data = [a[:samples] for a in dataset_arrays(dataset, names, f"importance '{criterion}'")]
        labels = None if dataset.labels is None else np.asarray(dataset.labels)[:samples]
        if criterion == "taylor":
            if cg.kind != "fx":
                raise PassError("importance 'taylor' needs gradients, which ONNX graphs do not give",
                                hint="use importance = activation for ONNX models")
            values = taylor_fx(cg, data, labels, groups)
        elif cg.kind == "fx":
            values = activation_fx(cg, data, batch, groups)
        else:
            values = activation_onnx(cg, data, names, groups)
        return Scores(criterion, values, notes)
    values = {}
    for g in groups:
        if criterion == "bn_scale":
            v = bn_scale(cg, g)
            if v is None:
                notes.append(f"{g.name}: no batch norm, ranked by l2")
                v = magnitude(cg, g, 2)
        else:
            v = magnitude(cg, g, 1 if criterion == "l1" else 2)
        values[g.name] = v
    return Scores(criterion, values, notes)


# ---- choosing -------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Units to remove, by group name; ``keep(cg)`` gives the kept elements of every space (by space id)."""

    removed: Dict[str, np.ndarray]
    notes: List[str] = field(default_factory=list)

    def keep(self, cg: ChannelGraph) -> Dict[int, np.ndarray]:
        kept = {s.id: np.arange(s.size) for s in cg.spaces}
        for g in cg.groups:
            units = self.removed.get(g.name)
            if units is not None and len(units):
                kept.update(g.keep(units))
        return kept

    @property
    def empty(self) -> bool:
        return not any(len(u) for u in self.removed.values())

    def rows(self, cg: ChannelGraph) -> List[str]:
        """One line per pruned group: each source layer's output channels before → after."""
        rows = []
        kept = self.keep(cg)
        for g in cg.groups:
            units = self.removed.get(g.name)
            if units is None or not len(units):
                continue
            parts, seen = [], set()
            for s in g.spaces:
                for role, key, _op, path in s.roles:
                    if role == "out" and key not in seen and s.kind == "param":
                        seen.add(key)
                        parts.append(f"{path or key} {s.size} → {len(kept[s.id])}")
            if len(seen) == 1 and parts[0].startswith(f"{g.name} "):
                parts = [parts[0][len(g.name) + 1:]]  # "conv1: 16 → 8" rather than "conv1: conv1 16 → 8"
            rows.append(f"{g.name}: " + ", ".join(parts))
        return rows


def legal_keep(group: Group, keep: int, min_channels: int, round_to: int) -> int:
    """How many channels ``group`` keeps when ``keep`` are wanted: at least ``min_channels`` and every frozen
    unit's, a multiple of ``round_to`` (rounded up), at most all of them."""
    frozen = int(group.unit_channels[~group.free].sum())
    keep = max(keep, min_channels, group.width, frozen)
    if round_to > 1:
        keep = math.ceil(keep / round_to) * round_to
    return min(keep, group.channels)


def plan_pruning(cg: ChannelGraph, scores: Scores, *, ratio: float, scope: str = "layer",
                 ratios: Optional[Mapping[str, float]] = None, min_channels: int = 1, round_to: int = 1,
                 groups: Optional[Sequence[Group]] = None) -> Plan:
    """Which units to remove: ``ratio`` of each group's channels (``scope="layer"``; ``ratios`` overrides it per
    group name) or of all channels, units ranked together by mean-normalised score (``scope="global"``)."""
    if not 0.0 <= ratio < 1.0:
        raise PassError(f"ratio must be in [0, 1), got {ratio}")
    groups = [g for g in (cg.prunable_groups if groups is None else groups) if g.prunable]
    removed: Dict[str, np.ndarray] = {}
    notes = list(scores.notes)
    if scope == "global":
        if ratios:
            raise PassError("per-group ratios (ratios_from) need scope = layer")
        pool = []
        for g in groups:
            v = scores.values[g.name]
            mean = float(v[g.free].mean()) if g.free.any() else 0.0
            norm = v / mean if mean > 0 else np.ones_like(v)
            pool += [(float(norm[u]), g.name, int(g.unit_channels[u])) for u in np.nonzero(g.free)[0]]
        budget = int(math.floor(sum(g.channels for g in groups) * ratio + 1e-9))
        pool.sort(key=lambda item: item[0])
        gone: Dict[str, int] = {}
        for _, name, width in pool:
            if budget <= 0:
                break
            if width <= budget:
                gone[name] = gone.get(name, 0) + width
                budget -= width
        wanted = {g.name: g.channels - gone.get(g.name, 0) for g in groups}
    elif scope == "layer":
        ratios = dict(ratios or {})
        unknown = sorted(set(ratios) - {g.name for g in cg.groups})
        if unknown:
            from aglmc.errors import did_you_mean

            raise PassError(f"per-group ratios name unknown group(s): {', '.join(unknown)}",
                            hint=did_you_mean(unknown[0], [g.name for g in cg.groups])
                            or f"groups: {', '.join(g.name for g in cg.prunable_groups)}")
        wanted = {}
        for g in groups:
            r = float(ratios.get(g.name, ratio))
            if not 0.0 <= r < 1.0:
                raise PassError(f"ratio of group '{g.name}' must be in [0, 1), got {r}")
            wanted[g.name] = g.channels - int(math.floor(g.channels * r + 1e-9))
    else:
        raise PassError(f"scope must be 'layer' or 'global', got {scope!r}")
    for g in groups:
        if wanted[g.name] >= g.channels:
            continue
        budget = g.channels - legal_keep(g, wanted[g.name], min_channels, round_to)
        if budget <= 0:
            continue
        v = scores.values[g.name]
        free = np.nonzero(g.free)[0]
        chosen = _choose(g, free[np.argsort(v[free], kind="stable")], budget, min_channels)
        taken = int(g.unit_channels[chosen].sum()) if len(chosen) else 0
        if taken < budget:
            notes.append(f"{g.name}: removed {taken} of {budget} channel(s); more would leave a layer with fewer "
                         f"than min_channels ({min_channels}), a tensor empty, or split a unit")
        if len(chosen):
            removed[g.name] = np.sort(chosen)
    return Plan(removed, notes)


def _choose(group: Group, candidates: np.ndarray, budget: int, min_channels: int) -> np.ndarray:
    """Candidates, in order, removing up to ``budget`` channels, whose removal leaves every source layer at
    least ``min_channels`` outputs (all, when it has fewer) and every other space of the group at least one
    element: a concat input or a conv never disappears entirely."""
    floors, counts, left = [], [], []
    for s in group.spaces:
        floors.append(min(min_channels, s.size) if s.has_role("out") else 1)
        counts.append(np.bincount(group.units[s.id], minlength=group.n_units))
        left.append(s.size)
    counts_m = np.stack(counts)  # spaces × units
    left_v = np.asarray(left)
    floor_v = np.asarray(floors)
    chosen = []
    for u in candidates:
        if budget <= 0:
            break
        width = int(group.unit_channels[u])
        after = left_v - counts_m[:, u]
        if width > budget or (after < floor_v).any():
            continue
        left_v = after
        budget -= width
        chosen.append(int(u))
    return np.asarray(chosen, dtype=np.int64)


def load_ratios(path: str) -> Dict[str, float]:
    """Per-group ratios from a JSON file (``{"ratios": {group: ratio}}``, as ``aglmc analyze sensitivity``
    writes it, or a plain ``{group: ratio}``), resolved against the working directory."""
    p = Path(path)
    if not p.is_file():
        raise PassError(f"ratios_from: no file {p.resolve()}",
                        hint="run `aglmc analyze sensitivity SCHED` first, or fix the path (relative to the "
                             "working directory)")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PassError(f"ratios_from: {p} is not readable JSON: {e}") from e
    table = data.get("ratios", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) for v in table.values()):
        raise PassError(f"ratios_from: {p} must map group names to ratios ({{\"ratios\": {{\"layer1\": 0.3}}}})")
    return {str(k): float(v) for k, v in table.items()}
