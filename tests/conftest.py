"""Shared fixtures: the repository's paths, an in-process CLI runner, and a digits build made once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# One thread for TVM and torch: the CI machine has 2 cores and tests run beside other work.
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``aglmc ARGS`` in-process and return exit code, stdout and stderr."""
    from aglmc.compiler.cli import main

    def run(*args) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def aglmc_exe() -> str:
    return str(Path(sys.executable).with_name("aglmc"))


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory) -> Path:
    """examples/01_digits_cnn built once for the session (host + arm)."""
    from aglmc.compiler.pipeline import BuildOptions, build

    out = tmp_path_factory.mktemp("digits") / "digits"
    build(EXAMPLES / "01_digits_cnn" / "digits.sched", BuildOptions(out_dir=out, log=lambda _m: None))
    return out


def objdump_aarch64() -> str | None:
    return shutil.which("aarch64-linux-gnu-objdump") or shutil.which("llvm-objdump")


@pytest.fixture(autouse=True)
def _restore_pass_registry():
    """Passes loaded from a test's plugin file are forgotten after that test (each CLI run is a new process)."""
    from aglmc.passes import base

    base.registry()
    saved = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


@pytest.fixture(scope="session")
def emulated_board():
    """One emulated aarch64 board for the whole test session, under a key of its own at a tracker on a free port.

    Without qemu-user or the arm64 packages the board tests skip with the reason, unless AGLMC_REQUIRE_BOARD=1
    (CI), where a missing board is a failure.
    """
    from aglmc.errors import TargetError
    from aglmc.targets import board

    key = f"aglmc-test-{os.getpid()}"
    try:
        info = board.start_emulated(key, tracker_port=None, timeout=300)
    except TargetError as e:
        if os.environ.get("AGLMC_REQUIRE_BOARD") == "1":
            raise
        pytest.skip(f"no emulated board: {e.render()}")
    yield info
    board.stop(key)


def schedule_copy(sched: Path, dest: Path, extra: str = "", replace: dict | None = None) -> Path:
    """A copy of ``sched`` at ``dest`` whose model and data set sources are absolute (so it builds from
    anywhere), with ``replace`` applied and ``extra`` appended."""
    import re

    text = sched.read_text()
    text = re.sub(r'"((?!/)[^"]+\.(?:py:\w+|onnx|npz))"', lambda m: f'"{sched.parent / m.group(1)}"', text)
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} is not in {sched}"
        text = text.replace(old, new)
    dest.write_text(text + extra)
    return dest


def reinit_for_numerics(model, seed: int = 1):
    """Kaiming conv/linear weights, small biases and random batch-norm statistics, in place: the benchmark's own
    re-initialisation (``bench.models.reinit``), so tests and benchmark measure the same models.

    transformers' own init (conv std 0.02) makes a CNN's output independent of its input, so an error check
    on it passes whatever the compiler does (shared/PERF.md); compare numerics only after this.
    """
    if str(ROOT) not in sys.path:  # bench/ sits beside the installed aglmc package, not inside it
        sys.path.insert(0, str(ROOT))
    from bench.models import reinit

    return reinit(model, seed)
