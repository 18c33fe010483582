"""ARM boards: an emulated one on this machine, real ones over TVM RPC, and running arm libraries on them.

TVM's RPC server and tracker do the work; this module sets them up and bounds every wait.

The emulated board (``start_emulated``) is an aarch64 Python with the aarch64 TVM runtime, run by Debian's
``qemu-user`` on this machine. Set up once into the cache folder (``~/.cache/aglmc/board``):

- ``sysroot/``: arm64 Debian packages of ``python3.11-minimal libpython3.11-stdlib libstdc++6`` and their
  dependencies, fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (never installed into /).
- ``site/``: aarch64 wheels of apache-tvm and apache-tvm-ffi (the versions the host uses), installed with
  ``pip install --target --platform manylinux_..._aarch64``.
- ``bin/python3-CPU``: a wrapper running ``qemu-aarch64 -cpu CPU -L sysroot sysroot/usr/bin/python3.11``.

``start_emulated`` then starts a tracker on 127.0.0.1 (or reuses one already there) and TVM's RPC server under
qemu, registered with the tracker under a key; each runs in its own session and process group, recorded in
``boards/`` so that ``stop`` can end exactly those processes from any later command.

A board is named by a spec: ``KEY@HOST:PORT`` (a key at a tracker), ``KEY`` (a key at the local tracker,
127.0.0.1:9190) or ``HOST:PORT`` (a server without a tracker). Every network step has a deadline; a dead,
busy or hung board is a one-line TargetError that says what was tried.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from aglmc.errors import TargetError
from aglmc.targets.toolchain import elf_machine

LOOPBACK = "127.0.0.1"
DEFAULT_KEY = "aglmc-emulated"
DEFAULT_TRACKER_PORT = 9190
DEFAULT_CPU = "cortex-a76"  # a real core, as armcount does: qemu's default "max" has SVE, which glibc then uses
BOARD_ARCH = "aarch64"

# What the emulated board runs. The TVM versions follow the host's, so a library built here loads there.
GUEST_PYTHON = "python3.11"
GUEST_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
# Tools that the dependency closure drags in (through Pre-Depends) and the sysroot never runs.
GUEST_SKIP_PACKAGES = frozenset({"dpkg", "tar", "install-info", "perl-base"})
# Every manylinux tag an aarch64 wheel for Debian 12 (glibc 2.36) may carry; pip takes the first that fits.
MANYLINUX_TAGS = ("manylinux2014_aarch64",) + tuple(f"manylinux_2_{m}_aarch64" for m in range(36, 16, -1))


def _guest_wheels() -> Tuple[str, ...]:
    from importlib.metadata import version

    return (f"apache-tvm=={version('apache-tvm')}", f"apache-tvm-ffi=={version('apache-tvm-ffi')}",
            "psutil", "cloudpickle", "numpy")


def default_cache_dir() -> Path:
    """Where the emulated board lives: ``$AGLMC_BOARD_CACHE``, else ``$XDG_CACHE_HOME/aglmc/board``."""
    if os.environ.get("AGLMC_BOARD_CACHE"):
        return Path(os.environ["AGLMC_BOARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aglmc" / "board"


# ------------------------------------------------------------------------------------------ the emulated board
@dataclass(frozen=True)
class BoardEnv:
    """A ready emulated board: the sysroot, the aarch64 site-packages and the python wrapper that runs them."""

    cache_dir: Path
    sysroot: Path
    site: Path
    python: Path  # the wrapper script; runs aarch64 python under qemu


def prepare_emulated(cache_dir: Optional[Path] = None, cpu: str = DEFAULT_CPU,
                     log: Callable[[str], None] = print) -> BoardEnv:
    """Set up (once) and return the emulated board in ``cache_dir``; later calls only check it."""
    cache_dir = Path(cache_dir or default_cache_dir())
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise TargetError("the emulated board needs 'qemu-aarch64', which is not on PATH",
                          hint="apt-get install qemu-user")
    cache_dir.mkdir(parents=True, exist_ok=True)
    sysroot, site = cache_dir / "sysroot", cache_dir / "site"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two commands setting up the same cache wait for each other
        if not (sysroot / "usr" / "bin" / GUEST_PYTHON).is_file():
            _make_sysroot(sysroot, log)
        wheels = _guest_wheels()
        stamp = site / ".aglmc-wheels.json"
        if not stamp.is_file() or json.loads(stamp.read_text()) != list(wheels):
            _install_site(site, wheels, log)
    python = cache_dir / "bin" / f"python3-{cpu}"
    python.parent.mkdir(exist_ok=True)
    script = ("#!/bin/sh\n"
              "# aarch64 python with the aarch64 TVM runtime, under qemu-user (written by aglmc.targets.board)\n"
              f'export PYTHONPATH="{site}" PYTHONNOUSERSITE=1\n'
              f'exec "{qemu}" -cpu {cpu} -L "{sysroot}" "{sysroot}/usr/bin/{GUEST_PYTHON}" "$@"\n')
    if not python.is_file() or python.read_text() != script:
        _write_atomic(python, script, mode=0o755)
    return BoardEnv(cache_dir, sysroot, site, python)


def _make_sysroot(dest: Path, log) -> None:
    archs = _run(["dpkg", "--print-foreign-architectures"], "list dpkg's architectures", timeout=30).split()
    if "arm64" not in archs:
        raise TargetError("the emulated board needs arm64 Debian packages, and dpkg has no arm64 architecture",
                          hint="dpkg --add-architecture arm64 && apt-get update   (as root)")
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances", *(f"{p}:arm64" for p in GUEST_PACKAGES)],
               "resolve the arm64 packages", timeout=120)
    names = sorted({ln.strip() for ln in out.splitlines()
                    if ln.endswith(":arm64") and not ln.startswith((" ", "<"))
                    and ln.split(":")[0] not in GUEST_SKIP_PACKAGES})
    if not any(n.startswith("python3.11-minimal") for n in names):
        raise TargetError("apt knows no arm64 python3.11-minimal package",
                          hint="dpkg --add-architecture arm64 && apt-get update   (as root)")
    log(f"board: downloading {len(names)} arm64 Debian packages for the sysroot")
    work = Path(tempfile.mkdtemp(prefix=".sysroot.", dir=dest.parent))
    try:
        debs, root = work / "debs", work / "root"
        debs.mkdir()
        _run(["apt-get", "download", *names], "download the arm64 packages", cwd=debs, timeout=900,
             hint="apt-get update   (as root), then try again")
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root)], f"unpack {deb.name}", timeout=120)
        if not (root / "usr" / "bin" / GUEST_PYTHON).is_file():
            raise TargetError(f"the arm64 packages hold no usr/bin/{GUEST_PYTHON}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(root, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_site(dest: Path, wheels: Sequence[str], log) -> None:
    log(f"board: installing aarch64 wheels {' '.join(wheels)}")
    work = Path(tempfile.mkdtemp(prefix=".site.", dir=dest.parent))
    try:
        platforms = [arg for tag in MANYLINUX_TAGS for arg in ("--platform", tag)]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
              str(work / "site"), *platforms, "--python-version", "3.11", "--implementation", "cp", "--abi",
              "cp311", "--only-binary=:all:", *wheels], "install the aarch64 wheels", timeout=1800)
        (work / "site" / ".aglmc-wheels.json").write_text(json.dumps(list(wheels)))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work / "site", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The RPC server's entry point on the board. TVM's server runs each session in a popen worker that re-executes
# sys.executable: under qemu-user that is the aarch64 python binary, which the host cannot exec ("Exec format
# error"), so point it at the qemu wrapper first.
_SERVE = """\
import os, sys
sys.executable = os.environ["AGLMC_BOARD_PYTHON"]
from tvm import rpc
host, port, port_end, tracker_host, tracker_port, key = sys.argv[1:7]
server = rpc.Server(host, int(port), int(port_end), key=key, tracker_addr=(tracker_host, int(tracker_port)))
print(f"aglmc board: serving key {key} on {host}:{server.port}", flush=True)
server.proc.join()
"""


@dataclass(frozen=True)
class BoardInfo:
    """A started emulated board: where it registered, and the process group ``stop`` ends."""

    key: str
    tracker_host: str
    tracker_port: int
    cpu: str
    pgid: int
    log: str
    state_file: str
    tracker_pgid: Optional[int] = None  # set when this board started the tracker

    @property
    def spec(self) -> str:
        return f"{self.key}@{self.tracker_host}:{self.tracker_port}"


# Processes started by this Python process, so that stop() can reap them (wait() for its own children).
_CHILDREN: Dict[int, subprocess.Popen] = {}


def start_emulated(key: str = DEFAULT_KEY, tracker_port: Optional[int] = DEFAULT_TRACKER_PORT,
                   cache_dir: Optional[Path] = None, *, cpu: str = DEFAULT_CPU, timeout: float = 180.0,
                   log: Callable[[str], None] = print) -> BoardInfo:
    """Start an emulated aarch64 board registered as ``key`` with the tracker at 127.0.0.1:``tracker_port``.

    A tracker already listening there is reused (start two boards under one key for a small farm); otherwise
    one is started. ``tracker_port=None`` picks a free port. Returns once the board is registered and free, or
    raises a TargetError (and stops what it started) after ``timeout`` seconds.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
        raise TargetError(f"board key '{key}' may hold only letters, digits, '.', '_' and '-'")
    env = prepare_emulated(cache_dir, cpu, log)
    boards_dir = env.cache_dir / "boards"
    boards_dir.mkdir(exist_ok=True)
    tracker_port = tracker_port or _free_port()
    tracker_pgid = None
    if _tracker_summary(LOOPBACK, tracker_port, timeout=5.0, quiet=True) is None:
        tracker_pgid = _start_tracker(tracker_port, boards_dir, timeout=60.0)
    _tracker_summary(LOOPBACK, tracker_port, timeout=10.0)  # something else on that port: say so now

    serve = env.cache_dir / "serve.py"
    if not serve.is_file() or serve.read_text() != _SERVE:
        _write_atomic(serve, _SERVE)
    port = _free_port()
    log_path = boards_dir / f"{key}.{port}.log"
    guest_env = _clean_env()
    guest_env.update(AGLMC_BOARD_PYTHON=str(env.python), PYTHONPATH=str(env.site), PYTHONNOUSERSITE="1")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(env.python), str(serve), LOOPBACK, str(port), str(port + 50), LOOPBACK,
                                 str(tracker_port), key], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=guest_env, cwd=env.cache_dir,
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    info = BoardInfo(key=key, tracker_host=LOOPBACK, tracker_port=tracker_port, cpu=cpu, pgid=proc.pid,
                     log=str(log_path), state_file=str(boards_dir / f"{key}.{proc.pid}.json"),
                     tracker_pgid=tracker_pgid)
    _write_atomic(Path(info.state_file), json.dumps(asdict(info), indent=1))

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = _tail(log_path)
            _forget(info)
            raise TargetError(f"the emulated board exited (code {proc.returncode}) while starting: {tail}",
                              hint=f"full log: {log_path}")
        summary = _tracker_summary(LOOPBACK, tracker_port, timeout=10.0, quiet=True)
        if summary is not None and _registered(summary, key, port, port + 50) and _free_count(summary, key) > 0:
            log(f"board: {info.spec} is up (pid {proc.pid}, qemu -cpu {cpu})")
            return info
        if time.monotonic() > deadline:
            _forget(info)
            raise TargetError(f"the emulated board did not register with the tracker at {LOOPBACK}:{tracker_port} "
                              f"within {timeout:.0f} s: {_tail(log_path)}", hint=f"full log: {log_path}")
        time.sleep(0.5)


