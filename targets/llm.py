"""Language-model libraries: ``prefill`` and ``decode`` in one library, sharing weights, and their runners.

An LLM build imports two exported programs of the same ``nn.Module`` (:mod:`aglmc.compiler.llm` makes them):

    prefill(tokens: int64[1, n])                                -> (logits f32[1, n, V], cache)
    decode(token: int64[1, 1], cache, pos: int64[1])            -> (logits f32[1, 1, V], cache)
    cache: f32[layers, 2, kv_heads, max_cache_len, head_dim]   (keys at [:, 0], values at [:, 1])

``n`` is symbolic (1 <= n <= max_cache_len, a Relax shape variable from torch.export's dynamic dimension).
:func:`merge_functions` puts both into one IRModule with every weight bound once, as one ``relax.Constant``
object that both functions use, so the VM's constant pool stores it once (the executable deduplicates constants
by identity: a 1 MiB weight used by two functions makes a 1.08 MB library). What the CPU pipeline *derives*
from a weight is per function: it prepacks the weights of ``decode``'s GEMV kernels into their panel layout at
compile time, and those packed copies are extra constants (:func:`constant_bytes` measures them).

Targets:

- host, arm: one library, ``host_llm.so`` / ``arm_llm.so``, with both functions (aglmc's CPU pipeline via the
  target's own ``build``); the ``_llm`` names leave ``host.so``/``arm.so`` to the forward (``main``) libraries of
  the same schedule;
- vulkan: the vulkan target's launch plan has one entry (``main``), so each function is its own artifact,
  ``vulkan_prefill.wgpu`` and ``vulkan_decode.wgpu``; the weights are stored in both.

Runners give the same interface everywhere: ``prefill(tokens) -> (logits, cache)``, ``decode(token, cache,
pos) -> (logits, cache)``; the cache is an opaque handle that stays where the library runs (a TVM tensor on
the host, a remote tensor on a board, a numpy array for vulkan).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import tvm
from tvm import relax

from aglmc.errors import ModelError, TargetError
from aglmc.targets.compile import error_summary
from aglmc.targets.vulkan.llm import VulkanLlmRunner, _tokens  # noqa: F401  (the vulkan runner needs no TVM)

#: the entry points of an LLM library, in the order they are merged
FUNCTIONS: Tuple[str, ...] = ("prefill", "decode")
#: with shared weights (``merge_functions(..., bind=False)``), the function that returns them
WEIGHTS_FUNCTION = "weights"


# ---- import and merge ------------------------------------------------------------------------------------
def relax_from_program(program, name: str) -> tvm.IRModule:
    """Import one ExportedProgram with its weights as parameters (``keep_params_as_input=True``)."""
    from tvm.relax.frontend.torch import from_exported_program

    from aglmc.targets.quant import TORCH_QDQ_CONVERTERS  # issue 6: torch's decomposed Q/DQ (weight-only int8/int4)

    try:
        return from_exported_program(program, keep_params_as_input=True, custom_convert_map=TORCH_QDQ_CONVERTERS)
    except Exception as e:
        raise ModelError(f"TVM's PyTorch frontend could not import '{name}': {error_summary(e)}") from e


def merge_functions(modules: Mapping[str, tvm.IRModule], *, bind: bool = True) -> tvm.IRModule:
    """One IRModule whose functions are the ``main`` of each module, renamed to its key.

    Each module comes from :func:`relax_from_program`: ``main``'s first ``num_input`` parameters are the user
    inputs, the rest are weights whose values the ``params`` attribute holds. Weights are matched by name
    (every module is an export of the same ``nn.Module``, so a weight has one name everywhere); two exports
    that disagree on a weight's value are a ModelError.

    ``bind=True``: one ``relax.Constant`` per weight, bound into every function that uses it (the library stores
    it once; a CPU target may still prepack a function's own copy, see the module docstring).
    ``bind=False`` ("shared" weights): every function takes all weights, in one order, after its inputs, and a
    third function ``weights()`` returns them (the constants, as a tuple): a runner calls it once and passes
    the same tensors to every call, so each weight exists once in the library and in memory, and no target
    repacks it.
    """
    values: Dict[str, Any] = {}
    arrays: Dict[str, np.ndarray] = {}
    order: List[str] = []
    for name, mod in modules.items():
        func = mod["main"]
        count = int(func.attrs["num_input"])
        params = list(func.attrs["params"])
        weights = func.params[count:]
        if len(params) != len(weights):
            raise ModelError(f"'{name}': {len(weights)} weight parameters but {len(params)} values")
        for var, value in zip(weights, params):
            if var.name in values:
                if not _same(arrays[var.name], value):
                    raise ModelError(f"weight '{var.name}' differs between the exported functions")
            else:
                values[var.name], arrays[var.name] = value, value.numpy()
                order.append(var.name)
    constants = {key: relax.const(values[key]) for key in order}
    merged = tvm.IRModule()
    for name, mod in modules.items():
        func = mod["main"]
        count = int(func.attrs["num_input"])
        own = {var.name: var for var in func.params[count:]}
        func = func.without_attr("params").without_attr("num_input").with_attr("global_symbol", name)
        if bind:
            merged[name] = func
            merged = relax.transform.BindParams(name, {own[k]: constants[k] for k in own})(merged)
        else:
            params = list(func.params[:count]) + [
                own[k] if k in own else relax.Var(k, relax.TensorType(tuple(arrays[k].shape), str(arrays[k].dtype)))
                for k in order]
            merged[name] = relax.Function(params, func.body, None, func.is_pure, func.attrs)
    if not bind:
        bb = relax.BlockBuilder()
        with bb.function(WEIGHTS_FUNCTION, []):
            bb.emit_func_output(relax.Tuple([constants[k] for k in order]))
        merged[WEIGHTS_FUNCTION] = bb.get()[WEIGHTS_FUNCTION]
    return merged


def _same(array: np.ndarray, value) -> bool:
    other = value.numpy()
    return array.shape == other.shape and array.dtype == other.dtype and np.array_equal(array, other)


def constant_bytes(mod: tvm.IRModule) -> Dict[str, int]:
    """Bytes of tensor constants per function, and ``"unique"``: the bytes the module holds once each
    constant object is counted once (what the executable stores)."""
    seen: Dict[int, int] = {}
    out: Dict[str, int] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        found: List[Any] = []

        def visit(expr, found=found):
            value = getattr(expr, "value", None)
            if isinstance(value, tvm.runtime.Tensor) and hasattr(expr, "ty"):
                found.append(value)

        relax.analysis.post_order_visit(func.body, visit)
        total = 0
        for value in found:
            nbytes = int(np.prod(value.shape)) * np.dtype(str(value.dtype)).itemsize
            total += nbytes
            seen[value.__chandle__()] = nbytes  # the same tensor object, whichever wrapper holds it
        out[gv.name_hint if hasattr(gv, "name_hint") else str(gv)] = total
    out["unique"] = sum(seen.values())
    return out


# ---- building ------------------------------------------------------------------------------------------
@dataclass
class LlmLibrary:
    """One target's LLM build: ``files`` maps each entry point to the file (in the artifact) that holds it."""

    kind: str
    files: Dict[str, str]
    size: int
    seconds: float
    info: Any = None

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "files": dict(self.files), "size": self.size, "seconds": round(self.seconds, 3)}


