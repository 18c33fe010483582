"""Bad input gets a clear, located, one-message error (exit 1) and never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import EXAMPLES

DIGITS = EXAMPLES / "01_digits_cnn"


def _sched(tmp_path, text: str):
    path = tmp_path / "bad.sched"
    path.write_text(text)
    return path


def _expect_error(result, *fragments):
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


def test_missing_schedule_file(cli, tmp_path):
    _expect_error(cli("check", tmp_path / "nope.sched"), "nope.sched")


def test_factory_that_raises_is_located(cli, tmp_path):
    (tmp_path / "m.py").write_text("def build():\n    raise ValueError('no weights here')\n")
    sched = _sched(tmp_path, 'model "m.py:build"\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "bad.sched:1:7", "ValueError: no weights here",
                  "m.py:2")


def test_factory_missing_function_suggests(cli, tmp_path):
    (tmp_path / "m.py").write_text("def build_model():\n    pass\n")
    sched = _sched(tmp_path, 'model "m.py:build_modle"\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "bad.sched:1:7", "did you mean 'build_model'")


def test_declared_input_disagrees_with_model(cli, tmp_path):
    sched = _sched(tmp_path, f'model "{DIGITS / "model.py"}:build"\ninput x: float32[1, 1, 9, 9]\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "bad.sched:2:", "float32[1, 1, 9, 9]",
                  "float32[1, 1, 8, 8]")


def test_dataset_without_the_models_input(cli, tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    sched = _sched(tmp_path, f'model "{DIGITS / "model.py"}:build"\ndataset d = "d.npz"\n'
                             'evaluate { data = d }\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "bad.sched:2:", "no array for input(s) x",
                  "image")


def test_metric_needing_labels(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    sched = _sched(tmp_path, f'model "{DIGITS / "model.py"}:build"\ndataset d = "d.npz"\n'
                             'evaluate { data = d  metric = accuracy }\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "bad.sched:3:", "needs labels")


def test_onnx_pass_kind_mismatch_is_located(cli, tmp_path):
    plugin = tmp_path / "fxonly.py"
    plugin.write_text(
        "from aglmc.passes import Pass, PassResult, register_pass\n"
        "@register_pass\nclass FxOnly(Pass):\n    '''fx only'''\n    name = 'fx_only_test'\n"
        "    graph_kinds = ('fx',)\n    def run_fx(self, gm, ctx):\n        return PassResult(False)\n")
    sched = _sched(tmp_path, f'model "{EXAMPLES / "02_digits_onnx" / "digits.onnx"}"\npass fx_only_test\n'
                             'target host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o", "--plugin", plugin), "bad.sched:2:6",
                  "handles fx graphs", "ONNX")


def test_run_with_wrong_input_shape(cli, digits_artifact, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 7, 7), np.float32))
    _expect_error(cli("run", digits_artifact, "--input", tmp_path / "x.npy"), "x.npy", "[1, 1, 7, 7]",
                  "[1, 1, 8, 8]")


def test_run_on_a_folder_that_is_not_an_artifact(cli, tmp_path):
    _expect_error(cli("run", tmp_path, "--input", DIGITS / "sample.npy"), "not an aglmc artifact")


def test_onnx_external_data_outside_the_model_folder(cli, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    t = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    onnx.save(helper.make_model(graph), tmp_path / "evil.onnx")
    sched = _sched(tmp_path, 'model "evil.onnx"\ntarget host\n')
    _expect_error(cli("build", sched, "--out", tmp_path / "o"), "outside the model's folder")


@pytest.mark.parametrize("argv", [["inspect", "nothing.txt"], ["run", "/nonexistent", "--input", "x.npy"]])
def test_other_bad_arguments(cli, argv):
    _expect_error(cli(*argv))
