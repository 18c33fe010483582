"""Language models that generate: ``prefill`` + ``decode`` with a bounded key/value cache, in one library.

A decoder written with ordinary PyTorch modules (``examples/03_glm_tiny``, transformers' ``GlmForCausalLM``,
``Glm4ForCausalLM``, ``Qwen2ForCausalLM``, ``LlamaForCausalLM``) is wrapped in :class:`KVCacheLM`, whose two
methods are exported separately with ``torch.export`` and merged into one Relax module with the weights bound
once (:mod:`aglmc.targets.llm`)::

    prefill(tokens: int64[1, n])                      -> (logits f32[1, n, vocab], cache)   1 <= n <= max_cache_len
    decode(token: int64[1, 1], cache, pos: int64[1])  -> (logits f32[1, 1, vocab], cache)
    cache: f32[layers, 2, kv_heads, max_cache_len, head_dim]        keys [:, 0], values [:, 1]

``n`` is a torch.export dynamic dimension, a symbolic Relax shape in the library. ``pos`` is the number of
tokens already in the cache (the position of ``token``); ``decode`` writes the new key/value at slot ``pos``
(a functional ``where`` over the slots, so the library returns a new cache) and attends over all
``max_cache_len`` slots with the slots after ``pos`` masked. Its cost is therefore set by ``max_cache_len``,
not by the position: decode at position 256 costs what it costs at 16, and nothing is recomputed.

The forward is written here around the model's own modules (embedding, norms, q/k/v/o projections, MLP, LM
head), which are called as they are; what is re-implemented is the attention with the cache and the rotary
embedding (GLM's interleaved partial rotary, or Llama/Qwen2's rotate-half), both checked against the model's
own forward. transformers' own static-cache export (``transformers.integrations.executorch``) exports, but
TVM 0.27 cannot import it: its decomposition fails ("expected compiled_fn to be GraphModule"), and without
decomposition ``index_copy_``, ``to.device`` and ``repeat_interleave.self_int`` are unsupported.

Entry points for the pipeline and the CLI:

- :func:`build_llm` (the pipeline's step for a schedule with a ``generate { ... }`` block, see
  :data:`GENERATE_PARAMS`) and :func:`build_llm_artifact` (a whole artifact folder, without a schedule);
- :func:`add_generate_parser` / :func:`cmd_generate`: ``aglmc generate ARTIFACT --prompt-tokens 1,2,3
  --max-new-tokens N [--board KEY | --target vulkan]``.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from aglmc.dsl.params import Param
from aglmc.errors import ArtifactError, ModelError, TargetError, VerifyError

#: the file of an artifact that describes its LLM libraries
LLM_JSON = "llm.json"
DEFAULT_MAX_CACHE_LEN = 256

#: the settings of a schedule's ``generate { ... }`` block (its presence asks for an LLM build)
GENERATE_PARAMS: Tuple[Param, ...] = (
    Param("max_cache_len", "int", default=DEFAULT_MAX_CACHE_LEN, min=2,
          doc="slots of the key/value cache: the longest prompt plus generated tokens"),
    Param("prompts", "dataset", default=None,
          doc="token prompts [N, L] the build checks greedy generation on (default: the model's example input)"),
    Param("verify_prompts", "int", default=4, min=1, doc="how many of those prompts are checked"),
    Param("new_tokens", "int", default=16, min=1, doc="tokens generated per checked prompt"),
    Param("min_agreement", "float", default=1.0, min=0, max=1,
          doc="the lowest top-1 agreement with PyTorch allowed (teacher-forced, over the generated positions)"),
    Param("text", "dataset", default=None,
          doc="held-out token rows [N, L] whose perplexity the report gives (PyTorch and each library)"),
    Param("tokenizer", "enum", default="none", choices=("none", "bytes"),
          doc="bytes: tokens are UTF-8 bytes, so `aglmc generate --prompt TEXT` works and prints text"),
    Param("rotary", "enum", default="auto", choices=("auto", "interleaved", "half"),
          doc="the rotary layout: interleaved pairs (GLM) or halves (Llama, Qwen2); auto: GLM models interleave"),
    Param("weights", "enum", default="bound", choices=("bound", "shared"),
          doc="bound: weights are constants of both functions (CPU targets may prepack decode's copies: faster "
              "decode, up to 2x weight bytes); shared: stored once, passed to both (host/arm; vulkan binds)"),
)


def generate_defaults() -> Dict[str, Any]:
    return {p.name: p.default for p in GENERATE_PARAMS}


# ---- the decoder, with a cache ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderSpec:
    """What :class:`KVCacheLM` needs to know about a decoder beyond its modules."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rotary: str  # "interleaved" (GLM: adjacent pairs, partial) or "half" (Llama, Qwen2: two halves)
    rotary_dim: int
    attention_scale: float
    rope_scale: float  # transformers' attention_scaling: cos and sin are multiplied by it

    @classmethod
    def of(cls, model, rotary: Optional[str] = None) -> "DecoderSpec":
        """Read the spec off ``model`` (a ``*ForCausalLM``-shaped module: ``model.model.embed_tokens``,
        ``.layers[i].self_attn.{q,k,v,o}_proj``, ``.mlp``, ``.input_layernorm``, ``.post_attention_layernorm``,
        ``model.model.norm``, ``model.model.rotary_emb.inv_freq``, ``model.lm_head``)."""
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, n) for n in needed) or not hasattr(model, "lm_head"):
            raise ModelError(f"{type(model).__name__} is not a decoder aglmc can cache: it needs .model."
                             f"{{{', '.join(needed)}}} and .lm_head (the layout of transformers' *ForCausalLM)")
        config = getattr(model, "config", None)
        layer = base.layers[0]
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise ModelError(f"{type(attn).__name__} has no {name}; aglmc's cached attention needs q/k/v/o")
        for name in ("q_norm", "k_norm"):
            if hasattr(attn, name):
                raise ModelError(f"{type(attn).__name__} normalizes {name[0]} per head ({name}), which aglmc's "
                                 "cached attention does not do yet")
        layer_types = getattr(config, "layer_types", None) or ()
        if any(t != "full_attention" for t in layer_types):
            raise ModelError(f"layer types {sorted(set(layer_types))}: only full attention is supported")
        rope_type = getattr(base.rotary_emb, "rope_type", "default")
        if rope_type in ("dynamic", "longrope"):
            raise ModelError(f"rope type '{rope_type}' changes with the sequence length; not supported")
        inv_freq = base.rotary_emb.inv_freq
        num_heads = int(getattr(config, "num_attention_heads", None) or attn.num_heads)
        num_kv = int(getattr(config, "num_key_value_heads", None) or getattr(attn, "num_kv_heads", num_heads))
        head_dim = int(getattr(config, "head_dim", None) or getattr(attn, "head_dim", None)
                       or attn.q_proj.out_features // num_heads)
        # heads pruned by the schedule's passes: the projections' widths count them (every layer alike)
        widths = {(getattr(a.q_proj, "out_features", None), getattr(a.k_proj, "out_features", None))
                  for a in (layer.self_attn for layer in base.layers)}
        if len(widths) != 1 or None in next(iter(widths)):
            raise ModelError(f"the attention projections of {type(model).__name__} differ between layers "
                             f"(q/k widths {sorted(widths, key=str)}): aglmc's cached attention needs one head count")
        q_width, k_width = next(iter(widths))
        if q_width % head_dim or k_width % head_dim or (q_width // head_dim) % (k_width // head_dim):
            raise ModelError(f"q/k projection widths {q_width}/{k_width} are not whole heads of {head_dim} in groups")
        num_heads, num_kv = q_width // head_dim, k_width // head_dim
        if rotary is None:
            model_type = getattr(config, "model_type", "")
            rotary = "interleaved" if (model_type in ("glm", "glm4") or type(model).__name__.startswith("Glm")) \
                else "half"
        if rotary not in ("interleaved", "half"):
            raise ModelError(f"rotary must be 'interleaved' or 'half', got {rotary!r}")
        return cls(num_layers=len(base.layers), num_heads=num_heads, num_kv_heads=num_kv, head_dim=head_dim,
                   vocab_size=int(model.lm_head.out_features), rotary=rotary, rotary_dim=2 * int(inv_freq.numel()),
                   attention_scale=float(getattr(attn, "scaling", head_dim ** -0.5)),
                   rope_scale=float(getattr(base.rotary_emb, "attention_scaling", 1.0)))


def _logits(out):
    """The logits tensor of a model's output (a tensor, a tuple, or a transformers ModelOutput)."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _torch_module_class():
    import torch

    class KVCacheLM(torch.nn.Module):
        """``model`` with ``prefill`` and ``decode`` over a bounded cache (see the module docstring)."""

        def __init__(self, model, max_cache_len: int = DEFAULT_MAX_CACHE_LEN, rotary: Optional[str] = None):
            super().__init__()
            if int(max_cache_len) < 2:
                raise ModelError(f"max_cache_len must be at least 2, got {max_cache_len}")
            self.model = model.eval()
            self.spec = DecoderSpec.of(model, rotary)
            self.max_cache_len = int(max_cache_len)

        @property
        def cache_shape(self) -> Tuple[int, ...]:
            s = self.spec
            return (s.num_layers, 2, s.num_kv_heads, self.max_cache_len, s.head_dim)

        # -- pieces
        def _rope(self, positions):
            """cos, sin [len(positions), rotary_dim] for float positions."""
            inv_freq = self.model.model.rotary_emb.inv_freq.to(torch.float32)
            freqs = positions[:, None] * inv_freq[None, :]
            if self.spec.rotary == "interleaved":
                freqs = freqs.repeat_interleave(2, dim=-1)
            else:
                freqs = torch.cat((freqs, freqs), dim=-1)
            return freqs.cos() * self.spec.rope_scale, freqs.sin() * self.spec.rope_scale

        def _rotate(self, x, cos, sin):
            """Rotary embedding of ``x`` [heads, seq, head_dim] (only its first ``rotary_dim`` channels)."""
            rd = self.spec.rotary_dim
            x_rot, x_pass = (x[..., :rd], x[..., rd:]) if rd < x.shape[-1] else (x, None)
            if self.spec.rotary == "interleaved":
                turned = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
            else:
                half = rd // 2
                turned = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
            out = x_rot * cos + turned * sin
            return out if x_pass is None else torch.cat((out, x_pass), dim=-1)

        def _qkv(self, attn, h, n, cos, sin):
            # (every reshape here changes the rank: TVM 0.27's frontend compares a same-rank reshape's old and
            # new shapes with ==, which raises on a symbolic length)
            s = self.spec
            q = attn.q_proj(h)[0].view(n, s.num_heads, s.head_dim).transpose(0, 1)       # [H, n, d]
            k = attn.k_proj(h)[0].view(n, s.num_kv_heads, s.head_dim).transpose(0, 1)    # [KV, n, d]
            v = attn.v_proj(h)[0].view(n, s.num_kv_heads, s.head_dim).transpose(0, 1)
            return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

        def _attend(self, q, k, v, mask, n):
            """Grouped-query attention of q [H, n, d] over k, v [KV, m, d]; ``mask`` [n, m] (True: attend).
            Query heads are grouped under their key/value head (head h reads kv head h // groups) and the keys
            broadcast over the group, so the cache is never repeated per query head."""
            s = self.spec
            groups = s.num_heads // s.num_kv_heads
            qg = q.reshape(s.num_kv_heads, groups, n, s.head_dim)
            scores = (qg @ k.unsqueeze(1).transpose(2, 3)) * s.attention_scale     # [KV, G, n, m]
            probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            out = (probs @ v.unsqueeze(1)).reshape(s.num_heads, n, s.head_dim).transpose(0, 1)  # [n, H, d]
            return out.reshape(n, s.num_heads * s.head_dim).unsqueeze(0)

        def _layer_tail(self, layer, x, attn_out):
            post_attn = getattr(layer, "post_self_attn_layernorm", None)  # GLM-4's extra norms
            if post_attn is not None:
                attn_out = post_attn(attn_out)
            x = x + attn_out
            mlp_out = layer.mlp(layer.post_attention_layernorm(x))
            post_mlp = getattr(layer, "post_mlp_layernorm", None)
            if post_mlp is not None:
                mlp_out = post_mlp(mlp_out)
            return x + mlp_out

        def _head(self, x):
            return self.model.lm_head(self.model.model.norm(x))

        # -- entry points
        def prefill(self, tokens):
            """tokens int64 [1, n] -> (logits [1, n, vocab], cache with slots 0..n-1 filled, the rest 0)."""
            n = tokens.shape[1]
            x = self.model.model.embed_tokens(tokens)
            steps = torch.arange(n)
            cos, sin = self._rope(steps.to(torch.float32))
            causal = steps[:, None] >= steps[None, :]
            pad = torch.zeros(2, self.spec.num_kv_heads, self.max_cache_len, self.spec.head_dim)
            caches = []
            for layer in self.model.model.layers:
                attn = layer.self_attn
                q, k, v = self._qkv(attn, layer.input_layernorm(x), n, cos, sin)
                # [2, KV, n, d] placed in slots 0..n-1 of a max_cache_len cache (cat + a static slice: a pad by
                # max_cache_len - n would make torch.export specialize the case n == max_cache_len - 1)
                caches.append(torch.cat((torch.stack((k, v)), pad), dim=2)[:, :, : self.max_cache_len])
                x = self._layer_tail(layer, x, attn.o_proj(self._attend(q, k, v, causal, n)))
            return self._head(x), torch.stack(caches)

        def decode(self, token, cache, pos):
            """token int64 [1, 1], cache, pos int64 [1] -> (logits [1, 1, vocab], cache with slot pos written)."""
            x = self.model.model.embed_tokens(token)
            cos, sin = self._rope(pos.to(torch.float32))
            slots = torch.arange(self.max_cache_len)
            write = (slots == pos)[:, None]          # [max, 1]: the slot this token's key/value goes to
            visible = (slots <= pos)[None, :]        # [1, max]: the slots it attends to
            caches = []
            for i, layer in enumerate(self.model.model.layers):
                attn = layer.self_attn
                q, k, v = self._qkv(attn, layer.input_layernorm(x), 1, cos, sin)
                keys = torch.where(write, k, cache[i, 0])       # [KV, max, d]
                values = torch.where(write, v, cache[i, 1])
                caches.append(torch.stack((keys, values)))
                x = self._layer_tail(layer, x, attn.o_proj(self._attend(q, keys, values, visible, 1)))
            return self._head(x), torch.stack(caches)

    class Prefill(torch.nn.Module):
        """``lm.prefill`` as a module's forward (what torch.export exports)."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, tokens):
            return self.lm.prefill(tokens)

    class Decode(torch.nn.Module):
        """``lm.decode`` as a module's forward."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, token, cache, pos):
            return self.lm.decode(token, cache, pos)

    return KVCacheLM, {"prefill": Prefill, "decode": Decode}


def KVCacheLM(model, max_cache_len: int = DEFAULT_MAX_CACHE_LEN, rotary: Optional[str] = None):
    """``model`` wrapped with ``prefill(tokens)`` and ``decode(token, cache, pos)`` (an ``nn.Module``)."""
    cls, _ = _torch_module_class()
    return cls(model, max_cache_len, rotary).eval()


def prefill_logits(settings: Mapping[str, Any]) -> Callable[[Any, Sequence[np.ndarray]], List[np.ndarray]]:
    """``run(module, [tokens]) -> [logits]`` through :class:`KVCacheLM`'s prefill, in PyTorch: how the rebuilt
    module of a compressed build is checked against the transformed graph (:mod:`aglmc.compiler.transplant`)."""

    def run(module, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        import torch

        s = {**generate_defaults(), **dict(settings)}
        (tokens,) = inputs
        lm = KVCacheLM(module, max(int(s["max_cache_len"]), int(np.shape(tokens)[-1])),
                       rotary=None if s["rotary"] == "auto" else s["rotary"])
        with torch.no_grad():
            logits, _ = lm.prefill(torch.as_tensor(np.asarray(tokens)))
        return [logits.numpy()]

    return run


def export_llm(lm) -> Dict[str, Any]:
    """The ExportedPrograms of ``lm.prefill`` (dynamic length ``n`` in [1, max_cache_len]) and ``lm.decode``."""
    import torch

    _, entries = _torch_module_class()
    example_len = min(8, lm.max_cache_len)
    tokens = torch.zeros(1, example_len, dtype=torch.int64)
    n = torch.export.Dim("n", min=1, max=lm.max_cache_len)
    programs = {}
    with torch.no_grad():
        cache = torch.zeros(lm.cache_shape)
        args = {"prefill": ((tokens,), ({1: n},)),
                "decode": ((torch.zeros(1, 1, dtype=torch.int64), cache, torch.tensor([example_len])), None)}
        for name, (example, dynamic) in args.items():
            try:
                programs[name] = torch.export.export(entries[name](lm).eval(), example, dynamic_shapes=dynamic)
            except Exception as e:
                first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                raise ModelError(f"torch.export could not export {name} of {type(lm.model).__name__}: "
                                 f"{type(e).__name__}: {first}") from e
    return programs


def relax_llm(lm, *, bind: bool = True):
    """One Relax module with ``prefill`` and ``decode`` sharing ``lm``'s weights (``bind``: see
    :func:`aglmc.targets.llm.merge_functions`)."""
    from aglmc.targets.llm import merge_functions

    return merge_functions(relax_imports(lm), bind=bind)


def relax_imports(lm) -> Dict[str, Any]:
    """The two exported programs of ``lm``, each imported to Relax with its weights as parameters."""
    from aglmc.targets.llm import relax_from_program

    return {name: relax_from_program(p, name) for name, p in export_llm(lm).items()}


# ---- PyTorch references ------------------------------------------------------------------------------------
def reference_greedy(model, prompt: Sequence[int], new_tokens: int) -> List[int]:
    """Greedy continuation by the original model, recomputing the whole sequence at every step (no cache)."""
    import torch

    seq = [int(t) for t in prompt]
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = _logits(model(torch.tensor([seq], dtype=torch.int64)))
            token = int(logits[0, -1].argmax())
            out.append(token)
            seq.append(token)
    return out


def reference_logits(model, tokens: Sequence[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _logits(model(torch.tensor([list(tokens)], dtype=torch.int64)))[0].numpy()


def nll(logits: np.ndarray, tokens: Sequence[int]) -> Tuple[float, int]:
    """Sum of negative log-likelihoods of ``tokens[1:]`` under ``logits`` [len, vocab] (row i predicts i+1)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(tokens), -1)[:-1]
    targets = np.asarray(tokens[1:])
    top = logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float((logz - logits[np.arange(len(targets)), targets]).sum()), len(targets)


def perplexity(logits_of: Callable[[Sequence[int]], np.ndarray], rows: np.ndarray) -> float:
    """exp(mean NLL per predicted token) over the rows, with ``logits_of(row) -> [len, vocab]``."""
    total, count = 0.0, 0
    for row in np.asarray(rows):
        s, c = nll(logits_of(list(row)), list(row))
        total, count = total + s, count + c
    return math.exp(total / max(count, 1))


# ---- generation ---------------------------------------------------------------------------------------------
@dataclass
class Generation:
    prompt: List[int]
    tokens: List[int]
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    decode_step_seconds: List[float] = field(default_factory=list)

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt) / self.prefill_seconds if self.prefill_seconds > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> Optional[float]:
        if not self.decode_steps:
            return None
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("inf")


