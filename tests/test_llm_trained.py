"""The trained GLM-style example (examples/03_glm_tiny/trained.py): a model that learned Python's language reference.

Its LLM build generates the same greedy bytes as PyTorch, and its held-out perplexity through the compiled prefill
equals PyTorch's, far below the untrained model's (~256 for bytes): so compression can be judged on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import EXAMPLES

from aglmc.compiler import llm

pytestmark = pytest.mark.slow

FOLDER = EXAMPLES / "03_glm_tiny"


def _trained():
    name = "aglmc_example_glm_tiny_trained"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FOLDER / "trained.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    trained = _trained()
    model, _ = trained.build()
    out = tmp_path_factory.mktemp("trained") / "glm"
    build = llm.build_llm_artifact(model, out, {"host": {"threads": 1}},
                                   {"max_cache_len": 128, "verify_prompts": 2, "new_tokens": 24,
                                    "tokenizer": "bytes"},
                                   prompts=trained.prompts()["input_ids"], text=trained.heldout()["input_ids"],
                                   log=lambda _m: None)
    return out, build, model


def test_weights_are_small_and_documented():
    info = json.loads((FOLDER / "trained.json").read_text())
    assert (FOLDER / "trained.npz").stat().st_size < 1_000_000
    assert info["heldout_perplexity"] < 8.0  # bytes: an untrained model scores ~256
    assert info["parameters"] == sum(p.numel() for p in _trained().load_weights().parameters())


def test_trained_model_compiles_and_generates_like_pytorch(built):
    _, build, _ = built
    check = build.checks[0]
    assert (check.sequences_equal, check.prompts, check.agreement) == (2, 2, 1.0), check.first_mismatch
    # the compiled prefill scores the held-out text as PyTorch does, and the model learned it
    assert check.perplexity == pytest.approx(build.perplexity_torch, rel=1e-4)
    assert build.perplexity_torch < 8.0
    print(f"\nheld-out perplexity (16 x 64 bytes): PyTorch {build.perplexity_torch:.4f}, host library "
          f"{check.perplexity:.4f}")


def test_generate_from_text(built, capsys):
    out, _, model = built
    parser = argparse.ArgumentParser(prog="aglmc")
    llm.add_generate_parser(parser.add_subparsers(dest="command"))
    prompt = "A function definition "
    args = parser.parse_args(["generate", str(out), "--prompt", prompt, "--max-new-tokens", "40", "--threads", "1"])
    assert llm.cmd_generate(args) == 0
    text = capsys.readouterr().out
    print(text)
    want = llm.reference_greedy(model, list(prompt.encode()), 40)
    assert f"generated (40 tokens): {','.join(map(str, want))}" in text
    assert "text: " in text
    # a model that learned the reference writes words: mostly letters and spaces, many different letters
    assert np.mean([chr(t).isalpha() or chr(t) == " " for t in want]) > 0.8
    assert len(set(want)) >= 8
