"""prune_channels: structured channel pruning — remove whole channels, with smaller weights, keeping every
coupling consistent.

The pass builds the model's channel dependency graph once (:mod:`aglmc.passes.channel_graph`: residual adds tie
branches, concat offsets indices, depthwise and grouped convolutions tie inputs to outputs, batch norms,
activations and squeeze-excite gates carry indices, a flatten before a Linear expands each channel into its
features), ranks the units of every group (:mod:`aglmc.passes.prune_importance`), and physically removes the
lowest: weight rows of the producers, entries of batch norms and other per-channel constants, weight columns of
the consumers; it rewrites the ``groups`` of depthwise convolutions and the literal sizes of views / ONNX
Reshape shapes. Nothing is masked: the weights get smaller.

Requires: static shapes (the exported graph's); per-channel constants are graph constants (FX ``get_attr``,
ONNX initializers / Constant nodes).
Guarantees: ``channels_pruned``; the graph lints / passes the ONNX checker; ``ratio = 0`` changes nothing, so the
outputs are the original's exactly. The model's outputs keep their size: a classifier never loses classes.
Selector: picks the conv/linear layers that may lose output channels; a group whose channels are also produced
by a layer outside the selector (e.g. the fc of a squeeze-excite gate, with ``on conv2d``) is left whole.

Parameters: ``ratio`` of each group's channels (``scope = layer``) or of all channels ranked together with
mean-normalised scores (``scope = global``); ``importance`` l1 | l2 | bn_scale | taylor | activation (the last
two read ``data``, at most ``samples`` samples); ``min_channels`` kept per group; ``round_to`` keeps a multiple of
that many channels; ``ratios_from`` a JSON file of per-group ratios (``aglmc analyze sensitivity`` writes one,
path relative to the working directory), other groups use ``ratio``.

Use :func:`prune` to run the same steps from Python (the sensitivity analysis does, one group at a time).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from aglmc.dsl.params import Param
from aglmc.errors import PassError
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.channel_graph import ChannelGraph, build_channel_graph
from aglmc.passes.prune_importance import CRITERIA, Plan, Scores, load_ratios, plan_pruning, unit_importance


@register_pass
class PruneChannels(Pass):
    """Structured channel pruning: remove whole channels (smaller weights) consistently across couplings."""

    name = "prune_channels"
    graph_kinds = ("fx", "onnx")
    guarantees = ("channels_pruned",)
    params = (
        Param("ratio", "float", default=0.3, min=0.0, max=1.0, max_open=True,
              doc="fraction of channels removed (per group, or overall with scope = global)"),
        Param("scope", "enum", default="layer", choices=("layer", "global"),
              doc="layer: every group loses `ratio`; global: rank all channels together"),
        Param("importance", "enum", default="l2", choices=CRITERIA,
              doc="how channels are ranked; taylor and activation read `data`"),
        Param("data", "dataset", default=None, doc="calibration data for importance = taylor | activation"),
        Param("samples", "int", default=64, min=1, doc="calibration samples used for data-driven importance"),
        Param("min_channels", "int", default=1, min=1,
              doc="channels every group, and every conv/linear in it, keeps at least"),
        Param("round_to", "int", default=1, min=1, doc="keep a multiple of this many channels (e.g. 8 for SIMD)"),
        Param("ratios_from", "str", default="",
              doc="JSON of per-group ratios (from `aglmc analyze sensitivity`); other groups use `ratio`"),
    )

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        return self._run("fx", gm, ctx)

    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        return self._run("onnx", graph, ctx)

    def _run(self, kind: str, graph, ctx: PassContext) -> PassResult:
        o = self.options
        dataset = None
        if o["data"] is not None:
            if o["data"] not in ctx.datasets:
                raise PassError(f"prune_channels: data set '{o['data']}' is not loaded")
            dataset = ctx.datasets[o["data"]]
        ratios = load_ratios(o["ratios_from"]) if o["ratios_from"] else None
        before = count_params(kind, graph)
        cg, plan = prune(kind, graph, selects=ctx.selects, ratio=o["ratio"], scope=o["scope"],
                         importance=o["importance"], dataset=dataset, samples=o["samples"],
                         min_channels=o["min_channels"], round_to=o["round_to"], ratios=ratios,
                         example_inputs=dict(ctx.example_inputs))
        tables = [str(g) for g in cg.groups] if getattr(ctx, "explain", False) else []  # --explain: every group
        if plan.empty:
            return PassResult(False, f"nothing to prune ({len(cg.prunable_groups)} prunable group(s), "
                                     f"ratio {o['ratio']:g})", plan.notes + tables)
        after = count_params(kind, graph)
        rows = plan.rows(cg)
        return PassResult(True, f"pruned {len(rows)} of {len(cg.prunable_groups)} channel group(s) by "
                                f"{o['importance']}; parameters {before:,} → {after:,}",
                          rows + plan.notes + tables)


def prune(kind: str, graph, *, selects=None, ratio: float = 0.3, scope: str = "layer", importance: str = "l2",
          dataset=None, samples: int = 64, min_channels: int = 1, round_to: int = 1,
          ratios: Optional[Mapping[str, float]] = None, example_inputs: Optional[Mapping[str, Any]] = None,
          cg: Optional[ChannelGraph] = None, scores: Optional[Scores] = None):
    """Build the channel graph (unless ``cg`` is given), rank, plan and apply; returns ``(cg, plan)``.

    ``cg``/``scores`` built on one graph may be applied to a copy of it (``Model.clone()``): nodes are found by
    name (FX) or position (ONNX).
    """
    example_inputs = dict(example_inputs or {})
    if cg is None:
        cg = build_channel_graph(kind, graph, selects, list(example_inputs.values()) or None)
    if scores is None:
        scores = unit_importance(cg, importance, dataset, names=_input_names(kind, graph, example_inputs),
                                 samples=samples)
    plan = plan_pruning(cg, scores, ratio=ratio, scope=scope, ratios=ratios, min_channels=min_channels,
                        round_to=round_to)
    if not plan.empty:
        apply_plan(kind, graph, cg, plan)
    return cg, plan


def _input_names(kind: str, graph, example_inputs: Mapping[str, Any]) -> List[str]:
    if kind == "onnx":
        return [t.name for t in graph.inputs]
    from aglmc.passes.prune_runtime import input_names

    return input_names(graph, example_inputs)


def apply_plan(kind: str, graph, cg: ChannelGraph, plan: Plan) -> None:
    """Remove the plan's units from ``graph`` (the graph ``cg`` was built on, or a copy of it)."""
    keep = plan.keep(cg)
    (_apply_fx if kind == "fx" else _apply_onnx)(graph, cg, keep)


