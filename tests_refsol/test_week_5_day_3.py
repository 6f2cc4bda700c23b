"""Week 5, day 3: a paged KV cache.

PagedKVCache (pages of a shared pool, block tables, append, free, fragmentation, bytes) and
paged_decode_attention, which reads K/V through the block table: a batch of sequences of
different lengths in one dispatch, the same answers as a contiguous cache, no contiguous copy
(the kernels read exactly the tokens stored).
"""

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403

H, E, PAGE = 2, 16, 4


def filled_cache(lengths, seed=0, num_pages=64, dtype=mx.float32):
    """A paged cache holding sequences of `lengths`, appended in interleaved chunks (so their
    pages are not in order), and each sequence's keys and values."""
    cache = ta.PagedKVCache(num_pages, PAGE, H, E, dtype=dtype)
    seqs = [cache.new_sequence() for _ in lengths]
    full = {
        s: (
            rand((H, n, E), seed=seed + 2 * i, dtype=dtype),
            rand((H, n, E), seed=seed + 2 * i + 1, dtype=dtype),
        )
        for i, (s, n) in enumerate(zip(seqs, lengths, strict=True))
    }
    done = dict.fromkeys(seqs, 0)
    while any(done[s] < n for s, n in zip(seqs, lengths, strict=True)):
        for s, n in zip(seqs, lengths, strict=True):
            t = min(3, n - done[s])
            if t > 0:
                k, v = full[s]
                cache.append(s, k[:, done[s] : done[s] + t], v[:, done[s] : done[s] + t])
                done[s] += t
    return cache, seqs, full


# --------------------------------------------------------------------- Task 1: the cache


def test_task_1_paged_cache_pages_and_gather():
    lengths = [9, 6, 1]
    cache, seqs, full = filled_cache(lengths)
    assert cache.pages_in_use == 3 + 2 + 1
    assert cache.tokens_stored == 16
    assert cache.bytes_in_use == 6 * 2 * H * PAGE * E * 4
    assert cache.fragmentation == pytest.approx(1 - 16 / 24)
    table = np.array(cache.block_table(seqs))
    assert table.shape == (3, 3) and table.dtype == np.int32
    assert table[1, 2] == -1 and table[2, 1] == -1  # padding past a sequence's pages
    assert len(set(table[table >= 0].tolist())) == 6  # no page held twice
    assert np.array(cache.seq_lens(seqs)).tolist() == lengths
    for s in seqs:
        k, v = cache.gather(s)
        assert_allclose(k, full[s][0], **TOL_F32, what=f"keys of sequence {s}")
        assert_allclose(v, full[s][1], **TOL_F32, what=f"values of sequence {s}")


def test_task_1_paged_cache_free_reuses_pages():
    cache, seqs, _ = filled_cache([9, 6], num_pages=6)
    assert cache.pages_in_use == 5
    with raises_naming(ValueError, "keys"):  # 6 + 9 tokens need 2 more pages, 1 is free
        cache.append(seqs[1], rand((H, 9, E), seed=1), rand((H, 9, E), seed=2))
    assert cache.pages_in_use == 5 and cache.length(seqs[1]) == 6, "a refused append takes nothing"
    cache.free(seqs[0])
    assert cache.pages_in_use == 2
    s = cache.new_sequence()
    k = rand((H, 12, E), seed=3)
    cache.append(s, k, k)
    assert cache.pages_in_use == 5
    assert_allclose(cache.gather(s)[0], k, **TOL_F32, what="a sequence in freed pages")


def test_task_1_paged_cache_bad_input():
    with raises_naming(ValueError, "page_size"):
        ta.PagedKVCache(4, 0, H, E)
    cache = ta.PagedKVCache(4, PAGE, H, E)
    with raises_naming(ValueError, "seq"):
        cache.append(7, rand((H, 1, E), seed=1), rand((H, 1, E), seed=1))
    s = cache.new_sequence()
    with raises_naming(ValueError, "keys"):
        cache.append(s, rand((H + 1, 1, E), seed=1), rand((H + 1, 1, E), seed=1))
    with raises_naming(TypeError, "seqs"):
        cache.block_table([])


# --------------------------------------------------------------------- Task 2: the kernels


