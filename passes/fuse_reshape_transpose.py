"""fuse_reshape_transpose: collapse chains of reshapes and chains of transposes, and drop the no-op ones.

A reshape only reinterprets the element order, so ``reshape(reshape(x, s1), s2)`` is ``reshape(x, s2)``; two
transposes compose into one, ``permute(permute(x, p), q) = permute(x, [p[i] for i in q])``, and a permutation
that leaves every axis in place, or a reshape to the shape a tensor already has, is the identity. Each link
removed is one copy or layout change less for the back end (TVM lowers every transpose, and every reshape
it cannot prove is a view, to a kernel). A transpose between two reshapes is left alone: the two do not
commute in general.

FX patterns (ATen): reshape-like ``aten.view | aten.reshape | aten._unsafe_view | aten.flatten.using_ints |
aten.unsqueeze | aten.squeeze.dim(s)`` reading another reshape-like op become one ``aten.reshape`` to the
static output shape; ``aten.permute | aten.transpose.int | aten.t`` reading another of those become one
``aten.permute`` (or nothing).
ONNX patterns: ``Reshape(Reshape | Flatten | Squeeze | Unsqueeze (x), shape)`` → ``Reshape(x, shape)``;
``Transpose(Transpose(x))`` → ``Transpose(x)`` or nothing.

Requires: static shapes (FX: ``meta['val']``; ONNX: a constant target shape). Guarantees: nothing.
Declined, with the reason: a symbolic shape; an ONNX target shape with 0 entries (0 copies the *input's*
dimension, which changes meaning once the input changes); an identity whose output is a graph output.
Selector: applies to the outer node of a chain (``on reshape``, ``on transpose``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.fx_utils import finish
from aglmc.passes.onnx_utils import constant_value, is_graph_output, redirect_readers
from aglmc.passes.select import fx_path

_aten = torch.ops.aten
_FX_RESHAPES = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.flatten.using_ints,
                _aten.unsqueeze.default, _aten.squeeze.dim, _aten.squeeze.dims, _aten.squeeze.default}
_FX_TRANSPOSES = {_aten.permute.default, _aten.transpose.int, _aten.t.default}
_ONNX_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@register_pass
class FuseReshapeTranspose(Pass):
    """Collapse reshape∘reshape and transpose∘transpose chains; drop identity reshapes and transposes."""

    name = "fuse_reshape_transpose"
    graph_kinds = ("fx", "onnx")

    # ---- FX ---------------------------------------------------------------------------------------------
    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or not ctx.selects(node):
                continue
            if node.target in _FX_RESHAPES:
                line = self._reshape_fx(gm, node)
            elif node.target in _FX_TRANSPOSES:
                line = self._transpose_fx(gm, node)
            else:
                continue
            if line:
                details.append(line)
        if any(d.startswith("applied") for d in details):
            finish(gm)
        return _result(details)

    def _reshape_fx(self, gm, node) -> Optional[str]:
        x = node.args[0]
        inner = x if getattr(x, "op", None) == "call_function" and x.target in _FX_RESHAPES else None
        out, src = _shape(node), _shape(inner.args[0] if inner is not None else x)
        if inner is None and (out is None or src is None or out != src):
            return None  # neither a chain nor an identity: not a candidate
        site = f"{_site(node)} ({node.name})"
        if out is None or src is None:
            return f"declined at {site}: symbolic or unknown shape"
        if out == src:
            if _is_output(node):
                return f"declined at {site}: identity reshape writes a graph output"
            node.replace_all_uses_with(inner.args[0] if inner is not None else x)
            gm.graph.erase_node(node)
            return f"applied at {site}: identity reshape removed" + (" (with the reshape it read)" if inner else "")
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(_aten.reshape.default, (inner.args[0], list(out)))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        return f"applied at {site}: reshape of a reshape -> one reshape to {list(out)}"

    def _transpose_fx(self, gm, node) -> Optional[str]:
        x = node.args[0]
        inner = x if getattr(x, "op", None) == "call_function" and x.target in _FX_TRANSPOSES else None
        src = _shape(inner.args[0] if inner is not None else x)
        perm_outer = _fx_perm(node, len(src) if src is not None else None)
        if inner is None and (perm_outer is None or perm_outer != list(range(len(perm_outer)))):
            return None
        site = f"{_site(node)} ({node.name})"
        if src is None or perm_outer is None:
            return f"declined at {site}: symbolic or unknown rank"
        perm = perm_outer
        base = x
        if inner is not None:
            perm_inner = _fx_perm(inner, len(src))
            perm = [perm_inner[i] for i in perm_outer]
            base = inner.args[0]
        if perm == list(range(len(perm))):
            if _is_output(node):
                return f"declined at {site}: identity transpose writes a graph output"
            node.replace_all_uses_with(base)
            gm.graph.erase_node(node)
            return f"applied at {site}: " + ("transposes cancel out" if inner is not None else "identity removed")
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(_aten.permute.default, (base, perm))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        return f"applied at {site}: two transposes -> one permute {perm}"

    # ---- ONNX -------------------------------------------------------------------------------------------
    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        details: List[str] = []
        for node in list(graph.nodes):
            if node.op not in ("Reshape", "Transpose") or not ctx.selects(node) or not node.outputs:
                continue
            line = (self._reshape_onnx if node.op == "Reshape" else self._transpose_onnx)(graph, node)
            if line:
                details.append(line)
        if any(d.startswith("applied") for d in details):
            graph.cleanup().toposort()
        return _result(details)

    def _reshape_onnx(self, graph, node) -> Optional[str]:
        x = node.inputs[0]
        inner = x.inputs[0] if len(x.inputs) == 1 and x.inputs[0].op in _ONNX_RESHAPES else None
        target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        src = inner.inputs[0].shape if inner is not None else x.shape
        identity = (target is not None and _static(src) and _static(node.outputs[0].shape)
                    and list(node.outputs[0].shape) == list(src))
        if inner is None and not identity:
            return None
        site = node.name or node.outputs[0].name
        if target is None:
            return f"declined at {site}: target shape is not a constant"
        if identity:
            return self._drop_onnx(graph, node, inner.inputs[0] if inner is not None else x, site, "reshape")
        if 0 in target.tolist() and not node.attrs.get("allowzero", 0):
            return f"declined at {site}: target shape {target.tolist()} has 0 (copy the input's dimension) entries"
        node.inputs[0] = inner.inputs[0]
        return f"applied at {site}: {inner.op} then Reshape -> one Reshape to {target.tolist()}"

    def _transpose_onnx(self, graph, node) -> Optional[str]:
        x = node.inputs[0]
        inner = x.inputs[0] if len(x.inputs) == 1 and x.inputs[0].op == "Transpose" else None
        base = inner.inputs[0] if inner is not None else x
        rank = len(base.shape) if base.shape is not None else None
        outer = _onnx_perm(node, rank)
        if inner is None and (outer is None or outer != list(range(len(outer)))):
            return None
        site = node.name or node.outputs[0].name
        if outer is None:
            return f"declined at {site}: unknown rank"
        perm = outer
        if inner is not None:
            first = _onnx_perm(inner, rank)
            if first is None:
                return f"declined at {site}: unknown rank"
            perm = [first[i] for i in outer]
        if perm == list(range(len(perm))):
            return self._drop_onnx(graph, node, base, site, "transpose")
        node.inputs[0] = base
        node.attrs["perm"] = perm
        return f"applied at {site}: two Transposes -> one Transpose {perm}"

    @staticmethod
    def _drop_onnx(graph, node, source, site: str, what: str) -> str:
        out = node.outputs[0]
        if is_graph_output(graph, out):
            return f"declined at {site}: identity {what} writes a graph output"
        redirect_readers(out, source)
        node.outputs.clear()
        return f"applied at {site}: identity {what} removed"


def _shape(node) -> Optional[tuple]:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if val is None or not hasattr(val, "shape"):
        return None
    if not all(isinstance(d, int) for d in val.shape):
        return None
    return tuple(int(d) for d in val.shape)


def _fx_perm(node, rank: Optional[int]) -> Optional[List[int]]:
    if rank is None:
        return None
    if node.target is _aten.permute.default:
        return [d % rank for d in node.args[1]]
    if node.target is _aten.t.default:
        return [1, 0] if rank == 2 else [0]
    d0, d1 = node.args[1] % rank, node.args[2] % rank
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return perm


def _onnx_perm(node, rank: Optional[int]) -> Optional[List[int]]:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    return list(reversed(range(rank))) if rank is not None else None


def _static(shape: Optional[Sequence]) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) for d in shape)


def _is_output(node) -> bool:
    return any(u.op == "output" for u in node.users)


def _site(node) -> str:
    return fx_path(node) or "<top>"


def _result(details: List[str]) -> PassResult:
    applied = sum(d.startswith("applied") for d in details)
    summary = f"collapsed {applied} reshape/transpose site(s)"
    if len(details) > applied:
        summary += f", declined {len(details) - applied}"
    return PassResult(changed=applied > 0, summary=summary, details=details)