def _new_shape_fn(cg: ChannelGraph, keep: Dict[int, np.ndarray]):
    def new_shape(value) -> tuple:
        name = value.name
        shape = list(cg.shapes[name])
        for axis, s in cg.on_value.get(("t", name), {}).items():
            shape[axis] = len(keep[s.id])
        return tuple(shape)
    return new_shape


def _changed_values(cg: ChannelGraph, keep: Dict[int, np.ndarray]) -> set:
    """Names of the tensors that lose elements (rewrites of literal sizes only touch ops that read or make them)."""
    return {s.key[1] for s in cg.spaces if s.kind == "tensor" and len(keep[s.id]) < s.size}


# ---- FX ----------------------------------------------------------------------------------------------------------
def _apply_fx(gm, cg: ChannelGraph, keep: Dict[int, np.ndarray]) -> None:
    import torch

    from aglmc.passes.channel_graph import _fx_attr
    from aglmc.passes.fx_utils import add_constant, finish

    cuts: Dict[str, Dict[int, np.ndarray]] = {}
    for s in cg.spaces:
        if s.kind == "param" and len(keep[s.id]) < s.size:
            cuts.setdefault(s.key[1], {})[s.axis] = keep[s.id]
    uses: Dict[str, list] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            uses.setdefault(str(n.target), []).append(n)
    for target, dims in cuts.items():
        tensor = _fx_attr(gm, target)
        if not isinstance(tensor, torch.Tensor) or target not in uses:
            raise PassError(f"prune_channels: constant '{target}' is not in this graph")
        t = tensor.detach()
        for dim, idx in dims.items():
            t = t.index_select(dim, torch.as_tensor(idx, dtype=torch.long))
        first = uses[target][0]
        new = add_constant(gm, t, f"{target}_pruned", before=first)
        for n in uses[target]:
            if n is not first:
                with gm.graph.inserting_before(n):
                    n.replace_all_uses_with(gm.graph.get_attr(new.target))
            else:
                n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
        _drop_attr(gm, target)
    nodes = {n.name: n for n in gm.graph.nodes}
    new_shape = _new_shape_fn(cg, keep)
    changed = _changed_values(cg, keep)
    for node_key, fn in cg.rewrites:
        node = nodes.get(node_key)
        if node is not None and ({node.name} | {i.name for i in node.all_input_nodes}) & changed:
            fn(node, new_shape)
    finish(gm)
    refresh_fx_meta(gm)


def _drop_attr(gm, target: str) -> None:
    """Forget a constant the graph no longer reads (the original module keeps its own)."""
    owner_path, _, leaf = target.rpartition(".")
    try:
        owner = gm.get_submodule(owner_path) if owner_path else gm
        delattr(owner, leaf)
    except AttributeError:
        pass


