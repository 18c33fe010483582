"""Autotuned kernels: MetaSchedule over aglmc's fused CPU kernels, with a resumable per-target database.

>>> from aglmc.targets.base import get_target
>>> report = get_target("host").tune(relax_mod, {"tune_trials": 64})   # measure what the database lacks
>>> print(report)                                                        # per kernel: trials, rules vs tuned
>>> database = database_for_build(tvm_target, settings)                  # what a build applies

- :mod:`.backend`   what the loop needs from a target (tasks, defaults, builder, runner); the CPU one
- :mod:`.settings`  the ``tune_*`` settings of a target block, and where each target's database lives
- :mod:`.tasks`     the kernels to tune, taken from aglmc's own CPU pipeline, and the trial budget per kernel
- :mod:`.database`  the database folder: tolerant reads, append-only writes under a lock, snapshots for builds
- :mod:`.measure`   building candidates into ready libraries, running them here or on boards over RPC
- :mod:`.tuner`     the loop: defaults once, then batches per kernel, each trial committed when measured
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from .backend import CpuBackend, TuningBackend
from .database import TuningDatabase
from .measure import MeasureConfig, RunnerSpec, SearchConfig
from .settings import (TUNE_PARAMS, TuneSettings, cache_root, database_folder, is_tunable, target_key,
                       wants_tuning)
from .tasks import Task, extract_tasks, select_tasks, split_budget
from .tuner import TaskResult, TuningReport, tune_kernels


def database_for_build(tvm_target, settings: Mapping[str, Any], base_dir: Optional[Path] = None,
                       only_faster: bool = True):
    """The MetaSchedule database a build of ``tvm_target`` applies (None when there are no records):
    the best record per kernel, leaving out those slower than aglmc's rules (``only_faster``)."""
    folder = database_folder(tvm_target, TuneSettings.from_settings(settings).tuning_db, base_dir)
    return TuningDatabase(folder).for_build(only_faster=only_faster)


__all__ = [
    "CpuBackend",
    "MeasureConfig",
    "RunnerSpec",
    "SearchConfig",
    "TUNE_PARAMS",
    "Task",
    "TaskResult",
    "TuneSettings",
    "TuningBackend",
    "TuningDatabase",
    "TuningReport",
    "cache_root",
    "database_folder",
    "database_for_build",
    "extract_tasks",
    "is_tunable",
    "select_tasks",
    "split_budget",
    "target_key",
    "tune_kernels",
    "wants_tuning",
]