def generate(runner, prompt: Sequence[int], max_new_tokens: int, max_cache_len: int) -> Generation:
    """Greedy decoding with ``runner`` (a runner of :mod:`aglmc.targets.llm`): one prefill of the prompt gives
    the first token, then one decode step per further token."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ArtifactError("the prompt is empty; give at least one token")
    if max_new_tokens < 1:
        raise ArtifactError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if len(prompt) + max_new_tokens - 1 > max_cache_len:
        raise ArtifactError(f"{len(prompt)} prompt tokens + {max_new_tokens} new tokens need "
                            f"{len(prompt) + max_new_tokens - 1} cache slots; this library has {max_cache_len}",
                            hint="shorten the prompt, generate fewer tokens, or build with a larger max_cache_len")
    start = time.perf_counter()
    logits, cache = runner.prefill(prompt)
    token = int(np.asarray(logits).reshape(len(prompt), -1)[-1].argmax())
    prefill_seconds = time.perf_counter() - start
    tokens = [token]
    steps: List[float] = []
    pos = len(prompt)
    for _ in range(max_new_tokens - 1):
        t0 = time.perf_counter()
        logits, cache = runner.decode(token, cache, pos)
        token = int(np.asarray(logits).argmax())
        steps.append(time.perf_counter() - t0)
        tokens.append(token)
        pos += 1
    return Generation(prompt, tokens, prefill_seconds, sum(steps), len(steps), steps)


def time_decode(runner, cache, pos: int, repeats: int = 50, token: int = 0) -> float:
    """Median seconds of one decode step at position ``pos`` (the cache is reused, not advanced)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.decode(token, cache, pos)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---- checks ---------------------------------------------------------------------------------------------------
