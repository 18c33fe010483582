"""The one place where a Relax module becomes an executable.

Every target compiles through :func:`compile_relax`, so swapping TVM's default pipeline for aglmc's own CPU
pipeline (``aglmc.targets.cpu.compile_cpu``: legalize, fuse, schedule the kernels) is a change to this file only.
"""

from __future__ import annotations

import tvm

from aglmc.errors import TargetError


def compile_relax(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.relax.VMExecutable:
    """Compile ``mod`` for ``tvm_target`` into a Relax VM executable (not yet linked).

    Runs under ``with tvm_target:`` because passes that pick schedules (dlight, MetaSchedule's database
    lookups) read the current target. A TVM failure becomes a TargetError carrying TVM's first message line.
    """
    try:
        with tvm_target:
            return tvm.compile(mod, target=tvm_target)
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
