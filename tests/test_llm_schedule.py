"""Language models from a schedule (aglmc issue 10): the ``generate { ... }`` block, and the schedule's compression
passes carried into ``prefill`` and ``decode``.

The passes run on the model's forward graph, as in any build; :mod:`aglmc.compiler.transplant` puts the Linears
they changed back into the model's modules, and the cached entry points are exported from that. Tests here: the
block parses, checks (located errors) and formats back; low-rank, FFN channel pruning and group-wise int4 are
carried over exactly (the cached prefill in PyTorch equals the transformed forward graph); what cannot be carried
is refused with the module's name; and the int4 example schedule builds, generates, and reports its agreement
with the original model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EXAMPLES, schedule_copy

from aglmc.dsl import format_schedule, parse_text
from aglmc.errors import ModelError, ScheduleError

FOLDER = EXAMPLES / "03_glm_tiny"


def _checked(text: str, tmp_path: Path):
    from aglmc.compiler.catalog import build_catalog
    from aglmc.dsl import check

    path = tmp_path / "s.sched"
    path.write_text(text)
    return check(parse_text(text, path), build_catalog())


HEAD = f'model "{FOLDER}/trained.py:build"\ninput input_ids: int64[1, 64]\ndataset prompts = "{FOLDER}/trained.py:prompts"\n'


def test_generate_block_checks_and_formats_back(tmp_path):
    checked = _checked(HEAD + "generate { max_cache_len = 64  prompts = prompts  tokenizer = bytes }\ntarget host\n",
                       tmp_path)
    params = checked.generation.params
    assert (params["max_cache_len"], params["prompts"], params["tokenizer"], params["new_tokens"]) == \
        (64, "prompts", "bytes", 16)
    text = format_schedule(checked)
    assert "generate {\n    max_cache_len = 64\n" in text
    assert _checked(text, tmp_path) == checked  # the resolved schedule re-parses equal


@pytest.mark.parametrize("block, where, message", [
    ("generate { max_cach_len = 64 }", (4, 12), "generate has no setting 'max_cach_len'"),
    ("generate { max_cache_len = 1 }", (4, 28), "max_cache_len"),
    ("generate { prompts = missing }", (4, 22), "missing"),
    ("generate { tokenizer = words }", (4, 24), "words"),
    ("generate { }\ngenerate { }", (5, 1), "a schedule has one 'generate' statement"),
])
def test_generate_block_errors_are_located(tmp_path, block, where, message):
    with pytest.raises(ScheduleError) as e:
        _checked(HEAD + block + "\ntarget host\n", tmp_path)
    assert (e.value.location.line, e.value.location.col) == where, e.value.render()
    assert message in e.value.message


def test_generate_block_needs_a_pytorch_model(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"")
    with pytest.raises(ScheduleError) as e:
        _checked('model "net.onnx"\ngenerate { }\ntarget host\n', tmp_path)
    assert (e.value.location.line, e.value.location.col) == (2, 1)
    assert "needs a PyTorch model" in e.value.message


# ---- carrying the passes into the cached model ------------------------------------------------------------------
def _transformed(passes: str, tmp_path: Path):
    """The trained example's model after ``passes`` (schedule text), as the pipeline leaves it."""
    from aglmc.compiler import pipeline
    from aglmc.compiler.model import load_model

    path = tmp_path / "p.sched"
    path.write_text(HEAD.split("dataset")[0] + passes + "\ntarget host\n")
    checked = pipeline.check_schedule(path)
    model = load_model(checked)
    datasets = pipeline.load_datasets(checked, model)
    records = [pipeline.run_pass(checked, step, model, datasets, lambda _m: None) for step in checked.steps]
    return model, records


def _cached_prefill_logits(module, tokens: np.ndarray) -> np.ndarray:
    from aglmc.compiler.llm import KVCacheLM

    with torch.no_grad():
        logits, _ = KVCacheLM(module, 96).prefill(torch.from_numpy(tokens))
    return logits.numpy()


