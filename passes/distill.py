"""distill: recover accuracy after compression by fine-tuning the FX graph against the original model.

A bounded knowledge-distillation fine-tune (Hinton et al., 2015): the compressed graph (the *student*) learns
the original module's (the *teacher*'s) softened outputs, ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``,
weighted by ``alpha``, plus ``(1 - alpha) ·`` cross-entropy against the data set's labels when it has them. A
first output that is not ``(batch, classes)`` logits is matched by mean squared error instead.

Requires: an FX graph and the original module as ``ctx.reference_module`` (the build's reference); a data set
(``data``) with the model's inputs. Runs after the passes that change weights (``prune_channels``).
Guarantees: ``distilled``; only the graph's own constants change (the original module's parameters are never
touched: every trained weight is first copied into a new constant of the graph); shapes are unchanged.
Trained: every floating-point constant except batch-norm running statistics (the graph runs batch norm in
inference mode, so they stay as they are). Batches of ``batch_size`` samples drawn with a seeded generator,
``steps`` Adam steps at ``lr``; progress every tenth of the run through ``ctx.log``.
"""

from __future__ import annotations

from typing import List, Set

import numpy as np

from aglmc.dsl.params import Param
from aglmc.errors import PassError
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.select import fx_op_name

_BN = {"aten.batch_norm", "aten._native_batch_norm_legit_no_training", "aten.instance_norm"}


