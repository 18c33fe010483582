"""The runtimes the benchmark compares, each a small class: how to build a model for it, how to run it.

A runtime's ``build`` runs in a build process of its own (it may import torch); its ``load`` runs in the serve
process that is then timed, which imports only what that runtime needs (so its memory high-water mark is its
own). Both get a :class:`Context`. ``load`` returns ``infer(inputs: list[np.ndarray]) -> list[np.ndarray]``.

Adding a runtime is one class in :data:`RUNTIMES`; adding an aglmc variant (pruned, low-rank, int8, tuned ...)
is one :class:`AglmcVariant` entry in :data:`AGLMC_VARIANTS`: the schedule lines it adds, per model.

Peers whose package is missing are skipped with the reason (and the install command) shown in the table.
Some peers' converters pin old versions of packages aglmc uses (litert-torch pins pydantic and
typing_extensions; ExecuTorch pulls in hydra, pandas, coremltools): those are installed into a site folder of
their own (``python -m bench --setup-peers``) that only that peer's processes put on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS_FILE = Path(__file__).resolve().with_name("models.py")

Infer = Callable[[Sequence[np.ndarray]], List[np.ndarray]]


def peers_dir() -> Path:
    """Where isolated peer site folders live: ``$AGLMC_BENCH_PEERS``, else ``~/.cache/aglmc/bench``."""
    if os.environ.get("AGLMC_BENCH_PEERS"):
        return Path(os.environ["AGLMC_BENCH_PEERS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aglmc" / "bench"


@dataclass
class Context:
    """What a runtime's build and load see."""

    model: str                      # the model's name in bench.catalog
    factory: str                    # the factory's name in bench/models.py
    work: Path                      # this model's work folder (inputs.npz, reference.npz, meta.json)
    out: Path                       # this runtime's folder inside it (artifacts, logs)
    threads: int
    input_names: List[str]
    inputs: List[np.ndarray]

    def module(self):
        """The torch module and its example inputs, from the model's factory (seeded: the same every time)."""
        from bench import models

        return getattr(models, self.factory)()

    def torch_inputs(self):
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in self.inputs)


class Runtime:
    """Base class. ``name`` is the table's row label, ``technique`` groups rows in the accuracy plot."""

    name: str = ""
    technique: str = "fp32"
    #: modules that must be importable (with :attr:`site` on the path) for this runtime to build and run
    requires: Tuple[str, ...] = ()
    #: what the serve process imports before it measures its base memory (default: ``requires``)
    runtime_modules: Tuple[str, ...] = ()
    #: a lossy technique (int8, pruning, low rank): its error against torch is reported, not bounded
    lossy: bool = False
    #: pip command that installs what is missing
    install: str = ""
    #: an isolated site folder (under :func:`peers_dir`) holding the converter's pinned dependencies
    site: Optional[str] = None
    #: peers are optional: their absence is a skip, not a failure
    peer: bool = False
    #: build() does work (False: the serve process does everything, e.g. torch eager)
    has_build: bool = True
    #: the first call compiles (torch.compile): its extra time counts as compile time
    lazy: bool = False

    def applies_to(self, model: str) -> bool:
        return True

    def extra_path(self) -> List[str]:
        return [str(peers_dir() / self.site)] if self.site else []

    def unavailable(self) -> Optional[str]:
        """None when this runtime can run here, else why not (with the install command)."""
        missing = []
        extra = self.extra_path()
        if extra and not Path(extra[0]).is_dir():
            return f"not set up: its converter needs an isolated site folder {extra[0]} (python -m bench " \
                   f"--setup-peers)"
        sys.path[:0] = extra
        try:
            for mod in self.requires:
                try:
                    if find_spec(mod) is None:
                        missing.append(mod)
                except (ImportError, ValueError):
                    missing.append(mod)
        finally:
            del sys.path[: len(extra)]
        if missing:
            return f"not installed ({', '.join(missing)}): {self.install}"
        return None

    def build(self, ctx: Context) -> Dict:
        """Produce the artifact in ``ctx.out``; returns ``{"artifact": path, "size": bytes, ...}``."""
        return {}

    def load(self, ctx: Context, built: Mapping) -> Infer:  # pragma: no cover - overridden
        raise NotImplementedError


