"""Autotuning (aglmc issue 7): tasks from aglmc's pipeline, the resumable per-target database, tuned builds.

Budgets are a handful of trials with a small search (2 shared cores): these tests prove the mechanism (records
land, resume, apply, stay correct), not that tuning finds fast kernels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import EXAMPLES  # noqa: E402

from aglmc.errors import TargetError  # noqa: E402
from aglmc.targets.base import get_target  # noqa: E402
from aglmc.targets.tuning import (MeasureConfig, SearchConfig, Task, TuningDatabase, database_folder,  # noqa: E402
                                  database_for_build, extract_tasks, select_tasks, split_budget, target_key)
from aglmc.targets.tuning.database import NOTES, RECORDS, WORKLOADS  # noqa: E402

SMALL = SearchConfig(batch=4, population_size=32, init_min_unmeasured=8, genetic_num_iters=1)
QUICK = MeasureConfig(number=2, repeat=1, min_repeat_ms=5)
DIGITS = EXAMPLES / "01_digits_cnn"


def digits_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("aglmc_test_tuning_digits_model", DIGITS / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


@pytest.fixture(scope="module")
def digits():
    """(torch model, example input, Relax module) of the trained digits CNN."""
    from aglmc.targets.frontend import relax_from_torch

    model, (x,) = digits_model()
    return model, x, relax_from_torch(model, (x,))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private tuning cache ($AGLMC_TUNING_DB), so tests never read or fill the user's."""
    path = tmp_path / "tuning-cache"
    monkeypatch.setenv("AGLMC_TUNING_DB", str(path))
    return path


def host_target(settings):
    host = get_target("host")
    return host.tvm_target(host.resolve(settings))


# ------------------------------------------------------------------------------------------ budgets and folders
def fake_task(name, macs):
    return Task(name=name, mod=None, shash=name, macs=macs)


def test_budget_split_gives_every_task_a_floor_and_the_rest_by_macs():
    tasks = [fake_task("conv", 1_000_000), fake_task("matmul", 250_000), fake_task("relu", 0)]
    budgets = split_budget(100, tasks, batch=16)
    assert sum(budgets.values()) == 100
    assert budgets == {"conv": 16 + 42, "matmul": 16 + 10, "relu": 16}
    assert split_budget(100, tasks, batch=16) == budgets  # a resumed run computes the same split
    small = split_budget(6, tasks, batch=16)
    assert sum(small.values()) == 6 and min(small.values()) == 1
    assert split_budget(0, tasks, batch=16) == {"conv": 0, "matmul": 0, "relu": 0}
    assert [t.name for t in select_tasks(tasks, 2)] == ["conv", "matmul"]
    # the tuner weighs measured untuned latency (x calls): a slow depthwise kernel with few MACs gets trials
    timed = split_budget(100, tasks, batch=16, weights={"conv": 1.0, "matmul": 1.0, "relu": 2.0})
    assert timed == {"conv": 16 + 13, "matmul": 16 + 13, "relu": 16 + 26}


