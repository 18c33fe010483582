"""Tuning a model's kernels for one target: bounded, resumable, one committed trial at a time.

:func:`tune_kernels` reads the target's database first and measures only what is missing: each task has a
trial budget (:func:`~aglmc.targets.tuning.tasks.split_budget`) and the trials already recorded for its workload
count against it, so a killed run resumes where its records end and a finished one costs nothing to repeat.
The loop, top to bottom:

1. extract tasks        the fused kernels of the target's pipeline (``backend.extract_tasks``), heaviest N
2. read the database    trials recorded per task, default latencies, exhausted searches
3. measure defaults     aglmc's rule schedule of each task, once, with the same runner (the report's baseline)
4. tune in rounds       one batch per unfinished task per round, heaviest first; every measured candidate is
                        committed at once; a line of progress per batch; stop at the trial or time budget

MetaSchedule's task scheduler is not used: with many tasks its gradient scheduler commits nothing until a
first round over all tasks ends, and it cannot stop on a time budget or skip candidates already measured by an
earlier run. Each task keeps MetaSchedule's evolutionary search and shares one cost model, warmed with the
database's records on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from aglmc.errors import TargetError

from .backend import UNROLL_MAX_STEPS, CpuBackend, TuningBackend, design_space  # noqa: F401 - re-exported
from .database import FAILED_SECONDS, TuningDatabase, WorkloadStats
from .measure import MeasureConfig, RunnerSpec, SearchConfig, remove_artifact
from .settings import TuneSettings, database_folder
from .tasks import Task, select_tasks, split_budget

#: with ``tune_seconds`` and no ``tune_trials``, the trial budget: this many per kernel (the time stops it first)
TRIALS_PER_KERNEL_FOR_TIME_BUDGET = 64

#: a task whose search proposes only candidates measured before, this many batches in a row, is exhausted
EMPTY_BATCHES_BEFORE_EXHAUSTED = 3

@dataclass(frozen=True)
class TaskResult:
    """One task after tuning: its trials (all recorded, and run now), best and default kernel latency."""

    name: str
    shash: str
    macs: Optional[int]
    calls: int
    budget: int
    trials: int
    trials_run: int
    best_seconds: Optional[float]
    default_seconds: Optional[float]
    default_rule: Optional[str]
    exhausted: bool = False

    @property
    def speedup(self) -> Optional[float]:
        if self.best_seconds is None or self.default_seconds is None or self.best_seconds <= 0:
            return None
        return self.default_seconds / self.best_seconds

    @property
    def applied(self) -> bool:
        """Whether a build uses the tuned kernel (it beat the default, or no default was measured)."""
        return self.best_seconds is not None and (self.default_seconds is None
                                                  or self.best_seconds < self.default_seconds)


@dataclass(frozen=True)
class TuningReport:
    """What tuning one target did (or, with nothing to do, what its database holds).

    ``stopped`` says why the run ended: ``done`` (every budget met), ``time`` (``tune_seconds`` ran out),
    ``nothing to tune`` (the database already held every budget) or ``no budget``.

    Example (``print(report)``)::

        tuning host: 48 trials in 1m52s (done); database ~/.cache/aglmc/tuning/llvm-x86_64-...
        task                            MACs     trials  rules (ms)           tuned (ms)  speedup
        fused_conv2d9_add13_clip4     1016064        8/8  0.4349 depthwise_conv2d      0.2859  1.52x
        fused_conv2d3_add6_clip1 (x2) 19267584      8/8  0.4220 conv2d                1.2911  0.33x (rules kept)
    """

    target: str
    folder: Path
    tasks: Sequence[TaskResult]
    trials_run: int
    seconds: float
    stopped: str

    def __str__(self) -> str:
        head = (f"tuning {self.target}: {self.trials_run} trial(s) in {_duration(self.seconds)} ({self.stopped}); "
                f"database {self.folder}")
        if not self.tasks:
            return head + "\n(no kernels)"
        names = [t.name + (f" (x{t.calls})" if t.calls > 1 else "") for t in self.tasks]
        rules = ["-" if t.default_seconds is None else f"{t.default_seconds * 1e3:.4f} {t.default_rule or ''}"
                 for t in self.tasks]
        width, rule_width = max(len("task"), *map(len, names)), max(len("rules (ms)"), *map(len, rules))
        lines = [head, f"{'task':<{width}}  {'MACs':>10}  {'trials':>9}  {'rules (ms)':<{rule_width}}  "
                       f"{'tuned (ms)':>10}  speedup"]
        for t, name, rule in zip(self.tasks, names, rules):
            tuned = "-" if t.best_seconds is None else f"{t.best_seconds * 1e3:.4f}"
            speed = "-" if t.speedup is None else f"{t.speedup:.2f}x" + ("" if t.applied else " (rules kept)")
            lines.append(f"{name:<{width}}  {'?' if t.macs is None else t.macs:>10}  "
                         f"{f'{t.trials}/{t.budget}':>9}  {rule:<{rule_width}}  {tuned:>10}  {speed}"
                         + ("  exhausted" if t.exhausted else ""))
        return "\n".join(lines)


def tune_kernels(relax_mod, tvm_target, settings: Mapping[str, Any], linker, runner: Optional[RunnerSpec], *,
                 kind: str, trials: Optional[int] = None, base_dir: Optional[Path] = None,
                 report_defaults: bool = False, log: Callable[[str], None] = print,
                 search: SearchConfig = SearchConfig(), measure: MeasureConfig = MeasureConfig(),
                 backend: Optional[TuningBackend] = None) -> TuningReport:
    """Tune the kernels of ``relax_mod`` for ``tvm_target`` into the target's database; returns the report.

    ``settings`` are the target block's resolved settings (their ``tune_*`` keys, see
    :mod:`~aglmc.targets.tuning.settings`); ``trials`` overrides ``tune_trials``. ``linker`` links candidates,
    ``runner`` says where they run (LLVM CPU targets; another target passes its ``backend`` instead, see
    :mod:`.backend`). The rule schedule of each task about to be tuned is timed once (kept in the
    database: the report's baseline, and what a build compares records against); ``report_defaults`` times it
    for every selected task, even with nothing left to tune. A budget already met in the database means no
    MetaSchedule work and no measurement at all.

    Raises TargetError when the runner cannot measure anything (a board that is down, a tracker without the
    key); trials measured before that stay in the database.
    """
    start = time.monotonic()
    backend = backend if backend is not None else CpuBackend(linker, runner)
    tune = TuneSettings.from_settings(settings)
    if trials is not None:  # an explicit trial budget; 0 also turns a time budget off
        tune = dataclasses.replace(tune, trials=int(trials), seconds=tune.seconds if trials > 0 else 0.0)
    db = TuningDatabase(database_folder(tvm_target, tune.tuning_db, base_dir))
    if tune.trials <= 0 and tune.seconds <= 0 and not report_defaults:
        return TuningReport(kind, db.folder, (), 0, time.monotonic() - start, "no budget")
    # A model tuned to this budget before is recognised without extracting its tasks (legalize and fuse take
    # ~10 s on MobileNetV2): the warm rebuild's tuning step costs a hash of the Relax module.
    key = model_key(relax_mod, tvm_target, tune, backend)
    if not report_defaults and key in db.completed_models():
        log(f"tune {kind}: nothing to tune: this model's {tune.trials} trials are in {db.folder}")
        return TuningReport(kind, db.folder, (), 0, time.monotonic() - start, "nothing to tune")
    tasks = select_tasks(backend.extract_tasks(relax_mod, tvm_target), tune.tasks)
    if tune.trials <= 0 and tune.seconds > 0:  # a time budget alone: trials enough to fill it
        tune = dataclasses.replace(tune, trials=TRIALS_PER_KERNEL_FOR_TIME_BUDGET * len(tasks))
    scan = db.scan()
    # the budget split weighs each kernel's untuned latency: time every selected kernel before the first trial
    missing = [t for t in tasks if _stats(scan, t).default_seconds is None] if tune.trials or report_defaults else []
    budgets, todo = _plan(tune, tasks, scan, search)
    if not missing and not todo:
        if tune.trials > 0:
            log(f"tune {kind}: nothing to tune: all {len(tasks)} kernel(s) have their trials in {db.folder}")
            db.note(model=key, done=True)
        return _report(kind, db, tasks, budgets, {}, 0, time.monotonic() - start,
                       "nothing to tune" if tune.trials > 0 else "no budget")

    session = _Session(kind, tvm_target, tune, db, backend, search, measure, log, start)
    with db.writer(str(tvm_target), log) as ms_db, _stop_on_ctrl_c(session):
        try:
            session.open(ms_db)
            if missing:
                session.measure_defaults(relax_mod, missing)
                scan = db.scan()
                budgets, todo = _plan(tune, tasks, scan, search)
            if session.interrupted:
                raise KeyboardInterrupt
            if todo:
                recorded = sum(min(_stats(scan, t).trials, budgets[t.shash]) for t in tasks)
                log(f"tune {kind}: {len(todo)} of {len(tasks)} kernel(s) to tune, {tune.trials} trials, {recorded} "
                    f"already in {db.folder}" + (f", at most {_duration(tune.seconds)}" if tune.seconds else ""))
                stopped = session.tune(todo, budgets, {t.shash: _stats(scan, t) for t in tasks})
            else:
                stopped = "done"
            if stopped == "interrupted":
                raise KeyboardInterrupt
            if stopped == "done" and tune.trials > 0:
                db.note(model=key, done=True)
        except KeyboardInterrupt:
            log(f"tune {kind}: interrupted; {session.trials_run} trial(s) of this run are in {db.folder}; "
                "run again to resume")
            raise
        finally:
            session.close()
    return _report(kind, db, tasks, budgets, session.run_counts, session.trials_run, time.monotonic() - start,
                   stopped)


@contextlib.contextmanager
def _stop_on_ctrl_c(session: "_Session"):
    """The first Ctrl-C stops tuning after the batch being measured, whose trials are then committed; the second
    ends the process at once (the trials committed so far are on disk either way).

    Python raises KeyboardInterrupt wherever the main thread is, and that is often inside a Python callback that
    MetaSchedule calls from C++ (the cost model), where TVM's FFI turns it into an ordinary error; so the signal
    only sets a flag that the tuning loop reads between batches.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(_signum, _frame):
        if session.interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        session.interrupted = True
        session.log(f"tune {session.kind}: stopping after this batch (Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def model_key(relax_mod, tvm_target, tune: TuneSettings, backend: Optional[TuningBackend] = None) -> str:
    """What a finished tuning run is remembered by: the Relax module (structurally: ops, shapes, weights), the
    pipeline that cuts it into kernels (TVM's version, aglmc's step names), the trial budget and task choice
    (the database folder is already the target's)."""
    import hashlib

    import tvm
    import tvm_ffi

    steps = (backend or CpuBackend(None, None)).pipeline_key(tvm_target)
    text = f"{tvm_ffi.structural_hash(relax_mod)}|{tvm.__version__}|{steps}|{tune.trials}|{tune.tasks}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _stats(scan, task: Task) -> WorkloadStats:
    return scan.workloads.get(task.shash) or WorkloadStats(index=-1)


def _plan(tune: TuneSettings, tasks: Sequence[Task], scan, search: SearchConfig):
    """Trials per task, and the tasks whose database falls short of theirs (heaviest first).

    The budget follows each kernel's untuned latency times its calls when every task has one, else its MACs.
    """
    defaults = {t.shash: _stats(scan, t).default_seconds for t in tasks}
    weights = None
    if tasks and all(v is not None for v in defaults.values()):
        weights = {t.shash: defaults[t.shash] * t.calls for t in tasks}
    budgets = split_budget(tune.trials, tasks, search.batch, weights)
    todo = [t for t in tasks if budgets[t.shash] > _stats(scan, t).trials and not _stats(scan, t).exhausted]
    if weights is not None:
        todo.sort(key=lambda t: -weights[t.shash])
    return budgets, todo


class _Session:
    """The MetaSchedule objects of one tuning run, and its counters."""

    def __init__(self, kind, target, tune: TuneSettings, db: TuningDatabase, backend: TuningBackend,
                 search: SearchConfig, measure: MeasureConfig, log, start: float):
        self.kind, self.target, self.settings, self.db = kind, target, tune, db
        self.backend, self.search, self.measure = backend, search, measure
        self.log, self.start = log, start
        self.trials_run = 0
        self.interrupted = False  # set by the first Ctrl-C (see _stop_on_ctrl_c)
        self.run_counts: Dict[str, int] = {}
        self.opened = False
        self.cost_model = None
        self.ms_db = None

    def open(self, ms_db) -> None:
        self.ms_db = ms_db
        self.backend.open(self.target, self.measure)
        self.opened = True

    def close(self) -> None:
        if self.opened:
            self.backend.close()

    # ---- the untuned baseline -------------------------------------------------------------------------
    def measure_defaults(self, relax_mod, tasks: Sequence[Task]) -> None:
        """Time aglmc's rule schedule of each task with the tuning runner; note it in the database."""
        from tvm.s_tir import meta_schedule as ms

        kernels = self.backend.default_kernels(relax_mod, self.target, tasks)
        timed = [t for t in tasks if t.shash in kernels]
        mods = [kernels[t.shash][0] for t in timed]
        outcomes = self._measure(mods, [ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True) for m in mods])
        if outcomes and all(o.stage == "run" for o in outcomes):
            raise TargetError(f"tuning {self.kind}: nothing runs on {self.backend.describe()}: "
                              f"{outcomes[0].error}")
        for task, outcome in zip(timed, outcomes):
            if outcome.seconds is None:
                self.log(f"tune {self.kind}: could not time the default schedule of {task.name}: {outcome.error}")
                continue
            self.db.note(workload=task.shash, task=task.name, rule=kernels[task.shash][1],
                         default_seconds=outcome.seconds)
        self.log(f"tune {self.kind}: timed the default schedules of {len(timed)} kernel(s) on "
                 f"{self.backend.describe()} ({_duration(time.monotonic() - self.start)})")

    # ---- the search ---------------------------------------------------------------------------------
    def tune(self, todo: Sequence[Task], budgets: Dict[str, int], stats: Dict[str, WorkloadStats]) -> str:
        self.backend.load_intrinsics()
        done = {t.shash: stats[t.shash].trials for t in todo}
        best = {t.shash: stats[t.shash].best_seconds for t in todo}
        defaults = {t.shash: stats[t.shash].default_seconds for t in todo}
        states: Dict[str, _TaskState] = {}
        active = list(todo)
        total_left = sum(budgets[t.shash] - done[t.shash] for t in todo)
        run_start = time.monotonic()
        try:
            return self._rounds(todo, active, states, budgets, done, best, defaults, total_left, run_start)
        finally:
            for state in states.values():
                state.context.post_tuning()

    def _rounds(self, todo, active, states, budgets, done, best, defaults, total_left, run_start) -> str:
        """One batch per active task per round, until every budget is met or the time is up."""
        while active:
            for task in list(active):
                if self.interrupted:
                    return "interrupted"
                if self.settings.seconds and time.monotonic() - self.start >= self.settings.seconds:
                    self.log(f"tune {self.kind}: time budget of {_duration(self.settings.seconds)} reached")
                    return "time"
                left = budgets[task.shash] - done[task.shash]
                try:
                    state = states.get(task.shash) or self._start_task(task, left)
                    states[task.shash] = state
                    measured = self._batch(task, state, left)
                except (TargetError, KeyboardInterrupt):
                    raise
                except Exception as e:  # MetaSchedule cannot search this kernel: keep the rules for it
                    if self.interrupted:  # a Ctrl-C that landed in a callback from C++, turned into an error
                        return "interrupted"
                    from aglmc.targets.compile import error_summary

                    self.log(f"tune {self.kind}: cannot tune {task.name}: {error_summary(e)}; it keeps its rule")
                    active.remove(task)
                    continue
                if self.interrupted and not measured:
                    return "interrupted"
                if measured is None:  # the search has nothing new to offer
                    self.db.note(workload=task.shash, task=task.name, exhausted=True, trials=done[task.shash])
                    self.log(f"tune {self.kind}: {task.name}: the search found no new candidates after "
                             f"{done[task.shash]} trial(s); done with it")
                    active.remove(task)
                    continue
                done[task.shash] += len(measured)
                for seconds in measured:
                    if seconds is not None and (best[task.shash] is None or seconds < best[task.shash]):
                        best[task.shash] = seconds
                total_left -= len(measured)
                if done[task.shash] >= budgets[task.shash]:
                    active.remove(task)
                self._progress(todo.index(task) + 1, len(todo), task, done[task.shash], budgets[task.shash],
                               best[task.shash], defaults[task.shash], run_start, max(total_left, 0))
        return "done"

    def _start_task(self, task: Task, left: int) -> "_TaskState":
        from tvm.s_tir import meta_schedule as ms

        from aglmc.targets.llvm import usable_cores

        if self.cost_model is None:
            self.cost_model = (ms.cost_model.XGBModel(num_tuning_cores=usable_cores())
                               if self.settings.cost_model == "xgb" else ms.cost_model.RandomModel())
        context = ms.TuneContext(mod=task.mod, target=self.backend.search_target(self.target),
                                 space_generator=self.backend.design_space(self.target),
                                 search_strategy=self.search.strategy(), task_name=task.name,
                                 num_threads=usable_cores(), rand_state=self.search.seed)
        token = self.ms_db.commit_workload(task.mod)
        known = self._measured_before(context, token)
        # the search stops after max_trials; candidates it proposes that were measured before are skipped, so
        # let it propose more than the trials left
        context.pre_tuning(max_trials=left * 4 + self.search.batch, num_trials_per_iter=self.search.batch,
                           design_spaces=context.generate_design_space(), database=self.ms_db,
                           cost_model=self.cost_model)
        return _TaskState(context, token, known)

    def _measured_before(self, context, token) -> set:
        """Structural hashes of the candidates the database holds for this workload (so they are not re-measured),
        and, with the xgb cost model, those records taught to it (a resumed run does not start from zero)."""
        import tvm_ffi
        from tvm.s_tir import meta_schedule as ms

        records = list(self.ms_db.get_top_k(token, 1 << 30))
        known = set()
        candidates, results = [], []
        for record in records:
            try:
                candidate = record.as_measure_candidate()
            except Exception:  # a trace that no longer replays: it cannot be re-proposed either
                continue
            known.add(int(tvm_ffi.structural_hash(candidate.sch.mod)))
            candidates.append(candidate)
            results.append(ms.runner.RunnerResult(run_secs=list(record.run_secs), error_msg=None))
        if candidates and isinstance(self.cost_model, ms.cost_model.XGBModel):
            self.cost_model.update(context, candidates, results)
        return known

    def _batch(self, task: Task, state: "_TaskState", left: int) -> Optional[List[Optional[float]]]:
        """Measure one batch of new candidates and commit each; their mean seconds (None: failed).

        None when the search is exhausted: it ended, or proposed only known candidates several times running.
        """
        import tvm_ffi
        from tvm.s_tir import meta_schedule as ms

        while True:
            candidates = state.context.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = []
            for candidate in candidates:
                key = int(tvm_ffi.structural_hash(candidate.sch.mod))
                if key not in state.known:
                    state.known.add(key)
                    fresh.append(candidate)
            fresh = fresh[:left]
            if fresh:
                break
            state.empty += 1
            if state.empty >= EMPTY_BATCHES_BEFORE_EXHAUSTED:
                return None
        state.empty = 0
        if self.interrupted:  # Ctrl-C while the search was choosing: stop before building
            return []
        outcomes = self._measure([c.sch.mod for c in fresh], [c.args_info for c in fresh])
        if all(o.stage == "run" for o in outcomes):
            raise TargetError(f"tuning {task.name} on {self.backend.describe()}: every candidate of a batch "
                              f"failed to run: {outcomes[0].error}",
                              hint="the trials measured before this batch are kept; fix the runner and rerun")
        for candidate, outcome in zip(fresh, outcomes):
            run_secs = list(outcome.result.run_secs) if outcome.seconds is not None else [FAILED_SECONDS]
            self.ms_db.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, state.token, run_secs,
                                                                     self.target, candidate.args_info))
            self.trials_run += 1
            self.run_counts[task.shash] = self.run_counts.get(task.shash, 0) + 1
        state.context.notify_runner_results(fresh, [o.result for o in outcomes])
        good = [(c, o.result) for c, o in zip(fresh, outcomes) if o.seconds is not None]
        if good:
            self.cost_model.update(state.context, [c for c, _ in good], [r for _, r in good])
        return [o.seconds for o in outcomes]

    # ---- build + run ------------------------------------------------------------------------------------
    def _measure(self, mods: Sequence, args_info: Sequence) -> List["_Outcome"]:
        """Build and run ``mods`` (with their ``args_info``); one outcome each, in order."""
        from tvm.s_tir import meta_schedule as ms

        built = self.backend.build(mods)
        outcomes = [_Outcome(None, error, ms.runner.RunnerResult(run_secs=None, error_msg=error), "build")
                    for _path, error in built]
        inputs = [ms.runner.RunnerInput(path, self.backend.device_type, args_info[i])
                  for i, (path, _) in enumerate(built) if path]
        where = [i for i, (path, _) in enumerate(built) if path]
        try:
            for i, future in zip(where, self.backend.runner.run(inputs) if inputs else []):
                result = future.result()
                seconds = _mean(result.run_secs)
                outcomes[i] = _Outcome(seconds, None if seconds is not None else _last_line(result.error_msg),
                                       result, "" if seconds is not None else "run")
        finally:
            for path, _ in built:
                remove_artifact(path)
        return outcomes

    def _progress(self, number, total, task, done, budget, best, default, run_start, left) -> None:
        elapsed = time.monotonic() - self.start
        rate = (time.monotonic() - run_start) / max(1, self.trials_run)
        remaining = left * rate
        if self.settings.seconds:
            remaining = min(remaining, max(0.0, self.settings.seconds - elapsed))
        best_text = "no valid candidate yet" if best is None else f"best {best * 1e3:.4f} ms"
        if default is not None:
            best_text += f" (rules {default * 1e3:.4f} ms)"
        self.log(f"tune {self.kind} [{number}/{total}] {task.name}: {done}/{budget} trials, {best_text}, "
                 f"{_duration(elapsed)} elapsed, ~{_duration(remaining)} left")


