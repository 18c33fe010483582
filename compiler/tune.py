"""``aglmc tune`` and the tuning steps of ``aglmc build`` (aglmc issue 7).

    check schedule → import model → load data → each scheduled pass → legalize for TVM → import to Relax →
    tune each target that asks for it

``aglmc build`` runs the same "tune <target>" step before building a target whose block sets a tuning budget
(a database that already holds the budget makes it a no-op) and always builds with the target's tuning
database. The tuning itself lives in :mod:`aglmc.targets.tuning`; this module only wires it to schedules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from aglmc.dsl import CheckedSchedule
from aglmc.errors import ScheduleError


def target_settings(target, checked: CheckedSchedule) -> Dict[str, Any]:
    """A target block's settings, with a relative ``tuning_db`` made absolute against the schedule's folder."""
    settings = dict(target.params)
    db = settings.get("tuning_db")
    if db and not Path(db).expanduser().is_absolute():
        settings["tuning_db"] = str((Path(checked.schedule.path).parent / db).resolve())
    return settings


def tunable(kind: str) -> bool:
    from aglmc.targets.base import get_target
    from aglmc.targets.tuning import is_tunable

    return is_tunable(get_target(kind))


def tuning_budget(kind: str, settings: Dict[str, Any]) -> bool:
    """Whether a target block asks for tuning (``tune_trials`` or ``tune_seconds``; never for targets that
    do not tune)."""
    from aglmc.targets.tuning import wants_tuning

    return tunable(kind) and wants_tuning(settings)


def tune_target(kind: str, settings: Dict[str, Any], relax_mod, log: Callable[[str], None],
                trials: Optional[int] = None, **options):
    """Tune ``relax_mod``'s kernels for the target ``kind``; its TuningReport."""
    from aglmc.targets.base import get_target

    return get_target(kind).tune(relax_mod, settings, trials=trials, log=log, **options)


def database_options(kind: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """``{"database": ...}`` for a target's ``build`` when it tunes and its database holds records, else ``{}``."""
    if not tunable(kind):
        return {}
    from aglmc.targets.base import get_target
    from aglmc.targets.tuning import database_for_build

    target = get_target(kind)
    database = database_for_build(target.tvm_target(target.resolve(settings)), settings)
    return {} if database is None else {"database": database}


def tune_schedule(sched_path: Path, options, trials: Optional[int] = None, kinds: Sequence[str] = (),
                  report: bool = False) -> List:
    """``aglmc tune``: the schedule's model through its passes, then tuning; one TuningReport per target tuned.

    Targets: ``kinds`` when given; else those whose block sets ``tune_trials`` or ``tune_seconds``; else (with
    ``trials``) the host.
    ``trials`` overrides the blocks' ``tune_trials``. With ``report`` the default schedules are timed even when
    nothing is left to tune, so every report row has its baseline.
    """
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import (FX_LEGALIZATION, _check_graph_kinds, _run_legalization, _Steps,
                                         _targets_with_host, check_schedule, load_datasets, run_pass)

    steps = _Steps(options.log)
    checked = steps.run("check schedule", check_schedule, Path(sched_path), options.plugins)
    _check_graph_kinds(checked)
    targets = [t for t in _targets_with_host(checked) if tunable(t.kind)]
    chosen = _choose_targets(checked, targets, trials, kinds)
    model = steps.run("import model", load_model, checked)
    datasets = steps.run("load data", load_datasets, checked, model)
    for step in checked.steps:
        steps.run(f"pass {step.name}", run_pass, checked, step, model, datasets, options.log)
    if model.kind == "fx":
        for name in FX_LEGALIZATION:
            steps.run(f"legalize {name}", _run_legalization, name, model)
    relax_mod = steps.run("import to Relax", model.to_relax)
    return [steps.run(f"tune {t.kind}", tune_target, t.kind, target_settings(t, checked), relax_mod, options.log,
                      trials=trials, report_defaults=report)
            for t in chosen]


def _choose_targets(checked: CheckedSchedule, targets, trials: Optional[int], kinds: Sequence[str]):
    if kinds:
        unknown = [k for k in kinds if k not in {t.kind for t in targets}]
        if unknown:
            raise ScheduleError(f"--target {unknown[0]}: the schedule has no target block of that kind that tunes "
                                f"(tunable here: {', '.join(t.kind for t in targets) or 'none'})",
                                hint="add the target block to the schedule")
        return [t for t in targets if t.kind in kinds]
    asked = [t for t in targets if tuning_budget(t.kind, dict(t.params))]
    if asked:
        return asked
    if trials:
        return [t for t in targets if t.kind == "host"]
    raise ScheduleError(f"{checked.schedule.path}: no target block sets tune_trials or tune_seconds, so there is "
                        "nothing to tune",
                        hint="set tune_trials = N in a target block, or pass --trials N (tunes the host)")