@register_pass
class Distill(Pass):
    """Fine-tune the compressed FX graph by knowledge distillation from the original model."""

    name = "distill"
    graph_kinds = ("fx",)
    guarantees = ("distilled",)
    params = (
        Param("data", "dataset", doc="samples to fine-tune on (labels, when present, add a cross-entropy term)"),
        Param("steps", "int", default=200, min=1, doc="optimizer steps"),
        Param("lr", "float", default=1e-3, min=0.0, min_open=True, doc="Adam learning rate"),
        Param("batch_size", "int", default=32, min=1, doc="samples per step"),
        Param("temperature", "float", default=4.0, min=0.0, min_open=True, doc="softmax temperature T"),
        Param("alpha", "float", default=0.7, min=0.0, max=1.0,
              doc="weight of the distillation loss; 1 - alpha weighs the label loss"),
        Param("seed", "int", default=0, doc="seed of the batch sampler"),
    )

    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        import torch

        from aglmc.passes.prune_runtime import (batch_free, dataset_arrays, first_output, input_names,
                                                traced_batch, workable_batch)

        o = self.options
        teacher = getattr(ctx, "reference_module", None)
        if teacher is None:
            raise PassError("distill needs the original model to learn from (the context's reference_module)")
        if o["data"] not in ctx.datasets:
            raise PassError(f"distill: data set '{o['data']}' is not loaded")
        dataset = ctx.datasets[o["data"]]
        arrays = dataset_arrays(dataset, input_names(gm, ctx.example_inputs), "distill")
        labels = None if dataset.labels is None else torch.as_tensor(np.asarray(dataset.labels)).long()
        count = len(arrays[0])

        trained = make_trainable(gm)
        params = [getattr(gm, name) for name in trained]
        n_weights = sum(p.numel() for p in params)
        student = batch_free(gm)
        micro = workable_batch(student, arrays, o["batch_size"], traced_batch(gm))

        teacher_out = _teacher_outputs(teacher, arrays, traced_batch(gm))
        T, alpha = o["temperature"], o["alpha"]
        use_labels = labels is not None and teacher_out.dim() == 2 and alpha < 1.0
        gen = np.random.default_rng(o["seed"])
        opt = torch.optim.Adam(params, lr=o["lr"])
        every = max(1, o["steps"] // 10)
        losses: List[float] = []
        window: List[float] = []
        ctx.log(f"distill: {n_weights:,} weights, {o['steps']} steps of {o['batch_size']} samples from "
                f"'{dataset.name}' ({count} samples{', labels' if use_labels else ''})")
        try:
            for step in range(1, o["steps"] + 1):
                idx = gen.choice(count, size=min(o["batch_size"], count), replace=False)
                idx = idx[: len(idx) - len(idx) % micro] if len(idx) >= micro else idx
                opt.zero_grad()
                total = 0.0
                for start in range(0, len(idx), micro):
                    part = idx[start:start + micro]
                    inputs = [torch.from_numpy(np.ascontiguousarray(a[part])) for a in arrays]
                    s = first_output(student(*inputs)).float()
                    t = teacher_out[torch.as_tensor(part)]
                    loss = _loss(s, t, labels[torch.as_tensor(part)] if use_labels else None, T, alpha)
                    (loss * len(part) / len(idx)).backward()
                    total += loss.item() * len(part) / len(idx)
                opt.step()
                losses.append(total)
                window.append(total)
                if step % every == 0 or step == o["steps"]:
                    ctx.log(f"distill: step {step}/{o['steps']}  loss {np.mean(window):.4f}")
                    window = []
        finally:
            freeze(gm, trained)
        first = float(np.mean(losses[:every]))
        last = float(np.mean(losses[-every:]))
        return PassResult(True, f"distilled {n_weights:,} weights for {o['steps']} steps on '{dataset.name}'; "
                                f"loss {first:.4f} → {last:.4f}",
                          [f"batch {o['batch_size']} (micro-batches of {micro}), lr {o['lr']:g}, T {T:g}, "
                           f"alpha {alpha:g}{', with labels' if use_labels else ', no labels'}"])


def _teacher_outputs(teacher, arrays: List[np.ndarray], traced: int):
    """The original module's first output on every sample (in chunks of 256, or of the traced batch size when
    the module only runs at that size)."""
    import torch

    from aglmc.passes.prune_runtime import first_output

    was_training = teacher.training
    teacher.eval()

    def run(size):
        outs = []
        for start in range(0, len(arrays[0]), size):
            outs.append(first_output(teacher(*[torch.from_numpy(np.ascontiguousarray(a[start:start + size]))
                                               for a in arrays])).float())
        return torch.cat(outs)

    try:
        with torch.no_grad():
            try:
                return run(256)
            except Exception:
                if traced == 256:
                    raise
                return run(traced)
    finally:
        teacher.train(was_training)


def _loss(student, teacher, labels, T: float, alpha: float):
    import torch.nn.functional as F

    if student.dim() != 2:
        return F.mse_loss(student, teacher)
    kd = F.kl_div(F.log_softmax(student / T, dim=1), F.log_softmax(teacher / T, dim=1), reduction="batchmean",
                  log_target=True) * (T * T)
    if labels is None:
        return kd
    return alpha * kd + (1.0 - alpha) * F.cross_entropy(student, labels)


def _running_stats(gm) -> Set[str]:
    stats = set()
    for n in gm.graph.nodes:
        if n.op == "call_function" and fx_op_name(n) in _BN:
            for arg in n.args[3:5]:
                if getattr(arg, "op", None) == "get_attr":
                    stats.add(str(arg.target))
    return stats


def make_trainable(gm) -> List[str]:
    """Copy every floating-point constant the graph reads (but batch-norm running statistics) into a new
    ``nn.Parameter`` of ``gm`` and point the graph at it; returns the new attribute names. The copies keep the
    original module (which may share storage with the graph) untouched."""
    import torch

    from aglmc.passes.channel_graph import _fx_attr
    from aglmc.passes.prune_channels import _drop_attr

    stats = _running_stats(gm)
    names: List[str] = []
    by_target = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            by_target.setdefault(str(n.target), []).append(n)
    for k, (target, nodes) in enumerate(by_target.items()):
        t = _fx_attr(gm, target)
        if target in stats or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        name = f"_aglmc_train_{k}"
        while hasattr(gm, name):
            name += "_"
        gm.register_parameter(name, torch.nn.Parameter(t.detach().clone()))
        for n in nodes:
            n.target = name
        _drop_attr(gm, target)
        names.append(name)
    gm.recompile()
    return names


def freeze(gm, names: List[str]) -> None:
    """Turn the parameters ``names`` back into plain constants (buffers) of the same names."""
    from aglmc.passes.fx_utils import finish

    for name in names:
        value = getattr(gm, name).detach().clone()
        delattr(gm, name)
        gm.register_buffer(name, value)
    finish(gm)
