"""The host and arm targets: settings, builds, numerics against PyTorch/onnxruntime, and aarch64 NEON code."""

from __future__ import annotations

import re
import struct
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aglmc.errors import ModelError, TargetError  # noqa: E402
from aglmc.targets import toolchain  # noqa: E402
from aglmc.targets.base import BuildInfo, get_target, targets  # noqa: E402
from aglmc.targets.frontend import relax_from_onnx, relax_from_torch  # noqa: E402
from aglmc.targets.host import detect_cpu_from_cpuinfo  # noqa: E402
from aglmc.targets.run import HostRunner  # noqa: E402

TOL = 1e-5
EM_AARCH64 = 183


# ----------------------------------------------------------------------------------------------- models
class ConvNet(torch.nn.Module):
    """conv + relu + linear: the smallest model with a convolution, an activation and a matmul."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def torch_case():
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    return relax_from_torch(model, (x,)), x.numpy(), expected


def make_onnx_model() -> onnx.ModelProto:
    """Conv(3->4, 3x3) -> Relu -> Flatten -> Gemm(->5), seeded weights, opset 17."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b")
    fw = numpy_helper.from_array(rng.standard_normal((5, 4 * 6 * 6)).astype("float32"), "fw")
    fb = numpy_helper.from_array(rng.standard_normal(5).astype("float32"), "fb")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat0"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["output"], name="fc0", transB=1),
    ]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
                              initializer=[w, b, fw, fb])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def onnx_case():
    ort = pytest.importorskip("onnxruntime")
    model = make_onnx_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {"input": x})
    return relax_from_onnx(model, {"input": x.shape}, "float32"), x, expected


# ----------------------------------------------------------------------------------------------- helpers
def elf_e_machine(path) -> int:
    """e_machine read straight from the ELF header (independent of aglmc's own reader)."""
    data = open(path, "rb").read(20)
    assert data[:4] == b"\x7fELF", f"{path} is not ELF"
    order = "<" if data[5] == 1 else ">"
    return struct.unpack(order + "H", data[18:20])[0]


# Advanced SIMD (NEON) vector register arrangements: v3.4s, v0.2d, v1.16b ...
NEON_VECTOR = re.compile(r"\bv\d+\.(?:2d|4s|2s|8h|4h|16b|8b)\b")


def neon_vector_lines(path) -> list:
    cmd = toolchain.disassembler()
    if cmd is None:
        pytest.skip("no aarch64 disassembler: apt-get install binutils-aarch64-linux-gnu (or llvm)")
    text = subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=True).stdout
    return [ln for ln in text.splitlines() if NEON_VECTOR.search(ln)]


# ----------------------------------------------------------------------------------------------- registry
def test_registry_has_host_and_arm():
    kinds = targets()
    assert {"host", "arm"} <= set(kinds)
    assert get_target("arm").library_name == "arm.so" and get_target("host").library_name == "host.so"


def test_unknown_target_suggests_a_name():
    with pytest.raises(TargetError, match="unknown target 'amr'") as e:
        get_target("amr")
    assert "did you mean 'arm'" in e.value.render()


# ----------------------------------------------------------------------------------------------- settings
def test_arm_defaults_and_tvm_target():
    arm = get_target("arm")
    s = arm.resolve({})
    assert s == {"triple": "aarch64-linux-gnu", "cpu": "cortex-a72", "features": ("+neon",), "threads": 4,
                 "linker": "zig", "board": "", "board_jobs": 1,
                 # aglmc issue 7: the tuning settings (no tuning by default)
                 "tune_trials": 0, "tune_seconds": 0.0, "tune_tasks": 0, "cost_model": "xgb", "tuning_db": ""}
    t = arm.tvm_target({"cpu": "cortex-a76", "features": ["+neon", "+dotprod"], "threads": 2})
    assert str(t.attrs["mtriple"]) == "aarch64-linux-gnu" and str(t.attrs["mcpu"]) == "cortex-a76"
    assert list(t.attrs["mattr"]) == ["+neon", "+dotprod"] and int(t.attrs["num-cores"]) == 2
    assert bool(t.attrs["feature.has_dotprod"])  # what MetaSchedule reads to choose its sdot rules