def contiguous_answer(ext, q, seqs, full, causal):
    """Each sequence decoded alone from a contiguous copy of its keys: the paged op's answer."""
    outs = []
    for b, s in enumerate(seqs):
        k, v = full[s]
        outs.append(ext.decode_attention(q[b : b + 1], k[None], v[None], causal=causal))
    return mx.concatenate(outs, axis=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_task_2_paged_decode_matches_contiguous(ext, backend, num_splits):
    lengths = [13, 5, 30, 8]
    cache, seqs, full = filled_cache(lengths, seed=num_splits)
    L, causal = 2, True
    q = rand((len(seqs), 2 * H, L, E), seed=4)
    out = ext.paged_decode_attention(
        q,
        cache.k_pages,
        cache.v_pages,
        cache.block_table(seqs),
        cache.seq_lens(seqs),
        num_splits=num_splits,
        causal=causal,
        stream=device_for(backend),
    )
    mx.eval(out)
    expected = contiguous_answer(ext, q, seqs, full, causal)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=f"paged decode, {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_task_2_paged_decode_one_dispatch_reads_the_tokens_stored(ext, backend):
    # The whole batch in one dispatch, every stored token read once per group: no page is
    # first gathered into a contiguous copy (which would read every token twice).
    lengths = [7, 21, 2]
    cache, seqs, full = filled_cache(lengths, seed=9)
    q = rand((len(seqs), 2 * H, 1, E), seed=5)
    args = (q, cache.k_pages, cache.v_pages, cache.block_table(seqs), cache.seq_lens(seqs))
    ext.reset_gpu_dispatches()
    ext.reset_kv_rows_read()
    out = ext.paged_decode_attention(*args, stream=device_for(backend))
    mx.eval(out)
    assert ext.kv_rows_read() == H * sum(lengths)
    if backend == "gpu":
        assert ext.gpu_dispatches() == [
            ("decode_attention_f32_e128", (3 * H, 1, 1), (WholeSimdGroups(ext), 1, 1))
        ]
    assert_allclose(out, contiguous_answer(ext, q, seqs, full, False), **TOL_F32_REORDERED)


def test_task_2_paged_decode_bad_input(ext):
    cache, seqs, _ = filled_cache([5, 9])
    q = rand((2, H, 1, E), seed=1)
    table, lens = cache.block_table(seqs), cache.seq_lens(seqs)
    args = (q, cache.k_pages, cache.v_pages)
    with raises_naming(ValueError, "block_table"):  # a page outside the pool
        ext.paged_decode_attention(*args, mx.array([[0, 1, -1], [2, 99, 4]], dtype=mx.int32), lens)
    with raises_naming(ValueError, "block_table"):
        ext.paged_decode_attention(*args, table.astype(mx.int64), lens)
    with raises_naming(ValueError, "seq_lens"):  # longer than the table holds
        ext.paged_decode_attention(*args, table, mx.array([5, 99], dtype=mx.int32))
    with raises_naming(ValueError, "v_pages"):
        ext.paged_decode_attention(q, cache.k_pages, cache.v_pages[:, :1], table, lens)


def test_task_2_paged_decode_copies_no_pages(ext):
    # Reading through the block table needs no contiguous copy of the batch's keys and values
    # (2 * B * H * max_len * E floats here); the op allocates its output and little else.
    lengths = [60, 200, 140]
    cache, seqs, _ = filled_cache(lengths, seed=2, num_pages=128)
    q = rand((len(seqs), 2 * H, 1, E), seed=6)
    args = (q, cache.k_pages, cache.v_pages, cache.block_table(seqs), cache.seq_lens(seqs))
    mx.eval(args)
    dense_copy = 2 * len(seqs) * H * max(lengths) * E * 4
    peak = peak_bytes_while(lambda: ext.paged_decode_attention(*args))
    assert peak < dense_copy // 4, f"peak {peak} bytes: a copy of the pages ({dense_copy} bytes)?"


# --------------------------------------------------------------------- Task 3: pages in order

PAGED_CPU_CASES = [
    # lengths, H_q, H, L, causal: one task per sequence, or per range of heads when few
    ([13, 5, 30, 8, 21, 2], 4, 2, 1, False),  # more sequences than threads: all heads a task
    ([37], 6, 3, 1, False),  # one sequence: its 3 heads cut into ranges
    ([23, 9], 8, 4, 3, True),  # two sequences, G * L = 6 rows, causal
    ([4, 17, 2], 2, 2, 2, True),  # a page exactly full, a sequence of just its L tokens
    ([129, 300, 7], 8, 2, 1, True),  # sequences of several hundred keys, pages of 4 tokens
]


@pytest.mark.parametrize(
    "lengths,H_q,H_kv,L,causal",
    PAGED_CPU_CASES,
    ids=[f"B{len(c[0])}-Hq{c[1]}-H{c[2]}-L{c[3]}" for c in PAGED_CPU_CASES],
)
def test_task_3_paged_cpu_walks_pages_with_its_own_tasks(ext, lengths, H_q, H_kv, L, causal):
    cache = ta.PagedKVCache(sum(-(-n // PAGE) for n in lengths), PAGE, H_kv, E)
    seqs = [cache.new_sequence() for _ in lengths]
    full = {}
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        full[s] = (rand((H_kv, n, E), seed=20 + 2 * i), rand((H_kv, n, E), seed=21 + 2 * i))
        cache.append(s, *full[s])
    q = rand((len(seqs), H_q, L, E), seed=7)
    table, lens = cache.block_table(seqs), cache.seq_lens(seqs)
    ext.reset_cpu_kernel_runs()
    ext.reset_kv_rows_read()
    out = ext.paged_decode_attention(q, cache.k_pages, cache.v_pages, table, lens, causal=causal)
    mx.eval(out)
    runs = ext.cpu_kernel_runs()
    assert [name for name, _ in runs] == ["paged_decode"], f"the paged batch's CPU kernel: {runs}"
    assert ext.kv_rows_read() == H_kv * sum(lengths), "every stored token read once per group"
    expected = []
    for b, s in enumerate(seqs):
        k, v = full[s]
        expected.append(ext.decode_attention(q[b : b + 1], k[None], v[None], causal=causal))
    assert_allclose(out, mx.concatenate(expected, axis=0), **TOL_F32_REORDERED, what="paged CPU")
