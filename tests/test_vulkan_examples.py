"""Every example builds for vulkan too, and its Vulkan library matches the host library on this machine's
Vulkan device (lavapipe in CI), checked by the build itself; `aglmc run --target vulkan` runs it."""

from __future__ import annotations

import json
import re

import pytest

from conftest import EXAMPLES, schedule_copy

pytestmark = pytest.mark.slow

# (int4/int8 weights have no Vulkan lowering yet: the checker refuses the combination, issue 8)
SCHEDULES = sorted(s for s in EXAMPLES.glob("0[123]_*/*.sched") if "pass quantize_" not in s.read_text())


def _adapter_or_skip():
    from aglmc.errors import TargetError
    from aglmc.targets.vulkan.runtime import select_adapter

    try:
        select_adapter()
    except TargetError as e:
        pytest.skip(f"no Vulkan device: {e.message}")


@pytest.mark.parametrize("sched", SCHEDULES, ids=[f"{s.parent.name}/{s.stem}" for s in SCHEDULES])
def test_example_builds_for_vulkan_and_matches_the_host(cli, sched, tmp_path):
    _adapter_or_skip()
    text = sched.read_text()
    copy = schedule_copy(sched, tmp_path / sched.name, extra="" if "target vulkan" in text else "\ntarget vulkan\n",
                         replace={**({"tolerance = 1e-4": "tolerance = 1e-4\n    limit = 24"}
                                     if "tolerance = 1e-4" in text else {}),
                                  **({"generate {": "generate {\n    verify_prompts = 2\n    new_tokens = 8"}
                                     if "generate {" in text else {})})
    out = tmp_path / "out"
    result = cli("build", copy, "--out", out, "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    [check] = [d for d in manifest["verification"]["devices"] if d["target"] == "vulkan"]
    assert "Vulkan" in check["where"], check
    assert check["error_vs_host"] <= 1e-3 * max(1.0, manifest["verification"]["output_scale"])
    assert "vulkan.wgpu" in {t["library"] for t in manifest["targets"]}
    if manifest.get("llm"):  # a language model: prefill + decode on the Vulkan device give PyTorch's tokens
        checks = {c["target"]: c for c in json.loads((out / manifest["llm"]).read_text())["checks"]}
        assert checks["vulkan"]["where"].startswith("vulkan ("), checks
        assert checks["vulkan"]["sequences_equal"] == checks["vulkan"]["prompts"], checks["vulkan"]


def test_run_target_vulkan(cli, digits_artifact, tmp_path):
    _adapter_or_skip()
    copy = schedule_copy(EXAMPLES / "01_digits_cnn" / "digits.sched", tmp_path / "d.sched",
                         extra="\ntarget vulkan\n", replace={"tolerance = 1e-4": "tolerance = 1e-4\n    limit = 8"})
    out = tmp_path / "out"
    assert cli("build", copy, "--out", out, "--quiet").code == 0
    result = cli("run", out, "--target", "vulkan", "--input", EXAMPLES / "01_digits_cnn" / "sample.npy",
                 "--compare")
    assert result.code == 0, result.err
    assert "running the vulkan library on" in result.out and "Vulkan" in result.out
    assert float(re.search(r"max-abs difference vulkan vs host: (\S+)", result.out).group(1)) < 1e-4
