"""aglmc's CPU back end: a Relax pipeline with default schedule rules, fast without tuning.

>>> target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
>>> executable, report = compile_cpu(mod, target)
>>> print(report)          # which rule scheduled each fused function, and its MACs
"""

from .isa import VectorISA, vector_isa
from .pipeline import compile_cpu, cpu_pipeline, pipeline_steps
from .report import ScheduledFunction, ScheduleReport, estimate_macs
from .rules import default_rules

__all__ = [
    "ScheduleReport",
    "ScheduledFunction",
    "VectorISA",
    "compile_cpu",
    "cpu_pipeline",
    "default_rules",
    "estimate_macs",
    "pipeline_steps",
    "vector_isa",
]