@dataclass
class LlmCheck:
    """Greedy generation by one library against PyTorch's (full recompute) on the same prompts."""

    target: str
    where: str
    prompts: int
    new_tokens: int
    sequences_equal: int      # prompts whose whole greedy continuation equals PyTorch's
    agreement: float          # top-1 agreement, teacher-forced on PyTorch's continuation (all generated positions)
    max_logit_error: float    # max-abs prefill logits vs PyTorch on prompt + PyTorch's continuation
    first_mismatch: Optional[str] = None
    perplexity: Optional[float] = None
    #: for a build the schedule's passes changed: the same three against the *original* model (what the
    #: compression costs; the fields above compare with the transformed model, i.e. what compiling costs)
    original_sequences_equal: Optional[int] = None
    original_agreement: Optional[float] = None
    original_max_logit_error: Optional[float] = None
    #: the library's greedy continuation of each prompt (not written to llm.json)
    generated: List[List[int]] = field(default_factory=list, repr=False)

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "generated"}


def check_runner(runner, model, prompts: Sequence[Sequence[int]], new_tokens: int, max_cache_len: int,
                 target: str, references: Optional[List[List[int]]] = None,
                 generated: Optional[List[List[int]]] = None) -> LlmCheck:
    """Compare ``runner``'s greedy generation with ``model``'s on ``prompts`` (``generated``: the runner's
    continuations when they are known already, from an earlier check)."""
    equal, agree, total, error = 0, 0, 0, 0.0
    mismatch = None
    outputs = []
    for i, prompt in enumerate(prompts):
        want = references[i] if references is not None else reference_greedy(model, prompt, new_tokens)
        got = generated[i] if generated is not None else generate(runner, prompt, new_tokens, max_cache_len).tokens
        outputs.append(got)
        if got == want:
            equal += 1
        elif mismatch is None:
            at = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
            mismatch = f"prompt {i}, new token {at}: {got[at]} instead of {want[at]}"
        full = list(prompt) + want
        seq = full[: max_cache_len]
        logits, _ = runner.prefill(seq)
        logits = np.asarray(logits).reshape(len(seq), -1)
        ref = reference_logits(model, seq)
        error = max(error, float(np.abs(logits - ref).max()))
        span = slice(len(prompt) - 1, len(seq) - 1)  # the positions that chose the generated tokens
        agree += int((logits[span].argmax(-1) == ref[span].argmax(-1)).sum())
        total += len(seq) - len(prompt)
    return LlmCheck(target, runner.where, len(prompts), new_tokens, equal, agree / max(total, 1), error, mismatch,
                    generated=outputs)


