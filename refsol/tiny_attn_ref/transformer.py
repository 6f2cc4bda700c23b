"""Week 4, Day 5: a small decoder-only transformer that trains with your FlashAttention.

Book: book/src/week4-05-training.md

    tokens (B, L) -> embedding + position -> num_layers x [x + attention(norm(x)),
    x + mlp(norm(x))] -> norm -> logits (B, L, vocab)

The attention of every layer is causal self-attention, computed by Week 1's naive
scaled_dot_product_attention ("naive") or by the C++ flash_attention ("flash"), whose vjp runs the
Day 3 backward kernel. Both paths have the same parameters, so one set of weights runs on either.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .flash_attention import flash_attention
from .masks import scaled_dot_product_attention
from .multihead import merge_heads, split_heads

ATTENTIONS = ("naive", "flash")


def _check_attention(attention: Any) -> None:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one projection for Q, K and V, one for the output."""

    def __init__(self, dims: int, num_heads: int, attention: str = "flash") -> None:
        super().__init__()
        if dims % num_heads != 0:
            raise ValueError(f"dims ({dims}) must be a multiple of num_heads ({num_heads})")
        _check_attention(attention)
        self.num_heads = num_heads
        self.attention = attention
        self.qkv = nn.Linear(dims, 3 * dims, bias=False)
        self.out = nn.Linear(dims, dims, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, L, dims) -> (B, L, dims); position i attends to positions 0 .. i."""
        q, k, v = mx.split(self.qkv(x), 3, axis=-1)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))  # (B, H, L, E)
        if self.attention == "flash":
            o = flash_attention(q, k, v, mask="causal")
        else:
            o = scaled_dot_product_attention(q, k, v, mask="causal")
        return self.out(merge_heads(o))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a two-layer MLP, each with a residual."""

    def __init__(self, dims: int, num_heads: int, attention: str = "flash") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dims)
        self.attn = CausalSelfAttention(dims, num_heads, attention)
        self.norm2 = nn.LayerNorm(dims)
        self.mlp = nn.Sequential(nn.Linear(dims, 4 * dims), nn.GELU(), nn.Linear(4 * dims, dims))

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A decoder-only character model: tokens (B, L) -> next-token logits (B, L, vocab_size)."""

    def __init__(
        self,
        vocab_size: int,
        dims: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        max_len: int = 256,
        attention: str = "flash",
    ) -> None:
        super().__init__()
        _check_attention(attention)
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dims)
        self.position = nn.Embedding(max_len, dims)
        self.blocks = [Block(dims, num_heads, attention) for _ in range(num_layers)]
        self.norm = nn.LayerNorm(dims)
        self.head = nn.Linear(dims, vocab_size, bias=False)

    def set_attention(self, attention: str) -> None:
        """Switch every layer to "naive" or "flash" attention; the weights stay."""
        _check_attention(attention)
        for block in self.blocks:
            block.attn.attention = attention

    def __call__(self, tokens: mx.array) -> mx.array:
        if tokens.ndim != 2 or not mx.issubdtype(tokens.dtype, mx.integer):
            raise ValueError(
                f"tokens must be a (B, L) integer array, got shape {tuple(tokens.shape)} "
                f"and dtype {tokens.dtype}"
            )
        L = tokens.shape[1]
        if not 1 <= L <= self.max_len:
            raise ValueError(f"tokens' length L must be in [1, max_len={self.max_len}], got {L}")
        # An id past the embedding table would be read from outside it: refused here.
        vocab_size = self.embed.weight.shape[0]
        lo, hi = mx.min(tokens).item(), mx.max(tokens).item()
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"tokens must be token ids in [0, {vocab_size}), got ids from {lo} to {hi}"
            )
        x = self.embed(tokens) + self.position(mx.arange(L))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def lm_loss(model: Transformer, tokens: mx.array) -> mx.array:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1] (a scalar)."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (B, L) with L >= 2, got shape {tuple(tokens.shape)}")
    logits = model(tokens[:, :-1])
    return nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean")


def generate(
    model: Transformer, prompt: list[int], n: int, temperature: float = 1.0, seed: int = 0
) -> list[int]:
    """The prompt followed by n sampled tokens (the model sees at most its last max_len).

    temperature 0 picks the most likely token; otherwise softmax(logits / temperature) is
    sampled with the random key of `seed`. Token ids must lie in [0, vocab_size).
    """
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"prompt must be a non-empty list of token ids, got {prompt!r}")
    vocab_size = model.embed.weight.shape[0]
    if any(
        isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size for t in prompt
    ):
        # An id past the embedding table would be read from outside it: refused here.
        raise ValueError(f"prompt must hold token ids in [0, {vocab_size}), got {prompt!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    key = mx.random.key(seed)
    tokens = list(prompt)
    for _ in range(n):
        context = mx.array([tokens[-model.max_len :]])
        logits = model(context)[0, -1]
        if temperature == 0:
            nxt = int(mx.argmax(logits))
        else:
            key, sub = mx.random.split(key)
            nxt = int(mx.random.categorical(logits / temperature, key=sub))
        tokens.append(nxt)
    return tokens
