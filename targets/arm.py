"""The arm target: 64-bit ARM Linux boards with NEON (Raspberry Pi 4/5, Jetson, RK3588 ...), cross-compiled.

LLVM generates aarch64 code on this machine; a cross linker (zig by default, see ``toolchain.py``) turns it into
a shared object whose only dependency is the board's libc, so the board needs nothing but TVM's runtime.

Why ``cortex-a72`` is the default CPU: it is an ARMv8.0-A core, so the code uses no instruction that a Cortex-A53,
A55, A72, A76 or Neoverse board lacks (``cortex-a76`` would let LLVM emit ARMv8.2 fp16/dotprod/LSE instructions
that fault on a Raspberry Pi 4 or an A53), while LLVM schedules for a real out-of-order core rather than
``generic``'s in-order model. Boards with newer cores should say so: ``cpu = "cortex-a76"`` and
``features = ["+neon", "+dotprod"]``, which MetaSchedule also reads to pick its dot-product rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import tvm

from aglmc.dsl.params import Param
from aglmc.errors import TargetError
from aglmc.targets.base import BuildInfo, Target, register_target
from aglmc.targets.llvm import build_library, check_features, cpu_check
from aglmc.targets.toolchain import LINKERS, find_linker
from aglmc.targets.tuning.settings import TUNE_PARAMS  # aglmc issue 7: tune_* settings

DEFAULT_TRIPLE = "aarch64-linux-gnu"


def _check_triple(triple: str) -> Optional[str]:
    parts = triple.split("-")
    if parts[0] != "aarch64" or len(parts) < 3 or "linux" not in parts:
        return f"the arm target builds for 64-bit ARM Linux (aarch64-*-linux-*), got '{triple}'"
    return None


@register_target
class ArmTarget(Target):
    """aarch64 Linux boards with NEON, cross-compiled and cross-linked on this machine."""

    kind = "arm"
    library_name = "arm.so"
    params = (
        Param("triple", "str", default=DEFAULT_TRIPLE, check=_check_triple,
              doc="LLVM target triple of the board (aarch64-linux-gnu for glibc boards)"),
        Param("cpu", "str", default="cortex-a72", check=cpu_check(DEFAULT_TRIPLE),
              doc="the board's core as an LLVM CPU name (-mcpu); cortex-a72 code runs on every ARMv8-A core"),
        Param("features", "list[str]", default=("+neon",), check=check_features,
              doc="LLVM features (-mattr), each +name or -name: +neon, +dotprod, +i8mm, +fullfp16"),
        Param("threads", "int", default=4, min=1,
              doc="the board's cores the kernels are scheduled for (TVM's num-cores)"),
        Param("linker", "enum", default="zig", choices=LINKERS,
              doc="zig (the ziglang package, no system packages) or gcc (Debian's g++-aarch64-linux-gnu)"),
        Param("board", "str", default="",
              doc="verify the library on this board after building: KEY@HOST:PORT (a tracker), HOST:PORT or KEY "
                  "(at the local tracker); empty: no board. Tuning measures on it too (a tracker key)"),
        Param("board_jobs", "int", default=1, min=1,
              doc="boards of the key used in parallel for that verification, and for tuning (a farm)"),
        *TUNE_PARAMS,  # aglmc issue 7
    )

    @classmethod
    def tvm_target(cls, settings: Mapping[str, Any]) -> tvm.target.Target:
        s = cls.resolve(settings)
        return tvm.target.Target({"kind": "llvm", "mtriple": s["triple"], "mcpu": s["cpu"],
                                  "mattr": list(s["features"]), "num-cores": s["threads"]})

    @classmethod
    def build(cls, mod: tvm.IRModule, settings: Mapping[str, Any], out_path: Path, *, database=None) -> BuildInfo:
        s = cls.resolve(settings)
        linker = find_linker(s["linker"], s["triple"])  # before compiling: a missing toolchain fails fast
        return build_library(cls.kind, mod, cls.tvm_target(s), s, out_path, linker, machine="aarch64",
                             database=database)

    # aglmc issue 7: autotuning, measured on the board named by `board` (boards of a key: a farm)
    @classmethod
    def tune(cls, mod: tvm.IRModule, settings: Mapping[str, Any], *, trials: Optional[int] = None,
             base_dir: Optional[Path] = None, log=print, **options):
        """Tune ``mod``'s kernels on the board ``board`` (``board_jobs`` boards of its key in parallel) into the
        arm target's tuning database; candidates are cross-linked here into ready aarch64 libraries."""
        from aglmc.targets.tuning import RunnerSpec, tune_kernels

        s = cls.resolve(settings)
        asks = trials > 0 if trials is not None else (s["tune_trials"] > 0 or s["tune_seconds"] > 0)
        if not s["board"]:
            if asks:
                raise TargetError("tuning the arm target measures candidates on a board, and its block names none",
                                  hint='set board = "KEY@HOST:PORT" (a tracker key); aglmc board start --emulated '
                                       "starts an emulated one")
            options["report_defaults"] = False  # nothing to time them on
        linker = find_linker(s["linker"], s["triple"])
        runner = RunnerSpec(s["board"] or None, s["board_jobs"])
        return tune_kernels(mod, cls.tvm_target(s), s, linker, runner, kind=cls.kind, trials=trials,
                            base_dir=base_dir, log=log, **options)
