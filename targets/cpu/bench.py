"""Quick single-thread comparison of aglmc's CPU schedules with onnxruntime and torch.

``python -m aglmc.targets.cpu.bench`` runs each (workload, runtime) pair in its own process (torch's and
TVM's thread pools in one process slow each other down 10-20x on a busy 2-core machine, shared/PERF.md)
and prints median milliseconds and the ratio to onnxruntime. Printing, not asserting: timings on a shared
machine are evidence, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

WORKLOADS = ("matmul512", "depthwise", "pointwise", "mbv2_block")
RUNTIMES = ("tvm", "onnxruntime", "torch")


def _model(name: str):
    import torch

    torch.manual_seed(0)
    if name == "matmul512":
        return torch.nn.Linear(512, 512, bias=False), torch.randn(512, 512)
    if name == "depthwise":
        return torch.nn.Conv2d(144, 144, 3, padding=1, groups=144), torch.randn(1, 144, 56, 56)
    if name == "pointwise":
        return torch.nn.Conv2d(144, 24, 1), torch.randn(1, 144, 56, 56)

    class InvertedResidual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(24, 144, 1), torch.nn.ReLU6(),
                torch.nn.Conv2d(144, 144, 3, padding=1, groups=144), torch.nn.ReLU6(),
                torch.nn.Conv2d(144, 24, 1),
            )

        def forward(self, x):
            return x + self.body(x)

    return InvertedResidual(), torch.randn(1, 24, 56, 56)


def _time(fn, repeat: int = 30) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2] * 1e3


def _measure(workload: str, runtime: str) -> float:
    import torch

    torch.set_num_threads(1)
    model, x = _model(workload)
    model = model.eval()
    if runtime == "torch":
        with torch.no_grad():
            return _time(lambda: model(x))
    if runtime == "onnxruntime":
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.onnx")
            torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return _time(lambda: session.run(None, feed))
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.target.codegen import llvm_get_system_cpu

    from aglmc.targets.cpu import compile_cpu

    mod = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    target = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": 1})
    executable, _ = compile_cpu(mod, target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    return vm.time_evaluator("main", tvm.cpu(), number=10, repeat=10)(data).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "RUNTIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(f"{_measure(*args.one):.4f}")
        return
    env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    print(f"{'workload':<12}" + "".join(f"{r:>14}" for r in RUNTIMES) + "   tvm/ort  tvm/torch")
    for workload in WORKLOADS:
        ms = {}
        for runtime in RUNTIMES:
            cmd = [sys.executable, "-m", "aglmc.targets.cpu.bench", "--one", workload, runtime]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            ms[runtime] = float(out.strip().splitlines()[-1])
        cells = "".join(f"{ms[r]:>11.3f} ms" for r in RUNTIMES)
        print(f"{workload:<12}{cells}   {ms['tvm'] / ms['onnxruntime']:7.2f}  {ms['tvm'] / ms['torch']:8.2f}")


if __name__ == "__main__":
    main()
