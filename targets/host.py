"""The host target: this machine's CPU (x86-64 on the laptops aglmc cross-compiles from), through LLVM.

Used to check a build against the original model before it goes to a board, and to run models locally.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import tvm

from aglmc.dsl.params import Param
from aglmc.targets.base import BuildInfo, Target, register_target
from aglmc.targets.llvm import build_library, check_features, cpu_check, usable_cores
from aglmc.targets.toolchain import host_linker
from aglmc.targets.tuning.settings import TUNE_PARAMS  # aglmc issue 7: tune_* settings

# CPU model names (from /proc/cpuinfo) that LLVM's detection gets wrong. Hypervisors often pass through the
# instruction set of a new CPU with an old or made-up model number: this machine reports model 167, which LLVM
# reads as rocketlake, on a Sapphire Rapids host. Rocketlake code runs there but uses no AMX, AVX512-FP16/BF16.
_MODEL_NAMES = (
    (re.compile(r"Xeon.*\b(Platinum|Gold|Silver|Bronze) [3-9]4\d\d"), "sapphirerapids"),  # 4th gen Xeon SP
    (re.compile(r"Xeon.*\b(Platinum|Gold|Silver|Bronze) [3-9]5\d\d"), "emeraldrapids"),  # 5th gen Xeon SP
    (re.compile(r"Xeon.*\b6\d\d\dP\b"), "graniterapids"),  # Xeon 6 P-cores
    (re.compile(r"AMD EPYC 9\d\d4"), "znver4"),
    (re.compile(r"AMD EPYC 9\d\d5"), "znver5"),
    (re.compile(r"AMD EPYC 7\d\d3"), "znver3"),
)

# When the model name is generic ("Intel(R) Xeon(R) Processor"), the CPU flags still tell the generation apart:
# the first rule whose flags are all present wins.
_FLAG_RULES = (
    ("GenuineIntel", {"amx_tile", "amx_fp16"}, "graniterapids"),
    ("GenuineIntel", {"amx_tile", "avx512_fp16"}, "sapphirerapids"),
    ("AuthenticAMD", {"avx512f", "avx512_bf16", "avx_vnni"}, "znver5"),
    ("AuthenticAMD", {"avx512f", "avx512_bf16"}, "znver4"),
)


def detect_cpu_from_cpuinfo(cpuinfo: str) -> Optional[str]:
    """The LLVM CPU name for the first processor described by ``cpuinfo`` (``/proc/cpuinfo`` text), if known."""
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = fields.get("model name", "")
    for pattern, cpu in _MODEL_NAMES:
        if pattern.search(name):
            return cpu
    vendor, flags = fields.get("vendor_id", ""), set(fields.get("flags", "").split())
    for rule_vendor, needed, cpu in _FLAG_RULES:
        if vendor == rule_vendor and needed <= flags:
            return cpu
    return None


@lru_cache(maxsize=None)
def detect_host_cpu() -> str:
    """This machine's CPU as an LLVM ``-mcpu`` name: from /proc/cpuinfo when known, else LLVM's own guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = detect_cpu_from_cpuinfo(f.read())
    except OSError:
        cpu = None
    return cpu or str(tvm.target.codegen.llvm_get_system_cpu())


def _with_kernel_times(info, settings):
    """``info`` with each kernel's time per call measured here, in the built library (issue 12: the report's
    time shares). The host library runs on this machine, with the build's thread count."""
    import dataclasses

    from aglmc.targets.cpu.report import time_kernels
    from aglmc.targets.run import set_runtime_threads

    if info.schedule is None:
        return info
    set_runtime_threads(int(settings["threads"]))
    library = tvm.runtime.load_module(str(info.path))
    return dataclasses.replace(info, schedule=time_kernels(library, info.schedule))


@register_target
class HostTarget(Target):
    """This machine's CPU, compiled by LLVM for the detected CPU model."""

    kind = "host"
    library_name = "host.so"
    params = (
        Param("threads", "int", default=usable_cores(), min=1,
              doc="cores the kernels are scheduled for (TVM's num-cores); default: all cores"),
        Param("cpu", "str", default=detect_host_cpu(), check=cpu_check(None),
              doc="LLVM CPU name (-mcpu); default: detected from /proc/cpuinfo, else LLVM's guess"),
        Param("features", "list[str]", default=(), check=check_features,
              doc="extra LLVM features (-mattr), each +name or -name"),
        *TUNE_PARAMS,  # aglmc issue 7
    )

    @classmethod
    def tvm_target(cls, settings: Mapping[str, Any]) -> tvm.target.Target:
        s = cls.resolve(settings)
        spec: Dict[str, Any] = {"kind": "llvm", "mcpu": s["cpu"], "num-cores": s["threads"]}
        if s["features"]:
            spec["mattr"] = list(s["features"])
        return tvm.target.Target(spec)

    @classmethod
    def build(cls, mod: tvm.IRModule, settings: Mapping[str, Any], out_path: Path, *, database=None) -> BuildInfo:
        s = cls.resolve(settings)
        info = build_library(cls.kind, mod, cls.tvm_target(s), s, out_path, host_linker(), database=database)
        return _with_kernel_times(info, s)

    # aglmc issue 7: autotuning, measured on this machine
    @classmethod
    def tune(cls, mod: tvm.IRModule, settings: Mapping[str, Any], *, trials: Optional[int] = None,
             base_dir: Optional[Path] = None, log=print, **options):
        """Tune ``mod``'s kernels on this machine into the host's tuning database (see aglmc.targets.tuning)."""
        from aglmc.targets.tuning import RunnerSpec, tune_kernels

        s = cls.resolve(settings)
        return tune_kernels(mod, cls.tvm_target(s), s, host_linker(), RunnerSpec(), kind=cls.kind, trials=trials,
                            base_dir=base_dir, log=log, **options)
