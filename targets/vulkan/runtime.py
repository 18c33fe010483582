"""Running a vulkan artifact on a Vulkan device through wgpu; needs wgpu and numpy, never TVM.

>>> runner = VulkanRunner("build/digits/vulkan.wgpu")
>>> runner.adapter
'llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, CPU, Mesa 22.3.6 (LLVM 15.0.6))'
>>> (logits,) = runner.run([x])

The adapter is chosen among wgpu's **Vulkan** adapters only (never Metal, D3D12 or GL): the one whose name
contains ``adapter=`` or ``$AGLMC_VULKAN_ADAPTER`` if given, else a discrete GPU before an integrated, virtual
or CPU one (lavapipe). The device is opened with the adapter's own limits, not WebGPU's defaults (8 storage
buffers per stage, 128 MiB bindings), and with ``shader-f16`` when the kernels need it.

One inference is one queue submission: inputs are written with ``queue.write_buffer``, all dispatches go into
one compute pass (WebGPU orders storage writes between dispatches), the outputs are copied to a staging buffer
in the same command buffer, and the staging buffer is mapped once. Storage buffers come from the plan's slots:
storages whose lifetimes do not overlap share one buffer, sized for the largest; buffers, bind groups and
uniforms are made once per set of shape-variable values and reused.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from aglmc.errors import TargetError
from aglmc.targets.vulkan.artifact import DTYPE_BYTES, Artifact, evaluate

# Adapter kinds, most wanted first.
_ADAPTER_ORDER = ("DiscreteGPU", "IntegratedGPU", "VirtualGPU", "Unknown", "CPU")
# The limits a compute-only device asks for, at the adapter's values.
_LIMITS = ("max-storage-buffers-per-shader-stage", "max-storage-buffer-binding-size", "max-buffer-size",
           "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
           "max-compute-workgroup-size-x", "max-compute-workgroup-size-y", "max-compute-workgroup-size-z",
           "max-compute-workgroups-per-dimension", "max-uniform-buffer-binding-size",
           "max-bindings-per-bind-group")
_MAX_GRID_X = 1 << 16  # blockIdx.x at or past this is folded into z, as TVM's web runtime does


def _round4(n: int) -> int:
    return max(4, (int(n) + 3) // 4 * 4)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def fold_grid(grid: Sequence[int]) -> Tuple[Tuple[int, int, int], int]:
    """The dispatch size for ``grid`` (x, y, 1) and the ``packGridDimX`` uniform the kernel's guard compares with.

    WebGPU allows 65535 workgroups per dimension; TVM's WGSL kernels read their x block index as
    ``blockIdx.z * gridDim.x + blockIdx.x``, so a long x is halved (rounded up) into z until it fits. The kernel
    skips a workgroup when that index is ``> packGridDimX``. TVM's web runtime passes the grid's x there, which
    lets one surplus workgroup (index == x, present when the halving rounded up) run past the tensor; passing
    ``x - 1`` skips exactly the surplus ones and changes nothing when the grid is not folded.

    >>> fold_grid((65537, 1, 1))
    ((32769, 1, 2), 65536)
    """
    x, y, z = (int(g) for g in grid)
    if z != 1:
        raise TargetError("vulkan: blockIdx.z is reserved for folding long x grids")
    pack = x - 1
    while x >= _MAX_GRID_X:
        x = (x + 1) // 2
        z *= 2
    return (x, y, z), pack


def _wgpu():
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover - wgpu is a dependency
        raise TargetError("the vulkan runtime needs the wgpu package", hint="pip install wgpu") from e
    _vulkan_only_instance()
    return wgpu


def _vulkan_only_instance() -> None:
    """Create wgpu-native's (process-wide) instance with the Vulkan backend only, when it does not exist yet.

    Then no other backend is even initialised (Mesa's GL/EGL probing prints XDG_RUNTIME_DIR errors on headless
    machines). When something in the process made the instance first, adapters are still filtered by backend.
    """
    try:
        from wgpu.backends.wgpu_native import _api, extras
    except ImportError:  # another wgpu backend: rely on filtering
        return
    if getattr(_api, "_the_instance", "unknown") is None:
        try:
            extras.set_instance_extras(backends=["Vulkan"])
        except (RuntimeError, KeyError):
            pass


def vulkan_adapters() -> List[Any]:
    """wgpu's adapters on the Vulkan backend, most wanted kind first, each device listed once."""
    wgpu = _wgpu()
    seen, out = set(), []
    for a in wgpu.gpu.enumerate_adapters_sync():
        info = a.info
        if info.get("backend_type") != "Vulkan":
            continue
        key = (info.get("device"), info.get("vendor_id"), info.get("device_id"), info.get("adapter_type"))
        if key in seen:
            continue
        seen.add(key)
        out.append(a)
    rank = {kind: i for i, kind in enumerate(_ADAPTER_ORDER)}
    return sorted(out, key=lambda a: rank.get(a.info.get("adapter_type"), len(rank)))