def _file_size(*paths) -> int:
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())


def _flatten_torch(out) -> List[np.ndarray]:
    import torch
    from torch.utils import _pytree

    return [t.detach().numpy() for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ torch
class TorchEager(Runtime):
    name = "torch"
    requires = ("torch",)
    install = "pip install torch"
    has_build = False

    def load(self, ctx, built):
        import torch

        _torch_threads(ctx.threads)
        module, _ = ctx.module()

        def infer(inputs):
            with torch.inference_mode():
                return _flatten_torch(module(*[torch.from_numpy(a) for a in inputs]))

        return infer


class TorchCompile(TorchEager):
    name = "torch.compile"
    has_build = False
    lazy = True

    def load(self, ctx, built):
        import torch

        _torch_threads(ctx.threads)
        module, _ = ctx.module()
        compiled = torch.compile(module)

        def infer(inputs):
            with torch.no_grad():
                return _flatten_torch(compiled(*[torch.from_numpy(a) for a in inputs]))

        return infer


# ------------------------------------------------------------------------------------------------ onnxruntime
def export_onnx(ctx: Context, path: Path) -> str:
    """The ONNX export every ONNX-fed runtime uses: the TorchScript exporter (``dynamo=False``, opset 17); if
    that fails, torch's dynamo exporter (opset 18, needs onnxscript). Returns how it was exported."""
    import torch

    module, _ = ctx.module()
    try:
        with torch.no_grad():
            torch.onnx.export(module, ctx.torch_inputs(), str(path), input_names=list(ctx.input_names),
                              output_names=["output"], opset_version=17, dynamo=False, do_constant_folding=True)
        return "torch.onnx.export opset 17, dynamo=False"
    except Exception as e:  # noqa: BLE001 - e.g. the GLM decoder: "All tensors must have the same rank" in cat
        first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
        if find_spec("onnxscript") is None:
            raise RuntimeError(f"torch.onnx.export(dynamo=False) failed ({first}); the dynamo exporter "
                               "needs onnxscript (pip install onnxscript)") from e
        with torch.no_grad():
            torch.onnx.export(module, ctx.torch_inputs(), str(path), input_names=list(ctx.input_names),
                              output_names=["output"], opset_version=18, dynamo=True, external_data=False)
        return f"dynamo=False export failed ({first}): exported with dynamo=True, opset 18"


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    requires = ("onnxruntime", "onnx")
    runtime_modules = ("onnxruntime",)
    install = "pip install onnxruntime onnx"

    def build(self, ctx):
        path = ctx.out / "model.onnx"
        how = export_onnx(ctx, path)
        return {"artifact": str(path), "size": _file_size(path), "notes": how}

    def load(self, ctx, built):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = ctx.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(built["artifact"], options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def infer(inputs):
            return session.run(None, dict(zip(names, inputs)))

        return infer


class OnnxRuntimeInt8(OnnxRuntime):
    """onnxruntime's own dynamic INT8 (``quantize_dynamic``: int8 weights, activations quantized per call)."""

    name = "onnxruntime-int8"
    technique = "int8 (dynamic)"
    lossy = True

    def build(self, ctx):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = ctx.out / "model-fp32.onnx"
        how = export_onnx(ctx, fp32)
        path = ctx.out / "model.onnx"
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        fp32.unlink()
        return {"artifact": str(path), "size": _file_size(path), "notes": f"quantize_dynamic, QInt8 weights; {how}"}


#: the calibration sets (factories in bench/models.py) of the models a static INT8 row is built for
CALIBRATION = {"digits": "digits_calibration", "mobilenetv2": "image_calibration", "resnet18": "image_calibration"}


class OnnxRuntimeInt8Static(OnnxRuntime):
    """onnxruntime's own static INT8 (``quantize_static``, QDQ format, per-channel int8 weights, activations
    calibrated with min-max on the model's calibration set): the CNN scheme to compare with ``aglmc+int8``."""

    name = "onnxruntime-int8-static"
    technique = "int8 (static)"
    lossy = True

    def applies_to(self, model: str) -> bool:
        return model in CALIBRATION

    def build(self, ctx):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        from bench import models

        fp32 = ctx.out / "model-fp32.onnx"
        how = export_onnx(ctx, fp32)
        samples = next(iter(getattr(models, CALIBRATION[ctx.model])().values()))
        name = ctx.input_names[0]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rows = iter(np.asarray(samples, dtype=np.float32)[:, None])

            def get_next(self):
                row = next(self.rows, None)
                return None if row is None else {name: row}

        path = ctx.out / "model.onnx"
        quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        fp32.unlink()
        return {"artifact": str(path), "size": _file_size(path),
                "notes": f"quantize_static QDQ, per-channel QInt8, min-max on {len(samples)} samples; {how}"}


# ------------------------------------------------------------------------------------------------ TVM / aglmc
def tvm_infer(lib_path: str) -> Infer:
    """A TVM Relax library run through the VM in this process (threads from TVM_NUM_THREADS)."""
    from aglmc.targets.run import HostRunner  # aglmc's own runner: inputs staged once, outputs without a copy

    return HostRunner(lib_path).run


def _relax_module(sched: Path):
    """The Relax module ``aglmc build`` lowers for ``sched`` when it has no passes: same loader, same FX
    legalizations, same importer."""
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import check_schedule, legalize_for_tvm

    model = load_model(check_schedule(sched))
    legalize_for_tvm(model)
    return model.to_relax()


def write_schedule(ctx: Context, path: Path, lines: Sequence[str] = ()) -> Path:
    text = "\n".join([f"# written by python -m bench for model {ctx.model}",
                      f'model "{MODELS_FILE}:{ctx.factory}"', *lines,
                      f"target host {{ threads = {ctx.threads} }}", ""])
    path.write_text(text)
    return path


class TvmPlain(Runtime):
    """TVM 0.27 as it comes: ``tvm.compile`` with its default pipeline on the Relax module aglmc imports."""

    name = "tvm (plain)"
    requires = ("tvm",)
    install = "pip install apache-tvm"

    def build(self, ctx):
        import tvm
        from aglmc.targets.host import HostTarget

        sched = write_schedule(ctx, ctx.out / "model.sched")
        start = time.perf_counter()
        mod = _relax_module(sched)
        target = HostTarget.tvm_target({"threads": ctx.threads})
        executable = tvm.compile(mod, target=target)
        path = ctx.out / "model.so"
        executable.export_library(str(path))
        return {"artifact": str(path), "size": _file_size(path), "compile_s": time.perf_counter() - start,
                "notes": f"tvm.compile default pipeline, {target.attrs.get('mcpu')}"}

    def load(self, ctx, built):
        return tvm_infer(built["artifact"])


#: the build steps of ``aglmc build`` that are compiling (the rest check or time the result)
_COMPILE_STEPS = ("check schedule", "import model", "legalize", "pass ", "import to Relax", "build ", "package")


@dataclass
class AglmcVariant(Runtime):
    """``aglmc build`` of a schedule: ``target host { threads = N }`` plus ``passes`` (schedule lines), either
    for every model (a list) or per model (a dict; models it does not name are not applicable)."""

    name: str = "aglmc"
    technique: str = "fp32"
    passes: object = field(default_factory=list)
    lossy: bool = False
    requires: Tuple[str, ...] = ("tvm",)
    install: str = "pip install -e ."

    def lines(self, model: str) -> Optional[List[str]]:
        if isinstance(self.passes, dict):
            return self.passes.get(model)
        return list(self.passes)

    def applies_to(self, model: str) -> bool:
        return self.lines(model) is not None

    def build(self, ctx):
        from aglmc.compiler.pipeline import BuildOptions, build

        sched = write_schedule(ctx, ctx.out / "model.sched", self.lines(ctx.model) or [])
        log = open(ctx.out / "build.log", "w")
        start = time.perf_counter()
        try:
            result = build(sched, BuildOptions(out_dir=ctx.out / "artifact", log=lambda m: print(m, file=log)))
        finally:
            log.close()
        wall = time.perf_counter() - start
        compile_s = sum(s.seconds for s in result.steps if s.name.startswith(_COMPILE_STEPS))
        host = next(t for t in result.targets if t.kind == "host")
        changed = [p.name for p in result.passes if p.result.changed]
        return {"artifact": str(ctx.out / "artifact" / host.library), "size": host.size, "compile_s": compile_s,
                "build_wall_s": wall, "macs_after": result.stats_after.macs,
                "notes": ("passes: " + ", ".join(changed)) if changed else ""}

    def load(self, ctx, built):
        return tvm_infer(built["artifact"])


# ------------------------------------------------------------------------------------------------ peers
class LiteRT(Runtime):
    """LiteRT (TFLite) with its default XNNPACK delegate, converted by ``litert_torch.convert``."""

    name = "litert"
    requires = ("ai_edge_litert", "litert_torch")
    runtime_modules = ("ai_edge_litert.interpreter",)
    install = "pip install ai-edge-litert; python -m bench --setup-peers (litert-torch in its own site folder)"
    site = "litert-torch-site"
    peer = True

    def build(self, ctx):
        import litert_torch

        module, _ = ctx.module()
        path = ctx.out / "model.tflite"
        litert_torch.convert(module, ctx.torch_inputs()).export(str(path))
        return {"artifact": str(path), "size": _file_size(path), "notes": "litert_torch.convert, XNNPACK"}

    def load(self, ctx, built):
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=built["artifact"], num_threads=ctx.threads)
        interp.allocate_tensors()
        details = interp.get_input_details()

        def order(d):  # serving_default_args_3 → 3
            tail = d["name"].rsplit("_", 1)[-1]
            return int(tail) if tail.isdigit() else d["index"]

        details = sorted(details, key=order)
        outputs = interp.get_output_details()

        def infer(inputs):
            for d, a in zip(details, inputs):
                interp.set_tensor(d["index"], np.ascontiguousarray(a, dtype=d["dtype"]))
            interp.invoke()
            return [interp.get_tensor(o["index"]) for o in outputs]

        return infer


class Ncnn(Runtime):
    """ncnn with fp32 options (its fp16 defaults off), converted with ``pnnx.export(..., fp16=False)``."""

    name = "ncnn"
    requires = ("ncnn", "pnnx")
    runtime_modules = ("ncnn",)
    install = "pip install ncnn pnnx"
    peer = True

    def build(self, ctx):
        import pnnx

        module, _ = ctx.module()
        pnnx.export(module, str(ctx.out / "model.pt"), ctx.torch_inputs(), fp16=False)
        param, binary = ctx.out / "model.ncnn.param", ctx.out / "model.ncnn.bin"
        if not param.is_file():
            raise RuntimeError("pnnx wrote no model.ncnn.param (see build.log)")
        return {"artifact": str(param), "weights": str(binary), "size": _file_size(param, binary),
                "notes": "pnnx fp16=False; ncnn fp16 storage/arithmetic off"}

    def load(self, ctx, built):
        import ncnn

        net = ncnn.Net()
        for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            if hasattr(net.opt, opt):
                setattr(net.opt, opt, False)
        net.opt.num_threads = ctx.threads
        if net.load_param(built["artifact"]) != 0 or net.load_model(built["weights"]) != 0:
            # pnnx leaves torch ops it could not map (Tensor.to, aten::...) as layers ncnn does not have
            kinds = {line.split()[0] for line in Path(built["artifact"]).read_text().splitlines()[2:] if line.split()}
            foreign = sorted(k for k in kinds if "." in k or "::" in k)
            raise RuntimeError("ncnn could not load the pnnx output" +
                               (f": layers ncnn does not have: {', '.join(foreign)}" if foreign else ""))
        names = [f"in{i}" for i in range(len(ctx.inputs))]

        def infer(inputs):
            ex = net.create_extractor()
            for name, a in zip(names, inputs):
                a = np.ascontiguousarray(a[0] if a.ndim == 4 else a, dtype=np.float32)  # ncnn has no batch axis
                ex.input(name, ncnn.Mat(a))
            ret, out = ex.extract("out0")
            if ret != 0:
                raise RuntimeError(f"ncnn extract returned {ret}")
            return [np.array(out)]

        return infer


class ExecuTorch(Runtime):
    """ExecuTorch with the XNNPACK backend (``to_edge_transform_and_lower(XnnpackPartitioner())``)."""

    name = "executorch"
    requires = ("executorch",)
    runtime_modules = ("executorch.runtime",)
    install = "python -m bench --setup-peers (executorch in its own site folder)"
    site = "executorch-site"
    peer = True

    def build(self, ctx):
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        module, _ = ctx.module()
        exported = torch.export.export(module, ctx.torch_inputs())
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
        path = ctx.out / "model.pte"
        path.write_bytes(program.buffer)
        return {"artifact": str(path), "size": _file_size(path), "notes": "XNNPACK partitioner"}

    def load(self, ctx, built):
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as EtRuntime

        reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
        if reset is not None:
            reset(ctx.threads)
        method = EtRuntime.get().load_program(built["artifact"]).load_method("forward")

        def infer(inputs):
            return _flatten_torch(method.execute([torch.from_numpy(a) for a in inputs]))

        return infer


class Mnn(Runtime):
    """MNN (precision normal), converted from the same ONNX export with ``mnnconvert -f ONNX``."""

    name = "mnn"
    requires = ("MNN",)
    install = "pip install MNN"
    peer = True

    def build(self, ctx):
        onnx_path = ctx.out / "model.onnx"
        how = export_onnx(ctx, onnx_path)
        path = ctx.out / "model.mnn"
        # the converter itself, not the `mnnconvert` script: that script's telemetry (MNN/tools/utils/log.py)
        # runs `pip install aliyun-log-python-sdk` into whatever pip is on PATH and posts to a remote log
        import _tools

        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(path),
                           "--bizCode", "bench"])
        if not path.is_file():
            raise RuntimeError("the MNN converter wrote no model (see build.log)")
        onnx_path.unlink()
        return {"artifact": str(path), "size": _file_size(path), "notes": f"MNN converter -f ONNX; {how}"}

    def load(self, ctx, built):
        import MNN.expr as F
        import MNN.nn as nn

        manager = nn.create_runtime_manager(({"backend": "CPU", "numThread": ctx.threads, "precision": "normal"},))
        net = nn.load_module_from_file(built["artifact"], list(ctx.input_names), ["output"],
                                       runtime_manager=manager)

        def infer(inputs):
            args = []
            for a in inputs:
                dtype = F.int if a.dtype.kind == "i" else F.float
                var = F.placeholder(list(a.shape), F.NCHW, dtype)
                var.write(a.astype(np.int32) if a.dtype.kind == "i" else a)
                args.append(var)
            out = net.forward(args)
            out = out[0] if isinstance(out, (list, tuple)) else out
            if out.data_format == F.NC4HW4:
                out = F.convert(out, F.NCHW)
            return [np.array(out.read())]

        return infer