def _forget(info: BoardInfo) -> None:
    """End a board that failed to start, keeping its log for the error message (and its tracker, if reused)."""
    _kill_group(info.pgid)
    Path(info.state_file).unlink(missing_ok=True)
    if info.tracker_pgid is not None:
        _kill_group(info.tracker_pgid)
        (Path(info.state_file).parent / f"tracker.{info.tracker_port}.json").unlink(missing_ok=True)


def _start_tracker(port: int, boards_dir: Path, timeout: float) -> int:
    log_path = boards_dir / f"tracker.{port}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", LOOPBACK, "--port",
                                 str(port), "--port-end", str(port + 1), "--silent"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    state = boards_dir / f"tracker.{port}.json"
    _write_atomic(state, json.dumps({"tracker_port": port, "pgid": proc.pid, "log": str(log_path)}))
    deadline = time.monotonic() + timeout
    while _tracker_summary(LOOPBACK, port, timeout=2.0, quiet=True) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc.pid)
            state.unlink(missing_ok=True)
            raise TargetError(f"could not start a tracker on {LOOPBACK}:{port}: {_tail(log_path)}",
                              hint="is tornado installed? pip install tornado")
        time.sleep(0.3)
    return proc.pid


def stop(key: Optional[str] = None, cache_dir: Optional[Path] = None, *, pgid: Optional[int] = None,
         tracker: bool = True) -> List[str]:
    """Stop the emulated boards started from ``cache_dir`` (those under ``key``, or all), and their trackers.

    Ends each board's whole process group (qemu, the server's popen worker, session processes), waits for it
    to vanish, and removes its record. A tracker this module started is stopped once no recorded board uses it
    (``tracker=False`` keeps it). Returns one line per stopped process group.
    """
    boards_dir = Path(cache_dir or default_cache_dir()) / "boards"
    stopped: List[str] = []
    if not boards_dir.is_dir():
        return stopped
    for state in sorted(boards_dir.glob("*.json")):
        if state.name.startswith("tracker."):
            continue
        info = json.loads(state.read_text())
        if (key is not None and info["key"] != key) or (pgid is not None and info["pgid"] != pgid):
            continue
        _kill_group(info["pgid"])
        state.unlink(missing_ok=True)
        Path(info["log"]).unlink(missing_ok=True)
        stopped.append(f"board {info['key']}@{info['tracker_host']}:{info['tracker_port']} (pgid {info['pgid']})")
    if tracker:
        in_use = {json.loads(s.read_text())["tracker_port"] for s in boards_dir.glob("*.json")
                  if not s.name.startswith("tracker.")}
        for state in sorted(boards_dir.glob("tracker.*.json")):
            info = json.loads(state.read_text())
            if info["tracker_port"] not in in_use:
                _kill_group(info["pgid"])
                state.unlink(missing_ok=True)
                Path(info["log"]).unlink(missing_ok=True)
                stopped.append(f"tracker {LOOPBACK}:{info['tracker_port']} (pgid {info['pgid']})")
    return stopped