# ---- building ---------------------------------------------------------------------------------------------------
@dataclass
class LlmBuild:
    settings: Dict[str, Any]
    spec: DecoderSpec
    libraries: List[Any]
    checks: List[LlmCheck]
    constants: Dict[str, int]
    weights_bytes: int
    cache_bytes: int
    perplexity_torch: Optional[float] = None
    seconds: Dict[str, float] = field(default_factory=dict)
    #: when the schedule's passes changed the model: the Linears they replaced (module path -> ops), the
    #: perplexity of the transformed PyTorch model, and the original's weights in bytes
    transplanted: Dict[str, List[str]] = field(default_factory=dict)
    perplexity_transformed: Optional[float] = None
    original_weights_bytes: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return {
            "settings": {k: v for k, v in self.settings.items()},
            "spec": asdict(self.spec),
            "max_cache_len": self.settings["max_cache_len"],
            "vocab_size": self.spec.vocab_size,
            "cache_shape": [self.spec.num_layers, 2, self.spec.num_kv_heads, self.settings["max_cache_len"],
                            self.spec.head_dim],
            "tokenizer": self.settings.get("tokenizer", "none"),
            "libraries": {lib.kind: lib.to_json() for lib in self.libraries},
            "constants": self.constants,
            "weights_bytes": self.weights_bytes,
            "cache_bytes": self.cache_bytes,
            "checks": [c.to_json() for c in self.checks],
            "perplexity_torch": self.perplexity_torch,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "transplanted": self.transplanted,
            "perplexity_transformed": self.perplexity_transformed,
            "original_weights_bytes": self.original_weights_bytes,
        }


