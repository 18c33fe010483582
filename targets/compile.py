"""The one place where a Relax module becomes an executable for a CPU target.

Every CPU target (host, arm) compiles through :func:`compile_relax`, which runs aglmc's own CPU pipeline
(:func:`aglmc.targets.cpu.compile_cpu`: legalize, fuse, schedule every kernel with the default rules, prepack
weights) rather than ``tvm.compile``'s, which on CPUs neither fuses, parallelizes nor vectorizes.
"""

from __future__ import annotations

from typing import Optional, Tuple

import tvm

from aglmc.errors import AglmcError, TargetError


def compile_relax(mod: tvm.IRModule, tvm_target: tvm.target.Target, *, database=None
                  ) -> Tuple[tvm.relax.VMExecutable, Optional["ScheduleReport"]]:  # noqa: F821
    """Compile ``mod`` for the LLVM ``tvm_target`` into a Relax VM executable (not yet linked) and the report
    of which schedule rule (or tuning record, with a MetaSchedule ``database``) scheduled each kernel.

    A TVM failure becomes a TargetError carrying TVM's most telling message line.
    """
    from aglmc.targets.cpu import compile_cpu

    try:
        return compile_cpu(mod, tvm_target, database=database)
    except AglmcError:
        raise
    except Exception as e:  # TVM raises plain TVMError/RuntimeError subclasses; name the target, keep the cause
        raise TargetError(f"TVM could not compile the model for {tvm_target.kind.name} "
                          f"({_target_brief(tvm_target)}): {error_summary(e)}") from e


def error_summary(e: BaseException) -> str:
    """The most telling line of a (TVM) exception: its last non-empty, non-traceback line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("File ", "at ", "^", "Traceback", "[bt]"))]
    return lines[-1] if lines else type(e).__name__


def _target_brief(t: tvm.target.Target) -> str:
    attrs = t.attrs
    parts = [str(attrs[k]) for k in ("mtriple", "mcpu") if k in attrs]
    return " ".join(parts) or str(t.kind.name)