def test_host_target_num_cores_is_threads():
    t = get_target("host").tvm_target({"threads": 3, "features": ["+avx2"]})
    assert int(t.attrs["num-cores"]) == 3 and list(t.attrs["mattr"]) == ["+avx2"]


@pytest.mark.parametrize("settings, message", [
    ({"features": ["neon"]}, "each feature starts with \\+ or -"),
    ({"features": "+neon"}, "must be a list"),
    ({"threads": 0}, "'threads' must be in \\[1, inf\\]"),
    ({"linker": "lld"}, "must be one of zig, gcc"),
    ({"cpu": "cortex-a77x"}, "LLVM knows no CPU 'cortex-a77x'; did you mean 'cortex-a77'"),
    ({"triple": "x86_64-linux-gnu"}, "64-bit ARM Linux"),
    ({"thread": 4}, "has no setting 'thread'"),
])
def test_bad_arm_setting_is_a_target_error(settings, message, torch_case, tmp_path):
    with pytest.raises(TargetError, match=message):
        get_target("arm").build(torch_case[0], settings, tmp_path / "arm.so")
    assert not list(tmp_path.iterdir())


def test_host_cpu_detection_from_cpuinfo():
    # This machine: a hypervisor shows model 167 (LLVM: rocketlake) and a generic name, but AMX flags.
    masked = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\n"
              "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f avx512_fp16 amx_tile amx_int8\n\n"
              "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
    assert detect_cpu_from_cpuinfo(masked) == "sapphirerapids"
    assert detect_cpu_from_cpuinfo("vendor_id : AuthenticAMD\nmodel name : AMD EPYC 9654 96-Core Processor\n"
                                   "flags : avx2\n") == "znver4"
    assert detect_cpu_from_cpuinfo("vendor_id : GenuineIntel\nmodel name : Intel(R) Core(TM) i5-8250U\n"
                                   "flags : avx2 fma\n") is None  # left to LLVM


# ----------------------------------------------------------------------------------------------- host builds
def test_torch_model_on_host_matches_torch(torch_case, tmp_path):
    mod, x, expected = torch_case
    info = get_target("host").build(mod, {"threads": 1}, tmp_path / "host.so")
    assert isinstance(info, BuildInfo) and info.path.is_file() and info.kind == "host"
    assert '"num-cores":1' in info.target.replace(" ", "")
    runner = HostRunner(info.path, threads=1)
    assert runner.threads == 1
    (out,) = runner.run([x])
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= TOL


def test_onnx_model_on_host_matches_onnxruntime(onnx_case, tmp_path):
    mod, x, expected = onnx_case
    info = get_target("host").build(mod, {}, tmp_path / "host.so")
    (out,) = HostRunner(info.path).run([x])
    assert np.abs(out - expected).max() <= TOL


def test_host_runner_refuses_an_arm_library(torch_case, tmp_path):
    info = get_target("arm").build(torch_case[0], {}, tmp_path / "arm.so")
    with pytest.raises(TargetError, match="built for aarch64; this machine runs"):
        HostRunner(info.path)


# ----------------------------------------------------------------------------------------------- arm builds
@pytest.mark.parametrize("case", ["torch_case", "onnx_case"])
def test_arm_library_is_aarch64_with_neon(case, request, tmp_path):
    mod = request.getfixturevalue(case)[0]
    info = get_target("arm").build(mod, {"cpu": "cortex-a76"}, tmp_path / "arm.so")
    assert info.linker.startswith("zig cc -target aarch64-linux-gnu")
    assert elf_e_machine(info.path) == EM_AARCH64
    neon = neon_vector_lines(info.path)
    assert neon, "no NEON vector instruction in the arm library"
    print(f"{case}: {len(neon)} NEON vector instructions, e.g. {neon[0].split(chr(9))[-1]}; "
          f"compile {info.compile_seconds:.2f} s, link {info.link_seconds:.2f} s")