def _kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and wait until none of it is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
        if not _group_alive(pgid):
            break
    child = _CHILDREN.pop(pgid, None)
    if child is not None:  # our own child: reap it, or it stays a zombie (and in the group) until we exit
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies; look for a live member.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # after "pid (comm)": state ppid pgrp
                return True
    return False


# ------------------------------------------------------------------------------------------ trackers
@dataclass(frozen=True)
class BoardStatus:
    """One key at a tracker: how many boards serve it, how many are free, how many requests wait."""

    key: str
    boards: int
    free: int
    pending: int
    addresses: Tuple[str, ...] = ()


def list_boards(tracker: str = f"{LOOPBACK}:{DEFAULT_TRACKER_PORT}", timeout: float = 10.0) -> List[BoardStatus]:
    """What the tracker at ``tracker`` (``HOST:PORT``) knows, one entry per key."""
    host, port = _host_port(tracker, "tracker")
    summary = _tracker_summary(host, port, timeout=timeout)
    servers: Dict[str, List[str]] = {}
    for conn in summary.get("server_info", []):
        key = str(conn.get("key", "")).split(":", 1)[-1]
        addr = conn.get("addr")
        servers.setdefault(key, []).append(f"{addr[0]}:{addr[1]}" if isinstance(addr, (list, tuple)) else
                                           str(addr))
    out = []
    for key, queue in sorted(summary.get("queue_info", {}).items()):
        out.append(BoardStatus(key, len(servers.get(key, ())), int(queue.get("free", 0)),
                               int(queue.get("pending", 0)), tuple(servers.get(key, ()))))
    return out


