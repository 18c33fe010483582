"""The vulkan target: builds from Relax, the launch plan, and numerics on a Vulkan device through wgpu.

The device tests need a Vulkan adapter (CI: Mesa's lavapipe, ``apt-get install mesa-vulkan-drivers libvulkan1``)
and skip with the reason when there is none; the build-side tests (plan capture, errors) run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import zipfile

import numpy as np
import pytest
import tvm
from tvm import te

torch = pytest.importorskip("torch")
pytest.importorskip("wgpu")

from conftest import EXAMPLES  # noqa: E402

from aglmc.errors import TargetError  # noqa: E402
from aglmc.targets.base import get_target  # noqa: E402
from aglmc.targets.frontend import relax_from_torch  # noqa: E402
from aglmc.targets.vulkan import runtime  # noqa: E402
from aglmc.targets.vulkan.artifact import Artifact, evaluate  # noqa: E402
from aglmc.targets.vulkan.target import VulkanTarget  # noqa: E402


def _adapter_or_reason():
    try:
        return runtime.select_adapter(), ""
    except TargetError as e:
        return None, e.message
    except Exception as e:  # wgpu-native failing to load at all
        return None, f"wgpu cannot enumerate adapters: {e}"


ADAPTER, NO_ADAPTER = _adapter_or_reason()
needs_vulkan = pytest.mark.skipif(ADAPTER is None, reason=f"no Vulkan adapter: {NO_ADAPTER}")
HAS_F16 = ADAPTER is not None and "shader-f16" in ADAPTER.features


# ----------------------------------------------------------------------------------------------- models
class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), -1)


class ConvNet(torch.nn.Module):
    """conv + relu + max-pool + linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class MatMul(torch.nn.Module):
    def forward(self, a, b):
        return a @ b


