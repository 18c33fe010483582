"""The tuning settings of a CPU target block, and where its tuning database lives.

Every LLVM CPU target (host, arm) carries :data:`TUNE_PARAMS`; a schedule writes them in its target block::

    target host {
        tune_trials  = 200      # MetaSchedule trials for this model, split over its kernels; 0: no tuning
        tune_seconds = 900      # and stop after 15 minutes, whichever comes first (0: no time limit)
        tune_tasks   = 8        # only the 8 kernels with the most multiply-accumulates (0: all)
        cost_model   = xgb      # xgb (learns from the measurements) or random
        tuning_db    = "tuning" # keep the records in the project (relative to the .sched file)
    }

Whatever the budget, a build applies the records the database already holds for the target; a budget only
decides whether the build measures more. The database is keyed by target: one folder per TVM target (and TVM
version) under ``tuning_db``, else under ``$AGLMC_TUNING_DB``, else ``~/.cache/aglmc/tuning``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from aglmc.dsl.params import Param

COST_MODELS = ("xgb", "random")

TUNE_PARAMS = (
    Param("tune_trials", "int", default=0, min=0,
          doc="MetaSchedule trials for this model's kernels, split over them by their untuned latency; 0: no "
              "tuning unless tune_seconds is set (records already in the tuning database are still used)"),
    Param("tune_seconds", "float", default=0.0, min=0,
          doc="stop tuning after this many seconds, keeping what was measured (0: no time limit); alone, tune "
              "for this long (up to 64 trials per kernel)"),
    Param("tune_tasks", "int", default=0, min=0,
          doc="tune only the N kernels with the most multiply-accumulates (0: all kernels)"),
    Param("cost_model", "enum", default="xgb", choices=COST_MODELS,
          doc="how MetaSchedule ranks candidates before measuring: xgb (learns from measurements) or random"),
    Param("tuning_db", "str", default="",
          doc="folder of the tuning database (relative to the .sched file); empty: $AGLMC_TUNING_DB, else "
              "~/.cache/aglmc/tuning"),
)


@dataclass(frozen=True)
class TuneSettings:
    """The tuning part of a resolved target block (see :data:`TUNE_PARAMS`)."""

    trials: int = 0
    seconds: float = 0.0
    tasks: int = 0
    cost_model: str = "xgb"
    tuning_db: str = ""

    @staticmethod
    def from_settings(settings: Mapping[str, Any]) -> "TuneSettings":
        return TuneSettings(trials=int(settings.get("tune_trials", 0)),
                            seconds=float(settings.get("tune_seconds", 0.0)),
                            tasks=int(settings.get("tune_tasks", 0)),
                            cost_model=str(settings.get("cost_model", "xgb")),
                            tuning_db=str(settings.get("tuning_db", "")))


def wants_tuning(settings: Mapping[str, Any]) -> bool:
    """Whether a target block asks for tuning: a trial budget or a time budget."""
    tune = TuneSettings.from_settings(settings)
    return tune.trials > 0 or tune.seconds > 0


def is_tunable(target_cls) -> bool:
    """Whether a target class takes the tuning settings (the LLVM CPU targets do)."""
    return any(p.name == "tune_trials" for p in getattr(target_cls, "params", ()))


def cache_root() -> Path:
    """``$AGLMC_TUNING_DB``, else ``$XDG_CACHE_HOME/aglmc/tuning`` (``~/.cache/aglmc/tuning``)."""
    if os.environ.get("AGLMC_TUNING_DB"):
        return Path(os.environ["AGLMC_TUNING_DB"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aglmc" / "tuning"


def target_key(tvm_target) -> str:
    """The database folder name of a TVM target: readable, plus a hash of the whole target and TVM's version.

    Records are only valid for the target they were measured on (CPU, features, cores) and may not replay on
    another TVM version, so both are in the hash: ``llvm-x86_64-sapphirerapids-3f2a9c01d4e5``.
    """
    import tvm

    spec = json.loads(str(tvm_target))
    text = json.dumps(spec, sort_keys=True)
    digest = hashlib.sha256(f"tvm {tvm.__version__}\n{text}".encode()).hexdigest()[:12]
    arch = str(spec.get("mtriple") or "host").split("-")[0]
    cpu = str(spec.get("mcpu") or "generic")
    return "-".join(part.replace("/", "_") for part in (str(spec.get("kind", "target")), arch, cpu, digest))


def database_folder(tvm_target, tuning_db: str = "", base_dir: Optional[Path] = None) -> Path:
    """The folder holding ``tvm_target``'s records: ``ROOT/<target key>``, ROOT being ``tuning_db`` (relative
    paths against ``base_dir``) or :func:`cache_root`."""
    if tuning_db:
        root = Path(tuning_db).expanduser()
        if not root.is_absolute() and base_dir is not None:
            root = Path(base_dir) / root
    else:
        root = cache_root()
    return root / target_key(tvm_target)
