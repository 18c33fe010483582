"""Helpers shared by FX passes: reading and replacing constant tensors of an unlifted GraphModule.

aglmc's FX form is ``torch.export.export(module, args).module()``: ATen ops, with parameters and buffers as
``get_attr`` nodes. Passes never modify a tensor in place (the original module may share storage with the
graph and is the reference the build verifies against); they register new constants instead.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.fx as fx

_counter = itertools.count()


def get_constant(gm: fx.GraphModule, node) -> Optional[torch.Tensor]:
    """The tensor behind a ``get_attr`` node, or None when ``node`` is not a constant."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj.detach() if isinstance(obj, torch.Tensor) else None


def add_constant(gm: fx.GraphModule, tensor: torch.Tensor, hint: str, *, before: fx.Node) -> fx.Node:
    """Register ``tensor`` as a new buffer of ``gm`` and return a ``get_attr`` node inserted before ``before``."""
    name = f"_aglmc_{hint.replace('.', '_')}_{next(_counter)}"
    gm.register_buffer(name, tensor.detach().clone().contiguous())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def finish(gm: fx.GraphModule) -> None:
    """Remove dead nodes and unused attributes, check the graph and regenerate ``gm.forward``."""
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_buffers(recurse=False)):
        if name.startswith("_aglmc_") and name not in used:
            delattr(gm, name)
    gm.graph.lint()
    gm.recompile()
