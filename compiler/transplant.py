"""Carry what the schedule's passes did to the FX graph back into the model's own ``nn.Module``.

A language-model build (a schedule with a ``generate`` block) compiles two entry points, ``prefill`` and
``decode``, that :class:`aglmc.compiler.llm.KVCacheLM` writes around the model's own submodules (its
projections, MLPs, norms, embedding). The schedule's passes, however, run on the FX graph of the model's
ordinary forward, like in any build: that is where their selectors, calibration data, explanations and
numeric checks live. This module joins the two: for every ``nn.Linear`` of the original module, the nodes the
transformed graph attributes to it (``nn_module_stack``, which the passes keep on the nodes they create) are cut
out as a small ``fx.GraphModule`` with one input and one output, and that graph replaces the Linear in a copy of
the module. So a low-rank pair of Linears, a dequantize of int4 weights followed by a linear, or a Linear with
pruned rows goes into ``prefill`` and ``decode`` exactly as the passes left it, with the weights the passes
computed (once: both entry points read the same submodule).

What cannot be carried back is refused with the module and the reason, never dropped silently:

- a Linear whose nodes are not one piece with one input and one output (a pass fused it with its neighbour);
- a Linear the transformed graph no longer has (a pass removed or merged it);
- a weight outside the Linears that a pass changed (a norm scale shrunk by pruning the hidden size, a changed
  embedding): those live in code the cached forward re-implements.

Finally :func:`transplant` runs the new module on the example inputs and compares it with the transformed graph's
outputs; a difference beyond float rounding is a ModelError. How it is run is the caller's choice (``run``): the
language-model build runs the cached prefill, because after attention heads were pruned only code that counts
heads from the projections' widths (as :class:`~aglmc.compiler.llm.KVCacheLM` does) can run the module, not its
own forward with the head count of its config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from aglmc.errors import ModelError

#: the largest relative difference allowed between the rebuilt module's forward and the transformed graph
TRANSPLANT_RTOL = 1e-4


@dataclass
class Transplant:
    """The outcome of :func:`transplant`."""

    module: Any                                                   # the new nn.Module (the original is untouched)
    replaced: Dict[str, List[str]] = field(default_factory=dict)  # module path -> the ops that replace it
    max_error: float = 0.0                                        # forward of ``module`` vs the transformed graph

    def summary(self) -> str:
        if not self.replaced:
            return "no Linear changed by the passes"
        kinds: Dict[str, int] = {}
        for ops in self.replaced.values():
            key = " → ".join(ops)
            kinds[key] = kinds.get(key, 0) + 1
        parts = [f"{n} as {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])]
        return f"{len(self.replaced)} Linear(s) carried into the cached model: " + "; ".join(parts)


def transplant(original, gm, example_inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
               run: Optional[Callable[[Any, Sequence[np.ndarray]], List[np.ndarray]]] = None) -> Transplant:
    """A copy of ``original`` whose Linears are the transformed graph ``gm``'s versions of them (see the module
    docstring). ``outputs`` are ``gm``'s outputs on ``example_inputs`` (the pipeline's "evaluate transformed");
    ``run(module, inputs) -> outputs`` runs the rebuilt module for the comparison (default: its forward)."""
    import torch

    from aglmc.passes.select import fx_path

    by_path: Dict[str, List[Any]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.meta.get("nn_module_stack"):
            by_path.setdefault(fx_path(node), []).append(node)
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    module = copy.deepcopy(original)
    result = Transplant(module)
    carried: set = set()  # get_attr targets that went into a transplanted Linear
    for path, linear in module.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        nodes = by_path.get(path)
        if not nodes:
            raise ModelError(f"the passes removed or merged Linear '{path}': the language-model build cannot carry "
                             "that into its cached forward", hint="leave this Linear out of the pass's selector")
        piece = _piece(gm, nodes, path, order)
        carried.update(n.target for n in piece if n.op == "get_attr")
        if _unchanged(gm, piece, linear):
            continue
        sub = _graph_module(gm, piece)
        _set_submodule(module, path, sub)
        result.replaced[path] = [_op_name(n) for n in piece if n.op == "call_function"]
    _check_rest(gm, original, carried)
    result.max_error = _compare(module, example_inputs, outputs, run or _forward)
    return result


# ---- cutting one Linear's piece out of the graph ----------------------------------------------------------------
def _piece(gm, nodes: List[Any], path: str, order: Dict[Any, int]) -> List[Any]:
    """The nodes of one Linear: those attributed to it, plus the constants only they use, in graph order."""
    piece = set(nodes)
    grew = True
    while grew:  # constants (get_attr, and ops on constants only) whose every user is in the piece
        grew = False
        for node in list(piece):
            for arg in node.all_input_nodes:
                if arg in piece or arg.op not in ("get_attr", "call_function"):
                    continue
                if all(u in piece for u in arg.users) and _constant(arg):
                    piece.add(arg)
                    grew = True
    inputs = {a for n in piece for a in n.all_input_nodes if a not in piece}
    outs = [n for n in piece if any(u not in piece for u in n.users)]
    if len(inputs) != 1 or len(outs) != 1:
        raise ModelError(f"Linear '{path}' is not one piece in the transformed graph ({len(inputs)} input(s), "
                         f"{len(outs)} output(s)): a pass joined it with its neighbours, which the language-model "
                         "build cannot carry into its cached forward",
                         hint="leave this Linear out of that pass's selector")
    return sorted(piece, key=order.__getitem__)


def _constant(node) -> bool:
    """True when ``node`` depends on no graph input (weights and ops on weights only)."""
    if node.op == "get_attr":
        return True
    if node.op != "call_function":
        return False
    return all(_constant(a) for a in node.all_input_nodes)


def _graph_module(gm, piece: List[Any]):
    """``piece`` as a GraphModule ``forward(x)`` with its own copies of the weights it reads."""
    import torch
    import torch.fx as fx

    root = torch.nn.Module()
    graph = fx.Graph()
    members = set(piece)
    (x,) = {a for n in piece for a in n.all_input_nodes if a not in members}
    env = {x: graph.placeholder("x")}
    for i, node in enumerate(piece):
        if node.op == "get_attr":
            value = _fetch(gm, node.target)
            name = f"w{i}"
            if isinstance(value, torch.nn.Parameter):
                root.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
            else:
                root.register_buffer(name, value.detach().clone())
            env[node] = graph.get_attr(name)
        else:
            env[node] = graph.node_copy(node, lambda a: env[a])
    (out,) = [n for n in piece if any(u not in members for u in n.users)]
    graph.output(env[out])
    sub = fx.GraphModule(root, graph, class_name="TransplantedLinear")
    # what code around a Linear reads off it (KVCacheLM counts attention heads from the projections' widths)
    sub.in_features = int(x.meta["val"].shape[-1]) if "val" in x.meta else None
    sub.out_features = int(out.meta["val"].shape[-1]) if "val" in out.meta else None
    return sub


def _unchanged(gm, piece: List[Any], linear) -> bool:
    """True when the piece is still one ``linear`` on the module's own weight and bias values."""
    import torch

    calls = [n for n in piece if n.op == "call_function"]
    if len(calls) != 1 or _op_name(calls[0]) != "aten.linear":
        return False
    args = list(calls[0].args) + [None] * 3
    mine = [linear.weight, linear.bias]
    for arg, tensor in zip(args[1:3], mine):
        if (arg is None) != (tensor is None):
            return False
        if arg is None:
            continue
        if getattr(arg, "op", None) != "get_attr":
            return False
        value = _fetch(gm, arg.target)
        if value.shape != tensor.shape or not torch.equal(value.detach(), tensor.detach()):
            return False
    return True