def _token_rows(array: Optional[np.ndarray], what: str) -> Optional[np.ndarray]:
    if array is None:
        return None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[1] == 1:  # [N, 1, L]: samples of a [1, L] input
        array = array[:, 0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ModelError(f"{what} must be integer token rows [N, L], got {array.dtype}{list(array.shape)}")
    return array.astype(np.int64)


def build_llm(targets: Sequence[Tuple[str, Mapping[str, Any]]], module, stage: Path, settings: Mapping[str, Any], *,
              original=None, transplanted: Optional[Mapping[str, List[str]]] = None,
              datasets: Optional[Mapping] = None, example_tokens: Optional[np.ndarray] = None,
              log: Callable[[str], None] = print) -> LlmBuild:
    """The language-model step of ``aglmc build`` for a schedule with a ``generate { ... }`` block
    (``settings``: that block, resolved against :data:`GENERATE_PARAMS`; ``targets``: (kind, settings) of the
    schedule's targets).

    ``module`` is the ``nn.Module`` to build: the model, with the Linears the schedule's passes changed carried
    back into it (:mod:`aglmc.compiler.transplant`; ``transplanted`` lists them); ``original`` the model before
    the passes (None: ``module`` is it). ``datasets`` are the schedule's loaded data sets (``prompts``/``text``
    name two of them; the first array of each is used as token rows); ``stage`` the artifact staging folder.
    Writes one library per target (the host always) and ``llm.json`` into ``stage``; raises VerifyError when a
    library's greedy tokens agree with the built PyTorch module's less than ``min_agreement``.
    """
    rows = {}
    for key in ("prompts", "text"):
        name = settings.get(key)
        if name:
            dataset = (datasets or {})[name]
            rows[key] = _token_rows(next(iter(dataset.inputs.values())), f"dataset '{name}'")
    return _build(module, stage, [(k, dict(s)) for k, s in targets], settings, rows.get("prompts", example_tokens),
                  rows.get("text"), log, original=original, transplanted=transplanted)


def build_llm_artifact(module, out_dir: Path, targets: Optional[Mapping[str, Mapping[str, Any]]] = None,
                       settings: Optional[Mapping[str, Any]] = None, *, prompts: Optional[np.ndarray] = None,
                       text: Optional[np.ndarray] = None, log: Callable[[str], None] = print) -> LlmBuild:
    """Build an LLM artifact folder for ``module`` without a schedule (tests, examples, notebooks).

    ``targets`` maps target kinds to their settings (default: the host); ``settings`` as a ``generate`` block;
    ``prompts`` token rows [N, L] or a list of token lists; ``text`` token rows [N, L]. The folder gets the
    libraries, ``llm.json``, ``manifest.json`` and ``report.md``, written atomically like ``aglmc build``'s.
    """
    from aglmc.compiler import artifact

    with artifact.staging(Path(out_dir)) as stage:
        build = _build(module, stage, list((targets or {"host": {}}).items()), settings or {}, prompts, text, log)
        artifact.write_json_atomic(stage / artifact.MANIFEST, manifest_json(build))
        artifact.write_text_atomic(stage / artifact.REPORT, "# LLM build\n\n" + render_report(build))
    return build


def _build(module, stage: Path, targets: List[Tuple[str, Dict[str, Any]]], settings: Mapping[str, Any],
           prompts: Optional[np.ndarray], text: Optional[np.ndarray], log, *, original=None,
           transplanted: Optional[Mapping[str, List[str]]] = None) -> LlmBuild:
    from aglmc.compiler import artifact
    from aglmc.targets.llm import build_llm_library, constant_bytes, merge_functions

    s = {**generate_defaults(), **dict(settings)}
    unknown = sorted(set(s) - {p.name for p in GENERATE_PARAMS})
    if unknown:
        raise ModelError(f"unknown generate setting(s): {', '.join(unknown)}")
    max_len = int(s["max_cache_len"])
    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()
    module = module.eval()
    lm = KVCacheLM(module, max_len, rotary=None if s["rotary"] == "auto" else s["rotary"])
    imported = relax_imports(lm)
    mod = merge_functions(imported, bind=True)
    shared = merge_functions(imported, bind=False) if s["weights"] == "shared" else None
    seconds["export and import"] = time.perf_counter() - t0
    log(f"     LLM: prefill + decode, cache {list(lm.cache_shape)}, export and import "
        f"{seconds['export and import']:.1f} s")
    if not any(kind == "host" for kind, _ in targets):
        targets = [("host", {})] + list(targets)
    libraries = []
    for kind, params in targets:
        t0 = time.perf_counter()
        libraries.append(build_llm_library(kind, shared if shared is not None and kind != "vulkan" else mod,
                                           params, stage))
        seconds[f"build {kind}"] = time.perf_counter() - t0
        log(f"     LLM: built {kind} ({libraries[-1].size:,} B) in {seconds[f'build {kind}']:.1f} s")

    prompt_rows = _prompts(prompts, s, max_len, lm.spec.vocab_size)
    new_tokens = min(int(s["new_tokens"]), max_len - max(len(p) for p in prompt_rows) + 1)
    t0 = time.perf_counter()
    compressed = original is not None
    # the PyTorch reference of a compressed build is its cached prefill (full recompute per step): after attention
    # heads were pruned, the module's own forward still reshapes to its config's head count
    reference = _torch_module_class()[1]["prefill"](lm).eval() if compressed else module
    references = [reference_greedy(reference, p, new_tokens) for p in prompt_rows]
    if compressed:
        original = original.eval()
        original_refs = [reference_greedy(original, p, new_tokens) for p in prompt_rows]
    text_rows = _token_rows(text, "text")
    if text_rows is not None:
        text_rows = text_rows[:, :max_len]
    ppl_torch = ppl_transformed = None
    if text_rows is not None:
        ppl_torch = perplexity(lambda r: reference_logits(original if compressed else module, r), text_rows)
        if compressed:
            ppl_transformed = perplexity(lambda r: reference_logits(reference, r), text_rows)
    seconds["reference"] = time.perf_counter() - t0

    checks = []
    for lib, (kind, params) in zip(libraries, targets):
        runner = _runner_for_check(kind, lib, stage, params, log)
        if runner is None:
            continue
        t0 = time.perf_counter()
        try:
            check = check_runner(runner, reference, prompt_rows, new_tokens, max_len, kind, references)
            if compressed:
                against = check_runner(runner, original, prompt_rows, new_tokens, max_len, kind, original_refs,
                                       generated=check.generated)
                check.original_sequences_equal = against.sequences_equal
                check.original_agreement = against.agreement
                check.original_max_logit_error = against.max_logit_error
            if text_rows is not None:
                check.perplexity = perplexity(
                    lambda r, runner=runner: np.asarray(runner.prefill(r)[0]).reshape(len(r), -1), text_rows)
        finally:
            runner.close()
        seconds[f"verify {kind}"] = time.perf_counter() - t0
        checks.append(check)
        log(f"     LLM: {kind} on {check.where}: {check.sequences_equal}/{check.prompts} greedy sequences equal, "
            f"agreement {check.agreement:.4f}"
            + (f" (with the original model before the passes: {check.original_sequences_equal}/{check.prompts}, "
               f"agreement {check.original_agreement:.4f})" if compressed else ""))
        if check.agreement < float(s["min_agreement"]):
            raise VerifyError(f"the {kind} library's greedy tokens agree with PyTorch's on {check.agreement:.2%} "
                              f"of positions, below min_agreement {s['min_agreement']:g} "
                              f"({check.first_mismatch})")

    constants = constant_bytes(shared if shared is not None else mod)
    build = LlmBuild(settings=s, spec=lm.spec, libraries=libraries, checks=checks, constants=constants,
                     weights_bytes=_tensor_bytes(module), cache_bytes=int(np.prod(lm.cache_shape)) * 4,
                     perplexity_torch=ppl_torch, seconds=seconds, transplanted=dict(transplanted or {}),
                     perplexity_transformed=ppl_transformed,
                     original_weights_bytes=_tensor_bytes(original) if compressed else None)
    artifact.write_json_atomic(Path(stage) / LLM_JSON, build.to_json())
    return build


def _tensor_bytes(module) -> int:
    """Bytes of a module's state: parameters and persistent buffers (a tied tensor once; int4/int8 weights, which
    the passes store as buffers, at their size)."""
    tensors = {id(t): t for t in module.state_dict(keep_vars=True).values()}
    return sum(int(t.numel()) * t.element_size() for t in tensors.values())


def _prompts(rows, s: Mapping[str, Any], max_len: int, vocab: int) -> List[List[int]]:
    """The prompts the build checks: the given token rows (an array [N, L] or a list of token lists), else
    seeded random tokens (8 per prompt)."""
    if rows is None:
        rows = np.random.default_rng(0).integers(0, vocab, size=(int(s["verify_prompts"]), 8))
    elif isinstance(rows, np.ndarray) or hasattr(rows, "numpy"):
        rows = _token_rows(np.asarray(rows), "prompts")
    rows = list(rows)[: int(s["verify_prompts"])]
    longest = max(1, max_len - 1)  # room for at least two generated tokens
    return [[int(t) for t in row[:longest]] for row in rows]


def _runner_for_check(kind: str, lib, stage: Path, params: Mapping[str, Any], log):
    from aglmc.targets import llm as tl

    if kind == "host":
        return tl.HostLlmRunner(Path(stage) / lib.files["prefill"], threads=params.get("threads"))
    if kind == "arm":
        board = params.get("board")
        return tl.BoardLlmRunner(Path(stage) / lib.files["prefill"], board) if board else None
    if kind == "vulkan":
        try:
            return tl.VulkanLlmRunner(Path(stage) / lib.files["prefill"], Path(stage) / lib.files["decode"])
        except TargetError as e:
            if "no Vulkan adapter" not in e.message:
                raise
            log(f"     LLM: vulkan not checked: {e.message}")
            return None
    return None


def manifest_json(build: LlmBuild) -> Dict[str, Any]:
    """A manifest for :func:`build_llm_artifact`'s folders (``aglmc run``-style library lookups work on it)."""
    import aglmc
    from aglmc.compiler.pipeline import tool_versions

    targets = []
    for lib in build.libraries:
        for name in sorted(set(lib.files.values())):
            targets.append({"kind": lib.kind, "library": name})
    return {"aglmc": aglmc.__version__, "kind": "llm", "targets": targets, "llm": LLM_JSON,
            "tools": tool_versions()}


def render_report(build: LlmBuild) -> str:
    """The LLM section of report.md (markdown)."""
    s = build.spec
    c = build.constants
    lines = [
        (f"Decoder: {s.num_layers} layers, {s.num_heads} query / {s.num_kv_heads} key-value heads of {s.head_dim}, "
         f"vocabulary {s.vocab_size}, {s.rotary} rotary on {s.rotary_dim} channels."),
        f"Cache: {build.settings['max_cache_len']} slots, {build.cache_bytes:,} B. Weights: {build.weights_bytes:,} B.",
        (f"Weights `{build.settings['weights']}`: "
         + ("bound as constants of both functions; a constant both use is stored once "
            f"({c.get('unique', 0):,} B in the merged module; prefill uses {c.get('prefill', 0):,} B, decode "
            f"{c.get('decode', 0):,} B), but CPU targets prepack the weights of decode's matmuls into packed "
            "copies (about the weights' size again) for a faster decode."
            if build.settings["weights"] == "bound" else
            f"stored once ({c.get('unique', 0):,} B, returned by the library's `weights()`) and passed to "
            "prefill and decode on every call: one copy in the library and in memory, never repacked "
            "(vulkan binds them into each of its two artifacts).")),
        "",
        "| target | file(s) | size |",
        "|---|---|---|",
    ]
    for lib in build.libraries:
        lines.append(f"| {lib.kind} | {', '.join(sorted(set(lib.files.values())))} | {lib.size:,} B |")
    lines += ["", "| target | where | greedy sequences equal | top-1 agreement | max logit error | perplexity |",
              "|---|---|---|---|---|---|"]
    for check in build.checks:
        ppl = f"{check.perplexity:.3f}" if check.perplexity is not None else "—"
        lines.append(f"| {check.target} | {check.where} | {check.sequences_equal}/{check.prompts} "
                     f"({check.new_tokens} tokens each) | {check.agreement:.4f} | {check.max_logit_error:.3g} "
                     f"| {ppl} |")
    if build.perplexity_torch is not None:
        lines.append(f"\nPyTorch perplexity on the held-out text: {build.perplexity_torch:.3f}"
                     + (f" (original model); {build.perplexity_transformed:.3f} after the schedule's passes"
                        if build.perplexity_transformed is not None else ""))
    if build.transplanted:
        lines += ["", f"The schedule's passes changed {len(build.transplanted)} Linear(s); the libraries above were "
                  "built from the model with those Linears replaced as the passes left them (the table compares "
                  "each library with that transformed PyTorch model). Against the original model, before the "
                  "passes:", "",
                  "| target | greedy sequences equal | top-1 agreement | max logit error |", "|---|---|---|---|"]
        for check in build.checks:
            if check.original_agreement is not None:
                lines.append(f"| {check.target} | {check.original_sequences_equal}/{check.prompts} | "
                             f"{check.original_agreement:.4f} | {check.original_max_logit_error:.3g} |")
        if build.original_weights_bytes:
            lines.append(f"\nWeights: {build.original_weights_bytes:,} B before the passes, {build.weights_bytes:,} B "
                         "after (as PyTorch tensors; the libraries' sizes are above).")
        lines += ["", "| Linear | replaced by |", "|---|---|"]
        lines += [f"| `{path}` | {' → '.join(ops)} |" for path, ops in sorted(build.transplanted.items())]
    return "\n".join(lines) + "\n"


# ---- aglmc generate --------------------------------------------------------------------------------------------
def read_llm_json(artifact_dir: Path) -> Dict[str, Any]:
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / LLM_JSON
    if not artifact_dir.is_dir():
        raise ArtifactError(f"{artifact_dir} is not a folder", hint="pass the folder an LLM build wrote")
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {LLM_JSON}: it is not a language-model build",
                            hint="build with a `generate { max_cache_len = ... }` block in the schedule")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e