@pytest.mark.parametrize("passes, replaced, ops", [
    ('pass lowrank_svd on linear in "model.layers.*.self_attn.*" { rank_ratio = 0.25 }', 16,
     "aten.linear → aten.linear"),
    ('pass prune_channels on linear in "model.layers.*.mlp.*" { ratio = 0.25 }', 8, "aten.linear"),
    ('pass quantize_weights on linear in "model.layers.**" { bits = 4  group_size = 32 }', 24,
     "quantized_decomposed.dequantize_per_channel_group → aten.linear"),
    ('pass prune_channels on linear in "model.layers.*.self_attn.*" { ratio = 0.5 }', 16, "aten.linear"),
], ids=["lowrank", "prune_ffn", "int4", "prune_heads"])
def test_passes_are_carried_into_the_cached_model(tmp_path, passes, replaced, ops):
    from aglmc.compiler.llm import KVCacheLM, prefill_logits
    from aglmc.compiler.transplant import transplant

    model, records = _transformed(passes, tmp_path)
    assert records[0].result.changed, records[0].result.summary
    tokens = model.example_inputs[0]
    want = model.run([tokens])[0]
    carried = transplant(model.original_module, model.graph, [tokens], [want],
                         run=prefill_logits({"max_cache_len": 96}))
    assert len(carried.replaced) == replaced
    assert {" → ".join(o) for o in carried.replaced.values()} == {ops}
    assert carried.max_error <= 1e-5
    # the cached prefill (KVCacheLM around the rebuilt module) computes what the transformed forward graph does
    got = _cached_prefill_logits(carried.module, tokens)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # and differs from the original (the passes did something), which is left untouched
    original = _cached_prefill_logits(model.original_module, tokens)
    assert np.abs(original - want).max() > 1e-3
    assert not any(type(m).__name__ == "TransplantedLinear" for m in model.original_module.modules())
    if "mlp" in passes:  # the fused gate/up projection lost the same channels in both halves
        mlp = carried.module.model.layers[0].mlp
        assert mlp.gate_up_proj.w0.shape[0] == 2 * mlp.down_proj.w0.shape[1] < 2 * 192
    spec = KVCacheLM(carried.module, 96).spec
    if "self_attn" in passes and "prune" in passes:
        # whole heads went, grouped-query coupling kept: one key/value head with its two query heads (of 2 / 4)
        assert (spec.num_kv_heads, spec.num_heads, spec.head_dim) == (1, 2, 24)
        assert carried.module.model.layers[0].self_attn.o_proj.in_features == 48
    else:
        assert (spec.num_kv_heads, spec.num_heads) == (2, 4)


def test_changes_outside_the_linears_are_refused(tmp_path):
    from aglmc.compiler.transplant import transplant

    model, _ = _transformed('pass lowrank_svd on linear in "model.layers.0.mlp.*" { rank_ratio = 0.25 }', tmp_path)
    norm = model.graph.get_submodule("model.layers.1.input_layernorm")
    # what pruning the hidden size would do to a norm (passes replace tensors: the graph's weights are the
    # original module's own tensors until then)
    norm.weight = torch.nn.Parameter(norm.weight.detach() * 2.0, requires_grad=False)
    tokens = model.example_inputs[0]
    with pytest.raises(ModelError, match="model.layers.1.input_layernorm.weight"):
        transplant(model.original_module, model.graph, [tokens], model.run([tokens]))


def test_a_linear_the_passes_merged_away_is_refused(tmp_path):
    from aglmc.compiler.transplant import transplant

    model, _ = _transformed('pass lowrank_svd on linear in "model.layers.0.mlp.*" { rank_ratio = 0.25 }', tmp_path)
    for node in model.graph.graph.nodes:  # as if a pass had merged down_proj into another op
        stack = node.meta.get("nn_module_stack") or {}
        if stack and list(stack.values())[-1][0].endswith("layers.2.mlp.down_proj"):
            node.meta["nn_module_stack"] = dict(list(stack.items())[:-1])
    tokens = model.example_inputs[0]
    with pytest.raises(ModelError, match="'model.layers.2.mlp.down_proj'"):
        transplant(model.original_module, model.graph, [tokens], model.run([tokens]))