def test_database_folder_is_keyed_by_target(tmp_path, monkeypatch):
    monkeypatch.setenv("AGLMC_TUNING_DB", str(tmp_path / "cache"))
    one, two = host_target({"threads": 1}), host_target({"threads": 2})
    assert target_key(one) != target_key(two)  # parallel schedules depend on the cores
    assert target_key(one).startswith("llvm-host-")
    assert database_folder(one) == tmp_path / "cache" / target_key(one)
    assert database_folder(one, "tuning", base_dir=tmp_path) == tmp_path / "tuning" / target_key(one)
    monkeypatch.delenv("AGLMC_TUNING_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert database_folder(one) == tmp_path / "xdg" / "aglmc" / "tuning" / target_key(one)


# ------------------------------------------------------------------------------------------ the database files
def tiny_workload():
    """A one-PrimFunc workload and a schedule of it with a real trace (MetaSchedule ignores empty traces)."""
    import tvm
    from tvm import te
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    a = te.placeholder((64,), name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0, name="b")
    mod = _normalize_mod(te.create_prim_func([a, b]))
    sch = tvm.s_tir.Schedule(mod)
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    return mod, sch


def commit(ms_db, mod, sch, seconds):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target({"kind": "llvm"})
    token = ms_db.commit_workload(mod)
    ms_db.commit_tuning_record(ms.database.TuningRecord(sch.trace, token, seconds, target,
                                                        ms.arg_info.ArgInfo.from_entry_func(mod)))


def test_half_written_lines_are_left_out_then_repaired(tmp_path):
    """A crash mid-append leaves a line without its newline: readers skip it, the next writer removes it."""
    import tvm_ffi

    mod, sch = tiny_workload()
    shash = str(tvm_ffi.structural_hash(mod))
    db = TuningDatabase(tmp_path / "db")
    with db.writer('{"kind": "llvm"}', log=lambda _m: None) as ms_db:
        for seconds in ([3e-6], [2e-6], [1e10]):  # the last one failed (MetaSchedule's marker)
            commit(ms_db, mod, sch, seconds)
    db.note(workload=shash, task="double", rule="elementwise", default_seconds=5e-6)
    records = tmp_path / "db" / RECORDS
    whole = records.read_text().splitlines()
    assert len(whole) == 3
    with open(records, "a") as f:  # the crash: half of a fourth record, and a record of an unknown workload
        f.write(json.dumps([7, json.loads(whole[0])[1]]) + "\n" + whole[0][: len(whole[0]) // 2])
    with open(tmp_path / "db" / NOTES, "a") as f:
        f.write('{"workload": "')

    scan = db.scan()
    stats = scan.workloads[shash]
    assert (stats.trials, stats.best_seconds, stats.default_seconds) == (3, 2e-6, 5e-6)
    assert scan.dropped == 2
    assert db.for_build() is not None  # the snapshot opens despite the broken tail

    with db.writer('{"kind": "llvm"}', log=lambda _m: None) as ms_db:  # repairs, then appends after it
        assert records.read_text().endswith("\n") and len(records.read_text().splitlines()) == 3
        commit(ms_db, mod, sch, [1e-6])
    db.note(workload=shash, exhausted=True)  # after a cut-short note line
    scan = db.scan()
    assert (scan.workloads[shash].trials, scan.workloads[shash].best_seconds, scan.dropped) == (4, 1e-6, 0)
    assert scan.workloads[shash].exhausted and scan.workloads[shash].default_seconds == 5e-6
    assert (tmp_path / "db" / WORKLOADS).read_text().count("\n") == 1


def test_build_skips_records_slower_than_the_rules(tmp_path):
    import tvm
    import tvm_ffi

    mod, sch = tiny_workload()
    db = TuningDatabase(tmp_path / "db")
    with db.writer('{"kind": "llvm"}', log=lambda _m: None) as ms_db:
        commit(ms_db, mod, sch, [4e-6])
    target = tvm.target.Target({"kind": "llvm"})
    db.note(workload=str(tvm_ffi.structural_hash(mod)), default_seconds=2e-6)  # the rules were faster
    assert db.for_build() is None
    pruned = db.for_build(only_faster=False)
    assert pruned.query_tuning_record(mod, target, "main") is not None


# ------------------------------------------------------------------------------------------ tasks
def test_cpu_search_space_unrolls_at_most_64_steps():
    """MetaSchedule's LLVM space also samples 512-step explicit unrolling; a MobileNetV2 depthwise kernel tuned with
    it took LLVM 30 s to compile (a warm rebuild 24 s instead of 6 s). aglmc's CPU space stops at 64."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from aglmc.targets.tuning.tuner import UNROLL_MAX_STEPS, design_space

    a, b = te.placeholder((64, 64), name="A"), te.placeholder((64, 64), name="B")
    k = te.reduce_axis((0, 64), name="k")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    context = ms.TuneContext(mod=mod, target=target, space_generator=design_space(target), task_name="mm",
                             num_threads=1)
    lines = [line for space in context.generate_design_space() for line in str(space.trace).splitlines()
             if "sample_categorical" in line]
    assert lines and all(f"candidates={list(UNROLL_MAX_STEPS)}" in line for line in lines), lines
    assert max(UNROLL_MAX_STEPS) == 64


def test_tasks_are_the_pipeline_kernels(digits):
    from tvm import tirx

    from aglmc.targets.tuning.tasks import fused_module

    _model, _x, mod = digits
    target = host_target({"threads": 1})
    tasks = extract_tasks(mod, target)
    fused = fused_module(mod, target)
    names = {g.name_hint for g, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert {t.name for t in tasks} <= names and len(tasks) == len(names)  # no two digits kernels are alike
    assert [t.macs for t in tasks] == sorted((t.macs for t in tasks), reverse=True)
    assert tasks[0].name.startswith("fused_conv2d") and tasks[0].macs == 32 * 16 * 9 * 8 * 8
    for task in tasks:  # a workload is what MetaScheduleApplyDatabase normalizes the function to
        assert [g.name_hint for g in task.mod.get_global_vars()] == ["main"]


def test_repeated_kernels_are_one_task_with_their_calls():
    from aglmc.targets.frontend import relax_from_torch

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))).relu()

    tasks = extract_tasks(relax_from_torch(Twice().eval(), (torch.zeros(2, 16),)), host_target({"threads": 1}))
    (dense,) = [t for t in tasks if t.macs]
    assert (dense.macs, dense.calls) == (2 * 16 * 16, 2)


# ------------------------------------------------------------------------------------------ tuning
def library_function(report, task_name):
    """The report's entry for a task (weight prepacking renames a kernel to <name>_prepacked)."""
    for entry in report.functions:
        if entry.name in (task_name, f"{task_name}_prepacked"):
            return entry
    raise KeyError(task_name)


@pytest.mark.slow
def test_tuned_kernel_is_applied_and_numerically_the_same(digits, cache, tmp_path):
    from aglmc.targets.cpu import compile_cpu
    from aglmc.targets.run import HostRunner

    model, x, mod = digits
    settings = {"threads": 1, "tune_trials": 4, "tune_tasks": 1}
    lines = []
    report = get_target("host").tune(mod, settings, search=SMALL, measure=QUICK, log=lines.append)
    (task,) = report.tasks
    assert (report.trials_run, task.trials, task.budget, report.stopped) == (4, 4, 4, "done")
    assert task.default_seconds is not None and task.default_rule == "conv2d"
    progress = [ln for ln in lines if ln.startswith("tune host [1/1]")]
    assert progress and re.search(r"4/4 trials, best [\d.]+ ms \(rules [\d.]+ ms\), \S+ elapsed, ~\S+ left",
                                  progress[-1])

    target = host_target(settings)
    executable, schedule = compile_cpu(mod, target, database=database_for_build(target, settings,
                                                                               only_faster=False))
    assert library_function(schedule, task.name).rule == "database"
    others = [e for e in schedule.functions if e.name != library_function(schedule, task.name).name]
    assert others and all(e.rule != "database" for e in others)  # only the tuned kernel comes from the database
    path = tmp_path / "host.so"
    get_target("host").build(mod, settings, path, database=database_for_build(target, settings, only_faster=False))
    xs = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    (got,) = HostRunner(path).run([xs])
    with torch.no_grad():
        want = model(torch.from_numpy(xs)).numpy()
    assert np.abs(got - want).max() <= 1e-4

    start = time.monotonic()
    again = get_target("host").tune(mod, settings, search=SMALL, measure=QUICK, log=lines.append)
    assert (again.trials_run, again.stopped) == (0, "nothing to tune")
    assert time.monotonic() - start < 30  # task extraction only: no MetaSchedule, no measurement


def test_time_budget_keeps_what_was_measured(digits, cache):
    _model, _x, mod = digits
    report = get_target("host").tune(mod, {"threads": 1, "tune_trials": 8, "tune_tasks": 1, "tune_seconds": 0.01},
                                     search=SMALL, measure=QUICK, log=lambda _m: None)
    assert report.stopped == "time" and report.trials_run == 0
    assert report.tasks[0].default_seconds is not None  # the baseline was timed and kept
    alone = get_target("host").tune(mod, {"threads": 1, "tune_tasks": 1, "tune_seconds": 0.01},
                                    search=SMALL, measure=QUICK, log=lambda _m: None)
    assert alone.stopped == "time" and alone.tasks[0].budget == 64  # a time budget alone still tunes


def test_arm_tuning_needs_a_board(digits, cache):
    with pytest.raises(TargetError, match="measures candidates on a board"):
        get_target("arm").tune(digits[2], {"tune_trials": 4})


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {digits!r})
from model import build
from aglmc.targets.base import get_target
from aglmc.targets.frontend import relax_from_torch
from aglmc.targets.tuning import MeasureConfig, SearchConfig

model, args = build()
report = get_target("host").tune(
    relax_from_torch(model, args), {{"threads": 1, "tune_trials": {trials}, "tune_tasks": 1}},
    search=SearchConfig(batch=4, population_size=32, init_min_unmeasured=8, genetic_num_iters=1),
    measure=MeasureConfig(number=2, repeat=1, min_repeat_ms=5), log=lambda line: print(line, flush=True))
print("TRIALS_RUN", report.trials_run, flush=True)
"""


@pytest.mark.slow
def test_killed_tuning_resumes_from_the_database(cache, tmp_path):
    """SIGKILL a tuning run once its first batch is recorded, Ctrl-C the rerun after its next batch; the third
    run measures only what is left of the budget."""
    trials = 24
    script = tmp_path / "tune_digits.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT.format(digits=str(DIGITS), trials=trials)))
    env = dict(os.environ, AGLMC_TUNING_DB=str(cache))
    db = TuningDatabase(database_folder(host_target({"threads": 1})))

    def run_until(records: int, sig: int, name: str) -> int:
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: its workers die with it
        try:
            deadline = time.monotonic() + 600
            while not (db.folder / RECORDS).is_file() or db.scan().records < records:
                assert proc.poll() is None, f"{name} ended before it was stopped: {_tail(tmp_path / f'{name}.log')}"
                assert time.monotonic() < deadline, f"{name}: no trial was recorded within 10 minutes"
                time.sleep(0.1)
            os.kill(proc.pid, sig) if sig == signal.SIGINT else os.killpg(proc.pid, sig)
            return proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()

    assert run_until(1, signal.SIGKILL, "killed") == -signal.SIGKILL
    killed = db.scan().records
    assert 1 <= killed < trials, _tail(tmp_path / "killed.log")  # a batch is committed record by record

    code = run_until(killed + 1, signal.SIGINT, "interrupted")  # Ctrl-C: the batch in flight is finished
    interrupted = db.scan().records
    log = (tmp_path / "interrupted.log").read_text()
    assert code != 0 and "stopping after this batch" in log and "interrupted;" in log, log[-2000:]
    assert f"{trials} trials, {killed} already in" in log
    assert interrupted < trials and (interrupted - killed) % 4 == 0  # whole batches: nothing lost

    last = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert last.returncode == 0, last.stdout[-2000:] + last.stderr[-2000:]
    assert f"{trials} trials, {interrupted} already in" in last.stdout
    assert f"TRIALS_RUN {trials - interrupted}" in last.stdout
    (stats,) = [s for s in db.scan().workloads.values() if s.index >= 0]
    assert stats.trials == trials and db.scan().dropped == 0


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text()[-n:] if path.is_file() else ""


# ------------------------------------------------------------------------------------------ the command line
def tuning_project(tmp_path: Path, host_block: str) -> Path:
    """The digits example in ``tmp_path`` with ``host_block`` as its only target block."""
    project = tmp_path / "digits"
    shutil.copytree(DIGITS, project, ignore=shutil.ignore_patterns("__pycache__"))
    sched = project / "digits.sched"
    text = sched.read_text()
    sched.write_text(text[: text.index("target host")] + textwrap.dedent(host_block))
    return sched


def test_tune_without_a_budget_says_how_to_ask(cli, cache, tmp_path):
    sched = tuning_project(tmp_path, "target host { threads = 1 }\n")
    result = cli("tune", sched, "--quiet")
    assert result.code == 1
    assert "no target block sets tune_trials" in result.err and "--trials N" in result.err


@pytest.mark.slow
def test_cli_tune_report_then_warm_build_tunes_nothing(cli, tmp_path):
    """`aglmc tune --report`, then two builds from the project's database: neither measures anything, both
    verify the model as usual, and the build applies the tuned kernel where it beat the rules."""
    from aglmc.compiler.pipeline import BuildOptions, build

    sched = tuning_project(tmp_path, """\
        target host {
            threads = 1
            tune_trials = 4
            tune_tasks = 1
            tuning_db = "tuning"
        }
        """)
    result = cli("tune", sched, "--report")
    assert result.code == 0, result.err
    assert re.search(r"tuning host: 4 trial\(s\) in \S+ \(done\); database .*digits/tuning/llvm-host-", result.out)
    row = next(ln for ln in result.out.splitlines() if ln.startswith("fused_conv2d"))
    assert re.search(r"\s4/4\s+[\d.]+ conv2d\s+[\d.]+\s+[\d.]+x", row), row
    (folder,) = (sched.parent / "tuning").iterdir()

    # Pretend the rules were slow, so the build must apply the tuned kernel: its verification then checks it.
    db = TuningDatabase(folder)
    for shash, stats in db.scan().workloads.items():
        if stats.trials:
            db.note(workload=shash, task="test", rule="test", default_seconds=1.0)
    lines = []
    start = time.monotonic()
    result = build(sched, BuildOptions(out_dir=tmp_path / "out", log=lines.append))
    assert time.monotonic() - start < 120
    assert any("tune host: nothing to tune" in ln for ln in lines)
    assert not any(ln.startswith(("tune host [", "tune host: timed")) for ln in lines)
    (host,) = result.targets
    assert host.info.compile_seconds < 10
    assert "database" in {f.rule for f in host.info.schedule.functions}
    assert result.verification.error_vs_transformed <= 1e-4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "database" in {v["rule"] for v in manifest["targets"][0]["schedule"].values()}


# ------------------------------------------------------------------------------------------ boards
@pytest.mark.slow
def test_tuning_on_the_emulated_board(emulated_board, digits, cache, tmp_path):
    """Candidates cross-linked here into aarch64 libraries, timed on the board over RPC (two workers at the
    key, the farm's code path); the arm library built with the result matches the host library."""
    from aglmc.targets import board
    from aglmc.targets.run import HostRunner

    _model, _x, mod = digits
    arm = get_target("arm")
    settings = {"cpu": "cortex-a76", "board": emulated_board.spec, "board_jobs": 2, "tune_trials": 4,
                "tune_tasks": 1}
    report = arm.tune(mod, settings, search=SMALL, measure=MeasureConfig(number=1, repeat=1, min_repeat_ms=0),
                      log=lambda _m: None)
    (task,) = report.tasks
    assert (report.trials_run, task.trials) == (4, 4) and task.best_seconds is not None
    assert task.default_seconds is not None  # timed on the board too
    target = arm.tvm_target(arm.resolve(settings))
    info = arm.build(mod, settings, tmp_path / "arm.so",
                     database=database_for_build(target, settings, only_faster=False))
    assert library_function(info.schedule, task.name).rule == "database"
    host = get_target("host").build(mod, {}, tmp_path / "host.so").path
    xs = np.random.default_rng(1).standard_normal((4, 1, 1, 8, 8)).astype("float32")
    batches = [[x] for x in xs]
    got = board.run_batches_on_boards(info.path, batches, emulated_board.spec, timeout=120)
    want = [HostRunner(host).run(b) for b in batches]
    # a tuned kernel sums in another order than the host's: the same bound as every build's lowering check
    from aglmc.compiler.verify import LOWERING_RTOL

    scale = max(float(np.abs(w[0]).max()) for w in want)
    assert max(float(np.abs(g[0] - w[0]).max()) for g, w in zip(got, want)) <= LOWERING_RTOL * max(1.0, scale)


def test_tuning_a_board_without_a_tracker_is_refused(digits, cache):
    with pytest.raises(TargetError, match="needs a tracker"):
        get_target("arm").tune(digits[2], {"board": "127.0.0.1:9", "tune_trials": 4, "tune_tasks": 1},
                               search=SMALL, measure=QUICK, log=lambda _m: None)


def test_schedule_error_for_unknown_tune_target(cli, cache, tmp_path):
    sched = tuning_project(tmp_path, "target host { threads = 1 }\n")
    result = cli("tune", sched, "--target", "arm", "--trials", "4", "--quiet")
    assert result.code == 1 and "--target arm" in result.err
