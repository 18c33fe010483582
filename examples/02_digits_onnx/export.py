"""Export the trained digits CNN of ../01_digits_cnn to ONNX (digits.onnx), batch norms kept as
BatchNormalization nodes so the schedule's fold_batchnorm has work to do on an ONNX graph.

    python examples/02_digits_onnx/export.py
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "01_digits_cnn"))

from model import build  # noqa: E402


def main() -> Path:
    model, (x,) = build()
    out = HERE / "digits.onnx"
    torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["image"], output_names=["logits"],
                      opset_version=17, do_constant_folding=False)
    print(f"wrote {out.name}")
    return out


if __name__ == "__main__":
    main()