def _tracker_summary(host: str, port: int, timeout: float, quiet: bool = False) -> Optional[Dict[str, Any]]:
    """The tracker's summary, with ``timeout`` on every socket step; None (quiet) or TargetError when it fails.

    TVM's ``connect_tracker`` retries a refused connection for 60 s; this talks the tracker protocol directly.
    """
    import struct

    from tvm.rpc import base

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise OSError(f"{host}:{port} is not a TVM tracker")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            value = base.recvjson(sock)
            if value[0] != base.TrackerCode.SUCCESS:
                raise OSError(f"tracker answered {value[0]}")
            return value[1]
    except (OSError, RuntimeError, struct.error, ValueError) as e:
        if quiet:
            return None
        raise TargetError(f"no tracker answers at {host}:{port}: {_os_reason(e)}",
                          hint="start one with: aglmc board start --emulated") from e


def _registered(summary: Dict[str, Any], key: str, port: int, port_end: int) -> bool:
    """Whether a server for ``key`` listening on a port in [port, port_end] has reported to the tracker."""
    for conn in summary.get("server_info", []):
        addr = conn.get("addr") or (None, None)
        if conn.get("key") == f"server:{key}" and isinstance(addr[1], int) and port <= addr[1] <= port_end:
            return True
    return False


def _free_count(summary: Optional[Dict[str, Any]], key: str) -> int:
    return int(((summary or {}).get("queue_info", {}).get(key) or {}).get("free", 0))


