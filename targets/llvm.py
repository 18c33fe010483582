"""What the LLVM CPU targets (host, arm) share: setting checks, and compiling + linking a library."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from aglmc.errors import TargetError, did_you_mean


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


def build_library(kind: str, mod, tvm_target, settings: Mapping[str, Any], out_path: Path, linker,
                  machine: Optional[str] = None, database=None):
    """Compile ``mod`` with aglmc's CPU pipeline, link it with ``linker`` into ``out_path`` (atomically) and
    check the ELF machine is ``machine`` (a linker that ignored the triple would hand a board an x86 library).
    """
    from aglmc.targets.base import BuildInfo
    from aglmc.targets.compile import compile_relax
    from aglmc.targets.toolchain import elf_machine, export_library

    start = time.perf_counter()
    executable, schedule = compile_relax(mod, tvm_target, database=database)
    compiled = time.perf_counter()
    link_seconds = export_library(executable, out_path, linker)
    if machine is not None and elf_machine(out_path) != machine:
        raise TargetError(f"{linker} produced a {elf_machine(out_path) or 'non-ELF'} library, not {machine}: "
                          f"{out_path}")
    return BuildInfo(kind=kind, path=Path(out_path), target=str(tvm_target), settings=dict(settings),
                     seconds=time.perf_counter() - start, compile_seconds=compiled - start,
                     link_seconds=link_seconds, linker=str(linker), schedule=schedule)
