"""Week 5, Day 5: serve a model: prefill with FlashAttention, decode through a paged KV cache.

Book: book/src/week5-05-serving.md

Week 4's `generate` runs the whole context through the model for every new token: step t
recomputes the keys and values of the t tokens before it. A server keeps them instead:

    prefill   the prompt through the model once, causal flash_attention (Week 2 / Week 3
              kernels), each layer's K and V appended to that layer's paged cache (Day 3);
    decode    one token per sequence per step, for every running sequence at once: its new K
              and V appended, its one query row against the cache by paged_decode_attention
              (Days 1-3), one dispatch for the whole batch whatever the lengths.

The weights are those of a Week 4 `Transformer`; greedy decoding gives exactly the tokens of
Week 4's `generate(..., temperature=0)`.
"""

from __future__ import annotations

import time  # noqa: F401  (you will need it)
from typing import Any

import mlx.core as mx

from tiny_attn_contracts import (
    check_decode_step,
    check_generate_args,
    check_generator_model,
    check_prefill_prompt,
)

from .flash_attention import _extension, flash_attention  # noqa: F401  (you will need them)
from .multihead import merge_heads, split_heads
from .paged_kv_cache import PagedKVCache
from .transformer import Block, Transformer

_CHAPTER = "book/src/week5-05-serving.md"


class Generator:
    """Greedy generation with a Week 4 Transformer over one paged KV cache per layer."""

    def __init__(
        self, model: Transformer, *, num_pages: int = 512, page_size: int = 16, stream: Any = None
    ) -> None:
        check_generator_model(model, Transformer)
        self.model = model
        self.stream = stream  # None: the CPU kernels; mx.gpu: the Metal kernels
        H = model.blocks[0].attn.num_heads
        E = model.embed.weight.shape[1] // H
        self.caches = [PagedKVCache(num_pages, page_size, H, E) for _ in model.blocks]
        # What the last generate() did, for tokens/s: seconds and tokens of each phase.
        self.stats = {"prefill_s": 0.0, "prefill_tokens": 0, "decode_s": 0.0, "decode_tokens": 0}

    def _qkv(self, block: Block, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """The block's attention input projected and split into (B, H, L, E) heads."""
        q, k, v = mx.split(block.attn.qkv(block.norm1(x)), 3, axis=-1)
        return tuple(split_heads(t, block.attn.num_heads) for t in (q, k, v))

    def _finish_block(self, block: Block, x: mx.array, o: mx.array) -> mx.array:
        """The rest of the block after attention: output projection, residuals, the MLP."""
        x = x + block.attn.out(merge_heads(o))
        return x + block.mlp(block.norm2(x))

    # ------------------------------------------------------------ Task 1: prefill
    def prefill(self, prompt: list[int]) -> tuple[int, mx.array]:
        """Run `prompt` through the model, storing every layer's keys and values in a new
        sequence of its cache. Returns (the sequence id, the logits (vocab,) of the next token)."""
        check_prefill_prompt(prompt, self.model.embed.weight.shape[0], self.model.max_len)
        # TODO(Task 1): embeddings + positions of the prompt (1, L, dims); for each block and its
        #   cache: self._qkv, a new sequence appended with this layer's K and V (H, L, E),
        #   causal flash_attention (stream=self.stream), self._finish_block. The logits of the
        #   last position: model.head(model.norm(x))[0, -1].
        raise NotImplementedError(
            f"Generator.prefill is not implemented yet: see {_CHAPTER}, Task 1"
        )

    # ------------------------------------------------------------ Task 2: one decode step
    def decode_step(self, seqs: list[int], tokens: list[int]) -> mx.array:
        """Feed tokens[b] to sequence seqs[b], all at once. Returns the logits (B, vocab)."""
        V, max_len = self.model.embed.weight.shape[0], self.model.max_len
        check_decode_step(seqs, tokens, self.caches[0].length, V, max_len)
        # TODO(Task 2): the tokens at their positions (the cache's length of each sequence),
        #   (B, 1, dims); for each block: self._qkv, each sequence's new K and V appended, then
        #   _extension().paged_decode_attention over the cache's pages, block table and lengths
        #   (stream=self.stream), self._finish_block. Logits (B, vocab).
        raise NotImplementedError(
            f"Generator.decode_step is not implemented yet: see {_CHAPTER}, Task 2"
        )

    # ------------------------------------------------------------ Task 3: the loop
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, on_step: Any = None
    ) -> list[list[int]]:
        """Greedy generation: each prompt followed by `max_new_tokens` tokens.

        Every prompt is prefilled, then all sequences decode together, one token per step;
        their pages go back to the pool at the end. `on_step(step, max_new_tokens)`, if given,
        is called after each decode step (progress output).
        """
        check_generate_args(
            prompts, max_new_tokens, self.model.max_len, self.model.embed.weight.shape[0]
        )
        # TODO(Task 3): prefill every prompt (its first new token: the argmax of the logits),
        #   then decode_step all sequences together until each has max_new_tokens new tokens;
        #   free the sequences of every cache at the end (also on an error); fill self.stats
        #   (prefill_s, prefill_tokens, decode_s, decode_tokens: B * (max_new_tokens - 1)).
        raise NotImplementedError(
            f"Generator.generate is not implemented yet: see {_CHAPTER}, Task 3"
        )
