"""Linking TVM's object files into a shared library, for this machine or cross-compiled for a board.

TVM writes one object file per module (LLVM code, the packed imports); a linker turns them into the ``.so`` that
the Relax VM loads. Three linkers:

- ``zig``: ``python -m ziglang cc -target TRIPLE``, from the ``ziglang`` PyPI package. Needs no system package
  and cross-links for any Linux triple, so it is the default for boards. The first link of a triple fills zig's
  cache (``~/.cache/zig``, ~58 MB, ~15 s); later links take ~0.2 s.
- ``gcc``: Debian's cross ``TRIPLE-g++`` (package ``g++-TRIPLE``).
- ``cc``: the host's own C++ compiler (TVM's ``get_cc()``), for host libraries; zig stands in when there is none.

Each :class:`Linker` builds a fresh command line per call. (``tvm.support.cc.cross_compiler`` appends the call's
options to the list it captured, so options pile up across exports; we do not use it.)
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from aglmc.errors import TargetError

LINKERS = ("zig", "gcc")
LINK_TIMEOUT_S = 600  # a cold zig cache on a slow laptop; a link that takes longer is stuck

# ELF e_machine values of the architectures aglmc meets (System V ABI, "e_machine").
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}


@dataclass(frozen=True)
class Linker:
    """A way to link objects into a shared library: ``command`` + ``-shared -fPIC -o OUT OBJECTS OPTIONS``."""

    name: str  # zig | gcc | cc
    command: Tuple[str, ...]
    display: str = ""  # how messages and build reports name it; default: the command

    def __str__(self) -> str:
        return self.display or " ".join(self.command)

    def link(self, output: Union[str, Path], objects: Sequence[str], options: Optional[Sequence[str]] = None):
        """Link ``objects`` into the shared library ``output``; a failure is a TargetError with the tool's words."""
        cmd = [*self.command, "-shared", "-fPIC", "-o", str(output), *map(str, objects), *(options or ())]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=LINK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise TargetError(f"linking {Path(output).name} with {self} took over {LINK_TIMEOUT_S} s",
                              hint=shlex.join(cmd)) from e
        except OSError as e:
            raise TargetError(f"cannot run the {self.name} linker: {e}", hint=shlex.join(cmd)) from e
        if proc.returncode != 0:
            tail = " | ".join(ln.strip() for ln in proc.stdout.strip().splitlines()[-4:])
            raise TargetError(f"linking {Path(output).name} with {self} failed (exit {proc.returncode}): {tail}",
                              hint=shlex.join(cmd))

    def fcompile(self) -> Callable:
        """An ``fcompile`` for ``Executable.export_library``: links into a ``.so``, nothing else."""

        def fcompile(output, objects, options=None):
            self.link(output, objects, options)

        fcompile.output_format = "so"
        return fcompile


def zig_triple(triple: str) -> str:
    """LLVM's ``aarch64-unknown-linux-gnu`` as zig spells it (``aarch64-linux-gnu``): no vendor part."""
    parts = triple.split("-")
    if len(parts) == 4 and parts[1] in ("unknown", "pc", "none"):
        parts = [parts[0], *parts[2:]]
    return "-".join(parts)


def zig_linker(triple: str) -> Linker:
    """The zig linker for ``triple``; TargetError with the install command when ``ziglang`` is missing."""
    if importlib.util.find_spec("ziglang") is None:
        raise TargetError("the zig linker needs the 'ziglang' Python package, which is not installed",
                          hint=f"{shlex.quote(sys.executable)} -m pip install ziglang   "
                               f"(or set linker = gcc in the target block)")
    target = zig_triple(triple)
    return Linker("zig", (sys.executable, "-m", "ziglang", "cc", "-target", target), f"zig cc -target {target}")


def gcc_linker(triple: str) -> Linker:
    """Debian's cross g++ for ``triple``; TargetError naming the apt package when it is not installed."""
    gnu = zig_triple(triple)  # Debian names the tools without a vendor: aarch64-linux-gnu-g++
    exe = f"{gnu}-g++"
    path = shutil.which(exe)
    if path is None:
        raise TargetError(f"the gcc linker needs '{exe}', which is not on PATH",
                          hint=f"apt-get install g++-{gnu}   (or set linker = zig, which needs no system package)")
    return Linker("gcc", (path,))


def find_linker(name: str, triple: str) -> Linker:
    """The linker ``name`` (one of ``LINKERS``) for ``triple``."""
    if name == "zig":
        return zig_linker(triple)
    if name == "gcc":
        return gcc_linker(triple)
    raise TargetError(f"unknown linker '{name}'; one of {', '.join(LINKERS)}")


def host_linker() -> Linker:
    """The host's C++ compiler (``$CXX`` or TVM's choice, usually ``g++``), else zig for this machine."""
    from tvm.support import cc

    exe = os.environ.get("CXX") or cc.get_cc()
    path = shutil.which(exe) if exe else None
    if path is not None:
        return Linker("cc", (path,))
    try:
        return zig_linker(f"{host_machine()}-linux-gnu")
    except TargetError as e:
        raise TargetError("no C++ compiler to link host libraries: neither g++ nor the 'ziglang' package",
                          hint="apt-get install g++   or   pip install ziglang") from e


def export_library(executable, out_path: Union[str, Path], linker: Linker) -> float:
    """Link ``executable`` into ``out_path`` atomically; returns the seconds it took.

    The library is written to a temporary file in the same folder and renamed over ``out_path``, so a reader
    never sees half a library and a failed link leaves any previous one in place.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A private folder beside the result, so the library keeps its final name while it is linked (and in errors).
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    tmp = tmp_dir / out_path.name
    start = time.perf_counter()
    try:
        executable.export_library(str(tmp), fcompile=linker.fcompile())
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_path)
    except TargetError:
        raise
    except Exception as e:  # TVM's own export errors (writing objects, packing imports)
        from aglmc.targets.compile import error_summary

        raise TargetError(f"exporting {out_path.name} failed: {error_summary(e)}") from e
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return time.perf_counter() - start


def elf_machine(path: Union[str, Path]) -> Optional[str]:
    """The architecture an ELF file is built for (``aarch64``, ``x86_64`` ...), or None if it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"  # EI_DATA: 1 = little-endian
    machine = int.from_bytes(head[18:20], order)  # e_machine, after the 16-byte e_ident and 2-byte e_type
    return ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def host_machine() -> str:
    """This machine's architecture in ELF terms (``x86_64``, ``aarch64``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def disassembler() -> Optional[List[str]]:
    """A command that disassembles aarch64 code (``aarch64-linux-gnu-objdump -d`` or ``llvm-objdump -d``)."""
    for exe in ("aarch64-linux-gnu-objdump", "llvm-objdump"):
        path = shutil.which(exe)
        if path:
            return [path, "-d"]
    return None
