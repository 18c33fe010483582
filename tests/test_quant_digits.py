"""INT8 end to end on the trained digits CNN (issue 6's "done when"): static PTQ keeps accuracy within one point,
the compiled libraries do integer math (sdot on a dotprod ARM core), and the same schedule on the ONNX form gives
a QDQ model onnxruntime runs, close to aglmc's own int8 library."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from conftest import EXAMPLES, objdump_aarch64

INT8 = EXAMPLES / "06_int8"


def _digits_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_data", EXAMPLES / "01_digits_cnn" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    from aglmc.compiler.pipeline import BuildOptions, build

    out = tmp_path_factory.mktemp("digits_int8") / "digits_int8"
    return build(INT8 / "digits_int8.sched", BuildOptions(out_dir=out, log=lambda _m: None))


@pytest.mark.slow
def test_static_int8_keeps_accuracy_within_one_point(int8_build):
    v = int8_build.verification
    assert v.samples == 400 and v.metric == "accuracy"
    assert v.metric_original - v.metric_compiled <= 0.01
    assert v.metric_original - v.metric_transformed <= 0.01
    step = next(p for p in int8_build.passes if p.name == "quantize_static")
    assert step.result.summary.startswith("quantized 4 layer(s) to int8 (static, percentile 99.99)")
    # per layer: scheme, calibration method, SQNR (issue item 6)
    assert len(step.result.details) == 4
    for line in step.result.details:
        assert "w int8 sym per-channel, a int8 asym per-tensor; calibration percentile 99.99" in line
        assert "weight SQNR" in line and "output SQNR" in line
    manifest = json.loads((int8_build.out_dir / "manifest.json").read_text())
    assert manifest["passes"][1]["details"] == step.result.details


@pytest.mark.slow
def test_int8_libraries_do_integer_math_with_sdot_on_dotprod(int8_build):
    report = (int8_build.out_dir / "report.md").read_text()
    # 3 convs (im2col) and the classifier: int8 x int8 -> int32 kernels scheduled by the int8 rule
    assert len(re.findall(r"^\| fused_int8_matmul\w* \| int8_matmul \|", report, re.M)) == 4
    tool = objdump_aarch64()
    if tool is None:
        pytest.skip("no aarch64 objdump (apt-get install binutils-aarch64-linux-gnu)")
    asm = subprocess.run([tool, "-d", str(int8_build.out_dir / "arm.so")], capture_output=True, text=True,
                         check=True).stdout
    functions, current = set(), None
    for line in asm.splitlines():
        if line.endswith(">:"):
            current = line.split("<", 1)[1][:-2]
        elif "\tsdot\t" in line:
            functions.add(current)
    # every product with a reduction of 16 or more bytes (all but the first conv's 9-term one) uses sdot
    assert len(functions) >= 3 and all("int8_matmul" in f for f in functions), functions


def _run_vm(exe, arrays):
    vm = relax.VirtualMachine(exe, tvm.cpu())
    outs = []
    for x in arrays:
        out = vm["main"](tvm.runtime.tensor(x))
        outs.append((out if hasattr(out, "numpy") else out[0]).numpy())
    return np.concatenate(outs)


@pytest.mark.slow
def test_onnx_qdq_runs_in_onnxruntime_close_to_aglmc_int8():
    from aglmc.compiler.data import Dataset
    from aglmc.passes.base import PassContext, get_pass
    from aglmc.passes.select import make_selector
    from aglmc.targets.cpu import compile_cpu
    from aglmc.targets.frontend import relax_from_onnx
    from aglmc.targets.host import HostTarget
    from aglmc.targets.quant.lower_qdq import LoweringReport, lower_qdq

    data = _digits_data()
    model = onnx.load(str(EXAMPLES / "02_digits_onnx" / "digits.onnx"))
    graph = gs.import_onnx(model)
    get_pass("fold_batchnorm")().run("onnx", graph, PassContext(selects=make_selector("onnx", ("conv2d",))))
    ctx = PassContext(selects=make_selector("onnx", ("conv2d", "linear")),
                      datasets={"calib": Dataset("calib", {"image": data.calibration()["x"]}, None)},
                      example_inputs={"image": np.zeros((1, 1, 8, 8), np.float32)})
    get_pass("quantize_static")(data="calib", method="percentile").run("onnx", graph, ctx)
    qdq = gs.export_onnx(graph)
    onnx.checker.check_model(qdq)

    inputs, labels = data.heldout()
    x = [inputs["x"][i:i + 1] for i in range(0, 400, 2)]
    y = labels[0:400:2]

    def ort_run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"image": a})[0] for a in x])

    y_float, y_ort = ort_run(model), ort_run(qdq)
    mod = relax_from_onnx(qdq, {"image": [1, 1, 8, 8]})
    report = LoweringReport()
    lower_qdq(mod, report)
    assert len(report.integer) == 4 and not report.left  # 3 convs + the classifier on int8 x int8 -> int32
    exe, _ = compile_cpu(mod, HostTarget.tvm_target({"threads": 1}))
    y_aglmc = _run_vm(exe, x)

    acc = {k: float((v.argmax(1) == y).mean()) for k, v in
           dict(float=y_float, ort=y_ort, aglmc=y_aglmc).items()}
    assert acc["float"] - acc["ort"] <= 0.01 and acc["float"] - acc["aglmc"] <= 0.01
    scale = float(np.abs(y_float).max())
    # onnxruntime's own integer kernels and aglmc's agree to within a few requantization steps of one value
    assert np.abs(y_ort - y_aglmc).max() <= 2e-3 * scale
    assert np.abs(y_ort - y_float).max() <= 0.05 * scale


def test_schedule_asking_a_target_for_a_slow_scheme_is_refused_at_check(tmp_path, cli):
    digits = EXAMPLES / "01_digits_cnn"
    sched = tmp_path / "asym.sched"
    sched.write_text(f'model "{digits / "model.py"}:build"\n'
                     'input x: float32[1, 1, 8, 8]\n'
                     f'dataset calib = "{digits / "data.py"}:calibration"\n'
                     'pass quantize_static { data = calib  weights_symmetric = false }\n'
                     'target arm { cpu = "cortex-a76"  features = ["+neon", "+dotprod"] }\n')
    result = cli("check", sched)
    assert result.code == 1
    assert f"{sched}:4:6: error: target 'arm+dotprod' has no fast kernel for this scheme: weights must be symmetric " \
           "int8 (zero point 0), got uint8 asym per-channel(axis 0) minmax" in result.err
    assert "pass quantize_static" in result.err and "^^^" in result.err
