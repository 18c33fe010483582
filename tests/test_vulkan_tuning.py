"""Tuning the vulkan target (issue 8): MetaSchedule's GPU search over the vulkan build's kernels, timed on the
Vulkan device (lavapipe in CI), into the same tuning database as CPU tuning; a rebuild applies the records.

A 2-layer MLP, 8 trials in batches of 4: these prove the mechanism, not that tuning finds fast kernels.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("wgpu")

from aglmc.errors import TargetError  # noqa: E402
from aglmc.targets.base import get_target  # noqa: E402
from aglmc.targets.frontend import relax_from_torch  # noqa: E402
from aglmc.targets.tuning import (MeasureConfig, SearchConfig, TuningDatabase, database_folder,  # noqa: E402
                                  database_for_build)
from aglmc.targets.vulkan import runtime  # noqa: E402
from aglmc.targets.vulkan.artifact import Artifact  # noqa: E402


def _adapter_reason() -> str:
    try:
        runtime.select_adapter()
        return ""
    except TargetError as e:
        return e.message
    except Exception as e:  # noqa: BLE001 - wgpu-native failing to load at all
        return f"wgpu cannot enumerate adapters: {e}"


NO_ADAPTER = _adapter_reason()
needs_vulkan = pytest.mark.skipif(bool(NO_ADAPTER), reason=f"no Vulkan adapter: {NO_ADAPTER}")

SMALL = SearchConfig(batch=4, population_size=32, init_min_unmeasured=8, genetic_num_iters=1)
QUICK = MeasureConfig(number=2, repeat=2, min_repeat_ms=2)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(32, 64)
    return model, x, relax_from_torch(model, (x,))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tuning-cache"
    monkeypatch.setenv("AGLMC_TUNING_DB", str(path))
    return path


def test_vulkan_block_takes_the_tuning_settings():
    vulkan = get_target("vulkan")
    assert vulkan.resolve({"tune_trials": 8, "tuning_db": "db"})["tune_trials"] == 8
    with pytest.raises(TargetError, match="tune_trials"):
        vulkan.resolve({"tune_trials": -1})


@needs_vulkan
@pytest.mark.slow
def test_tuned_records_land_apply_and_match_the_host(mlp, cache, tmp_path):
    from aglmc.targets.run import HostRunner

    model, x, mod = mlp
    vulkan = get_target("vulkan")
    settings = {"tune_trials": 8}
    lines = []
    report = vulkan.tune(mod, settings, search=SMALL, measure=QUICK, log=lines.append)
    assert report.stopped == "done" and report.trials_run == 8
    assert {t.name for t in report.tasks} == {"fused_matmul_add_relu", "fused_matmul1_add1"}
    assert sum(t.budget for t in report.tasks) == 8  # split by the kernels' untuned latency on the device
    for task in report.tasks:
        assert task.trials == task.budget and task.default_rule == "dlight"
        assert task.default_seconds is not None and task.best_seconds is not None  # both timed on the device
    assert any("on llvmpipe" in ln or "(Vulkan," in ln for ln in lines)

    # the records are in the webgpu target's folder of the same database root the CPU targets use
    s = vulkan.resolve(settings)
    folder = database_folder(vulkan.tvm_target(s))
    host = get_target("host")
    assert folder.parent == database_folder(host.tvm_target(host.resolve({}))).parent == cache
    assert folder.name.startswith("webgpu-")
    # one folder per adapter: this machine's (the default), another GPU's, named by the block
    assert str(vulkan.tvm_target(s).attrs["model"]) == runtime.select_adapter().info["device"]
    other = vulkan.resolve({**settings, "device": "NVIDIA H100"})
    assert database_folder(vulkan.tvm_target(other)) != folder
    assert database_for_build(vulkan.tvm_target(other), other) is None  # lavapipe's records are not the H100's
    scan = TuningDatabase(folder).scan()
    assert scan.records == 8 and all(w.default_seconds is not None for w in scan.workloads.values()), scan.workloads

    # a rebuild applies them (only_faster=False: every tuned kernel, whatever lavapipe's timings said)
    path = tmp_path / "vulkan.wgpu"
    info = vulkan.build(mod, settings, path, database=database_for_build(vulkan.tvm_target(s), s, only_faster=False))
    assert {f.name: f.rule for f in info.schedule.functions} == {"fused_matmul_add_relu": "database",
                                                                  "fused_matmul1_add1": "database"}
    assert Artifact.load(path).plan["schedules"] == {"fused_matmul_add_relu": "database",
                                                      "fused_matmul1_add1": "database"}
    untuned = vulkan.build(mod, {}, tmp_path / "untuned.wgpu")
    assert {f.rule for f in untuned.schedule.functions} == {"dlight"}

    xs = np.random.default_rng(0).standard_normal((32, 64)).astype("float32")
    (got,) = vulkan.runner(path).run([xs])
    host_path = host.build(mod, {}, tmp_path / "host.so").path
    (want,) = HostRunner(host_path).run([xs])
    assert np.abs(got - want).max() <= 1e-4

    start = time.monotonic()
    again = vulkan.tune(mod, settings, search=SMALL, measure=QUICK, log=lines.append)
    assert (again.trials_run, again.stopped) == (0, "nothing to tune")
    assert time.monotonic() - start < 10
    assert TuningDatabase(folder).scan().records == 8
