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

from tiny_attn_contracts import (
    check_cache_append,
    check_cache_dtype,
    check_free_pages,
    check_int,
    check_sequence,
    check_sequences,
)

_CHAPTER = "book/src/week5-03-paged-kv-cache.md"


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
        # Task 1: the pools, and who holds which page.
        shape = (num_pages, num_heads, page_size, head_dim)
        self.k_pages = mx.zeros(shape, dtype=dtype)
        self.v_pages = mx.zeros(shape, dtype=dtype)
        mx.eval(self.k_pages, self.v_pages)
        self.num_pages = num_pages
        self.page_size = page_size
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out page 0 first
        self._pages: dict[int, list[int]] = {}  # sequence -> its block table
        self._lens: dict[int, int] = {}  # sequence -> tokens stored
        self._next_id = 0

    def new_sequence(self) -> int:
        """A new, empty sequence; returns its id."""
        seq = self._next_id
        self._next_id += 1
        self._pages[seq] = []
        self._lens[seq] = 0
        return seq

    def append(self, seq: int, keys: mx.array, values: mx.array) -> None:
        """Add T tokens to sequence `seq`: keys and values of shape (num_heads, T, head_dim)."""
        check_sequence(seq, self._pages)
        _, H, P, E = self.k_pages.shape
        T = check_cache_append(keys, values, (H, E), "(H, T, E)", self.k_pages.dtype)
        length, pages = self._lens[seq], self._pages[seq]
        needed = -(-(length + T) // P) - len(pages)
        check_free_pages(needed, len(self._free), self.num_pages)
        pages.extend(self._free.pop() for _ in range(needed))
        # Token t of the sequence goes to page pages[t // P], slot t % P: one slice per page.
        t = length
        while t < length + T:
            page, slot = pages[t // P], t % P
            n = min(P - slot, length + T - t)
            src = slice(t - length, t - length + n)
            self.k_pages[page, :, slot : slot + n, :] = keys[:, src, :]
            self.v_pages[page, :, slot : slot + n, :] = values[:, src, :]
            t += n
        mx.eval(self.k_pages, self.v_pages)
        self._lens[seq] = length + T

    def free(self, seq: int) -> None:
        """Give the pages of sequence `seq` back to the pool; the id is no longer valid."""
        check_sequence(seq, self._pages)
        self._free.extend(reversed(self._pages.pop(seq)))
        del self._lens[seq]

    def length(self, seq: int) -> int:
        """Tokens stored for sequence `seq`."""
        check_sequence(seq, self._pages)
        return self._lens[seq]

    def block_table(self, seqs: list[int]) -> mx.array:
        """int32 (B, max_blocks): row b lists the pages of seqs[b] in order, padded with -1."""
        seqs = check_sequences(seqs, self._pages)
        width = max(1, max(len(self._pages[s]) for s in seqs))
        rows = [self._pages[s] + [-1] * (width - len(self._pages[s])) for s in seqs]
        return mx.array(rows, dtype=mx.int32)

    def seq_lens(self, seqs: list[int]) -> mx.array:
        """int32 (B,): the tokens stored for each of seqs."""
        seqs = check_sequences(seqs, self._pages)
        return mx.array([self._lens[s] for s in seqs], dtype=mx.int32)

    def gather(self, seq: int) -> tuple[mx.array, mx.array]:
        """Sequence `seq`'s keys and values as contiguous (num_heads, length, head_dim) copies,
        for checking; the kernels never need them."""
        check_sequence(seq, self._pages)
        n = self._lens[seq]
        if n == 0:
            _, H, _, E = self.k_pages.shape
            empty = mx.zeros((H, 0, E), dtype=self.k_pages.dtype)
            return empty, empty
        idx = mx.array(self._pages[seq], dtype=mx.int32)
        k = mx.concatenate(list(self.k_pages[idx]), axis=1)[:, :n, :]
        v = mx.concatenate(list(self.v_pages[idx]), axis=1)[:, :n, :]
        return k, v

    @property
    def pages_in_use(self) -> int:
        return self.num_pages - len(self._free)

    @property
    def bytes_in_use(self) -> int:
        """Bytes of the pages held by sequences (keys and values)."""
        return self.pages_in_use * self._page_bytes()

    @property
    def tokens_stored(self) -> int:
        return sum(self._lens.values())

    @property
    def fragmentation(self) -> float:
        """The share of the slots in held pages that hold no token: at most one page per
        sequence is partly empty, so it stays below page_size * sequences / slots held."""
        slots = self.pages_in_use * self.page_size
        return 0.0 if slots == 0 else 1.0 - self.tokens_stored / slots

    def _page_bytes(self) -> int:
        return 2 * self.k_pages.nbytes // self.num_pages
