"""Language-model builds (aglmc issue 10): prefill + decode with a bounded KV cache in one library, sharing weights.

One build of examples/03_glm_tiny for host, arm and vulkan (module fixture) serves most tests: greedy tokens equal
PyTorch's (full recompute per step) on the host, on the emulated ARM board and on this machine's Vulkan device;
the prefill length is dynamic; decode latency does not grow with the position; ``aglmc generate`` prints tokens,
tokens/s and peak memory. transformers' GlmForCausalLM and Qwen2ForCausalLM (tiny configs) build the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import numpy as np
import pytest
import torch

from conftest import EXAMPLES

from aglmc.compiler import llm
from aglmc.errors import AglmcError, ArtifactError
from aglmc.targets import llm as tl

pytestmark = pytest.mark.slow

MAX_LEN = 288  # room for the decode-latency test at position 256


def _glm_tiny():
    name = "aglmc_example_glm_tiny"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "03_glm_tiny" / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def glm():
    model, (ids,) = _glm_tiny().build()
    return model, ids.numpy()


@pytest.fixture(scope="module")
def artifact(glm, tmp_path_factory):
    """The tiny GLM's schedule (host, arm) plus vulkan, built by :func:`llm.build_llm` as the pipeline would call
    it for a `generate { ... }` block, with shared weights (host/arm: stored once, passed to both functions).
    The build checks the host and, with a Vulkan device, vulkan."""
    from conftest import schedule_copy

    from aglmc.compiler.data import load_dataset
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import check_schedule

    tmp = tmp_path_factory.mktemp("llm")
    sched = schedule_copy(EXAMPLES / "03_glm_tiny" / "glm_tiny.sched", tmp / "glm.sched", extra="\ntarget vulkan\n")
    checked = check_schedule(sched)
    model = load_model(checked)
    datasets = {name: load_dataset(decl, model.inputs, checked.schedule.text)
                for name, decl in checked.datasets.items()}
    out = tmp / "glm"
    out.mkdir()
    settings = {**llm.generate_defaults(), "max_cache_len": MAX_LEN, "prompts": "prompts", "verify_prompts": 2,
                "new_tokens": 12, "weights": "shared"}
    build = llm.build_llm([(t.kind, t.params) for t in checked.targets], model.original_module, out, settings,
                          datasets=datasets, log=lambda _m: None)
    return out, build


def _reference(model, prompt, n):
    return llm.reference_greedy(model, prompt, n)


# ---- the wrapper, in PyTorch ---------------------------------------------------------------------------------
def test_kv_cache_wrapper_matches_the_model_in_torch(glm):
    model, ids = glm
    lm = llm.KVCacheLM(model, 64)
    tokens = torch.from_numpy(ids[:, :20])
    with torch.no_grad():
        logits, cache = lm.prefill(tokens)
        assert logits.shape == (1, 20, 256) and cache.shape == lm.cache_shape == (2, 2, 2, 64, 16)
        assert float((logits - model(tokens)).abs().max()) < 1e-5
        assert float(cache[:, :, :, 20:].abs().max()) == 0.0  # slots after the prompt stay empty
        token = logits[0, -1].argmax().view(1, 1)
        step, cache2 = lm.decode(token, cache, torch.tensor([20]))
        full = model(torch.cat((tokens, token), dim=1))[:, -1]
        assert float((step[:, -1] - full).abs().max()) < 1e-5
        assert torch.equal(cache2[:, :, :, :20], cache[:, :, :, :20])  # earlier slots untouched


def test_spec_reads_the_decoder():
    import transformers as T

    model, _ = _glm_tiny().build()
    spec = llm.DecoderSpec.of(model)
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (2, 4, 2, 16)
    assert (spec.rotary, spec.rotary_dim) == ("interleaved", 8)
    qwen = T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2))
    assert (llm.DecoderSpec.of(qwen).rotary, llm.DecoderSpec.of(qwen).rotary_dim) == ("half", 8)
    with pytest.raises(AglmcError, match="not a decoder"):
        llm.DecoderSpec.of(torch.nn.Linear(2, 2))


# ---- one library, two functions, shared weights ----------------------------------------------------------------
def test_one_library_with_prefill_and_decode_sharing_weights(artifact):
    out, build = artifact
    info = json.loads((out / "llm.json").read_text())
    assert info["libraries"]["host"]["files"] == {"prefill": "host_llm.so", "decode": "host_llm.so"}
    assert info["libraries"]["arm"]["files"] == {"prefill": "arm_llm.so", "decode": "arm_llm.so"}
    assert info["libraries"]["vulkan"]["files"] == {"prefill": "vulkan_prefill.wgpu", "decode": "vulkan_decode.wgpu"}
    assert info["cache_shape"] == [2, 2, 2, MAX_LEN, 16]
    c = build.constants
    # shared weights: the weights() function holds them once; prefill and decode take them as arguments
    assert c["weights"] == build.weights_bytes and c["unique"] < build.weights_bytes + 4096
    assert c["prefill"] < 4096 and c["decode"] < 4096
    assert "Weights `shared`: stored once" in llm.render_report(build)


def test_bound_weights_are_one_constant_per_weight(glm):
    """The default mode: each weight is one constant object bound into both functions (stored once by the VM)."""
    from aglmc.targets.llm import constant_bytes

    model, _ = glm
    c = constant_bytes(llm.relax_llm(llm.KVCacheLM(model, 32)))
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert c["prefill"] >= 0.99 * weights and c["decode"] >= 0.99 * weights and c["unique"] < 1.01 * weights


def test_host_greedy_tokens_equal_pytorch(artifact, glm):
    out, build = artifact
    model, ids = glm
    host = next(c for c in build.checks if c.target == "host")
    assert (host.sequences_equal, host.prompts, host.agreement) == (2, 2, 1.0)
    runner = tl.HostLlmRunner(out / "host_llm.so", threads=1)
    prompt = list(ids[0, :5])
    got = llm.generate(runner, prompt, 40, MAX_LEN)
    assert got.tokens == _reference(model, prompt, 40)
    assert got.decode_steps == 39


def test_prefill_length_is_dynamic(artifact, glm):
    out, _ = artifact
    model, ids = glm
    runner = tl.HostLlmRunner(out / "host_llm.so", threads=1)
    for n in (1, 7, 32, 100):
        tokens = np.resize(ids[0], n)
        logits, cache = runner.prefill(tokens)
        assert logits.shape == (1, n, 256)
        np.testing.assert_allclose(logits[0], llm.reference_logits(model, tokens), rtol=0, atol=1e-4)
        assert tuple(cache.shape) == (2, 2, 2, MAX_LEN, 16)


def test_decode_latency_does_not_grow_with_position(artifact, glm):
    """Decode attends over the bounded cache (slots after pos masked): its cost is set by max_cache_len, not by
    the position, and no step recomputes the prompt (a recompute at 256 would cost a 257-token prefill)."""
    out, _ = artifact
    _, ids = glm
    runner = tl.HostLlmRunner(out / "host_llm.so", threads=1)
    tokens = np.resize(ids[0], 257)
    _, cache = runner.prefill(tokens)
    for pos in (16, 256):  # warm up
        llm.time_decode(runner, cache, pos, repeats=5)
    at16 = llm.time_decode(runner, cache, 16, repeats=200)
    at256 = llm.time_decode(runner, cache, 256, repeats=200)
    start = time.perf_counter()
    runner.prefill(tokens)
    recompute = time.perf_counter() - start
    print(f"\ndecode per token on the host (1 thread, cache {MAX_LEN} slots): position 16 {1e3 * at16:.4f} ms, "
          f"position 256 {1e3 * at256:.4f} ms (ratio {at256 / at16:.2f}); a 257-token prefill "
          f"(recomputing instead) {1e3 * recompute:.2f} ms")
    assert at256 < 3 * at16
    assert at256 < recompute / 5


# ---- the other targets --------------------------------------------------------------------------------------------
def test_board_greedy_tokens_equal_pytorch(artifact, glm, emulated_board):
    out, _ = artifact
    model, ids = glm
    prompt = list(ids[0, :6])
    runner = tl.BoardLlmRunner(out / "arm_llm.so", emulated_board.spec, timeout=300)
    try:
        check = llm.check_runner(runner, model, [prompt], 10, MAX_LEN, "arm")
    finally:
        runner.close()
    assert (check.sequences_equal, check.agreement) == (1, 1.0), check.first_mismatch
    assert check.max_logit_error < 1e-4


def test_vulkan_greedy_tokens_equal_pytorch(artifact, glm):
    out, build = artifact
    model, ids = glm
    try:
        runner = tl.VulkanLlmRunner(out / "vulkan_prefill.wgpu", out / "vulkan_decode.wgpu")
    except AglmcError as e:
        pytest.skip(f"no Vulkan device: {e}")
    prompt = list(ids[0, :6])
    check = llm.check_runner(runner, model, [prompt], 10, MAX_LEN, "vulkan")
    assert (check.sequences_equal, check.agreement) == (1, 1.0), check.first_mismatch
    built = next(c for c in build.checks if c.target == "vulkan")  # the build checked it too
    assert built.sequences_equal == built.prompts


# ---- aglmc generate ----------------------------------------------------------------------------------------------
def _generate(*argv):
    parser = argparse.ArgumentParser(prog="aglmc")
    llm.add_generate_parser(parser.add_subparsers(dest="command"))
    return llm.cmd_generate(parser.parse_args(["generate", *map(str, argv)]))


def test_generate_command_prints_tokens_speed_and_memory(artifact, glm, capsys):
    out, _ = artifact
    model, ids = glm
    prompt = [int(t) for t in ids[0, :3]]
    assert _generate(out, "--prompt-tokens", ",".join(map(str, prompt)), "--max-new-tokens", 8, "--threads", 1) == 0
    text = capsys.readouterr().out
    print(text)
    assert f"generated (8 tokens): {','.join(map(str, _reference(model, prompt, 8)))}" in text
    assert "prefill: 3 tokens in" in text and "decode: 7 tokens in" in text and "tokens/s" in text
    assert "peak memory (RSS of this process)" in text


def test_generate_command_on_vulkan(artifact, glm, capsys):
    out, _ = artifact
    model, _ = glm
    try:
        tl.VulkanLlmRunner(out / "vulkan_prefill.wgpu", out / "vulkan_decode.wgpu")
    except AglmcError as e:
        pytest.skip(f"no Vulkan device: {e}")
    assert _generate(out, "--prompt-tokens", "1,2,3", "--max-new-tokens", 5, "--target", "vulkan") == 0
    text = capsys.readouterr().out
    assert f"generated (5 tokens): {','.join(map(str, _reference(model, [1, 2, 3], 5)))}" in text
    assert "ran on vulkan" in text


def test_generate_command_refuses_bad_input(artifact, tmp_path):
    out, _ = artifact
    with pytest.raises(ArtifactError, match="outside the vocabulary"):
        _generate(out, "--prompt-tokens", "1,999")
    with pytest.raises(ArtifactError, match="cache slots"):
        _generate(out, "--prompt-tokens", "1,2", "--max-new-tokens", MAX_LEN + 5)
    with pytest.raises(ArtifactError, match="byte-token model"):
        _generate(out, "--prompt", "hello")
    with pytest.raises(ArtifactError, match="not a language-model build"):
        _generate(tmp_path, "--prompt-tokens", "1")


# ---- transformers models ---------------------------------------------------------------------------------------
def _transformers(name):
    import transformers as T

    config_cls, model_cls, extra = {
        "glm": (T.GlmConfig, T.GlmForCausalLM, dict(head_dim=16, pad_token_id=0)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
    }[name]
    config = config_cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers' init (std 0.02) gives near-uniform logits: ties would decide tokens
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() > 1 else p.normal_(1.0, 0.1)
    return model


@pytest.mark.parametrize("name", ["glm", "qwen2"])
def test_transformers_decoder_generates_like_pytorch(name, tmp_path):
    model = _transformers(name)
    build = llm.build_llm_artifact(model, tmp_path / name, {"host": {"threads": 1}},
                                   {"max_cache_len": 40, "verify_prompts": 3, "new_tokens": 16}, log=lambda _m: None)
    assert json.loads((tmp_path / name / "manifest.json").read_text())["llm"] == "llm.json"
    assert "greedy sequences equal" in (tmp_path / name / "report.md").read_text()
    check = build.checks[0]
    assert (check.sequences_equal, check.prompts, check.agreement) == (3, 3, 1.0), check.first_mismatch
    assert check.max_logit_error < 1e-4
    assert build.spec.rotary == ("interleaved" if name == "glm" else "half")