def open_runner(artifact_dir: Path, info: Mapping[str, Any], *, target: str = "host", board: Optional[str] = None,
                threads: Optional[int] = None, timeout: float = 300.0):
    """The runner of an LLM artifact's library: the host's, a board's (arm) or this machine's Vulkan device."""
    from aglmc.targets import llm as tl

    libraries = info.get("libraries", {})
    kind = "arm" if board else target
    if kind not in libraries:
        raise ArtifactError(f"{artifact_dir} has no {kind} library (it has: {', '.join(libraries) or 'none'})",
                            hint=f"add `target {kind}` to the schedule and build again")
    files = {name: Path(artifact_dir) / f for name, f in libraries[kind]["files"].items()}
    if kind == "host":
        return tl.HostLlmRunner(files["prefill"], threads=threads)
    if kind == "arm":
        return tl.BoardLlmRunner(files["prefill"], board, timeout=timeout)
    if kind == "vulkan":
        return tl.VulkanLlmRunner(files["prefill"], files["decode"])
    raise ArtifactError(f"aglmc generate runs host, arm (--board) or vulkan libraries, not {kind}")


def add_generate_parser(sub) -> None:
    """Add ``aglmc generate`` to the CLI's sub-parsers (``sub``: ``ArgumentParser.add_subparsers()``)."""
    g = sub.add_parser("generate", help="greedy text generation with an LLM artifact (prefill + decode)",
                       description="Run an LLM artifact's prefill on the prompt and its decode step for every "
                                   "further token (greedy), on the host, on an ARM board or on this machine's "
                                   "Vulkan device; print the tokens, tokens/s of prefill and of decode, and "
                                   "the peak memory of this process.")
    g.add_argument("artifact", type=Path, help="the folder an LLM build wrote (it has llm.json)")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-tokens", metavar="T1,T2,...", help="the prompt as comma-separated token ids")
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt as text (byte-token models only)")
    g.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--board", metavar="KEY|KEY@HOST:PORT|HOST:PORT", help="run the arm library on this board")
    where.add_argument("--target", default="host", choices=("host", "vulkan"),
                       help="host (default) or vulkan (this machine's Vulkan device)")
    g.add_argument("--threads", type=int, metavar="N", help="host threads (default: the runtime's)")
    g.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed generations before the timed one (default 1)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="board timeout (default 300)")