def _check_rest(gm, original, carried: set) -> None:
    """Every weight of the transformed graph outside the Linears must be the original module's, unchanged."""
    import torch

    state = {**dict(original.named_parameters()), **dict(original.named_buffers())}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in carried or not node.users:
            continue
        value = _fetch(gm, node.target)
        if not isinstance(value, torch.Tensor):
            continue
        before = state.get(node.target)
        if before is None:
            raise ModelError(f"a pass added the tensor '{node.target}' outside any Linear; the language-model build "
                             "carries changes to Linears only")
        if before.shape != value.shape or not torch.equal(before.detach(), value.detach()):
            raise ModelError(f"a pass changed '{node.target}' ({list(before.shape)} → {list(value.shape)}), which is "
                             "not a Linear's weight; the language-model build re-implements the code around the "
                             "Linears and cannot carry that change",
                             hint="select only Linears inside attention/MLP blocks (e.g. pruning of FFN channels), "
                                  "not the hidden size")


def _forward(module, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    import torch

    from aglmc.compiler.model import _flatten_outputs, _to_torch

    with torch.no_grad():
        return _flatten_outputs(module.eval()(*[_to_torch(a) for a in inputs]))


def _compare(module, example_inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], run) -> float:
    try:
        got = run(module, example_inputs)
    except Exception as e:
        raise ModelError(f"the module rebuilt from the transformed graph does not run: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if len(got) != len(outputs):
        raise ModelError(f"the rebuilt module returns {len(got)} outputs, the transformed graph {len(outputs)}")
    error = 0.0
    for a, b in zip(got, outputs):
        b = np.asarray(b)
        scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-12)
        error = max(error, float(np.abs(np.asarray(a, dtype=np.float64) - b).max()) / scale if b.size else 0.0)
    if error > TRANSPLANT_RTOL:
        raise ModelError(f"the module rebuilt from the transformed graph differs from it by {error:.3g} (relative); "
                         f"the bound is {TRANSPLANT_RTOL:g}: a pass changed more than its Linears")
    return error


# ---- small helpers ----------------------------------------------------------------------------------------------
def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_submodule(module, path: str, sub) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, name, sub)


def _op_name(node) -> str:
    from aglmc.passes.select import fx_op_name

    return fx_op_name(node)

