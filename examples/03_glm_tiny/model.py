"""A tiny GLM-style decoder written with plain ``torch.nn``: the shape of GLM-4 at toy size.

What makes it GLM-style (and what a compiler has to get right):

- RMSNorm before attention and before the MLP, and once more before the LM head;
- grouped-query attention (4 query heads share 2 key/value heads) with a bias on the q/k/v projections;
- *partial, interleaved* rotary embeddings: only the first half of each head's channels are rotated, and they
  are rotated in adjacent pairs ``(x0, x1), (x2, x3), ...`` rather than as two halves (Llama's layout);
- a SwiGLU MLP whose gate and up projections are one fused ``gate_up_proj`` matrix;
- an LM head that is its own matrix (``tie_word_embeddings=False``, GLM's default) or the embedding's.

Module names follow transformers' ``GlmForCausalLM``, so ``GlmTiny.state_dict()`` loads into that class with
the matching config (``tests/test_library_models.py`` checks the two agree).

``build()`` is the model factory a schedule names: ``(model.eval(), (input_ids,))`` with seeded weights and
``input_ids`` int64 ``[1, 32]``. The model returns logits ``[1, 32, vocab]`` for the whole prompt (prefill,
no KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GlmTinyConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 128


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class RotaryEmbedding(nn.Module):
    """cos / sin tables for the rotated part of a head: ``rotary_dim = head_dim * partial_rotary_factor``."""

    def __init__(self, cfg: GlmTinyConfig):
        super().__init__()
        self.rotary_dim = int(cfg.head_dim * cfg.partial_rotary_factor)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float32)
                                             / self.rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int):
        positions = torch.arange(seq_len, dtype=torch.float32, device=self.inv_freq.device)
        freqs = positions[:, None] * self.inv_freq[None, :]          # [seq, rotary_dim / 2]
        # interleaved layout: pair i (channels 2i, 2i+1) turns by freqs[:, i]
        freqs = freqs.repeat_interleave(2, dim=-1)                    # [seq, rotary_dim]
        return freqs.cos(), freqs.sin()


def rotate_pairs(x):
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: a quarter turn of each adjacent pair."""
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_partial_rotary(x, cos, sin):
    """Rotate the first ``cos.shape[-1]`` channels of every head of ``x`` [b, heads, seq, head_dim]."""
    rotary_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x_rot = x_rot * cos + rotate_pairs(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GlmTinyConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, causal_mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_partial_rotary(q, cos, sin)
        k = apply_partial_rotary(k, cos, sin)
        # grouped-query attention: each key/value head serves num_heads / num_kv_heads query heads
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.masked_fill(~causal_mask, float("-inf"))
        out = F.softmax(scores, dim=-1) @ v                           # [b, heads, seq, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GlmTinyConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GlmTinyConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, causal_mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, causal_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class GlmTinyModel(nn.Module):
    def __init__(self, cfg: GlmTinyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)

    def forward(self, input_ids):
        seq_len = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(seq_len)
        causal_mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=input_ids.device).tril()
        for layer in self.layers:
            x = layer(x, cos, sin, causal_mask)
        return self.norm(x)


class GlmTiny(nn.Module):
    """Token ids [batch, seq] (int64) -> next-token logits [batch, seq, vocab]."""

    def __init__(self, cfg: GlmTinyConfig = GlmTinyConfig()):
        super().__init__()
        self.config = cfg
        self.model = GlmTinyModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids):
        return self.lm_head(self.model(input_ids))


def init_weights(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Seeded random weights: normal(0, std) matrices and biases, RMSNorm gains near 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm head is listed once
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def build(seed: int = 0, seq_len: int = 32, tie_word_embeddings: bool = False):
    """The schedule's model factory: ``(model.eval(), (input_ids,))``, input_ids int64 ``[1, seq_len]``."""
    model = init_weights(GlmTiny(GlmTinyConfig(tie_word_embeddings=tie_word_embeddings)), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=gen, dtype=torch.int64)
    return model.eval(), (input_ids,)
