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


#: the alignment TVM's kernels assume of every buffer (TIR's default data alignment)
ALIGNMENT = 64


def host_tensor(array: np.ndarray):
    """``array`` as a CPU tensor for a library call, without a copy when it is contiguous and 64-byte aligned
    (DLPack; the library only reads it). ``tvm.runtime.tensor`` copies: 13 µs for the digits CNN's 256-byte input,
    against 0.4 µs, which was a third of that model's whole call."""
    array = np.ascontiguousarray(array)
    if array.ctypes.data % ALIGNMENT or not array.flags.writeable:
        aligned = aligned_empty(array.shape, array.dtype)
        aligned[...] = array
        array = aligned
    return tvm.runtime.from_dlpack(array)


def aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.empty(count * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def host_array(tensor) -> np.ndarray:
    """A CPU tensor the library returned, as numpy without a copy (the array keeps the tensor alive, so the
    runtime's memory pool does not hand its storage to a later call)."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, BufferError, RuntimeError):  # dtypes numpy's DLPack import does not take (e.g. bool)
        return tensor.numpy()


def flatten_outputs(value: Any) -> List[np.ndarray]:
    """A VM result (a tensor, or nested tuples/Arrays of tensors and shapes) as a flat list of numpy arrays."""
    if isinstance(value, (tvm_ffi.Shape, tvm.runtime.ShapeTuple)):
        return [np.asarray(list(value), dtype="int64")]
    if isinstance(value, (list, tuple, tvm_ffi.Array)):
        return [a for v in value for a in flatten_outputs(v)]
    if isinstance(value, tvm.runtime.Tensor):
        on_cpu = value.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        return [host_array(value) if on_cpu else value.numpy()]
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
        self._staging: List[Any] = []  # per input: (aligned numpy buffer, the tensor viewing it)

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Outputs of one call with ``inputs`` (in the model's input order), flattened to a list.

        Inputs are copied into 64-byte aligned buffers the runner keeps (one ``copyto``; a fresh tensor per
        call cost 7-13 µs, a third of a small CNN's call); outputs come back without a copy, except one that
        shares memory with those buffers (a model that returns a view of its input)."""
        args = [self._stage(i, x) for i, x in enumerate(inputs)]
        try:
            result = self._main(*args)
        except Exception as e:
            raise TargetError(f"running {self.path.name}:{self.function} failed: {error_summary(e)}") from e
        outputs = flatten_outputs(result)
        staged = [buf for buf, _ in self._staging]
        return [o.copy() if any(np.may_share_memory(o, s) for s in staged) else o for o in outputs]

    def _stage(self, i: int, x) -> Any:
        x = np.asarray(x)
        if i >= len(self._staging):
            self._staging.append(None)
        entry = self._staging[i]
        if entry is None or entry[0].shape != x.shape or entry[0].dtype != x.dtype:
            buf = aligned_empty(x.shape, x.dtype)
            entry = self._staging[i] = (buf, tvm.runtime.from_dlpack(buf))
        np.copyto(entry[0], x)
        return entry[1]
