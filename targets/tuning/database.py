"""One target's tuning database: MetaSchedule's JSON files in a folder, read tolerantly, written append-only.

Layout of a database folder (one per TVM target, see :func:`~aglmc.targets.tuning.settings.database_folder`)::

    llvm-x86_64-sapphirerapids-3f2a9c01d4e5/
      target.json                   the TVM target and TVM version the records were measured for
      database_workload.json        MetaSchedule: one line per workload  [structural hash, IRModule]
      database_tuning_record.json   MetaSchedule: one line per trial     [workload line, [trace, run_secs, ...]]
      aglmc_notes.json              aglmc: one line per fact: a kernel's default latency or exhausted search
                                    {"workload", "default_seconds"|"exhausted"}, a model tuned in full {"model"}
      .lock                         held (flock) by the one process that tunes into this folder

Why it survives Ctrl-C and crashes: MetaSchedule's ``JSONDatabase`` appends one line per committed trial (and
one per new workload, before its first trial) and aglmc commits each trial as soon as it is measured, so a
killed run loses at most the trials in flight and at worst leaves a half-written last line. Readers
(:meth:`TuningDatabase.scan`, :meth:`TuningDatabase.for_build`) take only complete lines that parse, and records
whose workload line is present; the writer (:meth:`TuningDatabase.writer`), holding the lock, first rewrites
the files without such a tail (to a temporary file renamed over the original) so new lines never land behind
a broken one. A build reads a snapshot and never blocks on, or disturbs, a tuning run in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from aglmc.errors import TargetError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
NOTES = "aglmc_notes.json"
TARGET = "target.json"
LOCK = ".lock"

FAILED_SECONDS = 1e10  # what MetaSchedule's own callbacks record for a trial that failed to build or run


@dataclass
class WorkloadStats:
    """What the database holds for one workload (by MetaSchedule's structural hash)."""

    index: int  # its line in database_workload.json (what records refer to); -1: none yet (only notes)
    trials: int = 0  # records: every measured candidate, failed ones included
    best_seconds: Optional[float] = None  # the lowest mean run time of a valid record
    default_seconds: Optional[float] = None  # aglmc's untuned (rule) schedule, measured by the same runner
    default_rule: Optional[str] = None
    exhausted: bool = False  # the search ran out of new candidates: tuning more would measure nothing new


@dataclass
class Scan:
    """A tolerant read of a database folder: workloads by hash, and the lines that are sound."""

    workloads: Dict[str, WorkloadStats] = field(default_factory=dict)
    workload_lines: List[str] = field(default_factory=list)
    record_lines: List[str] = field(default_factory=list)
    dropped: int = 0  # lines left out: a half-written tail, or records of a workload line that is missing

    @property
    def records(self) -> int:
        return len(self.record_lines)


class TuningDatabase:
    """The tuning records of one TVM target, in ``folder``.

    >>> db = TuningDatabase(database_folder(target))
    >>> db.scan().workloads[shash].trials        # how many candidates of that kernel were measured
    >>> with db.writer() as ms_db: ...           # a MetaSchedule JSONDatabase to commit trials into
    >>> compile_cpu(mod, target, database=db.for_build())
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.folder)!r})"

    # ---- reading ------------------------------------------------------------------------------------
    def scan(self) -> Scan:
        """Read the folder without locking it; incomplete or unreadable lines are left out (and counted)."""
        scan = Scan()
        hashes: List[str] = []
        for line in _complete_lines(self.folder / WORKLOADS):
            try:
                shash = str(json.loads(line)[0])
            except (ValueError, IndexError, TypeError, KeyError):
                break  # record lines refer to workloads by position: nothing after a bad line can be trusted
            scan.workloads[shash] = WorkloadStats(index=len(hashes))
            hashes.append(shash)
            scan.workload_lines.append(line)
        scan.dropped += _line_count(self.folder / WORKLOADS) - len(scan.workload_lines)
        for line in _complete_lines(self.folder / RECORDS):
            try:
                index, record = json.loads(line)
                run_secs = record[1]
            except (ValueError, TypeError, IndexError):
                continue
            if not isinstance(index, int) or not 0 <= index < len(hashes):
                continue
            stats = scan.workloads[hashes[index]]
            stats.trials += 1
            seconds = _mean_seconds(run_secs)
            if seconds is not None and (stats.best_seconds is None or seconds < stats.best_seconds):
                stats.best_seconds = seconds
            scan.record_lines.append(line)
        scan.dropped += _line_count(self.folder / RECORDS) - len(scan.record_lines)
        for note in self.notes():  # a kernel's default is timed before its first trial commits its workload
            if "workload" not in note:  # a model's note ({"model", "done"}): about no one workload
                continue
            key = str(note["workload"])
            stats = scan.workloads.setdefault(key, WorkloadStats(index=-1))
            if "default_seconds" in note:
                stats.default_seconds = float(note["default_seconds"])
                stats.default_rule = note.get("rule")
            if note.get("exhausted"):
                stats.exhausted = True
        return scan

    def notes(self) -> List[dict]:
        """aglmc's facts about the workloads (default latencies, exhausted searches), oldest first."""
        notes = []
        for line in _complete_lines(self.folder / NOTES):
            try:
                note = json.loads(line)
            except ValueError:
                continue
            if isinstance(note, dict):
                notes.append(note)
        return notes

    def completed_models(self) -> set:
        """Keys of the models (see ``tuner.model_key``) whose tuning budget the database holds in full."""
        return {str(note["model"]) for note in self.notes() if note.get("done") and "model" in note}

    def for_build(self, only_faster: bool = True):
        """A MetaSchedule database with the best record of each workload, for ``MetaScheduleApplyDatabase``;
        None when the folder holds no usable record.

        ``only_faster`` leaves out a workload whose best record is not faster than aglmc's default schedule of
        the same kernel, as measured by the same runner: a short tuning run must not make a build slower than
        the rules. Read from a snapshot, so a tuning run appending at the same time is neither seen half-way
        nor disturbed.
        """
        if not (self.folder / RECORDS).is_file():
            return None
        scan = self.scan()
        keep_workloads = {stats.index for stats in scan.workloads.values()
                          if stats.index >= 0 and stats.best_seconds is not None
                          and not (only_faster and stats.default_seconds is not None
                                   and stats.best_seconds >= stats.default_seconds)}
        records = [line for line in scan.record_lines if json.loads(line)[0] in keep_workloads]
        if not records:
            return None
        from tvm.s_tir import meta_schedule as ms

        with tempfile.TemporaryDirectory(prefix="aglmc-tuning-snapshot-") as tmp:
            _write_lines(Path(tmp) / WORKLOADS, scan.workload_lines)
            _write_lines(Path(tmp) / RECORDS, records)
            snapshot = ms.database.JSONDatabase(work_dir=tmp, allow_missing=False)
            pruned = ms.database.MemoryDatabase()
            snapshot.dump_pruned(pruned)  # the best record per workload is all a build needs
        return pruned

    # ---- writing ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, target_json: str, log: Callable[[str], None] = print, wait: float = 3600.0
               ) -> Iterator["object"]:
        """Hold the folder's lock, repair a broken tail, and yield MetaSchedule's ``JSONDatabase`` over it.

        One process tunes into a folder at a time: a second one waits up to ``wait`` seconds for the lock.
        """
        from tvm.s_tir import meta_schedule as ms

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a+") as lock:
            _lock(lock, self.folder, log, wait)
            try:
                self._write_target(target_json)
                repaired = self.repair()
                if repaired:
                    log(f"tuning database {self.folder}: left out {repaired} incomplete line(s) "
                        "(an interrupted run)")
                yield ms.database.JSONDatabase(work_dir=str(self.folder), allow_missing=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def repair(self) -> int:
        """Rewrite the files without lines that :meth:`scan` leaves out; returns how many were dropped.

        Call with the lock held. Each file is replaced atomically (temporary file + rename), and only if
        something was wrong with it.
        """
        scan = self.scan()
        if scan.dropped == 0:
            return 0
        for name, lines in ((WORKLOADS, scan.workload_lines), (RECORDS, scan.record_lines)):
            path = self.folder / name
            if _line_count(path) != len(lines) or _has_tail(path):
                _write_lines(path, lines)
        return scan.dropped

    def note(self, **entry) -> None:
        """Append one fact to ``aglmc_notes.json`` (flushed and synced: it is one line or nothing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / NOTES
        if _has_tail(path):  # a line cut short by a crash: end it, so the new one parses
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n")
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_target(self, target_json: str) -> None:
        import tvm

        path = self.folder / TARGET
        text = json.dumps({"target": json.loads(target_json), "tvm": tvm.__version__}, indent=1, sort_keys=True)
        if not path.is_file() or path.read_text() != text:
            _write_lines(path, [text])


# ---- helpers ----------------------------------------------------------------------------------------
def _complete_lines(path: Path) -> List[str]:
    """The non-empty lines of ``path`` that end with a newline (a line still being written has none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or empty)
    return [ln for ln in lines if ln.strip()]


def _line_count(path: Path) -> int:
    """Non-empty lines, a trailing unterminated one included."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for ln in text.split("\n") if ln.strip())


def _has_tail(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _write_lines(path: Path, lines: List[str]) -> None:
    """Replace ``path`` with ``lines`` atomically: a temporary file in the same folder, synced, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mean_seconds(run_secs) -> Optional[float]:
    """A record's mean run time, or None for a failed trial (no times, or MetaSchedule's 1e10 marker)."""
    if not isinstance(run_secs, list) or not run_secs:
        return None
    try:
        values = [float(v) for v in run_secs]
    except (TypeError, ValueError):
        return None
    if any(not math.isfinite(v) or v < 0 or v >= FAILED_SECONDS for v in values):
        return None
    return sum(values) / len(values)


def _lock(lock, folder: Path, log, wait: float) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    log(f"tuning database {folder} is in use by another aglmc process; waiting up to {wait:.0f} s")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TargetError(f"the tuning database {folder} stayed locked by another process for "
                                  f"{wait:.0f} s", hint=f"is another `aglmc tune` running? lock: {folder / LOCK}")
            time.sleep(1.0)