class Iree(Runtime):
    """IREE llvm-cpu for this CPU, from the same ONNX export (``iree-import-onnx`` + ``iree-compile``)."""

    name = "iree"
    requires = ("iree.runtime", "iree.compiler")
    runtime_modules = ("iree.runtime",)
    install = "pip install iree-base-compiler iree-base-runtime"
    peer = True

    def build(self, ctx):
        onnx_path, mlir, vmfb = ctx.out / "model.onnx", ctx.out / "model.mlir", ctx.out / "model.vmfb"
        how = export_onnx(ctx, onnx_path)
        bindir = Path(sys.executable).parent
        for cmd in ([str(bindir / "iree-import-onnx"), str(onnx_path), "-o", str(mlir)],
                    [str(bindir / "iree-compile"), "--iree-hal-target-backends=llvm-cpu",
                     "--iree-llvmcpu-target-cpu=host", str(mlir), "-o", str(vmfb)]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"{Path(cmd[0]).name} failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        onnx_path.unlink()
        mlir.unlink()
        return {"artifact": str(vmfb), "size": _file_size(vmfb), "notes": f"llvm-cpu, target-cpu=host; {how}"}

    def load(self, ctx, built):
        import iree.runtime as ireert

        ireert.flags.parse_flags(f"--task_topology_max_group_count={ctx.threads}")
        system = ireert.SystemContext(config=ireert.Config("local-task"))
        system.add_vm_module(ireert.VmModule.copy_buffer(system.instance, Path(built["artifact"]).read_bytes()))
        fn = system.modules.module["main_graph"]

        def infer(inputs):
            out = fn(*inputs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            return [np.asarray(o.to_host() if hasattr(o, "to_host") else o) for o in outs]

        return infer


# ------------------------------------------------------------------------------------------------ registry
#: aglmc's builds. One entry per variant; ``passes`` are schedule lines (a list for every model, or a dict
#: model → lines for the models the variant applies to). Not yet: a tuned variant (it needs a database path).
def _calibration(factory: str) -> str:
    return f'dataset calib = "{MODELS_FILE}:{factory}"'


AGLMC_VARIANTS: List[AglmcVariant] = [
    AglmcVariant("aglmc", "fp32"),
    AglmcVariant("aglmc+fold_bn", "fold BN", passes={m: ["pass fold_batchnorm"]
                                                     for m in ("digits", "mobilenetv2", "resnet18")}),
    # the compression techniques, each as a user would schedule it (no recovery training: the rows show what
    # the technique costs in the metric or error, and what it buys in latency and size)
    AglmcVariant("aglmc+pruned", "pruned 30%", lossy=True, passes={
        **{m: ["pass fold_batchnorm", "pass prune_channels { ratio = 0.3 }"]
           for m in ("digits", "mobilenetv2", "resnet18")},
        "minilm": ['pass prune_channels on linear in "bert.encoder.layer.*.intermediate.dense" { ratio = 0.3 }'],
        "glm": ['pass prune_channels on linear in "model.layers.**" { ratio = 0.3 }'],  # FFN channels and heads
    }),
    AglmcVariant("aglmc+lowrank", "low-rank ½", lossy=True, passes={
        "minilm": ['pass lowrank_svd on linear in "bert.encoder.layer.*.intermediate.dense" { rank_ratio = 0.5 }',
                   'pass lowrank_svd on linear in "bert.encoder.layer.*.output.dense" { rank_ratio = 0.5 }'],
        "glm": ['pass lowrank_svd on linear in "model.layers.*.mlp.*" { rank_ratio = 0.5 }'],
    }),
    AglmcVariant("aglmc+int8", "int8", lossy=True, passes={
        **{m: [_calibration(f), "pass fold_batchnorm", "pass quantize_static { data = calib  samples = 16 }"]
           for m, f in CALIBRATION.items()},
        "minilm": ["pass quantize_dynamic { granularity = per_token }"],
        "glm": ["pass quantize_weights { bits = 8 }"],
    }),
    AglmcVariant("aglmc+int4", "int4 weights", lossy=True, passes={
        "glm": ['pass quantize_weights on linear in "model.layers.**" { bits = 4  group_size = 32 }'],
    }),
]

RUNTIMES: Dict[str, Runtime] = {r.name: r for r in [
    TorchEager(), TorchCompile(), OnnxRuntime(), OnnxRuntimeInt8(), OnnxRuntimeInt8Static(), TvmPlain(),
    *AGLMC_VARIANTS,
    LiteRT(), ExecuTorch(), Ncnn(), Mnn(), Iree(),
]}

def register(runtime: Runtime) -> Runtime:
    """Add a runtime (a plugin's, or a test's) to :data:`RUNTIMES`."""
    RUNTIMES[runtime.name] = runtime
    return runtime


def _load_plugins() -> None:
    """Files named in ``$AGLMC_BENCH_PLUGINS`` (``python -m bench --plugin FILE``), each calling
    :func:`register`; loaded in the runner and in every worker, so a plugin's runtime builds and serves too."""
    import importlib.util

    for i, path in enumerate(p for p in os.environ.get("AGLMC_BENCH_PLUGINS", "").split(os.pathsep) if p):
        spec = importlib.util.spec_from_file_location(f"aglmc_bench_plugin_{i}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


_load_plugins()

#: what ``--quick`` runs
QUICK_RUNTIMES = ("torch", "onnxruntime", "aglmc")
#: the reference every ratio is taken against
BASELINE = "onnxruntime"


def get(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise SystemExit(f"unknown runtime '{name}'; runtimes: {', '.join(RUNTIMES)}") from None


# pinned converter dependencies installed into isolated site folders by --setup-peers (what pip's resolver picked
# for them next to this venv; --no-deps keeps it from touching the venv's own packages)
PEER_SITES: Dict[str, List[str]] = {
    "litert-torch-site": [
        "absl-py==2.5.1", "ai-edge-quantizer==0.10.0", "anyio==4.14.2", "fire==0.7.1", "immutabledict==4.2.1",
        "jax==0.10.2", "jaxlib==0.10.2", "jaxtyping==0.3.11", "kagglehub==1.0.3", "kagglesdk==0.1.38",
        "litert-converter==0.5.0", "litert-lm-builder==0.18.1", "litert-torch==0.10.0", "multipledispatch==1.0.0",
        "opt_einsum==3.4.0", "ordered-set==4.1.0", "pydantic==2.11.10", "pydantic_core==2.33.2",
        "sentencepiece==0.2.3", "tabulate==0.10.0", "termcolor==3.3.0", "tomli==2.5.0", "torchao==0.18.0",
        "typing-inspection==0.4.2", "typing_extensions==4.12.2", "wadler_lindig==0.1.8", "xdsl==0.28.0",
    ],
    "executorch-site": [
        "antlr4-python3-runtime==4.9.3", "attrs==26.1.0", "cattrs==26.2.1", "coremltools==9.0", "executorch==1.5.1",
        "expecttest==0.3.0", "hydra-core==1.3.8", "hypothesis==6.170.17", "kgb==7.3", "omegaconf==2.3.1",
        "pandas==3.1.1", "parameterized==0.9.0", "py-cpuinfo==9.0.0", "pyaml==26.7.0", "pytorch_tokenizers==1.5.0",
        "ruamel.yaml==0.19.1", "sentencepiece==0.2.3", "sortedcontainers==2.4.0", "tabulate==0.10.0",
        "tiktoken==0.14.0", "torchao==0.18.0",
    ],
}
#: peers that install cleanly into the venv itself (no pins on what aglmc uses): the `bench` extra lists them
VENV_PEERS = ("onnxscript", "ai-edge-litert", "ncnn", "pnnx", "MNN", "iree-base-compiler", "iree-base-runtime", "matplotlib")


def setup_peers(log=print) -> None:
    """Install the peers: the venv ones with pip, the pinned converters into their isolated site folders."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    log(f"bench: pip install {' '.join(VENV_PEERS)}")
    subprocess.run(pip + list(VENV_PEERS), check=True)
    for site, pins in PEER_SITES.items():
        dest = peers_dir() / site
        log(f"bench: pip install --no-deps --target {dest} ({len(pins)} pinned packages)")
        subprocess.run(pip + ["--no-deps", "--target", str(dest)] + pins, check=True)
    log(json.dumps({"peers_dir": str(peers_dir())}))
