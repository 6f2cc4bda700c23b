"""Week 5, Day 1: the KV cache of a decoding model.

Book: book/src/week5-01-decoding-kv-cache.md

Generating token t + 1 needs the keys and values of tokens 0 .. t, which never change once
computed. A KV cache keeps them: preallocated for `capacity` tokens, filled as tokens come,
and read as a view of its live part, so a decode step neither recomputes nor copies them.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from tiny_attn_contracts import check_cache_append, check_cache_dtype, check_capacity, check_int

_CHAPTER = "book/src/week5-01-decoding-kv-cache.md"


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
        shape = (batch, num_heads, capacity, head_dim)
        # Task 1: both buffers whole from the start: appending never reallocates.
        self._k = mx.zeros(shape, dtype=dtype)
        self._v = mx.zeros(shape, dtype=dtype)
        mx.eval(self._k, self._v)
        self.capacity = capacity
        self.length = 0

    def append(self, keys: mx.array, values: mx.array) -> None:
        """Add T tokens: keys and values of shape (batch, num_heads, T, head_dim)."""
        B, H, _, E = self._k.shape
        T = check_cache_append(keys, values, (B, H, E), "(B, H, T, E)", self._k.dtype)
        check_capacity(self.length, T, self.capacity, "the cache")
        end = self.length + T
        self._k[:, :, self.length : end, :] = keys
        self._v[:, :, self.length : end, :] = values
        mx.eval(self._k, self._v)
        self.length = end

    @property
    def keys(self) -> mx.array:
        """(batch, num_heads, length, head_dim): a view of the live part, no copy."""
        return self._live(self._k)

    @property
    def values(self) -> mx.array:
        """(batch, num_heads, length, head_dim): a view of the live part, no copy."""
        return self._live(self._v)

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (both buffers, whole capacity): what it costs in memory."""
        return self._k.nbytes + self._v.nbytes

    def _live(self, buffer: mx.array) -> mx.array:
        view = buffer[:, :, : self.length, :]
        # Evaluated now, a slice is a view of the buffer: the decode kernels read it in place
        # through its strides.
        mx.eval(view)
        return view
