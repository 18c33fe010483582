"""legalize_cumsum_dtype: write out the int64 result type that torch gives a cumsum / cumprod of integers.

PyTorch promotes the running sum (and product) of a bool or integer tensor to int64 when no ``dtype`` is
given: ``torch.cumsum(torch.tensor([True, True]), 0)`` is ``tensor([1, 2])``. TVM's PyTorch frontend reads
only an explicit ``dtype`` keyword and otherwise keeps the input type, so

- a cumsum over ``bool`` becomes a Relax ``cumsum`` of ``bool``, which ``tvm.compile`` rejects in LLVM codegen
  (``Check failed: (t.MatchesCode(DLDataTypeCode::kDLFloat)) is false`` in ``CodeGenLLVM::CreateAdd``);
- a cumsum over ``int32`` silently returns ``int32`` where torch returns ``int64``.

transformers 5.x builds every decoder's causal mask through one: ``find_packed_sequence_indices`` does
``(position_ids.diff(...) != 1).cumsum(-1)`` on a bool tensor, so Llama, Qwen2, GLM and GLM-4 all stop there.

Requires: nothing (FX form of ``torch.export``: ATen ops with ``meta["val"]``).
Guarantees: ``scan_dtype_explicit``: every ``aten.cumsum`` / ``aten.cumprod`` whose input is bool or integer
carries ``dtype=torch.int64``, the type torch computes, so the graph computes the same values and TVM
imports it with the right type. Float scans and scans with a dtype are left alone.
Run before lowering to Relax (``from_exported_program``); order among the ``legalize_*`` passes is free.
"""

from __future__ import annotations

from typing import List

import torch

from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.select import fx_path

_SCANS = (torch.ops.aten.cumsum.default, torch.ops.aten.cumprod.default)


@register_pass
class LegalizeCumsumDtype(Pass):
    """Give integer / bool cumsum and cumprod the explicit int64 dtype torch promotes them to."""

    name = "legalize_cumsum_dtype"
    graph_kinds = ("fx",)
    guarantees = ("scan_dtype_explicit",)

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        changed: List[str] = []
        declined: List[str] = []
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target not in _SCANS:
                continue
            site = f"{fx_path(node) or '<top>'} ({node.name})"
            if node.kwargs.get("dtype") is not None:
                continue
            if not ctx.selects(node):
                declined.append(f"{site}: not selected")
                continue
            src = node.args[0]
            val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
            if not isinstance(val, torch.Tensor):
                declined.append(f"{site}: input type unknown (no meta['val'])")
                continue
            if val.dtype.is_floating_point or val.dtype.is_complex:
                continue
            node.kwargs = {**node.kwargs, "dtype": torch.int64}
            changed.append(f"{site}: {node.target.__name__.split('.')[0]} over {val.dtype} -> int64")
        if changed:
            gm.graph.lint()
            gm.recompile()
        summary = f"made {len(changed)} integer scan(s) int64"
        if declined:
            summary += f", left {len(declined)}"
        return PassResult(changed=bool(changed), summary=summary, details=changed + declined)
