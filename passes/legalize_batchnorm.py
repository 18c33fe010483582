"""legalize_batchnorm: spell each eval-mode batch norm as the ATen op TVM's frontend converts correctly.

``torch.export`` (torch 2.13) records ``nn.BatchNorm*d`` as ``aten.batch_norm(x, weight, bias, running_mean,
running_var, training, momentum, eps, cudnn_enabled)``. TVM 0.27's converter for that op, used when
``from_exported_program(..., run_ep_decomposition=False)``, reads the arguments with the layout of
``_native_batch_norm_legit``: ``training`` becomes the momentum, ``momentum`` (0.1) becomes epsilon, and it
always builds a *training* batch norm that normalises with the batch's own statistics. Import and build succeed
and the numbers are wrong (transformers' ResNet: max error 8.0 on logits of scale 9.1). With the default
``run_ep_decomposition=True`` torch's decomposition rewrites the op first and the result is right; this pass
makes the graph right under either setting and names the inference form for later FX passes.

Two eval-mode forms are rewritten, each to the op its decomposition would produce:

- with running statistics (``training=False``): ``_native_batch_norm_legit_no_training(x, w, b, mean, var,
  momentum, eps)[0]``;
- without (``track_running_stats=False``: running stats are None, the batch's statistics are used):
  ``_native_batch_norm_legit.no_stats(x, w, b, True, momentum, eps)[0]``.

Requires: nothing (FX form of ``torch.export``).
Guarantees: ``batchnorm_legalized``: the only ``aten.batch_norm`` left are training-mode ones that update
running statistics (a module exported in train mode); they are reported. Values are unchanged.
Run before lowering to Relax; order among the ``legalize_*`` passes is free.
"""

from __future__ import annotations

import operator
from typing import List, Optional

import torch

from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.select import fx_path

_BATCH_NORM = torch.ops.aten.batch_norm.default
_NO_TRAINING = torch.ops.aten._native_batch_norm_legit_no_training.default
_NO_STATS = torch.ops.aten._native_batch_norm_legit.no_stats
_ARG_NAMES = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps",
              "cudnn_enabled")
_KEPT_META = ("nn_module_stack", "stack_trace", "source_fn_stack", "torch_fn")


@register_pass
class LegalizeBatchNorm(Pass):
    """Rewrite eval-mode ``aten.batch_norm`` into the ``_native_batch_norm_legit`` form TVM converts right."""

    name = "legalize_batchnorm"
    graph_kinds = ("fx",)
    guarantees = ("batchnorm_legalized",)

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        changed: List[str] = []
        declined: List[str] = []
        graph = gm.graph
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not _BATCH_NORM:
                continue
            site = f"{fx_path(node) or '<top>'} ({node.name})"
            a = _batch_norm_args(node)
            has_stats = a["running_mean"] is not None and a["running_var"] is not None
            if not ctx.selects(node):
                declined.append(f"{site}: not selected")
                continue
            if has_stats and a["training"] is False:
                op, args, form = _NO_TRAINING, (a["input"], a["weight"], a["bias"], a["running_mean"],
                                                a["running_var"], a["momentum"], a["eps"]), "running statistics"
            elif a["running_mean"] is None and a["running_var"] is None:
                op, args, form = _NO_STATS, (a["input"], a["weight"], a["bias"], True, a["momentum"],
                                             a["eps"]), "batch statistics"
            else:
                declined.append(f"{site}: training-mode batch norm updates its running statistics")
                continue
            with graph.inserting_before(node):
                bn = graph.call_function(op, args)
                out = graph.call_function(operator.getitem, (bn, 0))
            for new in (bn, out):
                new.meta.update({k: v for k, v in node.meta.items() if k in _KEPT_META})
            if "val" in node.meta:
                out.meta["val"] = node.meta["val"]
                tuple_val = _fake_result(op, args)
                if tuple_val is not None:
                    bn.meta["val"] = tuple_val
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            changed.append(f"{site}: {form}")
        if changed:
            graph.lint()
            gm.recompile()
        summary = f"rewrote {len(changed)} eval-mode batch norm(s)"
        if declined:
            summary += f", left {len(declined)}"
        return PassResult(changed=bool(changed), summary=summary, details=changed + declined)


def _batch_norm_args(node) -> dict:
    """``aten.batch_norm``'s arguments by name, whether given by position or keyword."""
    args = dict(zip(_ARG_NAMES, node.args))
    for name in _ARG_NAMES:
        if name not in args:
            args[name] = node.kwargs.get(name)
    return args


def _fake_result(op, args) -> Optional[tuple]:
    """The new node's ``meta["val"]``: the op run on the inputs' fake tensors, or None without them."""
    from torch._guards import detect_fake_mode

    vals = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in args]
    mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    if mode is None:
        return None
    with mode:
        return op(*vals)
