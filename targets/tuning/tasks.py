"""Tuning tasks: the fused kernels of aglmc's CPU pipeline, exactly as its "apply database" step looks them up
(other targets cut their own pipeline before its schedules and call :func:`tasks_of`, e.g. the vulkan target).

MetaSchedule's own task extraction (``relax_integration.extract_tasks``) runs TVM's default legalization; aglmc's
pipeline adds its own steps (``count MACs``, ``mark constants``) whose function attributes are part of the
workload's structural hash. So the tasks are taken from aglmc's pipeline itself: run its steps up to the one
before "apply database", then each PrimFunc, normalized the way ``MetaScheduleApplyDatabase`` normalizes it
(``meta_schedule.normalize_mod``), is one workload. Identical kernels (same shapes, same fused ops) are one task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import tvm

from aglmc.errors import TargetError

APPLY_STEP = "apply database"
PREPACK_STEP = "prepack weights"


@dataclass(frozen=True)
class Task:
    """One kernel to tune.

    ``name`` is the fused PrimFunc's name in the model (the first, when several functions share the workload),
    ``mod`` the workload (an IRModule with one PrimFunc, ``main``), ``shash`` its structural hash as
    MetaSchedule's database writes it, ``macs`` its multiply-accumulates per call (None when not static),
    ``calls`` how often the model runs it (MobileNetV2 repeats blocks of the same shape).
    """

    name: str
    mod: tvm.IRModule
    shash: str
    macs: Optional[int]
    calls: int = 1


def fused_module(relax_mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
    """``relax_mod`` after aglmc's CPU pipeline steps that come before "apply database"."""
    from tvm.s_tir import meta_schedule as ms

    from aglmc.targets.cpu import pipeline_steps

    steps = pipeline_steps(tvm_target, database=ms.database.MemoryDatabase())
    names = [name for name, _ in steps]
    if APPLY_STEP not in names:  # pragma: no cover - guards a rename in targets/cpu/pipeline.py
        raise TargetError(f"aglmc's CPU pipeline has no step '{APPLY_STEP}' (steps: {', '.join(names)})")
    mod = relax_mod
    with tvm_target:
        for name, step in steps[: names.index(APPLY_STEP)]:
            mod = step(mod)
    return mod


def extract_tasks(relax_mod: tvm.IRModule, tvm_target: tvm.target.Target) -> List[Task]:
    """The tuning tasks of a Relax module for ``tvm_target``, heaviest first (by MACs over all calls, then name)."""
    return tasks_of(fused_module(relax_mod, tvm_target))


