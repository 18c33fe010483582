"""This machine's CPU: a one-line description and its fp32 peak, computed from /proc/cpuinfo.

peak GFLOP/s = cores used × fp32 lanes per vector × FMA units × 2 flops per FMA × clock (GHz)

- lanes from the flags: ``avx512f`` → 16, ``avx2``/``avx`` → 8, ``sse2`` → 4 (NEON ``asimd`` → 4);
- FMA units: 2 (every x86 server core with AVX-512 or AVX2 since Haswell/Skylake-SP has two FMA ports; a
  one-FMA-port AVX-512 part would be half this);
- clock: ``cpu MHz`` (what the kernel last read; on a VM the nominal clock), else the ``@ x.yGHz`` of the
  model name. Turbo is not counted, so a kernel can exceed "100 %" slightly.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from typing import Dict, Optional

FMA_UNITS = 2


@dataclass(frozen=True)
class Cpu:
    model: str
    cores: int
    lanes: int
    isa: str
    fma_units: int
    ghz: float
    clock_source: str

    def peak_gflops(self, threads: int) -> float:
        """fp32 peak of ``threads`` cores (at most the cores there are)."""
        return min(threads, self.cores) * self.per_core_gflops

    @property
    def per_core_gflops(self) -> float:
        return self.lanes * self.fma_units * 2 * self.ghz

    def describe(self, threads: int) -> str:
        return (f"{self.model}, {self.cores} cores visible, {self.isa} ({self.lanes} fp32 lanes) × {self.fma_units} "
                f"FMA units × {self.ghz:.2f} GHz ({self.clock_source}) = {self.per_core_gflops:.0f} GFLOP/s fp32 "
                f"per core; {self.peak_gflops(threads):.0f} GFLOP/s on {threads} thread(s)")

    def to_json(self) -> Dict:
        return asdict(self)


def _first_processor(text: str) -> Dict[str, str]:
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def parse_cpuinfo(text: str, cores: Optional[int] = None) -> Cpu:
    """The :class:`Cpu` that ``/proc/cpuinfo`` text describes (``cores`` defaults to its processor count)."""
    fields = _first_processor(text)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    elif "asimd" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    model = fields.get("model name") or fields.get("Processor") or platform.processor() or "unknown CPU"
    ghz, source = 0.0, "unknown clock"
    named = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    if fields.get("cpu MHz"):
        try:
            ghz, source = float(fields["cpu MHz"]) / 1000.0, "cpu MHz"
        except ValueError:
            pass
    if ghz <= 0 and named:
        ghz, source = float(named.group(1)), "model name"
    if cores is None:
        cores = sum(1 for line in text.splitlines() if line.startswith("processor")) or 1
    return Cpu(model=model, cores=cores, lanes=lanes, isa=isa, fma_units=FMA_UNITS, ghz=ghz, clock_source=source)


def this_cpu() -> Cpu:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read(), cores)
    except OSError:
        return Cpu(platform.processor() or "unknown CPU", cores, 4, "unknown", FMA_UNITS, 0.0, "unknown clock")


def load_average() -> Optional[tuple]:
    try:
        return os.getloadavg()
    except OSError:
        return None