def _parse_prompt(args, info: Mapping[str, Any]) -> List[int]:
    vocab = int(info.get("vocab_size", 0))
    if args.prompt is not None:
        if info.get("tokenizer") != "bytes":
            raise ArtifactError("--prompt needs a byte-token model (tokenizer = bytes); this one takes token ids",
                                hint="use --prompt-tokens 1,2,3")
        return list(args.prompt.encode("utf-8"))
    try:
        tokens = [int(t) for t in args.prompt_tokens.replace(" ", "").split(",") if t]
    except ValueError:
        raise ArtifactError(f"--prompt-tokens must be comma-separated integers, got {args.prompt_tokens!r}") from None
    bad = [t for t in tokens if t < 0 or (vocab and t >= vocab)]
    if bad:
        raise ArtifactError(f"token(s) {', '.join(map(str, bad[:5]))} are outside the vocabulary [0, {vocab})")
    return tokens


def _rss_mib() -> float:
    """This process's current resident set size."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cmd_generate(args) -> int:
    """``aglmc generate``: greedy generation; prints tokens, prefill and decode tokens/s, peak memory."""
    info = read_llm_json(args.artifact)
    prompt = _parse_prompt(args, info)
    max_len = int(info["max_cache_len"])
    import aglmc.targets.llm  # noqa: F401  (TVM's runtime: counted in the baseline, not in the model's memory)

    rss_before = _rss_mib()
    runner = open_runner(args.artifact, info, target=args.target, board=args.board, threads=args.threads,
                         timeout=args.timeout)
    try:
        for _ in range(max(0, args.warmup)):
            generate(runner, prompt, min(args.max_new_tokens, 2), max_len)
        result = generate(runner, prompt, args.max_new_tokens, max_len)
    finally:
        runner.close()
    where = runner.where + (f", {runner.threads} thread(s)" if hasattr(runner, "threads") else "")
    print(f"ran on {where}")
    print(f"prompt ({len(prompt)} tokens): {','.join(map(str, prompt))}")
    print(f"generated ({len(result.tokens)} tokens): {','.join(map(str, result.tokens))}")
    if info.get("tokenizer") == "bytes":
        print(f"text: {bytes(prompt).decode('utf-8', 'replace')!r} + "
              f"{bytes(t for t in result.tokens if t < 256).decode('utf-8', 'replace')!r}")
    print(f"prefill: {len(prompt)} tokens in {1000 * result.prefill_seconds:.3f} ms, "
          f"{result.prefill_tokens_per_s:,.1f} tokens/s")
    if result.decode_steps:
        print(f"decode: {result.decode_steps} tokens in {1000 * result.decode_seconds:.3f} ms, "
              f"{result.decode_tokens_per_s:,.1f} tokens/s ({1000 * result.decode_seconds / result.decode_steps:.3f}"
              f" ms/token)")
    else:
        print("decode: no steps (--max-new-tokens 1: the prefill gave the only token)")
    peak, grown = _peak_rss_mib(), _rss_mib() - rss_before
    line = (f"peak memory (RSS of this process): {peak:.1f} MiB; loading the library and generating added "
            f"{max(grown, 0.0):.1f} MiB to the process with TVM's runtime loaded")
    if args.board:
        line += " (the board's own memory is not measured: the library runs there)"
    print(line)
    print(f"model memory: weights {info.get('weights_bytes', 0) / 2 ** 20:.2f} MiB, cache "
          f"{info.get('cache_bytes', 0) / 2 ** 20:.2f} MiB ({max_len} slots)")
    return 0


# ---- python -m aglmc.compiler.llm: build and generate before the schedule and CLI wiring -------------------------
def _factory(text: str):
    """Call ``file.py:function`` (its folder on sys.path while it is imported)."""
    import importlib.util
    import sys

    path, _, name = text.rpartition(":")
    if not path or not name:
        raise ArtifactError(f"expected FILE.py:FUNCTION, got {text!r}")
    file = Path(path).resolve()
    if not file.is_file():
        raise ArtifactError(f"no such file: {file}")
    module_name = f"aglmc_llm_user_{file.stem}_{abs(hash(str(file)))}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(file.parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(file.parent))
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ArtifactError(f"{file.name} has no function {name!r}")
    return fn()


def _rows_of(value) -> np.ndarray:
    if isinstance(value, dict):
        value = next(iter(value.values()))
    return np.asarray(value)


def cmd_build_llm(args) -> int:
    """``python -m aglmc.compiler.llm build MODEL.py:FN --out DIR ...``: an LLM artifact without a schedule."""
    produced = _factory(args.model)
    module = produced[0] if isinstance(produced, tuple) else produced
    settings = {"max_cache_len": args.max_cache_len, "tokenizer": args.tokenizer, "weights": args.weights}
    targets = {kind: {} for kind in (args.target or ["host"])}
    for setting in args.setting or []:
        kind, _, rest = setting.partition(".")
        key, _, value = rest.partition("=")
        targets.setdefault(kind, {})[key] = int(value) if value.lstrip("-").isdigit() else value
    build = build_llm_artifact(module, args.out, targets, settings,
                               prompts=_rows_of(_factory(args.prompts)) if args.prompts else None,
                               text=_rows_of(_factory(args.text)) if args.text else None,
                               log=lambda m: print(m, flush=True))
    print(render_report(build), end="")
    print(f"wrote {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import sys

    from aglmc.errors import AglmcError

    parser = argparse.ArgumentParser(prog="python -m aglmc.compiler.llm",
                                     description="LLM builds and generation (until `aglmc` wires them).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an LLM artifact (prefill + decode) from MODEL.py:FUNCTION")
    b.add_argument("model", help="FILE.py:FUNCTION returning an nn.Module or (module, example inputs)")
    b.add_argument("--out", "-o", type=Path, required=True)
    b.add_argument("--target", action="append", choices=("host", "arm", "vulkan"), help="repeatable; default host")
    b.add_argument("--set", dest="setting", action="append", metavar="KIND.KEY=VALUE",
                   help="a target setting, e.g. host.threads=1 or arm.board=KEY@HOST:PORT (repeatable)")
    b.add_argument("--max-cache-len", type=int, default=DEFAULT_MAX_CACHE_LEN)
    b.add_argument("--prompts", metavar="FILE.py:FUNCTION", help="token prompts [N, L] to check generation on")
    b.add_argument("--text", metavar="FILE.py:FUNCTION", help="held-out token rows [N, L] for perplexity")
    b.add_argument("--tokenizer", choices=("none", "bytes"), default="none")
    b.add_argument("--weights", choices=("bound", "shared"), default="bound",
                   help="bound: constants of both functions (CPU targets prepack decode's copies); shared: stored "
                        "once and passed to both")
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return cmd_build_llm(args) if args.command == "build" else cmd_generate(args)
    except AglmcError as e:
        print(e.render(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