# ---- the int4 example, built by `aglmc build` ----------------------------------------------------------------------
@pytest.mark.slow
def test_int4_schedule_builds_generates_and_reports_agreement(cli, tmp_path):
    sched = schedule_copy(FOLDER / "glm_int4.sched", tmp_path / "glm_int4.sched",
                          replace={'target arm { cpu = "cortex-a76" }': "", "target vulkan": "",  # test_vulkan_examples
                                   "generate {": "generate {\n    verify_prompts = 2\n    new_tokens = 12"})
    out = tmp_path / "out"
    result = cli("build", sched, "--out", out, "--quiet")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["llm"] == "llm.json"
    info = json.loads((out / "llm.json").read_text())
    [check] = info["checks"]
    # compiling costs nothing: the library generates what the int4 PyTorch model generates ...
    assert (check["sequences_equal"], check["agreement"]) == (2, 1.0), check
    assert check["perplexity"] == pytest.approx(info["perplexity_transformed"], rel=1e-3)
    # ... and int4 costs little against the original model
    assert check["original_agreement"] >= 0.8
    assert info["perplexity_transformed"] <= 1.15 * info["perplexity_torch"]
    assert len(info["transplanted"]) == 24
    assert info["weights_bytes"] < 0.5 * info["original_weights_bytes"]
    report = (out / "report.md").read_text()
    assert "## Language model (prefill + decode)" in report and "Against the original model" in report
    print(f"\nint4: agreement with the original {check['original_agreement']:.4f}, perplexity "
          f"{info['perplexity_torch']:.3f} -> {info['perplexity_transformed']:.3f}")

    result = cli("generate", out, "--prompt", "A function definition ", "--max-new-tokens", "8")
    assert result.code == 0, result.err
    assert "decode: 7 tokens" in result.out and "text: 'A function definition '" in result.out


QWEN2 = '''
import torch
import transformers as T


def build():
    config = T.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    model = T.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # transformers' init gives near-uniform logits: ties would decide tokens
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() > 1 else p.normal_(1.0, 0.1)
    return model, (torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(1)),)
'''


@pytest.mark.slow
def test_transformers_qwen2_pruned_heads_ffn_and_int8_generates(cli, tmp_path):
    """Somebody else's decoder (transformers' Qwen2, SDPA attention, grouped-query): half its heads and a quarter of
    its FFN channels pruned, int8 weights, then prefill + decode: the library generates the transformed model's
    tokens, with the cache at one key/value head."""
    (tmp_path / "qwen.py").write_text(QWEN2)
    (tmp_path / "q.sched").write_text(
        'model "qwen.py:build"\n'
        'pass prune_channels on linear in "model.layers.*.self_attn.*" { ratio = 0.5 }\n'
        'pass prune_channels on linear in "model.layers.*.mlp.*" { ratio = 0.25 }\n'
        'pass quantize_weights on linear in "model.layers.**" { bits = 8 }\n'
        'generate { max_cache_len = 40  new_tokens = 12 }\n'
        'target host { threads = 1 }\n')
    out = tmp_path / "out"
    result = cli("build", tmp_path / "q.sched", "--out", out, "--quiet")
    assert result.code == 0, result.err
    info = json.loads((out / "llm.json").read_text())
    assert info["cache_shape"] == [2, 2, 1, 40, 16]
    assert (info["spec"]["num_heads"], info["spec"]["num_kv_heads"]) == (2, 1)
    [check] = info["checks"]
    assert check["sequences_equal"] == check["prompts"] and check["agreement"] == 1.0, check
    assert check["original_agreement"] is not None
    assert len(info["transplanted"]) == 14