@pytest.mark.skipif(toolchain.shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="Debian's g++-aarch64-linux-gnu is not installed")
def test_arm_library_linked_with_gcc(torch_case, tmp_path):
    info = get_target("arm").build(torch_case[0], {"linker": "gcc"}, tmp_path / "arm.so")
    assert elf_e_machine(info.path) == EM_AARCH64 and "aarch64-linux-gnu-g++" in info.linker


# ----------------------------------------------------------------------------------------------- toolchain
def test_missing_zig_says_how_to_install_it(monkeypatch, torch_case, tmp_path):
    real = toolchain.importlib.util.find_spec
    monkeypatch.setattr(toolchain.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ziglang" else real(name, *a))
    with pytest.raises(TargetError, match="needs the 'ziglang' Python package") as e:
        get_target("arm").build(torch_case[0], {}, tmp_path / "arm.so")
    assert "pip install ziglang" in e.value.render()


def test_missing_cross_gcc_names_the_apt_package(monkeypatch, torch_case, tmp_path):
    monkeypatch.setattr(toolchain.shutil, "which", lambda name, *a: None)
    with pytest.raises(TargetError, match="needs 'aarch64-linux-gnu-g\\+\\+'") as e:
        get_target("arm").build(torch_case[0], {"linker": "gcc"}, tmp_path / "arm.so")
    assert "apt-get install g++-aarch64-linux-gnu" in e.value.render()


def test_failed_link_leaves_the_old_library_and_no_temp_file(monkeypatch, torch_case, tmp_path):
    out = tmp_path / "arm.so"
    out.write_bytes(b"previous build")
    monkeypatch.setattr(toolchain, "zig_linker", lambda triple: toolchain.Linker("zig", ("false",)))
    with pytest.raises(TargetError, match="linking arm.so with .* failed"):
        get_target("arm").build(torch_case[0], {}, out)
    assert out.read_bytes() == b"previous build"
    assert [p.name for p in tmp_path.iterdir()] == ["arm.so"]


def test_link_options_do_not_pile_up(monkeypatch):
    """tvm's cc.cross_compiler appends each call's options to the list it captured; ours starts afresh."""
    seen = []
    real_run = toolchain.subprocess.run

    def record(cmd, **kw):
        seen.append(cmd)
        return real_run(["true"], **kw)

    monkeypatch.setattr(toolchain.subprocess, "run", record)
    fcompile = toolchain.Linker("zig", ("zig-cc",)).fcompile()
    assert fcompile.output_format == "so"
    fcompile("a.so", ["x.o"], ["-lm"])
    fcompile("b.so", ["y.o"], ["-lm"])
    assert seen[1] == ["zig-cc", "-shared", "-fPIC", "-o", "b.so", "y.o", "-lm"]


# ----------------------------------------------------------------------------------------------- frontends
def test_unsupported_torch_op_names_op_and_node():
    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x) + 1

    with pytest.raises(ModelError, match=r"does not support special_bessel_j0\.default \(node special_bessel_j0"):
        relax_from_torch(Bessel(), (torch.randn(3),))


def test_unsupported_onnx_op_names_node():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu0"),
                               helper.make_node("STFT", ["y", "step"], ["z"], name="spectrum")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 1]),
                               helper.make_tensor_value_info("step", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"ONNX frontend does not support STFT \(node spectrum\)") as e:
        relax_from_onnx(model, {"x": (1, 64, 1), "step": ()}, {"x": "float32", "step": "int64"})
    assert "Traceback" not in e.value.render()


def test_failing_onnx_converter_names_node(capsys):
    shape = numpy_helper.from_array(np.array([5, 7], "int64"), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"], name="to_5x7")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 7])], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"ONNX frontend failed at node 'to_5x7' \(Reshape\): Reshape expects"):
        relax_from_onnx(model, {"x": (1, 3, 8, 8)})
    assert "Error converting operator" not in capsys.readouterr().out