# ------------------------------------------------------------------------------------------ running on a board
@dataclass(frozen=True)
class BoardSpec:
    """A parsed board name: a key at a tracker, or a server's address."""

    host: str
    port: int
    key: Optional[str] = None  # None: a direct server

    def __str__(self) -> str:
        return f"{self.key}@{self.host}:{self.port}" if self.key else f"{self.host}:{self.port}"


def parse_board(spec: str) -> BoardSpec:
    """``KEY@HOST:PORT`` (tracker), ``HOST:PORT`` (direct server) or ``KEY`` (key at 127.0.0.1:9190)."""
    spec = spec.strip()
    if "@" in spec:
        key, _, addr = spec.partition("@")
        host, port = _host_port(addr, "tracker")
        if not key:
            raise TargetError(f"board '{spec}' has an empty key; write KEY@HOST:PORT")
        return BoardSpec(host, port, key)
    if ":" in spec:
        host, port = _host_port(spec, "board")
        return BoardSpec(host, port)
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", spec):
        return BoardSpec(LOOPBACK, DEFAULT_TRACKER_PORT, spec)
    raise TargetError(f"cannot read board '{spec}'; write KEY@HOST:PORT (a tracker), HOST:PORT (a server) or KEY")


def is_emulated(board: Union[str, BoardSpec], cache_dir: Optional[Path] = None) -> bool:
    """Whether ``board`` names an emulated board started from ``cache_dir`` (its key at its tracker's port, on
    this machine): qemu's timings mean nothing about an ARM core."""
    spec = parse_board(board) if isinstance(board, str) else board
    if spec.key is None or spec.host not in (LOOPBACK, "localhost"):
        return False
    for record in ((cache_dir or default_cache_dir()) / "boards").glob(f"{spec.key}.*.json"):
        try:
            if json.loads(record.read_text()).get("tracker_port") == spec.port:
                return True
        except (OSError, ValueError):
            continue
    return False


def connect(board: Union[str, BoardSpec], timeout: float = 60.0, session_timeout: float = 600.0):
    """An RPC session with the board, or a TargetError within about ``timeout`` seconds.

    ``session_timeout`` (seconds, 0 = none) makes the board end the session itself after that long;
    the board serves one session at a time, so a forgotten session blocks others until then.
    """
    spec = parse_board(board) if isinstance(board, str) else board
    return _bounded(lambda: _connect(spec, timeout, session_timeout), timeout, f"board {spec}", "connecting")


def _connect(spec: BoardSpec, timeout: float, session_timeout: float):
    from tvm import rpc

    if spec.key is None:
        _probe(spec.host, spec.port, timeout, f"board {spec}")
        return rpc.connect(spec.host, spec.port, session_timeout=session_timeout)
    summary = _tracker_summary(spec.host, spec.port, timeout)
    if spec.key not in summary.get("queue_info", {}):
        keys = ", ".join(sorted(summary.get("queue_info", {}))) or "none"
        raise TargetError(f"no board is registered under key '{spec.key}' at the tracker {spec.host}:{spec.port} "
                          f"(keys there: {keys})")
    tracker = rpc.connect_tracker(spec.host, spec.port)
    tracker._sock.settimeout(timeout)  # TVM's request waits for a free board forever; bound it
    try:
        return tracker.request(spec.key, session_timeout=session_timeout, max_retry=1)
    except RuntimeError as e:
        raise TargetError(f"no board under key '{spec.key}' at {spec.host}:{spec.port} became free within "
                          f"{timeout:.0f} s ({_os_reason(e)})") from e
    finally:
        tracker.close()


