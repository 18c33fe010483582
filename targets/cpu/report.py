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


@dataclass(frozen=True)
class ScheduledFunction:
    """One PrimFunc of a built model: its name, the rule that scheduled it, its multiply-accumulates."""

    name: str
    rule: str
    macs: int | None


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
    def from_module(mod: tvm.IRModule) -> ScheduleReport:
        """Read the report off a module that went through :func:`~aglmc.targets.cpu.cpu_pipeline`."""
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
            entries.append(ScheduledFunction(gvar.name_hint, rule, None if macs == -1 else macs))
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