class Masks(torch.nn.Module):
    """bool everywhere: a causal-mask constant, a bool input, bool and int8 outputs, a bool reduction, and
    the WGSL fix-ups (``inff`` from clamp; INT_MIN and ``i8(...)`` from ``all``, a max over int8)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("causal", torch.ones(6, 6, dtype=torch.bool).tril())

    def forward(self, x, keep):
        p = x.masked_fill(~self.causal, float("-inf")).softmax(-1)
        unit = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        empty = torch.all(p == 0, dim=-1)
        return p * keep.float(), x > 0, unit, empty, (x > 1).to(torch.int8) * 3


class ScaleShift(torch.nn.Module):
    def forward(self, x, b):
        return x * 2.0 + b


def _build(tmp_path, model, args, name, **settings):
    mod = relax_from_torch(model.eval(), args)
    path = tmp_path / f"{name}.wgpu"
    start = time.perf_counter()
    info = get_target("vulkan").build(mod, settings, path)
    print(f"{name}: built in {time.perf_counter() - start:.2f}s")
    return path, info


def _run(path, inputs):
    runner = VulkanTarget.runner(path)
    start = time.perf_counter()
    out = runner.run(inputs)
    print(f"{path.stem}: first run {time.perf_counter() - start:.3f}s on {runner.adapter}")
    return runner, out


def _reference(model, args):
    with torch.no_grad():
        out = model.eval()(*args)
    return [out.numpy()] if isinstance(out, torch.Tensor) else [o.numpy() for o in out]


# ------------------------------------------------------------------------------------------ registration
def test_vulkan_target_is_registered_with_its_settings():
    cls = get_target("vulkan")
    assert cls is VulkanTarget and cls.library_name == "vulkan.wgpu" and hasattr(cls, "runner")
    assert cls.resolve({}) == {"fp16": False, "max_workgroup_size": 256, "max_shared_memory": 16384, "device": "",
                               "tune_trials": 0, "tune_seconds": 0.0, "tune_tasks": 0, "cost_model": "xgb",
                               "tuning_db": ""}  # issue 8: the vulkan target tunes
    with pytest.raises(TargetError, match="power of two"):
        cls.resolve({"max_workgroup_size": 96})
    target = cls.tvm_target({"max_workgroup_size": 128, "device": "Radeon 780M"})
    assert target.kind.name == "webgpu" and int(target.attrs["max_num_threads"]) == 128
    assert str(target.attrs["model"]) == "Radeon 780M"  # the adapter its tuning records are keyed by


def test_runtime_module_does_not_import_tvm():
    import subprocess

    code = ("import sys; import aglmc.targets.vulkan.runtime; "
            "print(sorted(m for m in sys.modules if m == 'tvm' or m.startswith('tvm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fold_grid_passes_grid_minus_one_as_pack_dim():
    assert runtime.fold_grid((10, 3, 1)) == ((10, 3, 1), 9)
    assert runtime.fold_grid((65535, 1, 1)) == ((65535, 1, 1), 65534)
    assert runtime.fold_grid((65536, 1, 1)) == ((32768, 1, 2), 65535)
    (x, y, z), pack = runtime.fold_grid((65537, 1, 1))  # odd: rounds up, so one surplus workgroup
    assert (x, y, z, pack) == (32769, 1, 2, 65536) and x * z == 65538


# --------------------------------------------------------------------------------------- plan (no device)
def test_plan_captures_kernels_grids_bindings_and_lifetimes(tmp_path):
    torch.manual_seed(0)
    path, info = _build(tmp_path, MLP(), (torch.randn(2, 16),), "mlp")
    assert info.kind == "vulkan" and path.is_file()
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    art = Artifact.load(path)
    plan = art.plan
    kernels = [s["kernel"] for s in plan["steps"]]
    assert kernels == ["fused_matmul_add_relu_kernel", "fused_matmul1_add1_kernel", "softmax_kernel"]
    for step in plan["steps"]:
        kernel = plan["kernels"][step["kernel"]]
        assert len(step["buffers"]) == len(kernel["buffers"]) and len(step["pods"]) == len(kernel["pods"])
        assert f"fn {step['kernel']}(" in art.shaders[step["kernel"]]
        # binding 0 is what the kernel writes; the step binds a storage tensor there, never a constant
        assert kernel["buffers"][0]["access"] == "read_write"
        assert plan["tensors"][step["buffers"][0]]["kind"] == "storage"
    assert plan["steps"][2]["grid"] == [2, 1, 1]  # softmax: one workgroup per row
    assert [c["shape"] for c in plan["constants"]] == [[16, 32], [32], [32, 4], [4]]
    # the first intermediate dies after step 1, so the output storage reuses its buffer
    assert plan["slots"] < len(plan["storages"])
    for a in plan["storages"]:
        for b in plan["storages"]:
            if a is not b and a["slot"] == b["slot"]:
                assert a["last"] < b["first"] or b["last"] < a["first"]
    assert plan["outputs"][0]["host_dtype"] == "float32"


@pytest.fixture(scope="module")
def dynamic_mlp(tmp_path_factory):
    """An MLP exported with a symbolic batch dimension in [1, 64], built once."""
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    model = MLP().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 16),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("vulkan") / "dyn.wgpu"
    get_target("vulkan").build(from_exported_program(program, keep_params_as_input=False), {}, path)
    return path, model


def test_dynamic_batch_plan_is_symbolic(dynamic_mlp):
    plan = Artifact.load(dynamic_mlp[0]).plan
    (var,) = plan["shape_vars"]
    assert plan["shape_vars"][var] == {"input": 0, "dim": 0, "min": 1, "max": 64}
    assert plan["inputs"][0]["shape"] == [var, 16]
    softmax = plan["steps"][-1]
    assert evaluate(softmax["grid"][0], {var: 5}) == 5


def test_int64_inside_a_kernel_is_a_clear_error_naming_the_function(tmp_path):
    class ArgMax(torch.nn.Module):
        def forward(self, x):
            return (x * 2).argmax(-1)

    with pytest.raises(TargetError, match=r"WGSL code generator failed in 'fused_argmax\w*'.*int64") as err:
        _build(tmp_path, ArgMax(), (torch.randn(3, 5),), "argmax")
    assert "64-bit" in (err.value.hint or "")


class Lookup(torch.nn.Module):
    """An embedding lookup and an int64 result: token ids in, int64 out."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def forward(self, ids):
        return self.emb(ids) * 2.0, ids + 1


@pytest.fixture(scope="module")
def lookup(tmp_path_factory):
    torch.manual_seed(0)
    model, ids = Lookup().eval(), torch.tensor([[1, 2, 9]])
    path, _ = _build(tmp_path_factory.mktemp("vulkan"), model, (ids,), "lookup")
    return path, model, ids


