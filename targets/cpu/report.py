"""What the CPU pipeline did to each fused function: which rule scheduled it, and how much work it holds."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import tvm
from tvm import s_tir, tirx

from .rules.base import RULE_ATTR

MACS_ATTR = "aglmc.macs"
"""PrimFunc attribute: multiply-accumulates of the function before scheduling (-1 when not static)."""

DATABASE = "database"
"""Rule name reported for a function that a MetaSchedule database scheduled."""

UNSCHEDULED = "unscheduled"
"""Rule name reported for a function that nothing scheduled (the fallback rule should make this never occur)."""


def estimate_macs(func: tirx.PrimFunc) -> int | None:
    """Multiply-accumulates in ``func``: the iteration count of every reduction block whose update is
    ``acc + x * y``. None when such a block's extents are not static."""
    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - TVM raises its ScheduleError type through the FFI: no root block to count
        return None
    total = 0
    for block in _all_blocks(sch, root):
        stmt = sch.get(block)
        if stmt.init is None or not isinstance(stmt.body, tirx.BufferStore):
            continue
        if not _accumulates_product(stmt.body):
            continue
        extents = [iv.dom.extent for iv in stmt.iter_vars]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        total += prod(int(e.value) for e in extents)
    return total


def _all_blocks(sch: s_tir.Schedule, parent):
    for block in sch.get_child_blocks(parent):
        yield block
        yield from _all_blocks(sch, block)


def _accumulates_product(store: tirx.BufferStore) -> bool:
    value = store.value
    if not isinstance(value, tirx.Add):
        return False
    terms = [t.value if isinstance(t, tirx.Cast) else t for t in (value.a, value.b)]
    return any(isinstance(t, tirx.Mul) for t in terms)


@tvm.transform.module_pass(opt_level=0, name="AnnotateMacs")
def annotate_macs(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Record :func:`estimate_macs` on every PrimFunc as ``aglmc.macs``, before scheduling rewrites the loops.

    Run after FuseTIR (it counts fused functions); the attribute survives scheduling and weight prepacking.
    """
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            macs = estimate_macs(func)
            updates[gvar] = func.with_attr(MACS_ATTR, -1 if macs is None else macs)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def call_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How many ``call_tir`` of each PrimFunc (by name) the Relax functions of ``mod`` make (before the VM
    lowering of dataflow turns them into plain calls)."""
    from tvm import relax

    counts: dict[str, int] = {}

    @relax.expr_functor.visitor
    class _Calls(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir" and call.args:
                callee = call.args[0]
                if isinstance(callee, tvm.ir.GlobalVar):
                    counts[callee.name_hint] = counts.get(callee.name_hint, 0) + 1
            for arg in call.args:
                self.visit_expr(arg)

    for _gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Calls().visit_expr(func)
    return counts


def static_args(func: tirx.PrimFunc) -> tuple[tuple[tuple[int, ...], str], ...] | None:
    """(shape, dtype) of each buffer argument of ``func``; None when a shape is symbolic."""
    from tvm.s_tir import meta_schedule as ms

    out = []
    try:
        infos = ms.arg_info.ArgInfo.from_prim_func(func)
    except (TypeError, ValueError, RuntimeError):  # symbolic shapes: TVM cannot make them IntImm arrays
        return None
    for info in infos:
        shape = getattr(info, "shape", None)
        if shape is None or not all(isinstance(d, (int, tirx.IntImm)) for d in shape):
            return None
        out.append((tuple(int(d) for d in shape), str(info.dtype)))
    return tuple(out)


@dataclass(frozen=True)
class ScheduledFunction:
    """One PrimFunc of a built model: its name, the rule that scheduled it, its multiply-accumulates, and (for
    the time shares) its static argument shapes, how often the model calls it, and its measured time per call."""

    name: str
    rule: str
    macs: int | None
    args: tuple | None = None
    calls: int = 1
    ms: float | None = None


@dataclass(frozen=True)
class ScheduleReport:
    """Per-function schedule record of one CPU build, in name order.

    Example (``print(report)``)::

        function                     rule         MACs
        fused_conv2d_add_relu        conv2d       1204224
        fused_matmul_add             matmul       16384
        softmax                      reduction    0
    """

    functions: tuple[ScheduledFunction, ...]

    @staticmethod
    def from_module(mod: tvm.IRModule, calls: dict[str, int] | None = None) -> ScheduleReport:
        """Read the report off a module that went through :func:`~aglmc.targets.cpu.cpu_pipeline` (``calls``:
        :func:`call_counts` of it before "lower dataflow")."""
        entries = []
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            attrs = func.attrs or {}
            if RULE_ATTR in attrs:
                rule = str(attrs[RULE_ATTR])
            elif int(attrs.get("tirx.is_scheduled", 0)):
                rule = DATABASE
            else:
                rule = UNSCHEDULED
            macs = int(attrs[MACS_ATTR]) if MACS_ATTR in attrs else None
            entries.append(ScheduledFunction(gvar.name_hint, rule, None if macs == -1 else macs, static_args(func),
                                             max(1, (calls or {}).get(gvar.name_hint, 1))))
        return ScheduleReport(tuple(sorted(entries, key=lambda e: e.name)))

    def rule_of(self, name: str) -> str:
        """The rule that scheduled the function called ``name``; KeyError when there is none."""
        for entry in self.functions:
            if entry.name == name:
                return entry.rule
        raise KeyError(name)

    @property
    def unscheduled(self) -> list[str]:
        """Names of the functions that no rule and no database scheduled."""
        return [e.name for e in self.functions if e.rule == UNSCHEDULED]

    def __str__(self) -> str:
        width = max([len("function")] + [len(e.name) for e in self.functions])
        lines = [f"{'function':<{width}}  {'rule':<12} MACs"]
        for e in self.functions:
            lines.append(f"{e.name:<{width}}  {e.rule:<12} {'?' if e.macs is None else e.macs}")
        return "\n".join(lines)


def time_kernels(library, report: ScheduleReport, *, budget_ms: int = 2) -> ScheduleReport:
    """``report`` with each kernel's time per call measured in ``library`` (a loaded host module), on random
    inputs of its static shapes (zeros for integer arguments: indices stay in range). A kernel with symbolic
    shapes, or one that does not run, keeps ``ms = None``. About ``budget_ms`` x 3 of calls per kernel."""
    import dataclasses

    import numpy as np

    device = tvm.cpu()
    rng = np.random.default_rng(0)
    modules = [library, *library.imports]
    timed = []
    for entry in report.functions:
        ms = None
        owner = next((m for m in modules if entry.args is not None and m.implements_function(entry.name)), None)
        if owner is not None:
            try:
                args = [tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                                           else np.zeros(shape, dtype), device) for shape, dtype in entry.args]
                evaluator = owner.time_evaluator(entry.name, device, number=1, repeat=3, min_repeat_ms=int(budget_ms))
                ms = float(np.median(evaluator(*args).results)) * 1e3
            except Exception:  # noqa: BLE001 - a kernel that cannot run alone is reported without a time
                ms = None
        timed.append(dataclasses.replace(entry, ms=ms))
    return ScheduleReport(tuple(timed))


def time_shares(report: ScheduleReport) -> dict[str, float]:
    """Each timed kernel's share of the summed kernel time per inference (time per call x calls)."""
    totals = {f.name: f.ms * f.calls for f in report.functions if f.ms is not None}
    whole = sum(totals.values())
    return {name: t / whole for name, t in totals.items()} if whole > 0 else {}
