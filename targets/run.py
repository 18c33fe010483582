"""Running a built host library in this process through the Relax VM.

Threads: TVM's thread pool reads ``TVM_NUM_THREADS`` once, when it is first used, and on x86 defaults to half
the cores (it assumes hyper-threads); ``runtime.config_threadpool(1, n)`` later changes the count, but only up to
the number the pool was created with. So the runner raises ``TVM_NUM_THREADS`` before the first use, then sets the
count it was asked for. ``HostRunner.threads`` is what the runtime actually uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import tvm
import tvm_ffi

from aglmc.errors import TargetError
from aglmc.targets.compile import error_summary
from aglmc.targets.llvm import usable_cores
from aglmc.targets.toolchain import elf_machine, host_machine


def set_runtime_threads(threads: int) -> int:
    """Ask TVM's runtime of this process for ``threads`` threads; returns the number it now uses."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(max(threads, usable_cores()))  # read when the pool starts
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))  # 1: use the big cores
    return int(tvm.runtime.num_threads())


def flatten_outputs(value: Any) -> List[np.ndarray]:
    """A VM result (a tensor, or nested tuples/Arrays of tensors and shapes) as a flat list of numpy arrays."""
    if isinstance(value, (tvm_ffi.Shape, tvm.runtime.ShapeTuple)):
        return [np.asarray(list(value), dtype="int64")]
    if isinstance(value, (list, tuple, tvm_ffi.Array)):
        return [a for v in value for a in flatten_outputs(v)]
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, (int, float, bool, np.generic)):
        return [np.asarray(value)]
    raise TargetError(f"the model returned a {type(value).__name__}, which aglmc cannot turn into an array")


class HostRunner:
    """A host library loaded into this process.

    >>> runner = HostRunner("build/host.so", threads=2)
    >>> (logits,) = runner.run([x])            # x: np.ndarray of the model's input shape and dtype
    """

    def __init__(self, lib_path: Union[str, Path], threads: Optional[int] = None, function: str = "main"):
        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise TargetError(f"no library at {lib_path}")
        machine = elf_machine(lib_path)
        if machine != host_machine():
            what = f"built for {machine}" if machine else "not an ELF shared library"
            raise TargetError(f"{lib_path} is {what}; this machine runs {host_machine()}",
                              hint="run ARM libraries on a board: aglmc run ARTIFACT --board KEY|HOST:PORT")
        self.path = lib_path
        self.threads = set_runtime_threads(threads) if threads else int(tvm.runtime.num_threads())
        try:
            self._vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
            self._main = self._vm[function]
        except Exception as e:
            raise TargetError(f"cannot load {lib_path}: {error_summary(e)}") from e
        self.function = function

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Outputs of one call with ``inputs`` (in the model's input order), flattened to a list."""
        device = tvm.cpu()
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), device) for x in inputs]
        try:
            result = self._main(*args)
        except Exception as e:
            raise TargetError(f"running {self.path.name}:{self.function} failed: {error_summary(e)}") from e
        return flatten_outputs(result)
