"""Every example builds for vulkan too, and its Vulkan library matches the host library on this machine's
Vulkan device (lavapipe in CI), checked by the build itself; `aglmc run --target vulkan` runs it. Quantized
examples included: their int8 / int4 weights are packed into u32 words (targets/vulkan/pack_weights.py)."""

from __future__ import annotations

import json
import re

import pytest

from aglmc.passes.quant_spec import QUANTIZED_LOWERING_RTOL
from conftest import EXAMPLES, schedule_copy

pytestmark = pytest.mark.slow

# every example; 03_glm_tiny/glm_int4 has a test of its own below
SCHEDULES = sorted(s for s in EXAMPLES.glob("0*/*.sched")
                   if s.relative_to(EXAMPLES).as_posix() != "03_glm_tiny/glm_int4.sched")


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
                                  **({"metric = cosine": "metric = cosine\n    limit = 8"}
                                     if "metric = cosine" in text else {}),
                                  **({"generate {": "generate {\n    verify_prompts = 2\n    new_tokens = 8"}
                                     if "generate {" in text else {})})
    out = tmp_path / "out"
    result = cli("build", copy, "--out", out, "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    [check] = [d for d in manifest["verification"]["devices"] if d["target"] == "vulkan"]
    assert "Vulkan" in check["where"], check
    # quantized builds: a value quantized on a tie may round the other way (the host's bound for them too)
    rtol = QUANTIZED_LOWERING_RTOL if "pass quantize_" in text else 1e-3
    assert check["error_vs_host"] <= rtol * max(1.0, manifest["verification"]["output_scale"])
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


def test_glm_int4_on_vulkan_generates_the_host_int4_tokens(cli, tmp_path):
    """examples/03_glm_tiny/glm_int4.sched as written (arm left out): the vulkan prefill/decode libraries keep the
    int4 weights packed eight to a u32 word, and generate the host int4 library's greedy tokens with its logits."""
    _adapter_or_skip()
    import numpy as np

    from aglmc.targets.llm import HostLlmRunner, VulkanLlmRunner
    from aglmc.targets.vulkan.artifact import Artifact

    sched = schedule_copy(EXAMPLES / "03_glm_tiny" / "glm_int4.sched", tmp_path / "glm_int4.sched",
                          replace={'target arm { cpu = "cortex-a76" }': "",
                                   "generate {": "generate {\n    verify_prompts = 2\n    new_tokens = 8"})
    out = tmp_path / "out"
    result = cli("build", sched, "--out", out, "--quiet")
    assert result.code == 0, result.err
    checks = {c["target"]: c for c in json.loads((out / "llm.json").read_text())["checks"]}
    assert checks["vulkan"]["sequences_equal"] == checks["host"]["sequences_equal"] == 2, checks

    for name in ("vulkan_prefill.wgpu", "vulkan_decode.wgpu", "vulkan.wgpu"):
        art = Artifact.load(out / name)
        weights = art.plan["weights"]
        assert len(weights["packed"]) == 24 and weights["left_as_float"] == [], weights  # 4 layers x 6 projections
        assert all("int4 groups of 32" in p for p in weights["packed"])
        words = sum(c.nbytes for c in art.constants if c.dtype == np.uint32)
        assert words * 8 == weights["float32_bytes"]  # eight int4 values per 32-bit word: 1/8 of float32
        assert weights["packed_bytes"] == words + words // 4  # plus one float32 scale per 32 weights
        print(f"{name}: int4 projections {weights['float32_bytes']:,} B as float32 -> {words:,} B of words + "
              f"{weights['packed_bytes'] - words:,} B of scales")

    host = HostLlmRunner(out / "host_llm.so")
    vulkan = VulkanLlmRunner(out / "vulkan_prefill.wgpu", out / "vulkan_decode.wgpu")
    worst = 0.0
    try:
        for text in ("A function definition ", "The list "):
            prompt = list(text.encode())
            (want, want_cache), (got, got_cache) = host.prefill(prompt), vulkan.prefill(prompt)
            want, got = np.asarray(want).reshape(len(prompt), -1), np.asarray(got).reshape(len(prompt), -1)
            for pos in range(len(prompt), len(prompt) + 12):  # greedy decode, both fed the host's token
                worst = max(worst, float(np.abs(got - want).max()))
                assert got[-1].argmax() == want[-1].argmax(), f"{text!r}: token {pos} differs"
                token = int(want[-1].argmax())
                (want, want_cache), (got, got_cache) = (host.decode(token, want_cache, pos),
                                                        vulkan.decode(token, got_cache, pos))
                want, got = np.asarray(want).reshape(1, -1), np.asarray(got).reshape(1, -1)
    finally:
        host.close()
        vulkan.close()
    print(f"glm_int4: max logit difference vulkan vs host {worst:.2e}")
    assert worst < 1e-3