def run_on_board(lib_path: Union[str, Path], inputs: Sequence[np.ndarray], board, *, timeout: float = 300.0,
                 function: str = "main") -> List[np.ndarray]:
    """Upload the arm library ``lib_path`` to ``board``, run ``function`` on ``inputs``, return its outputs.

    ``board`` is a spec string (see :func:`parse_board`) or an open session from :func:`connect`. Everything,
    connecting included, ends within about ``timeout`` seconds; outputs come back flattened like
    :meth:`aglmc.targets.run.HostRunner.run`'s.
    """
    lib_path = Path(lib_path)
    _check_arm_library(lib_path)
    deadline = time.monotonic() + timeout
    name = f"board {board}" if isinstance(board, (str, BoardSpec)) else "the board"
    step = ["connecting"]

    def work():
        session = board
        if isinstance(board, (str, BoardSpec)):
            session = _connect(parse_board(board) if isinstance(board, str) else board,
                               max(1.0, deadline - time.monotonic()), session_timeout=int(timeout) + 1)
        return _run_remote(session, lib_path, inputs, function, step)

    return _bounded(work, timeout, name, step)


def _run_remote(session, lib_path: Path, inputs, function: str, step: List[str]) -> List[np.ndarray]:
    import tvm

    step[0] = f"uploading {lib_path.name}"
    remote_name = f"aglmc-{os.getpid()}-{lib_path.name}"
    session.upload(str(lib_path), target=remote_name)
    step[0] = f"loading {lib_path.name}"
    lib = session.load_module(remote_name)
    dev = session.cpu()
    vm = tvm.relax.VirtualMachine(lib, dev)
    step[0] = "copying the inputs"
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    step[0] = f"running {function}"
    result = vm[function](*args)
    step[0] = "copying the outputs"
    outputs = _flatten_remote(session, result)
    try:
        session.remove(remote_name)
    except Exception:  # best effort: the server's temp folder goes away with the session anyway
        pass
    return outputs


def _flatten_remote(session, value) -> List[np.ndarray]:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flatten_remote(session, v)]
    # A tuple output stays on the board as an object reference; walk it with the board's own functions.
    size = session.get_function("ffi.ArraySize")
    item = session.get_function("ffi.ArrayGetItem")
    return [a for i in range(int(size(value))) for a in _flatten_remote(session, item(value, i))]


class BoardRunner:
    """An arm library loaded once on a board, run on many inputs over one RPC session.

    >>> with BoardRunner("build/digits/arm.so", "aglmc-emulated") as runner:
    ...     (logits,) = runner.run([x])

    Each call is bounded by ``timeout`` seconds; ``address`` says which board the tracker handed out.
    """

    def __init__(self, lib_path: Union[str, Path], board, *, timeout: float = 300.0, function: str = "main"):
        self.lib_path = Path(lib_path)
        _check_arm_library(self.lib_path)
        self.spec = parse_board(board) if isinstance(board, str) else board
        self.timeout = timeout
        self.function = function
        self._name = f"board {self.spec}"
        step = ["connecting"]

        def open_session():
            # the board ends the session itself after an hour, should this process die without closing it
            session = _connect(self.spec, timeout, session_timeout=3600)
            step[0] = f"uploading {self.lib_path.name}"
            remote_name = f"aglmc-{os.getpid()}-{id(self)}-{self.lib_path.name}"
            session.upload(str(self.lib_path), target=remote_name)
            step[0] = f"loading {self.lib_path.name}"
            return session, session.load_module(remote_name)

        self._session, lib = _bounded(open_session, timeout, self._name, step)
        import tvm

        self._device = self._session.cpu()
        self._vm = tvm.relax.VirtualMachine(lib, self._device)
        self._main = self._vm[function]

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        import tvm

        step = ["copying the inputs"]

        def work():
            args = [tvm.runtime.tensor(np.ascontiguousarray(x), self._device) for x in inputs]
            step[0] = f"running {self.function}"
            result = self._main(*args)
            step[0] = "copying the outputs"
            return _flatten_remote(self._session, result)

        return _bounded(work, self.timeout, self._name, step)

    def time(self, inputs: Sequence[np.ndarray], *, seconds: float = 1.0, repeat: int = 3) -> List[float]:
        """Seconds per call of the function on the board, ``repeat`` times, timed by the board itself (TVM's
        remote time evaluator: about ``seconds`` of calls per repeat, RPC transfer not included)."""
        import tvm

        step = ["timing"]

        def work():
            args = [tvm.runtime.tensor(np.ascontiguousarray(x), self._device) for x in inputs]
            evaluator = self._vm.time_evaluator(self.function, self._device, number=1, repeat=repeat,
                                                min_repeat_ms=int(seconds * 1000 / repeat))
            return list(evaluator(*args).results)

        return _bounded(work, self.timeout, self._name, step)

    def board_id(self) -> str:
        """The serving board's work folder: different for every board, so it tells the boards of a farm apart."""
        return str(self._session.get_function("tvm.rpc.server.workpath")(""))

    def close(self) -> None:
        self._session = None
        self._vm = self._main = None

    def __enter__(self) -> "BoardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_batches_on_boards(lib_path: Union[str, Path], batches: Sequence[Sequence[np.ndarray]], board, *,
                          jobs: int = 1, timeout: float = 300.0, served: Optional[Dict[str, int]] = None
                          ) -> List[List[np.ndarray]]:
    """Outputs of every batch, in order, spreading the batches over ``jobs`` boards of a tracker key (a farm).

    Each worker holds its own session; the tracker hands each a different free board, so ``jobs`` should not
    exceed the boards registered under the key (extra workers wait for a free board, up to ``timeout``).
    ``served``, when given, is filled with the number of batches each board (by :meth:`BoardRunner.board_id`) ran.
    """
    import queue

    todo: "queue.Queue[int]" = queue.Queue()
    for i in range(len(batches)):
        todo.put(i)
    results: Dict[int, List[np.ndarray]] = {}
    errors: List[BaseException] = []
    lock = threading.Lock()

    def worker():
        try:
            with BoardRunner(lib_path, board, timeout=timeout) as runner:
                board_id = runner.board_id() if served is not None else ""
                while not errors:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    results[i] = runner.run(batches[i])
                    if served is not None:
                        with lock:
                            served[board_id] = served.get(board_id, 0) + 1
        except BaseException as e:  # reported once, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, name=f"aglmc-farm-{n}", daemon=True)
               for n in range(max(1, min(jobs, len(batches))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(batches))]