def library_files(kind: str) -> Dict[str, str]:
    """The files of ``kind``'s LLM library, per entry point."""
    if kind == "vulkan":
        return {f: f"vulkan_{f}.wgpu" for f in FUNCTIONS}
    from aglmc.targets.base import get_target

    stem, dot, suffix = get_target(kind).library_name.partition(".")
    return {f: f"{stem}_llm{dot}{suffix}" for f in FUNCTIONS}


def build_llm_library(kind: str, mod: tvm.IRModule, settings: Mapping[str, Any], out_dir: Path) -> LlmLibrary:
    """Build ``mod`` (from :func:`merge_functions`) for target ``kind`` into ``out_dir``.

    The vulkan target needs the weights bound (``bind=True``): its launch plan's inputs are uploaded per call.
    """
    from aglmc.targets.base import get_target

    target = get_target(kind)
    out_dir = Path(out_dir)
    files = library_files(kind)
    start = time.perf_counter()
    if kind == "vulkan":
        if WEIGHTS_FUNCTION in [gv.name_hint for gv in mod.get_global_vars()]:
            raise TargetError("the vulkan target needs the weights bound (merge_functions(..., bind=True))")
        info = {}
        for name in FUNCTIONS:
            sub = tvm.IRModule({"main": mod[name].with_attr("global_symbol", "main")})
            info[name] = target.build(sub, settings, out_dir / files[name])
    else:
        info = target.build(mod, settings, out_dir / files[FUNCTIONS[0]])
    size = sum((out_dir / f).stat().st_size for f in set(files.values()))
    return LlmLibrary(kind, files, size, time.perf_counter() - start, info)