def test_int64_inputs_and_outputs_are_narrowed(lookup):
    plan = Artifact.load(lookup[0]).plan
    assert plan["inputs"][0]["dtype"] == "int32" and plan["inputs"][0]["host_dtype"] == "int64"
    assert [o["dtype"] for o in plan["outputs"]] == ["float32", "int32"]
    assert [o["host_dtype"] for o in plan["outputs"]] == ["float32", "int64"]


# --------------------------------------------------------------------------------------------- on device
@needs_vulkan
def test_adapter_is_a_vulkan_adapter():
    info = ADAPTER.info
    print(f"Vulkan adapter: {runtime.describe_adapter(ADAPTER)}; shader-f16: {HAS_F16}")
    assert info["backend_type"] == "Vulkan"
    assert runtime.describe_adapter(ADAPTER).endswith(f"{info['description']})")


@needs_vulkan
@pytest.mark.parametrize("case", ["mlp", "convnet", "matmul"])
def test_models_match_torch(tmp_path, case):
    torch.manual_seed(0)
    model, args, tol = {
        "mlp": (MLP(), (torch.randn(3, 16),), 1e-5),
        "convnet": (ConvNet(), (torch.randn(1, 3, 8, 8),), 1e-4),
        "matmul": (MatMul(), (torch.randn(64, 96), torch.randn(96, 80)), 1e-4),
    }[case]
    path, _ = _build(tmp_path, model, args, case)
    runner, out = _run(path, [a.numpy() for a in args])
    assert "Vulkan" in runner.adapter
    (expected,) = _reference(model, args)
    err = float(np.abs(out[0] - expected).max())
    print(f"{case}: max abs error {err:.2e}")
    assert out[0].shape == expected.shape and out[0].dtype == np.float32 and err < tol
    # a second run reuses the prepared buffers and bind groups, and gives the same answer
    assert np.array_equal(runner.run([a.numpy() for a in args])[0], out[0])


def _example_model(folder: str):
    """``build()`` of examples/FOLDER/model.py, loaded as a module of its own."""
    name = f"vulkan_test_{folder}_model"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.build()


@needs_vulkan
def test_digits_cnn_matches_torch(tmp_path):
    from tvm.relax.frontend.torch import from_exported_program

    model, (example,) = _example_model("01_digits_cnn")
    x = torch.from_numpy(np.load(EXAMPLES / "01_digits_cnn" / "sample.npy")).reshape(example.shape).float()
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    mod = from_exported_program(program, keep_params_as_input=False)
    path = tmp_path / "digits.wgpu"
    get_target("vulkan").build(mod, {}, path)
    _, (logits,) = _run(path, [x.numpy()])
    (expected,) = _reference(model, (x,))
    err = float(np.abs(logits - expected).max())
    print(f"digits: max abs error {err:.2e}")
    assert err < 1e-4 and logits.argmax() == expected.argmax()


@needs_vulkan
def test_dynamic_batch_runs_every_size_from_one_build(dynamic_mlp):
    path, model = dynamic_mlp
    runner = VulkanTarget.runner(path)
    rng = np.random.default_rng(0)
    for n in (1, 5, 64, 3):
        x = rng.standard_normal((n, 16)).astype("float32")
        (y,) = runner.run([x])
        (expected,) = _reference(model, (torch.from_numpy(x),))
        assert y.shape == (n, 4) and np.abs(y - expected).max() < 1e-5
    with pytest.raises(TargetError, match="outside the range"):
        runner.run([np.zeros((65, 16), "float32")])
    with pytest.raises(TargetError, match="must have shape"):
        runner.run([np.zeros((2, 15), "float32")])


@needs_vulkan
def test_int64_model_runs_narrowed(lookup):
    path, model, ids = lookup
    runner = VulkanTarget.runner(path)
    emb, nxt = runner.run([ids.numpy()])
    ref_emb, ref_next = _reference(model, (ids,))
    assert nxt.dtype == np.int64 and np.array_equal(nxt, ref_next)
    assert np.abs(emb - ref_emb).max() < 1e-6
    with pytest.raises(TargetError, match="outside int32"):
        runner.run([np.array([[1, 2, 2**40]])])


