"""Week 5, Day 3: a paged KV cache (PagedAttention).

Book: book/src/week5-03-paged-kv-cache.md

A server decodes many sequences of different, growing lengths at once. A contiguous cache per
sequence must reserve its longest possible length up front; most of it stays empty. Here keys
and values live in fixed-size pages of one shared pool, and each sequence keeps a list of its
pages, its block table: a sequence holds only the pages it fills, a finished sequence gives
them back, and the only waste is the unfilled end of each sequence's last page.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from tiny_attn_contracts import (  # noqa: F401  (the checks the methods start with)
    check_cache_append,
    check_cache_dtype,
    check_free_pages,
    check_int,
    check_sequence,
    check_sequences,
)

_CHAPTER = "book/src/week5-03-paged-kv-cache.md"


def _todo(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what} is not implemented yet: see {_CHAPTER}, Task 1")


class PagedKVCache:
    """A pool of `num_pages` pages of `page_size` tokens, for `num_heads` key/value heads of
    `head_dim` numbers, shared by any number of sequences."""

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        num_heads: int,
        head_dim: int,
        dtype: Any = mx.float32,
    ) -> None:
        for n, name in (
            (num_pages, "num_pages"),
            (page_size, "page_size"),
            (num_heads, "num_heads"),
            (head_dim, "head_dim"),
        ):
            check_int(n, name)
        check_cache_dtype(dtype)
        # TODO(Task 1): the pools self.k_pages, self.v_pages (num_pages, num_heads, page_size,
        #   head_dim), a free list of page numbers, each sequence's pages and length.
        raise _todo("PagedKVCache")

    def new_sequence(self) -> int:
        """A new, empty sequence; returns its id."""
        raise _todo("PagedKVCache.new_sequence")

    def append(self, seq: int, keys: mx.array, values: mx.array) -> None:
        """Add T tokens to sequence `seq`: keys and values of shape (num_heads, T, head_dim)."""
        # TODO(Task 1): take the pages the new tokens need from the free list
        #   (check_free_pages), then write token t to page pages[t // page_size], slot
        #   t % page_size, one slice per page.
        raise _todo("PagedKVCache.append")

    def free(self, seq: int) -> None:
        """Give the pages of sequence `seq` back to the pool; the id is no longer valid."""
        raise _todo("PagedKVCache.free")

    def length(self, seq: int) -> int:
        """Tokens stored for sequence `seq`."""
        raise _todo("PagedKVCache.length")

    def block_table(self, seqs: list[int]) -> mx.array:
        """int32 (B, max_blocks): row b lists the pages of seqs[b] in order, padded with -1."""
        raise _todo("PagedKVCache.block_table")

    def seq_lens(self, seqs: list[int]) -> mx.array:
        """int32 (B,): the tokens stored for each of seqs."""
        raise _todo("PagedKVCache.seq_lens")

    def gather(self, seq: int) -> tuple[mx.array, mx.array]:
        """Sequence `seq`'s keys and values as contiguous (num_heads, length, head_dim) copies,
        for checking; the kernels never need them."""
        raise _todo("PagedKVCache.gather")

    @property
    def pages_in_use(self) -> int:
        raise _todo("PagedKVCache.pages_in_use")

    @property
    def bytes_in_use(self) -> int:
        """Bytes of the pages held by sequences (keys and values)."""
        raise _todo("PagedKVCache.bytes_in_use")

    @property
    def tokens_stored(self) -> int:
        raise _todo("PagedKVCache.tokens_stored")

    @property
    def fragmentation(self) -> float:
        """The share of the slots in held pages that hold no token: at most one page per
        sequence is partly empty, so it stays below page_size * sequences / slots held."""
        raise _todo("PagedKVCache.fragmentation")
