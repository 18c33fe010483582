"""fold_batchnorm: fold an inference batch norm into the convolution or linear layer that feeds it.

``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` is ``conv(x, W * s) + (b - mean) * s + beta``
with ``s = gamma / sqrt(var + eps)`` per output channel, so the batch norm disappears and the model does one
op less per layer with the same outputs (up to float rounding).

Requires: the batch norm is in inference mode and reads the conv/linear output directly, which nothing else
reads; conv weights, BN statistics and affine parameters are constants.
Guarantees: ``batchnorm_folded`` for every selected site that met those conditions; other sites are left alone
and reported with the reason.
Selector: applies to the conv/linear node (``on conv2d`` folds only into convolutions).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.fx_utils import add_constant, finish, get_constant
from aglmc.passes.onnx_utils import constant_value, is_graph_output, single_consumer
from aglmc.passes.select import fx_op_name, fx_path

_FX_PRODUCERS = {"aten.conv2d", "aten.conv1d", "aten.convolution", "aten.linear"}
_FX_BN = {"aten.batch_norm", "aten._native_batch_norm_legit_no_training"}


@register_pass
class FoldBatchNorm(Pass):
    """Fold inference batch norms into the preceding conv / linear layer."""

    name = "fold_batchnorm"
    graph_kinds = ("fx", "onnx")
    guarantees = ("batchnorm_folded",)

    # ---- FX ---------------------------------------------------------------------------------------------
    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        folded: List[str] = []
        declined: List[str] = []
        for bn in list(gm.graph.nodes):
            if bn.op != "call_function" or fx_op_name(bn) not in _FX_BN:
                continue
            reason = self._fold_fx(gm, bn, ctx)
            site = f"{fx_path(bn) or bn.name} ({bn.name})"
            (declined.append(f"{site}: {reason}") if reason else folded.append(site))
        if folded:
            finish(gm)
        return _result(folded, declined)

    def _fold_fx(self, gm, bn, ctx) -> Optional[str]:
        op = fx_op_name(bn)
        producer = bn.args[0]
        if getattr(producer, "op", None) != "call_function" or fx_op_name(producer) not in _FX_PRODUCERS:
            return "not fed by a conv/linear"
        if not ctx.selects(producer):
            return "producer not selected"
        if len(producer.users) != 1:
            return f"{fx_path(producer) or producer.name} output has other users"
        if op == "aten.batch_norm":
            _, gamma, beta, mean, var, training, _mom, eps = bn.args[:8]
            if training:
                return "batch norm in training mode"
        else:  # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps) -> (y, ...)
            _, gamma, beta, mean, var, _mom, eps = bn.args[:7]
            users = list(bn.users)
            if not all(u.target.__name__ == "getitem" and u.args[1] == 0 for u in users):
                return "batch norm statistics outputs are used"
        tensors = {k: get_constant(gm, v) if v is not None else None
                   for k, v in dict(gamma=gamma, beta=beta, mean=mean, var=var).items()}
        if tensors["mean"] is None or tensors["var"] is None:
            return "running statistics are not constants"
        pname = fx_op_name(producer)
        weight_node = producer.args[1]
        weight = get_constant(gm, weight_node)
        bias_node = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("bias")
        bias = get_constant(gm, bias_node) if bias_node is not None else None
        if weight is None or (bias_node is not None and bias is None):
            return "weights are not constants"
        if pname == "aten.convolution" and producer.args[6]:
            return "transposed convolution"
        channels = weight.shape[0]
        dtype = weight.dtype
        gamma_t = tensors["gamma"] if tensors["gamma"] is not None else torch.ones(channels, dtype=dtype)
        beta_t = tensors["beta"] if tensors["beta"] is not None else torch.zeros(channels, dtype=dtype)
        if (gamma is not None and tensors["gamma"] is None) or (beta is not None and tensors["beta"] is None):
            return "batch norm affine parameters are not constants"
        scale = gamma_t.double() / torch.sqrt(tensors["var"].double() + float(eps))
        new_w = (weight.double() * scale.reshape((-1,) + (1,) * (weight.dim() - 1))).to(dtype)
        b0 = bias.double() if bias is not None else torch.zeros(channels, dtype=torch.float64)
        new_b = ((b0 - tensors["mean"].double()) * scale + beta_t.double()).to(dtype)

        w_node = add_constant(gm, new_w, f"{weight_node.target}_bnfold", before=producer)
        b_node = add_constant(gm, new_b, f"{weight_node.target}_bnfold_bias", before=producer)
        args = list(producer.args)
        args[1] = w_node
        if len(args) > 2:
            args[2] = b_node
            producer.args = tuple(args)
        else:
            producer.args = tuple(args)
            producer.kwargs = {**producer.kwargs, "bias": b_node}
        if op == "aten.batch_norm":
            bn.replace_all_uses_with(producer)
        else:
            for user in list(bn.users):
                user.replace_all_uses_with(producer)
                gm.graph.erase_node(user)
        gm.graph.erase_node(bn)
        return None

    # ---- ONNX -------------------------------------------------------------------------------------------
    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        folded: List[str] = []
        declined: List[str] = []
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            reason = self._fold_onnx(graph, bn, ctx)
            site = bn.name or bn.outputs[0].name
            (declined.append(f"{site}: {reason}") if reason else folded.append(site))
        if folded:
            graph.cleanup().toposort()
        return _result(folded, declined)

    def _fold_onnx(self, graph, bn, ctx) -> Optional[str]:
        import onnx_graphsurgeon as gs

        x = bn.inputs[0]
        if len(x.inputs) != 1 or x.inputs[0].op not in ("Conv", "Gemm"):
            return "not fed by a Conv/Gemm"
        producer = x.inputs[0]
        if not ctx.selects(producer):
            return "producer not selected"
        if single_consumer(x) is not bn or is_graph_output(graph, x):
            return f"{producer.name or x.name} output has other users"
        if bn.attrs.get("training_mode", 0):
            return "batch norm in training mode"
        if len(bn.outputs) > 1 and any(o.outputs for o in bn.outputs[1:]):
            return "batch norm statistics outputs are used"
        gamma, beta, mean, var = (constant_value(t) for t in bn.inputs[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            return "batch norm parameters are not constants"
        weight = constant_value(producer.inputs[1])
        bias = constant_value(producer.inputs[2]) if len(producer.inputs) > 2 else None
        if weight is None or (len(producer.inputs) > 2 and bias is None):
            return "weights are not constants"
        eps = float(bn.attrs.get("epsilon", 1e-5))
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        if producer.op == "Gemm":
            if producer.attrs.get("alpha", 1.0) != 1.0 or producer.attrs.get("beta", 1.0) != 1.0:
                return "Gemm with alpha/beta != 1"
            trans_b = producer.attrs.get("transB", 0)
            new_w = weight * (scale[:, None] if trans_b else scale[None, :])
        else:
            new_w = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        b0 = bias.astype(np.float64) if bias is not None else np.zeros(scale.shape, np.float64)
        new_b = (b0 - mean) * scale + beta
        dtype = weight.dtype
        base = producer.name or producer.outputs[0].name
        inputs = [producer.inputs[0], gs.Constant(f"{base}_W_bnfold", new_w.astype(dtype)),
                  gs.Constant(f"{base}_B_bnfold", new_b.astype(dtype))]
        producer.inputs.clear()
        producer.inputs.extend(inputs)
        producer.outputs = [bn.outputs[0]]
        bn.outputs.clear()
        bn.inputs.clear()
        return None


def _result(folded: List[str], declined: List[str]) -> PassResult:
    summary = f"folded {len(folded)} batch norm(s)"
    if declined:
        summary += f", left {len(declined)}"
    return PassResult(changed=bool(folded), summary=summary,
                      details=[f"folded: {s}" for s in folded] + [f"left: {s}" for s in declined])
