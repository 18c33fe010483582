"""The artifact folder, written atomically: a build fills a staging folder beside the destination and swaps
it into place only when everything succeeded, so a failed or interrupted build leaves the previous artifact
(or nothing) and never a half-written one.

Layout::

    build/digits/
      host.so             the host (x86) library       (one library per target: arm.so, ...)
      arm.so
      manifest.json       inputs/outputs, schedule hash, tool versions, libraries, what each pass changed
      schedule.sched      the resolved schedule (every default filled in)
      report.md           errors against the original, metric, statistics, passes
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from aglmc.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEDULE = "schedule.sched"
REPORT = "report.md"


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces ``out_dir``, on any exception it is removed."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        if not (out_dir / MANIFEST).exists() and any(out_dir.iterdir()):
            shutil.rmtree(stage, ignore_errors=True)
            raise ArtifactError(f"{out_dir} exists and is not an aglmc artifact; refusing to replace it",
                                hint="choose another --out folder or remove it")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(stage, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_manifest(artifact: Path) -> dict:
    artifact = Path(artifact)
    path = artifact / MANIFEST
    if not artifact.is_dir():
        raise ArtifactError(f"{artifact} is not a folder", hint="pass the folder `aglmc build` wrote (--out)")
    if not path.is_file():
        raise ArtifactError(f"{artifact} has no {MANIFEST}; it is not an aglmc artifact")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