# ---- running -------------------------------------------------------------------------------------------
class HostLlmRunner:
    """An LLM host library loaded into this process.

    >>> runner = HostLlmRunner("build/glm/host_llm.so")
    >>> logits, cache = runner.prefill([1, 2, 3])          # logits: np.ndarray [1, 3, vocab]
    >>> logits, cache = runner.decode(7, cache, 3)         # logits: np.ndarray [vocab]
    """

    where = "host"

    def __init__(self, lib_path: Union[str, Path], threads: Optional[int] = None):
        from aglmc.targets.run import set_runtime_threads
        from aglmc.targets.toolchain import elf_machine, host_machine

        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise TargetError(f"no library at {lib_path}")
        if elf_machine(lib_path) != host_machine():
            raise TargetError(f"{lib_path} is not a library for this machine ({host_machine()})",
                              hint="run ARM libraries on a board: --board KEY")
        self.threads = set_runtime_threads(threads) if threads else int(tvm.runtime.num_threads())
        self.device = tvm.cpu()
        try:
            self._vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)
            self._prefill, self._decode = self._vm["prefill"], self._vm["decode"]
            # shared weights: fetched once from the library, passed to every call
            shared = self._vm.module.implements_function(WEIGHTS_FUNCTION)
            self._weights = list(self._vm[WEIGHTS_FUNCTION]()) if shared else []
        except Exception as e:
            raise TargetError(f"cannot load the prefill/decode functions of {lib_path}: {error_summary(e)}") from e
        self.path = lib_path
        from aglmc.targets.run import aligned_empty

        self._token_buf, self._pos_buf = aligned_empty((1, 1), np.int64), aligned_empty((1,), np.int64)
        self._token, self._pos = tvm.runtime.from_dlpack(self._token_buf), tvm.runtime.from_dlpack(self._pos_buf)

    def prefill(self, tokens):
        from aglmc.targets.run import host_array, host_tensor

        out = self._prefill(host_tensor(_tokens(tokens)), *self._weights)
        return host_array(out[0]), out[1]

    def decode(self, token: int, cache, pos: int):
        from aglmc.targets.run import host_array

        # the token and position go in through buffers of their own (a fresh tensor per call costs ~13 µs each)
        self._token_buf[0, 0], self._pos_buf[0] = token, pos
        out = self._decode(self._token, cache, self._pos, *self._weights)
        return host_array(out[0]).reshape(-1), out[1]

    def close(self) -> None:
        self._vm = self._prefill = self._decode = None
        self._weights = []


class BoardLlmRunner:
    """An LLM arm library loaded once on a board (TVM RPC); the cache stays on the board between calls."""

    def __init__(self, lib_path: Union[str, Path], board, *, timeout: float = 300.0):
        from aglmc.targets import board as boards

        self.lib_path = Path(lib_path)
        boards._check_arm_library(self.lib_path)
        self.spec = boards.parse_board(board) if isinstance(board, str) else board
        self.where = f"board {self.spec}"
        self.timeout = timeout
        step = ["connecting"]

        def open_session():
            session = boards._connect(self.spec, timeout, session_timeout=3600)
            step[0] = f"uploading {self.lib_path.name}"
            remote = f"aglmc-{os.getpid()}-{id(self)}-{self.lib_path.name}"
            session.upload(str(self.lib_path), target=remote)
            step[0] = f"loading {self.lib_path.name}"
            return session, session.load_module(remote)

        self._session, lib = boards._bounded(open_session, timeout, self.where, step)
        self.device = self._session.cpu()
        vm = tvm.relax.VirtualMachine(lib, self.device)
        self._prefill, self._decode = vm["prefill"], vm["decode"]
        self._size = self._session.get_function("ffi.ArraySize")
        self._item = self._session.get_function("ffi.ArrayGetItem")
        self._weights: List[Any] = []
        try:  # shared weights: fetched once, they stay on the board
            weights = vm[WEIGHTS_FUNCTION]()
        except Exception:  # no such function: the weights are bound in the library
            weights = None
        if weights is not None:
            self._weights = [self._item(weights, i) for i in range(int(self._size(weights)))]

    def _pair(self, value):
        """(logits as numpy, cache as a tensor left on the board) from the board's result tuple."""
        if isinstance(value, (list, tuple)):
            logits, cache = value[0], value[1]
        else:
            logits, cache = self._item(value, 0), self._item(value, 1)
        return logits.numpy(), cache

    def _call(self, what: str, fn):
        from aglmc.targets import board as boards

        return boards._bounded(fn, self.timeout, self.where, [what])

    def prefill(self, tokens):
        tokens = _tokens(tokens)
        return self._call("running prefill", lambda: self._pair(
            self._prefill(tvm.runtime.tensor(tokens, self.device), *self._weights)))

    def decode(self, token: int, cache, pos: int):
        def work():
            logits, cache_out = self._pair(self._decode(
                tvm.runtime.tensor(np.array([[token]], dtype=np.int64), self.device), cache,
                tvm.runtime.tensor(np.array([pos], dtype=np.int64), self.device), *self._weights))
            return logits.reshape(-1), cache_out

        return self._call("running decode", work)

    def close(self) -> None:
        self._session = self._prefill = self._decode = None
        self._weights = []