def describe_adapter(adapter) -> str:
    info = adapter.info
    return (f"{info.get('device') or info.get('vendor')} ({info.get('backend_type')}, {info.get('adapter_type')}, "
            f"{info.get('description')})")


def select_adapter(name: Optional[str] = None):
    """The Vulkan adapter to run on: the first whose name contains ``name`` (or ``$AGLMC_VULKAN_ADAPTER``),
    else the most wanted kind; a TargetError when there is no Vulkan adapter at all."""
    name = name or os.environ.get("AGLMC_VULKAN_ADAPTER") or None
    adapters = vulkan_adapters()
    if not adapters:
        raise TargetError("no Vulkan adapter found",
                          hint="install a Vulkan driver (CI: apt-get install mesa-vulkan-drivers libvulkan1); "
                               "VK_LOADER_DEBUG=error,warn explains a driver that does not load")
    if name:
        for a in adapters:
            if name.lower() in describe_adapter(a).lower():
                return a
        raise TargetError(f"no Vulkan adapter matches '{name}'",
                          hint="adapters: " + "; ".join(describe_adapter(a) for a in adapters))
    return adapters[0]


def _shader_error(e: BaseException) -> str:
    """The telling part of a wgpu validation error: naga's message and the offending WGSL line."""
    lines = [ln.rstrip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "error:" in ln:
            return " ".join(x.strip() for x in lines[i:i + 4])
    return lines[0] if lines else type(e).__name__


class _Prepared:
    """Everything one set of shape-variable values needs: bind groups, dispatch sizes, uniforms, readback."""

    def __init__(self, generation: int):
        self.generation = generation  # the buffers' generation the bind groups were made for
        self.dispatches: List[Tuple[Any, Any, Tuple[int, int, int]]] = []  # pipeline, bind group, workgroups
        self.uniform = None
        # per output: source buffer, byte offset, offset in staging, bytes, shape, plan entry
        self.outputs: List[Tuple[Any, int, int, int, Tuple[int, ...], Dict[str, Any]]] = []
        self.staging = None
        self.staging_size = 0


class VulkanRunner:
    """A vulkan artifact loaded onto a Vulkan device.

    Parameters
    ----------
    path : the artifact (``vulkan.wgpu``).
    adapter : a substring of the adapter to use; default ``$AGLMC_VULKAN_ADAPTER`` or the best Vulkan adapter.

    Attributes
    ----------
    adapter : the adapter's name, backend, kind and driver, e.g. ``llvmpipe (...) (Vulkan, CPU, Mesa 22.3.6 ...)``.
    adapter_info : wgpu's adapter info dict.
    limits : the device's limits.
    """

    def __init__(self, path: Union[str, Path], adapter: Optional[str] = None):
        self.path = Path(path)
        try:
            self.artifact = Artifact.load(self.path)
        except (OSError, ValueError, KeyError) as e:
            raise TargetError(f"cannot load the vulkan artifact {self.path}: {e}") from e
        self.plan = self.artifact.plan
        wgpu = self._wgpu = _wgpu()
        chosen = select_adapter(adapter)
        self.adapter = describe_adapter(chosen)
        self.adapter_info = dict(chosen.info)
        self._open_device(chosen)
        self._build_pipelines()
        self._upload_constants()
        self._inputs: List[Any] = [None] * len(self.plan["inputs"])
        self._slots: List[Any] = [None] * self.plan["slots"]
        self._generation = 0
        self._prepared: "OrderedDict[Tuple, _Prepared]" = OrderedDict()
        self._usage_storage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST

    # --------------------------------------------------------------------------------------------- setup
    def _open_device(self, adapter) -> None:
        requires = self.plan.get("requires", {})
        features = list(requires.get("features", []))
        missing = [f for f in features if f not in adapter.features]
        if missing:
            raise TargetError(f"the adapter {self.adapter} lacks {', '.join(missing)}, which the kernels of "
                              f"{self.path.name} need", hint="build with fp16 = false")
        limits = {k: adapter.limits[k] for k in _LIMITS if k in adapter.limits}
        for key, need in requires.get("limits", {}).items():
            have = limits.get(key, adapter.limits.get(key))
            if have is not None and need > have:
                raise TargetError(f"the kernels of {self.path.name} need {key} = {need}; the adapter "
                                  f"{self.adapter} offers {have}")
        self.device = adapter.request_device_sync(label="aglmc", required_features=features,
                                                  required_limits=limits)
        self.limits = dict(self.device.limits)
        self._uniform_align = int(self.limits.get("min-uniform-buffer-offset-alignment", 256))
        self._storage_align = int(self.limits.get("min-storage-buffer-offset-alignment", 256))

    def _build_pipelines(self) -> None:
        wgpu = self._wgpu
        self._pipelines: Dict[str, Tuple[Any, Any]] = {}
        for name, k in self.plan["kernels"].items():
            entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                        "buffer": {"type": wgpu.BufferBindingType.storage if b["access"] == "read_write"
                                   else wgpu.BufferBindingType.read_only_storage}}
                       for i, b in enumerate(k["buffers"])]
            entries.append({"binding": len(k["buffers"]), "visibility": wgpu.ShaderStage.COMPUTE,
                            "buffer": {"type": wgpu.BufferBindingType.uniform}})
            try:
                layout = self.device.create_bind_group_layout(entries=entries)
                module = self.device.create_shader_module(label=name, code=self.artifact.shaders[name])
                pipeline = self.device.create_compute_pipeline(
                    label=name, layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
                    compute={"module": module, "entry_point": name})
            except Exception as e:
                raise TargetError(f"the adapter {self.adapter} rejected kernel '{name}': {_shader_error(e)}") from e
            self._pipelines[name] = (pipeline, layout)

    def _upload_constants(self) -> None:
        wgpu = self._wgpu
        self._constants = []
        for i, array in enumerate(self.artifact.constants):
            data = np.ascontiguousarray(array).tobytes()
            buf = self.device.create_buffer(label=f"c{i}", size=_round4(len(data)),
                                            usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST
                                            | wgpu.BufferUsage.COPY_SRC)
            if data:
                pad = (-len(data)) % 4
                self.device.queue.write_buffer(buf, 0, data + b"\0" * pad)
            self._constants.append(buf)

    # -------------------------------------------------------------------------------------------- shapes
    def bind_shapes(self, inputs: Sequence[np.ndarray]) -> Dict[str, int]:
        """The shape variables' values for ``inputs``; a TargetError when an input does not fit the plan."""
        specs = self.plan["inputs"]
        if len(inputs) != len(specs):
            raise TargetError(f"{self.path.name} takes {len(specs)} inputs, got {len(inputs)}")
        env: Dict[str, int] = {}
        for name, info in self.plan["shape_vars"].items():
            x = inputs[info["input"]]
            if x.ndim <= info["dim"]:
                break  # reported below, with the expected shape
            value = int(x.shape[info["dim"]])
            lo, hi = info.get("min"), info.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise TargetError(f"input '{specs[info['input']]['name']}': dimension {info['dim']} is {value}, "
                                  f"outside the range [{lo}, {hi}] the model was built for")
            env[name] = value
        for spec, x in zip(specs, inputs):
            try:
                want = tuple(evaluate(d, env) for d in spec["shape"])
            except KeyError:
                want = None
            if want is None or tuple(x.shape) != want:
                shape = "(" + ", ".join(str(d) for d in spec["shape"]) + ")"
                raise TargetError(f"input '{spec['name']}' must have shape {shape}, got {tuple(x.shape)}")
        return env

    def _device_input(self, spec: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
        want = np.dtype(spec["dtype"])
        host = np.dtype(spec.get("host_dtype", spec["dtype"]))
        x = np.asarray(x)
        if x.dtype != host and not np.can_cast(x.dtype, host, "safe"):
            raise TargetError(f"input '{spec['name']}' must be {host}, got {x.dtype}")
        if want.kind in "iu" and x.dtype != want:
            info = np.iinfo(want)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise TargetError(f"input '{spec['name']}' has values outside {want}, which the vulkan build "
                                  f"narrowed it to (WGSL has no 64-bit integers)")
        return np.ascontiguousarray(x, dtype=want)

    # ------------------------------------------------------------------------------------------ buffers
    def _sized(self, buf, size: int, label: str):
        if buf is not None and buf.size >= size:
            return buf
        if buf is not None:
            buf.destroy()
        self._generation += 1  # bind groups that named the old buffer are stale
        return self.device.create_buffer(label=label, size=size, usage=self._usage_storage)

    def _tensor_binding(self, tid: int, env: Mapping[str, int]) -> Dict[str, Any]:
        t = self.plan["tensors"][tid]
        nbytes = int(np.prod([evaluate(d, env) for d in t["shape"]], dtype=np.int64)) * DTYPE_BYTES[t["dtype"]]
        offset = int(evaluate(t["offset"], env))
        if t["kind"] == "input":
            buf = self._inputs[t["ref"]]
        elif t["kind"] == "constant":
            buf = self._constants[t["ref"]]
        else:
            buf = self._slots[self.plan["storages"][t["ref"]]["slot"]]
        if offset % self._storage_align:
            raise TargetError(f"vulkan: tensor {tid} starts at byte {offset}, not a multiple of the adapter's "
                              f"storage offset alignment {self._storage_align}")
        size = min(_round4(nbytes), buf.size - offset)
        return {"buffer": buf, "offset": offset, "size": size, "nbytes": nbytes}

    def _prepare(self, env: Dict[str, int]) -> _Prepared:
        """Buffers sized for ``env``, and the bind groups, grids and uniforms of every step (cached)."""
        wgpu = self._wgpu
        plan = self.plan
        for i, spec in enumerate(plan["inputs"]):
            n = int(np.prod([evaluate(d, env) for d in spec["shape"]], dtype=np.int64))
            self._inputs[i] = self._sized(self._inputs[i], _round4(n * DTYPE_BYTES[spec["dtype"]]), spec["name"])
        need = [4] * plan["slots"]
        for s in plan["storages"]:
            need[s["slot"]] = max(need[s["slot"]], _round4(evaluate(s["bytes"], env)))
        for k in range(plan["slots"]):
            self._slots[k] = self._sized(self._slots[k], need[k], f"slot{k}")

        key = tuple(sorted(env.items()))
        cached = self._prepared.get(key)
        if cached is not None and cached.generation == self._generation:
            self._prepared.move_to_end(key)
            return cached
        prep = _Prepared(self._generation)
        # Scalar arguments: one uniform region per step, aligned for dynamic-free binding at an offset.
        regions, blobs = [], []
        offset = 0
        for step in plan["steps"]:
            kernel = plan["kernels"][step["kernel"]]
            grid = [int(evaluate(g, env)) for g in step["grid"]]
            dims, pack = fold_grid(grid)
            words = np.zeros(len(kernel["pods"]) + 1, dtype=np.uint32)
            for j, (pod, expr) in enumerate(zip(kernel["pods"], step["pods"])):
                value = evaluate(expr, env)
                words[j:j + 1] = np.array([value], dtype={"i32": np.int32, "u32": np.uint32,
                                                          "f32": np.float32}[pod["type"]]).view(np.uint32)
            words[-1] = max(pack, 0)
            size = _align(words.nbytes, 16)
            regions.append((offset, size, dims))
            blobs.append((offset, words.tobytes()))
            offset = _align(offset + size, self._uniform_align)
        uniform = self.device.create_buffer(label="pod-args", size=max(offset, 16),
                                            usage=wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST)
        data = bytearray(max(offset, 16))
        for off, blob in blobs:
            data[off:off + len(blob)] = blob
        self.device.queue.write_buffer(uniform, 0, bytes(data))
        prep.uniform = uniform
        for step, (uoff, usize, dims) in zip(plan["steps"], regions):
            if 0 in dims:
                continue  # an empty tensor: nothing to launch
            limit = int(self.limits.get("max-compute-workgroups-per-dimension", 65535))
            if max(dims) > limit:
                raise TargetError(f"vulkan: kernel '{step['kernel']}' needs a grid of {dims} workgroups; "
                                  f"the adapter allows {limit} per dimension")
            pipeline, layout = self._pipelines[step["kernel"]]
            entries = []
            for j, tid in enumerate(step["buffers"]):
                b = self._tensor_binding(tid, env)
                entries.append({"binding": j, "resource": {"buffer": b["buffer"], "offset": b["offset"],
                                                           "size": b["size"]}})
            entries.append({"binding": len(step["buffers"]),
                            "resource": {"buffer": uniform, "offset": uoff, "size": usize}})
            group = self.device.create_bind_group(layout=layout, entries=entries)
            prep.dispatches.append((pipeline, group, dims))
        # Outputs: copied into one staging buffer at 4-byte aligned offsets.
        soff = 0
        for out in plan["outputs"]:
            b = self._tensor_binding(out["tensor"], env)
            shape = tuple(int(evaluate(d, env)) for d in plan["tensors"][out["tensor"]]["shape"])
            prep.outputs.append((b["buffer"], b["offset"], soff, b["nbytes"], shape, out))
            soff += _round4(b["nbytes"])
        prep.staging_size = max(soff, 4)
        prep.staging = self.device.create_buffer(label="readback", size=prep.staging_size,
                                                 usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
        self._prepared[key] = prep
        while len(self._prepared) > 8:
            self._prepared.popitem(last=False)
        return prep

    # ----------------------------------------------------------------------------------------------- run
    def _upload(self, inputs: Sequence[np.ndarray]):
        """Bind the shapes of ``inputs``, write them to the input buffers; the prepared launches for them."""
        inputs = [np.asarray(x) for x in inputs]
        env = self.bind_shapes(inputs)
        arrays = [self._device_input(spec, x) for spec, x in zip(self.plan["inputs"], inputs)]
        prep = self._prepare(env)
        for buf, x in zip(self._inputs, arrays):
            data = x.tobytes()
            if data:
                self.device.queue.write_buffer(buf, 0, data + b"\0" * ((-len(data)) % 4))
        return prep

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The model's outputs for ``inputs`` (numpy arrays in the model's input order), as numpy arrays."""
        prep = self._upload(inputs)
        queue = self.device.queue
        encoder = self.device.create_command_encoder()
        if prep.dispatches:
            cpass = encoder.begin_compute_pass()
            for pipeline, group, dims in prep.dispatches:
                cpass.set_pipeline(pipeline)
                cpass.set_bind_group(0, group)
                cpass.dispatch_workgroups(*dims)
            cpass.end()
        for buf, off, soff, nbytes, _, _ in prep.outputs:
            if nbytes:
                encoder.copy_buffer_to_buffer(buf, off, prep.staging, soff, _round4(nbytes))
        queue.submit([encoder.finish()])
        prep.staging.map_sync(self._wgpu.MapMode.READ)
        try:
            raw = bytes(prep.staging.read_mapped())
        finally:
            prep.staging.unmap()
        results = []
        for _, _, soff, nbytes, shape, out in prep.outputs:
            a = np.frombuffer(raw[soff:soff + nbytes], dtype=out["dtype"]).reshape(shape).copy()
            host = out.get("host_dtype", out["dtype"])
            results.append(a.astype(host) if host != out["dtype"] else a)
        return results

    def time(self, inputs: Sequence[np.ndarray], number: int = 3, repeat: int = 3, min_repeat_ms: float = 0.0,
             max_number: int = 1000) -> List[float]:
        """Seconds per inference, ``repeat`` times: wall clock around one submission of ``number`` inferences'
        dispatches, waited for, divided by ``number``.

        Inputs are uploaded once, before timing; outputs are not read back: what is timed is the compute
        passes (and one submission's overhead, spread over ``number``). ``number`` grows until one submission
        takes ``min_repeat_ms`` (at most ``max_number``), as TVM's time evaluator does. The first submission
        (pipeline warm-up) is not timed. Used by the tuning runner (:mod:`.tuning_runner`).
        """
        import time as _time

        prep = self._upload(inputs)
        queue = self.device.queue

        # Waiting for the submission: a 4-byte copy behind the dispatches into a mappable buffer, then mapping it
        # (wgpu-py 0.32's on_submitted_work_done_sync fails on a callback signature mismatch).
        usage = self._wgpu.BufferUsage
        fence = self.device.create_buffer(label="fence", size=4, usage=usage.COPY_SRC | usage.COPY_DST)
        readback = self.device.create_buffer(label="fence-readback", size=4, usage=usage.MAP_READ | usage.COPY_DST)

        def submit(n: int) -> float:
            encoder = self.device.create_command_encoder()
            cpass = encoder.begin_compute_pass()
            for _ in range(n):
                for pipeline, group, dims in prep.dispatches:
                    cpass.set_pipeline(pipeline)
                    cpass.set_bind_group(0, group)
                    cpass.dispatch_workgroups(*dims)
            cpass.end()
            encoder.copy_buffer_to_buffer(fence, 0, readback, 0, 4)
            start = _time.perf_counter()
            queue.submit([encoder.finish()])
            readback.map_sync(self._wgpu.MapMode.READ)
            elapsed = _time.perf_counter() - start
            readback.unmap()
            return elapsed

        number = max(1, int(number))
        elapsed = submit(1)  # warm-up: pipelines are compiled lazily by some drivers
        if min_repeat_ms > 0:
            elapsed = submit(number)
            while elapsed * 1e3 < min_repeat_ms and number < max_number:
                number = min(max_number, max(number * 2, int(number * min_repeat_ms / max(elapsed * 1e3, 1e-3))))
                elapsed = submit(number)
        return [submit(number) / number for _ in range(max(1, int(repeat)))]

    def __repr__(self) -> str:
        return f"VulkanRunner({str(self.path)!r}, adapter={self.adapter!r})"
