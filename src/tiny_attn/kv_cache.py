"""Week 5, Day 1: the KV cache of a decoding model.

Book: book/src/week5-01-decoding-kv-cache.md

Generating token t + 1 needs the keys and values of tokens 0 .. t, which never change once
computed. A KV cache keeps them: preallocated for `capacity` tokens, filled as tokens come,
and read as a view of its live part, so a decode step neither recomputes nor copies them.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from tiny_attn_contracts import check_cache_dtype, check_int

_CHAPTER = "book/src/week5-01-decoding-kv-cache.md"


def _todo(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what} is not implemented yet: see {_CHAPTER}, Task 1")


class KVCache:
    """Keys and values of `batch` sequences, `num_heads` key/value heads, up to `capacity`
    tokens of `head_dim` numbers each; all sequences advance together."""

    def __init__(
        self,
        batch: int,
        num_heads: int,
        capacity: int,
        head_dim: int,
        dtype: Any = mx.float32,
    ) -> None:
        for n, name in ((batch, "batch"), (num_heads, "num_heads"), (capacity, "capacity")):
            check_int(n, name)
        check_int(head_dim, "head_dim")
        check_cache_dtype(dtype)
        # TODO(Task 1): two zero buffers (batch, num_heads, capacity, head_dim) of dtype,
        #   evaluated now; self.capacity, self.length = 0.
        raise _todo("KVCache")

    def append(self, keys: mx.array, values: mx.array) -> None:
        """Add T tokens: keys and values of shape (batch, num_heads, T, head_dim)."""
        # TODO(Task 1): check_cache_append and check_capacity (tiny_attn_contracts), then write
        #   the tokens into slots length .. length + T of both buffers.
        raise _todo("KVCache.append")

    @property
    def keys(self) -> mx.array:
        """(batch, num_heads, length, head_dim): a view of the live part, no copy."""
        raise _todo("KVCache.keys")

    @property
    def values(self) -> mx.array:
        """(batch, num_heads, length, head_dim): a view of the live part, no copy."""
        raise _todo("KVCache.values")

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (both buffers, whole capacity): what it costs in memory."""
        raise _todo("KVCache.nbytes")
