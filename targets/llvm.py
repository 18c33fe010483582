"""Checks of LLVM CPU settings shared by the CPU targets (host, arm)."""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from aglmc.errors import did_you_mean


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), else all cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def check_features(features: Sequence[str]) -> Optional[str]:
    """A ``Param.check`` for LLVM ``-mattr`` lists: every entry is ``+name`` or ``-name``."""
    bad = [f for f in features if len(f) < 2 or f[0] not in "+-"]
    if bad:
        return f"each feature starts with + or - (e.g. +dotprod, -neon), got {', '.join(map(repr, bad))}"
    return None


def cpu_check(triple: Optional[str]) -> Callable[[str], Optional[str]]:
    """A ``Param.check`` that accepts the CPU names LLVM knows for ``triple`` (None: this machine)."""

    def check(cpu: str) -> Optional[str]:
        import tvm

        spec = {"kind": "llvm", "mtriple": triple} if triple else {"kind": "llvm"}
        known = [str(c) for c in tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target(spec))]
        if known and cpu not in known:
            hint = did_you_mean(cpu, known)
            return f"LLVM knows no CPU '{cpu}'" + (f"; {hint}" if hint else "")
        return None

    return check
