"""Calibration images of ../01_digits_cnn keyed by the ONNX model's input name ``image``."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("digits_data",
                                               Path(__file__).parent.parent / "01_digits_cnn" / "data.py")
_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_digits)


def calibration_image():
    return {"image": _digits.calibration()["x"]}