@dataclass
class _TaskState:
    context: Any  # MetaSchedule's TuneContext, pre-tuned
    token: Any  # the task's Workload in the database
    known: set  # structural hashes of candidates measured before (this run or an earlier one)
    empty: int = 0  # batches in a row that proposed nothing new


@dataclass
class _Outcome:
    seconds: Optional[float]  # mean run time; None when the candidate failed
    error: Optional[str]
    result: Any  # MetaSchedule's RunnerResult
    stage: str  # "" (measured), "build" or "run" (where it failed)


def _report(kind: str, db: TuningDatabase, tasks: Sequence[Task], budgets: Dict[str, int],
            run_counts: Dict[str, int], trials_run: int, seconds: float, stopped: str) -> TuningReport:
    scan = db.scan()
    results = []
    for t in tasks:
        s = scan.workloads.get(t.shash) or WorkloadStats(index=-1)
        results.append(TaskResult(name=t.name, shash=t.shash, macs=t.macs, calls=t.calls, budget=budgets[t.shash],
                                  trials=s.trials, trials_run=run_counts.get(t.shash, 0),
                                  best_seconds=s.best_seconds, default_seconds=s.default_seconds,
                                  default_rule=s.default_rule, exhausted=s.exhausted))
    return TuningReport(kind, db.folder, tuple(results), trials_run, seconds, stopped)


def _mean(run_secs) -> Optional[float]:
    if run_secs is None:
        return None
    values = [float(v) for v in run_secs]
    if not values or any(v >= FAILED_SECONDS for v in values):
        return None
    return sum(values) / len(values)


def _last_line(text) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