def tasks_of(fused: tvm.IRModule) -> List[Task]:
    """The tasks of a module whose PrimFuncs are fused and not yet scheduled (any target's pipeline cut before
    its schedules), heaviest first. MACs come from aglmc's count-MACs annotation, else are estimated here."""
    import tvm_ffi
    from tvm import tirx
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from aglmc.targets.cpu.report import MACS_ATTR, call_counts, estimate_macs

    calls = call_counts(fused)
    by_hash: Dict[str, Task] = {}
    for gvar, func in sorted(fused.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        if int((func.attrs or {}).get("tirx.is_scheduled", 0)):
            continue  # a library kernel or one scheduled before the pipeline: nothing to tune
        workload = _normalize_mod(func)
        shash = str(tvm_ffi.structural_hash(workload))
        if func.attrs is not None and MACS_ATTR in func.attrs:
            macs = int(func.attrs[MACS_ATTR])
        else:
            macs = estimate_macs(func)
            macs = -1 if macs is None else macs
        n = max(1, calls.get(gvar.name_hint, 0))
        seen = by_hash.get(shash)
        if seen is not None:
            by_hash[shash] = Task(seen.name, seen.mod, shash, seen.macs, seen.calls + n)
        else:
            by_hash[shash] = Task(gvar.name_hint, workload, shash, None if macs < 0 else macs, n)
    return sorted(by_hash.values(), key=lambda t: (-total_macs(t), t.name))


def total_macs(task: Task) -> int:
    """The task's MACs over all the model's calls of it (0 when unknown)."""
    return (task.macs or 0) * task.calls


def select_tasks(tasks: Sequence[Task], heaviest: int = 0) -> List[Task]:
    """The ``heaviest`` tasks by MACs over all calls (all for 0), heaviest first."""
    ordered = sorted(tasks, key=lambda t: (-total_macs(t), t.name))
    return ordered[:heaviest] if heaviest > 0 else ordered


def split_budget(trials: int, tasks: Sequence[Task], batch: int,
                 weights: Optional[Dict[str, float]] = None) -> Dict[str, int]:
    """Trials per task (by ``shash``) for a model-wide budget of ``trials``.

    Half the budget, at most a batch per task, is an equal floor (every kernel gets looked at); the rest goes in
    proportion to ``weights`` (largest remainders first): the tuner passes each kernel's untuned latency times
    its calls, so the trials go where the time goes; without weights, MACs over all calls. The split depends
    only on its arguments, so a resumed run computes the same budgets.

    >>> split_budget(100, [conv (1M MACs), matmul (0.25M), relu (0)], batch=16)   # -> 16 + 42, 16 + 10, 16
    """
    if not tasks or trials <= 0:
        return {t.shash: 0 for t in tasks}
    floor = min(batch, trials // (2 * len(tasks)))
    budgets = {t.shash: floor for t in tasks}
    rest = trials - floor * len(tasks)
    if weights is None:
        weights = {t.shash: float(total_macs(t)) for t in tasks}
    weights = {t.shash: max(0.0, float(weights.get(t.shash, 0.0))) for t in tasks}
    total = sum(weights.values())
    if rest <= 0:
        return budgets
    if total <= 0:
        weights = {t.shash: 1.0 for t in tasks}
        total = float(len(tasks))
    shares = {h: rest * w / total for h, w in weights.items()}
    for h, share in shares.items():
        budgets[h] += int(share)
    left = rest - sum(int(s) for s in shares.values())
    order = sorted(tasks, key=lambda t: (-(shares[t.shash] - int(shares[t.shash])), -weights[t.shash], t.name))
    for t in order[:left]:
        budgets[t.shash] += 1
    return budgets


def default_kernels(relax_mod: tvm.IRModule, tvm_target: tvm.target.Target, tasks: Sequence[Task]
                    ) -> Dict[str, Tuple[tvm.IRModule, Optional[str]]]:
    """Each task's kernel as an untuned build schedules it (aglmc's rules), ready to time: (module, rule).

    Taken from the pipeline after "prepack weights", where weight packing has moved out of the kernel (it
    runs at compile time), so the kernel is timed as the model runs it. ``SplitLayoutRewritePreproc`` renames a
    kernel it split to ``<name>_prepacked``.
    """
    from aglmc.targets.cpu import pipeline_steps
    from aglmc.targets.cpu.rules.base import RULE_ATTR

    steps = pipeline_steps(tvm_target)
    names = [name for name, _ in steps]
    if PREPACK_STEP not in names:  # pragma: no cover - guards a rename in targets/cpu/pipeline.py
        raise TargetError(f"aglmc's CPU pipeline has no step '{PREPACK_STEP}' (steps: {', '.join(names)})")
    mod = relax_mod
    with tvm_target:
        for _name, step in steps[: names.index(PREPACK_STEP) + 1]:
            mod = step(mod)
    functions = {gvar.name_hint: func for gvar, func in mod.functions_items()}
    kernels = {}
    for task in tasks:
        func = functions.get(f"{task.name}_prepacked") or functions.get(task.name)
        if func is None:
            continue
        attrs = func.attrs or {}
        rule = str(attrs[RULE_ATTR]) if RULE_ATTR in attrs else None
        kernels[task.shash] = (tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), rule)
    return kernels