def _check_arm_library(lib_path: Path) -> None:
    if not lib_path.is_file():
        raise TargetError(f"no library at {lib_path}")
    machine = elf_machine(lib_path)
    if machine != BOARD_ARCH:
        what = f"built for {machine}" if machine else "not an ELF shared library"
        raise TargetError(f"{lib_path} is {what}; boards run {BOARD_ARCH} libraries (build with target arm)")


# ------------------------------------------------------------------------------------------ helpers
def _bounded(fn: Callable[[], Any], timeout: float, name: str, step) -> Any:
    """``fn()`` in a worker thread; a TargetError naming ``name`` and the current step if it outlasts ``timeout``.

    TVM's RPC calls block in C++ without a timeout of their own, so the wait is bounded here. A thread that
    overran is left behind (a daemon); the board ends its session through ``session_timeout``.
    """
    box: Dict[str, Any] = {}
    grace = 2.0  # lets fn's own, more telling timeout errors (a busy board, a silent tracker) arrive first

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"aglmc-board {name}", daemon=True)
    worker.start()
    worker.join(timeout + grace)
    what = step[0] if isinstance(step, list) else step
    if worker.is_alive():
        raise TargetError(f"{name} did not answer within {timeout:.0f} s (while {what})")
    if "error" in box:
        e = box["error"]
        if isinstance(e, TargetError):
            raise e
        from aglmc.targets.compile import error_summary

        raise TargetError(f"{name} failed while {what}: {error_summary(e)}") from e
    return box["value"]


def _probe(host: str, port: int, timeout: float, name: str) -> None:
    try:
        socket.create_connection((host, port), timeout=min(timeout, 10.0)).close()
    except OSError as e:
        raise TargetError(f"{name} is unreachable: {_os_reason(e)}") from e


def _os_reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(e, socket.timeout):
        return "timed out"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _host_port(text: str, what: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"cannot read the {what} address '{text}'; write HOST:PORT")
    return host, int(port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _clean_env() -> Dict[str, str]:
    """The host environment minus what would mislead the guest (host libraries and Python paths)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("LD_", "PYTHON", "VIRTUAL_ENV", "CONDA", "QEMU_"))}


def _run(cmd: List[str], what: str, *, timeout: float, cwd: Optional[Path] = None, hint: Optional[str] = None
         ) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise TargetError(f"cannot {what}: '{cmd[0]}' is not installed",
                          hint="the emulated board needs a Debian-like system with apt and dpkg") from e
    except subprocess.TimeoutExpired as e:
        raise TargetError(f"cannot {what}: '{cmd[0]}' took over {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = " | ".join(ln.strip() for ln in proc.stdout.strip().splitlines()[-3:])
        raise TargetError(f"cannot {what}: {tail}", hint=hint)
    return proc.stdout


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(ln.strip() for ln in text[-lines:]) or "(empty log)"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
