"""The README's "Adding a pass" recipe, run as written: the plugin registers, the schedule checks against its
parameters, and a build applies it to FX and ONNX graphs."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT

MODEL_PY = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x.clone()).clone() * 2

def build():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 8),)
'''


def _recipe(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Adding a pass", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "my_passes.py"
    path.write_text(code)
    return path


def test_recipe_pass_on_fx(tmp_path, cli):
    plugin = _recipe(tmp_path)
    (tmp_path / "model.py").write_text(MODEL_PY)
    sched = tmp_path / "net.sched"
    sched.write_text('model "model.py:build"\npass drop_identity\ntarget host\n')
    result = cli("build", sched, "--out", tmp_path / "out", "--plugin", plugin, "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [step] = manifest["passes"]
    assert step["name"] == "drop_identity" and step["changed"]
    assert step["summary"] == "removed 2 identity op(s)"
    assert manifest["stats"]["before"]["ops"]["aten.clone"] == 2
    assert "aten.clone" not in manifest["stats"]["after"]["ops"]
    assert manifest["verification"]["error_vs_original"] < 1e-5


def test_recipe_pass_on_onnx_and_its_parameters_are_checked(tmp_path, cli):
    plugin = _recipe(tmp_path)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["x1"], name="id0"),
         helper.make_node("MatMul", ["x1", "w"], ["m"], name="mm"),
         helper.make_node("Identity", ["m"], ["y"], name="id_out")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "net.onnx")
    sched = tmp_path / "net.sched"
    sched.write_text('model "net.onnx"\npass drop_identity\ntarget host\n')
    result = cli("build", sched, "--out", tmp_path / "out", "--plugin", plugin, "--quiet")
    assert result.code == 0, result.err
    step = json.loads((tmp_path / "out" / "manifest.json").read_text())["passes"][0]
    assert step["summary"] == "removed 1 identity op(s)"  # the output's Identity keeps the output name

    sched.write_text('model "net.onnx"\npass drop_identity { fx_op = ["aten.clone"] }\ntarget host\n')
    result = cli("check", sched, "--plugin", plugin)
    assert result.code == 1
    assert "net.sched:2:22" in result.err and "fx_ops" in result.err  # did you mean 'fx_ops'?