def refresh_fx_meta(gm) -> None:
    """Recompute every node's ``meta['val']`` (shapes changed); nodes keep no stale shapes if that fails."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    try:
        args = [torch.zeros(tuple(p.meta["val"].shape), dtype=p.meta["val"].dtype) for p in placeholders]
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*args)
    except Exception:
        for n in gm.graph.nodes:
            if n.op != "placeholder":
                n.meta.pop("val", None)
                n.meta.pop("tensor_meta", None)


# ---- ONNX --------------------------------------------------------------------------------------------------------
def _apply_onnx(graph, cg: ChannelGraph, keep: Dict[int, np.ndarray]) -> None:
    import onnx_graphsurgeon as gs

    from aglmc.passes.onnx_utils import constant_value

    nodes = list(graph.nodes)
    taken = set(graph.tensors())
    cuts: Dict[tuple, Dict[int, np.ndarray]] = {}
    for s in cg.spaces:
        if s.kind == "param" and len(keep[s.id]) < s.size:
            cuts.setdefault(s.key[1:3], {})[s.axis] = keep[s.id]
    for (index, slot), dims in cuts.items():
        node = nodes[index]
        old = node.inputs[slot]
        value = constant_value(old)
        if value is None:
            raise PassError(f"prune_channels: input {slot} of ONNX node '{node.name}' is not a constant")
        for dim, idx in dims.items():
            value = np.take(value, idx, axis=dim)
        name = f"{old.name}_pruned"
        k = 1
        while name in taken:
            k += 1
            name = f"{old.name}_pruned{k}"
        taken.add(name)
        node.inputs[slot] = gs.Constant(name, np.ascontiguousarray(value))
    new_shape = _new_shape_fn(cg, keep)
    changed = _changed_values(cg, keep)
    for node_key, fn in cg.rewrites:
        node = nodes[node_key]
        if {t.name for t in list(node.inputs) + list(node.outputs) if t is not None} & changed:
            fn(node, new_shape)
    tensors = graph.tensors()
    for key, axes in cg.on_value.items():
        if key[0] != "t" or key[1] not in tensors:
            continue
        if any(len(keep[s.id]) < s.size for s in axes.values()):
            t = tensors[key[1]]
            if isinstance(t, gs.Variable) and t.shape is not None:  # only shapes the file declared
                t.shape = list(new_shape(t))
    graph.cleanup().toposort()


def masked_copy(kind: str, graph, cg: ChannelGraph, plan: Plan):
    """A copy of the *unpruned* ``graph`` in which every consumer weight column of a removed channel is zero.

    Removing a unit only drops values that its own consumers' columns read, so the pruned graph must compute what
    this masked copy computes (up to float rounding): the numeric oracle the tests hold every pruning to.
    """
    keep = plan.keep(cg)
    masked = clone_graph(kind, graph)
    cuts: Dict[tuple, Dict[int, np.ndarray]] = {}
    for s in cg.spaces:
        if s.kind == "param" and s.has_role("in") and len(keep[s.id]) < s.size:
            gone = np.setdiff1d(np.arange(s.size), keep[s.id])
            cuts.setdefault(s.key[1:-1], {})[s.axis] = gone
    if kind == "fx":
        import torch

        from aglmc.passes.channel_graph import _fx_attr
        from aglmc.passes.fx_utils import add_constant, finish

        for (target,), dims in cuts.items():
            t = _fx_attr(masked, target).detach().clone()
            for dim, idx in dims.items():
                t.index_fill_(dim, torch.as_tensor(idx, dtype=torch.long), 0)
            for n in [n for n in masked.graph.nodes if n.op == "get_attr" and n.target == target]:
                n.replace_all_uses_with(add_constant(masked, t, f"{target}_masked", before=n))
                masked.graph.erase_node(n)
        finish(masked)
        return masked
    import onnx_graphsurgeon as gs

    from aglmc.passes.onnx_utils import constant_value

    nodes = list(masked.nodes)
    for (index, slot), dims in cuts.items():
        value = np.array(constant_value(nodes[index].inputs[slot]))
        for dim, idx in dims.items():
            sl = [slice(None)] * value.ndim
            sl[dim] = idx
            value[tuple(sl)] = 0
        nodes[index].inputs[slot] = gs.Constant(f"{nodes[index].inputs[slot].name}_masked_{index}", value)
    masked.cleanup()
    return masked


def clone_graph(kind: str, graph):
    """An independent copy of an FX GraphModule or graphsurgeon Graph (constants are shared, never modified)."""
    if kind == "onnx":
        return graph.copy()  # copy.deepcopy recurses forever on graphsurgeon graphs
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph)


def count_params(kind: str, graph) -> int:
    """Elements of the floating-point constants the graph reads (weights, biases, norm parameters)."""
    if kind == "fx":
        import torch

        from aglmc.passes.channel_graph import _fx_attr

        seen = set()
        total = 0
        for n in graph.graph.nodes:
            if n.op == "get_attr" and n.target not in seen:
                seen.add(n.target)
                t = _fx_attr(graph, n.target)
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    total += t.numel()
        return total
    from aglmc.passes.onnx_utils import constant_value

    seen = set()
    total = 0
    for node in graph.nodes:
        for t in node.inputs:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            v = constant_value(t)
            if v is not None and np.asarray(v).dtype.kind == "f":
                total += int(np.asarray(v).size)
    return total