@needs_vulkan
def test_bool_and_int8_tensors_are_stored_as_int32(tmp_path):
    torch.manual_seed(0)
    x, keep = torch.randn(6, 6), torch.rand(6, 6) > 0.5
    path, _ = _build(tmp_path, Masks(), (x, keep), "masks")
    plan = Artifact.load(path).plan
    assert plan["inputs"][1]["dtype"] == "int32" and plan["inputs"][1]["host_dtype"] == "bool"
    assert [o["host_dtype"] for o in plan["outputs"]] == ["float32", "bool", "float32", "bool", "int8"]
    assert all(t["dtype"] in ("float32", "int32") for t in plan["tensors"])
    _, out = _run(path, [x.numpy(), keep.numpy()])
    expected = _reference(Masks(), (x, keep))
    for got, want in zip(out, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.abs(got.astype("float64") - want.astype("float64")).max() < 1e-6


@needs_vulkan
@pytest.mark.slow
def test_glm_tiny_with_a_symbolic_sequence_length_matches_torch(tmp_path):
    """examples/03_glm_tiny (int64 ids, causal bool mask, GQA, rotary), one build for every prompt length."""
    from tvm.relax.frontend.torch import from_exported_program

    model, (ids,) = _example_model("03_glm_tiny")
    seq = torch.export.Dim("seq", min=2, max=64)
    with torch.no_grad():
        program = torch.export.export(model, (ids,), dynamic_shapes={"input_ids": {1: seq}})
    path = tmp_path / "glm.wgpu"
    get_target("vulkan").build(from_exported_program(program, keep_params_as_input=False), {}, path)
    runner = VulkanTarget.runner(path)
    for n in (5, 64):
        prompt = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
        (logits,) = runner.run([prompt.numpy()])
        (expected,) = _reference(model, (prompt,))
        err = float(np.abs(logits - expected).max())
        print(f"glm_tiny, {n} tokens: max abs error {err:.2e}")
        assert logits.shape == (1, n, 256) and err < 1e-5
        assert np.array_equal(logits.argmax(-1), expected.argmax(-1))


@needs_vulkan
@pytest.mark.skipif(not HAS_F16, reason="the Vulkan adapter has no shader-f16")
def test_fp16_matmul_and_convnet(tmp_path):
    torch.manual_seed(0)
    for name, model, args, tol in (("mm16", MatMul(), (torch.randn(64, 96), torch.randn(96, 80)), 5e-2),
                                   ("conv16", ConvNet(), (torch.randn(1, 3, 8, 8),), 1e-2)):
        path, _ = _build(tmp_path, model, args, name, fp16=True)
        art = Artifact.load(path)
        assert art.plan["requires"]["features"] == ["shader-f16"]
        assert any(c.dtype == np.float16 for c in art.constants) or not art.constants
        _, (out,) = _run(path, [a.numpy() for a in args])
        (expected,) = _reference(model, args)
        err = float(np.abs(out - expected).max() / max(1.0, np.abs(expected).max()))
        print(f"{name}: fp16 max error relative to the largest output {err:.2e}")
        assert out.dtype == np.float32 and err < tol


@needs_vulkan
def test_folded_grid_is_exact_and_guarded(tmp_path):
    """65537 workgroups in x: folded into (32769, 1, 2) with one surplus workgroup that must do nothing."""
    rows, cols = 65537, 32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype("float32")
    b = (np.arange(cols) * 100).astype("float32")
    path, _ = _build(tmp_path, ScaleShift(), (torch.from_numpy(x), torch.from_numpy(b)), "fold",
                     max_workgroup_size=32)
    runner, (y,) = _run(path, [x, b])
    (step,) = runner.plan["steps"]
    assert step["grid"] == [rows, 1, 1] and runner.plan["kernels"][step["kernel"]]["workgroup_size"] == [32, 1, 1]
    assert np.array_equal(y, x * 2.0 + b)

    # The guard itself: bind the output inside a larger buffer whose tail holds a sentinel. With the
    # runtime's packGridDimX (grid - 1) the surplus workgroup leaves the tail alone; with TVM's web
    # runtime value (grid) it writes past the tensor, which shows this check can see the bug.
    tails = {pack_delta: _tail_after_dispatch(runner, step, x, b, pack_delta) for pack_delta in (0, 1)}
    assert np.all(tails[0] == -1.0)
    assert not np.all(tails[1] == -1.0)


def _tail_after_dispatch(runner, step, x, b, pack_delta):
    import wgpu

    dev = runner.device
    usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
    n = x.size
    out = dev.create_buffer(size=(n + 64) * 4, usage=usage)
    dev.queue.write_buffer(out, 0, np.full(n + 64, -1.0, "float32").tobytes())
    xb = dev.create_buffer(size=x.nbytes, usage=usage)
    bb = dev.create_buffer(size=b.nbytes, usage=usage)
    dev.queue.write_buffer(xb, 0, x.tobytes())
    dev.queue.write_buffer(bb, 0, b.tobytes())
    dims, pack = runtime.fold_grid(step["grid"])
    uniform = dev.create_buffer(size=16, usage=wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST)
    dev.queue.write_buffer(uniform, 0, np.array([pack + pack_delta, 0, 0, 0], "uint32").tobytes())
    pipeline, layout = runner._pipelines[step["kernel"]]
    by_name = {"T_add_intermediate_ptr": out, "x_ptr": xb, "b_ptr": bb}
    names = [k["name"] for k in runner.plan["kernels"][step["kernel"]]["buffers"]]
    entries = [{"binding": i, "resource": {"buffer": by_name[nm], "offset": 0, "size": by_name[nm].size}}
               for i, nm in enumerate(names)]
    entries.append({"binding": len(names), "resource": {"buffer": uniform, "offset": 0, "size": 16}})
    enc = dev.create_command_encoder()
    cpass = enc.begin_compute_pass()
    cpass.set_pipeline(pipeline)
    cpass.set_bind_group(0, dev.create_bind_group(layout=layout, entries=entries))
    cpass.dispatch_workgroups(*dims)
    cpass.end()
    dev.queue.submit([enc.finish()])
    return np.frombuffer(dev.queue.read_buffer(out), "float32")[n:]


@needs_vulkan
def test_artifact_is_plain_data(tmp_path):
    path, _ = _build(tmp_path, MLP(), (torch.randn(1, 16),), "plain")
    with zipfile.ZipFile(path) as z:
        plan = json.loads(z.read("plan.json"))
        assert all(n == "plan.json" or n.startswith(("shaders/", "constants/")) for n in z.namelist())
    assert plan["format"] == "aglmc-vulkan-plan" and plan["tvm"].startswith("0.27")


# ------------------------------------------------------------------------------- quantized weights (issue 8)
class QuantBlock(torch.nn.Module):
    """conv, strided depthwise conv, linear: every weight kind PackWeights packs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 64)
        self.out = torch.nn.Linear(64, 10)

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.conv(x)))).flatten(1)
        return self.out(torch.nn.functional.silu(self.fc(y)))


def _quantized(pass_name, **params):
    """QuantBlock through one of aglmc's quantization passes, imported to Relax as every target receives it."""
    from aglmc.targets.vulkan.pack_weights_test import _quantized as quantized

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    return quantized(QuantBlock(), x, pass_name, **params)


QUANTIZED = {
    "int4_groups": ("quantize_weights", {"bits": 4, "group_size": 32}, "int4 groups of 32"),
    "int8_channels": ("quantize_weights", {"bits": 8}, "int8 per channel"),
    "static_int8": ("quantize_static", {"data": "calib", "samples": 16}, "int8 activations x int8 per channel"),
}


@needs_vulkan
@pytest.mark.parametrize("case", sorted(QUANTIZED))
def test_quantized_weights_run_packed_and_match_the_host(tmp_path, case):
    """Weight-only int4 / int8 and static int8: the vulkan artifact stores the weights as u32 words (no float copy)
    and its outputs are the host library's (static int8: the same int32 sums, so equal to float rounding)."""
    from aglmc.targets.run import HostRunner

    pass_name, params, scheme = QUANTIZED[case]
    mod = _quantized(pass_name, **params)
    path = tmp_path / f"{case}.wgpu"
    get_target("vulkan").build(mod, {}, path)
    get_target("host").build(mod, {"threads": 1}, tmp_path / "host.so")
    plan = Artifact.load(path).plan
    weights = plan["weights"]
    assert weights["left_as_float"] == [] and all(scheme in p for p in weights["packed"] if "matmul" in p)
    linears = 2 if case != "static_int8" else 2 + 2  # weight-only selects linears; static also the convs
    assert len(weights["packed"]) == linears
    shapes = {(tuple(c["shape"]), c["dtype"]) for c in plan["constants"]}
    assert ((64, 128), "float32") not in shapes and ((10, 64), "float32") not in shapes  # no float copy
    per_word = 8 if case == "int4_groups" else 4
    assert ((64, 128 // per_word), "uint32") in shapes and ((10, 64 // per_word), "uint32") in shapes
    vulkan, host = VulkanTarget.runner(path), HostRunner(tmp_path / "host.so")
    for x in np.random.default_rng(1).standard_normal((3, 1, 3, 8, 8)).astype(np.float32):
        (want,), (got,) = host.run([x]), vulkan.run([x])
        err = float(np.abs(got - want).max())
        print(f"{case}: max abs error vs host {err:.2e}")
        assert err <= 1e-5 * max(1.0, float(np.abs(want).max()))


@needs_vulkan
@pytest.mark.skipif(not HAS_F16, reason="the Vulkan adapter has no shader-f16")
def test_quantized_weights_with_fp16(tmp_path):
    """fp16 = true: activations in half precision, the packed int4 kernels keep float32 arithmetic."""
    mod = _quantized("quantize_weights", bits=4, group_size=32)
    path = tmp_path / "int4_f16.wgpu"
    get_target("vulkan").build(mod, {"fp16": True}, path)
    assert len(Artifact.load(path).plan["weights"]["packed"]) == 2
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = VulkanTarget.runner(path).run([x])
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    want = vm["main"](tvm.runtime.tensor(x))[0].numpy()
    assert np.abs(got - want).max() <= 2.0 ** -8 * max(1.0, float(np.abs(want).max()))


class Scale(torch.nn.Module):
    def forward(self, x):
        return x * float(np.nextafter(np.float32(255.0), np.float32(256.0)))  # TVM prints it as 2.550000e+02f


@needs_vulkan
def test_float_constants_reach_the_kernels_exactly(tmp_path):
    x = np.random.default_rng(0).random((1, 256)).astype(np.float32)
    path, _ = _build(tmp_path, Scale(), (torch.from_numpy(x),), "scale")
    _, (y,) = _run(path, [x])
    assert np.array_equal(y, x * np.nextafter(np.float32(255.0), np.float32(256.0)))


@needs_vulkan
@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_dynamic_quantization_matches_the_host(tmp_path, granularity):
    """quantize_dynamic: per-token computes its scales and quantize in float64 (to round as PyTorch), which
    NarrowFloat64 runs in float32 on vulkan; both granularities give the host library's outputs."""
    from aglmc.targets.run import HostRunner

    mod = _quantized("quantize_dynamic", granularity=granularity, data="calib", samples=4)
    path = tmp_path / "dyn.wgpu"
    get_target("vulkan").build(mod, {}, path)
    get_target("host").build(mod, {"threads": 1}, tmp_path / "host.so")
    assert not any(c["dtype"] == "float64" for c in Artifact.load(path).plan["constants"])
    vulkan, host = VulkanTarget.runner(path), HostRunner(tmp_path / "host.so")
    for x in np.random.default_rng(1).standard_normal((8, 1, 3, 8, 8)).astype(np.float32):
        (want,), (got,) = host.run([x]), vulkan.run([x])
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_a_kernel_computing_in_float64_is_a_clear_error():
    """float64 tensors between ops are narrowed (NarrowFloat64); arithmetic inside one kernel is refused by
    kernel name before TVM's code generator, which would stop with no name."""
    from aglmc.targets.vulkan.lower import check_arithmetic

    a = te.placeholder((4,), "float32", name="a")
    wide = te.compute((4,), lambda i: (a[i].astype("float64") * 3.0).astype("float32"), name="wide")
    with pytest.raises(TargetError, match=r"cannot run 'k': it computes in float64 \(T.Cast\(\"float64\", a\[v_i\]\)"):
        check_arithmetic({"k": te.create_prim_func([a, wide])})
