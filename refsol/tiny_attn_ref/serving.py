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

import time
from typing import Any

import mlx.core as mx

from tiny_attn_contracts import (
    check_decode_step,
    check_generate_args,
    check_generator_model,
    check_prefill_prompt,
)

from .flash_attention import _extension, flash_attention
from .multihead import merge_heads, split_heads
from .paged_kv_cache import PagedKVCache
from .transformer import Block, Transformer


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
        model = self.model
        L = len(prompt)
        x = model.embed(mx.array([prompt])) + model.position(mx.arange(L))  # (1, L, dims)
        seq = -1
        for block, cache in zip(model.blocks, self.caches, strict=True):
            q, k, v = self._qkv(block, x)
            seq = cache.new_sequence()  # the same id in every layer: they advance together
            cache.append(seq, k[0], v[0])
            o = flash_attention(q, k, v, mask="causal", stream=self.stream)
            x = self._finish_block(block, x, o)
        return seq, model.head(model.norm(x))[0, -1]

    # ------------------------------------------------------------ Task 2: one decode step
    def decode_step(self, seqs: list[int], tokens: list[int]) -> mx.array:
        """Feed tokens[b] to sequence seqs[b], all at once. Returns the logits (B, vocab)."""
        V, max_len = self.model.embed.weight.shape[0], self.model.max_len
        check_decode_step(seqs, tokens, self.caches[0].length, V, max_len)
        model, ext = self.model, _extension()
        positions = mx.array([self.caches[0].length(s) for s in seqs])
        x = model.embed(mx.array(tokens)[:, None]) + model.position(positions)[:, None, :]
        for block, cache in zip(model.blocks, self.caches, strict=True):
            q, k, v = self._qkv(block, x)  # (B, H, 1, E)
            for b, s in enumerate(seqs):
                cache.append(s, k[b], v[b])
            o = ext.paged_decode_attention(
                q,
                cache.k_pages,
                cache.v_pages,
                cache.block_table(seqs),
                cache.seq_lens(seqs),
                stream=self.stream,
            )
            x = self._finish_block(block, x, o)
        return model.head(model.norm(x))[:, 0, :]

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
        stats = {"prefill_s": 0.0, "prefill_tokens": 0, "decode_s": 0.0, "decode_tokens": 0}
        outputs = [list(p) for p in prompts]
        if max_new_tokens == 0:
            self.stats = stats
            return outputs
        t = time.perf_counter()
        seqs, nxt = [], []
        for prompt in prompts:
            seq, logits = self.prefill(prompt)
            seqs.append(seq)
            nxt.append(int(mx.argmax(logits)))
        stats["prefill_s"] = time.perf_counter() - t
        stats["prefill_tokens"] = sum(len(p) for p in prompts)
        t = time.perf_counter()
        try:
            for step in range(max_new_tokens):
                for out, token in zip(outputs, nxt, strict=True):
                    out.append(token)
                if step + 1 == max_new_tokens:
                    break
                logits = self.decode_step(seqs, nxt)
                nxt = [int(i) for i in mx.argmax(logits, axis=-1).tolist()]
                if on_step is not None:
                    on_step(step + 1, max_new_tokens)
        finally:
            for cache in self.caches:
                for s in seqs:
                    cache.free(s)
        stats["decode_s"] = time.perf_counter() - t
        stats["decode_tokens"] = len(prompts) * (max_new_tokens - 1)
        self.stats = stats
        return outputs
