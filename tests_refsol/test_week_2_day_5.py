"""Week 2, Day 5: the fast CPU kernel (`ext.flash_attention_fast`): packed tiles, 8-wide
micro-kernels, threads.

Book: book/src/week2-05-fast-cpu.md. Reference: mx.fast.scaled_dot_product_attention on the CPU
(`mlx_sdpa`). Tolerance: TOL_F32_REORDERED. No timing here: speed is measured by
`pdm run bench --week 2`; the tests check the answers, and that threads change nothing.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import TOL_F32_REORDERED, assert_allclose, mlx_sdpa, qkv, rand, ta, to_numpy


def fast(ext, q, k, v, mask=None, num_threads=1):
    scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(mask, str):
        return ext.flash_attention_fast(q, k, v, scale, causal=True, num_threads=num_threads)
    return ext.flash_attention_fast(q, k, v, scale, mask, num_threads=num_threads)


# --- Task 1: one thread -----------------------------------------------------------------------

SHAPES = [
    # (N, H_q, H, L, S, E): odd sizes, partial tiles, E not a multiple of 8
    (1, 1, 1, 1, 1, 1),
    (1, 2, 2, 64, 64, 128),
    (1, 4, 2, 200, 333, 64),
    (2, 3, 1, 97, 31, 7),
    (1, 2, 2, 33, 257, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_task_1_fast_kernel_matches_mlx(ext, shape):
    N, h_q, h, L, S, E = shape
    q, k, v = qkv((N,), h_q, h, L, S, E, seed=sum(shape))
    assert_allclose(fast(ext, q, k, v), mlx_sdpa(q, k, v), **TOL_F32_REORDERED, what=str(shape))


@pytest.mark.parametrize("kind", ["causal", "additive", "bool"])
@pytest.mark.parametrize("L,S", [(128, 128), (77, 190), (190, 77)])
def test_task_1_fast_kernel_masks(ext, kind, L, S):
    N, h_q, h, E = 1, 4, 2, 32
    q, k, v = qkv((N,), h_q, h, L, S, E, seed=L + 2 * S)
    if kind == "causal":
        mask = "causal"
    elif kind == "additive":
        mask = rand((1, h_q, L, S), seed=3, scale=2.0)
    else:
        mask = rand((L, S), seed=4) > 0.3
    assert_allclose(fast(ext, q, k, v, mask), mlx_sdpa(q, k, v, mask=mask), **TOL_F32_REORDERED)


def test_task_1_fast_kernel_fully_masked_rows(ext):
    L, S = 70, 40
    q, k, v = qkv((1,), 2, 2, L, S, 16, seed=5)
    keep = np.ones((L, S), dtype=bool)
    keep[10] = False
    bias = np.zeros((L, S), dtype=np.float32)
    bias[20] = -np.inf
    bias[21, :33] = -np.inf
    for mask in (mx.array(keep), mx.array(bias), "causal"):
        out, expected = fast(ext, q, k, v, mask), mlx_sdpa(q, k, v, mask=mask)
        np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-4, atol=1e-5)


def test_task_1_fast_kernel_agrees_with_the_simple_one(ext):
    q, k, v = qkv((1,), 2, 2, 150, 150, 48, seed=6)
    simple = ext.flash_attention(q, k, v, 0.2, causal=True)
    assert_allclose(
        fast(ext, q, k, v, "causal"), mlx_sdpa(q, k, v, mask="causal"), **TOL_F32_REORDERED
    )
    out = ext.flash_attention_fast(q, k, v, 0.2, causal=True, num_threads=1)
    assert_allclose(out, simple, **TOL_F32_REORDERED)


def test_task_1_fast_op_runs_the_fast_kernel(ext):
    # Each kernel reports itself when it runs (report_cpu_kernel): the day's op must run the
    # day's kernel, and day 4's op still runs day 4's.
    q, k, v = qkv((1,), 2, 2, 64, 64, 16, seed=11)
    ext.reset_cpu_kernel_runs()
    mx.eval(fast(ext, q, k, v, "causal", num_threads=1))
    mx.eval(ext.flash_attention(q, k, v, 0.25))
    assert ext.cpu_kernel_runs() == [("fast", 1), ("simple", 1)]


# --- Task 2: threads --------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [None, "causal"])
@pytest.mark.parametrize("num_threads", [2, 3, 0])
def test_task_2_threads_give_the_same_answer(ext, mask, num_threads):
    # Every Q tile is computed by one thread in a fixed order: the result does not depend on
    # how many threads share the work, to the last bit.
    q, k, v = qkv((2,), 4, 2, 150, 120, 32, seed=7)
    one = to_numpy(fast(ext, q, k, v, mask, num_threads=1), np.float32)
    many = to_numpy(fast(ext, q, k, v, mask, num_threads=num_threads), np.float32)
    np.testing.assert_array_equal(many, one)


def test_task_2_fast_kernel_visits_the_same_tiles(ext):
    q, k, v = qkv((1,), 4, 2, 256, 256, 16, seed=8)
    mx.eval(q, k, v)
    counts = {}
    for name, run in [
        ("simple", lambda: ext.flash_attention(q, k, v, 0.25, causal=True)),
        ("fast", lambda: ext.flash_attention_fast(q, k, v, 0.25, causal=True, num_threads=2)),
        ("full", lambda: ext.flash_attention_fast(q, k, v, 0.25, num_threads=2)),
    ]:
        ext.reset_tiles_visited()
        mx.eval(run())
        counts[name] = ext.tiles_visited()
    assert counts["fast"] == counts["simple"] == 4 * 36  # 8 Q tiles: 1 + 2 + ... + 8 K tiles
    assert counts["full"] == 4 * 64


def test_task_2_fast_kernel_shares_the_work_between_threads(ext):
    # 2 x 4 heads x 5 Q tiles = 40 work items: enough for 3 threads, and for 40 but no more.
    q, k, v = qkv((2,), 4, 2, 150, 120, 16, seed=12)
    runs = {}
    for n in (3, 64):
        ext.reset_cpu_kernel_runs()
        mx.eval(fast(ext, q, k, v, num_threads=n))
        runs[n] = ext.cpu_kernel_runs()
    assert runs == {3: [("fast", 3)], 64: [("fast", 40)]}


@pytest.mark.parametrize("batch", [(), (2, 2)])
def test_task_2_wrapper_uses_the_fast_kernel(ext, batch):
    q, k, v = qkv(batch, 4, 1, 65, 90, 64, seed=9)
    ext.reset_cpu_kernel_runs()
    out = ta.flash_attention(q, k, v, mask="causal")
    mx.eval(out)
    assert [name for name, _ in ext.cpu_kernel_runs()] == ["fast"], "kernel='fast' by default"
    n = math.prod(batch)
    expected = mlx_sdpa(
        q.reshape(n, 4, 65, 64), k.reshape(n, 1, 90, 64), v.reshape(n, 1, 90, 64), mask="causal"
    )
    assert_allclose(out.reshape(n, 4, 65, 64), expected, **TOL_F32_REORDERED)


def test_task_2_longer_sequence(ext):
    q, k, v = qkv((1,), 2, 2, 1024, 1024, 64, seed=10)
    out = fast(ext, q, k, v, "causal", num_threads=0)
    assert_allclose(out, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32_REORDERED)


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(
    N=st.integers(1, 2),
    H=st.integers(1, 2),
    group=st.integers(1, 3),
    L=st.one_of(st.sampled_from([1, 8, 31, 32, 33, 64, 65]), st.integers(1, 130)),
    S=st.one_of(st.sampled_from([1, 8, 31, 32, 33, 64, 65]), st.integers(1, 130)),
    E=st.one_of(st.sampled_from([1, 7, 8, 9, 16, 64, 128]), st.integers(1, 80)),
    kind=st.sampled_from(["none", "causal", "additive", "bool"]),
    num_threads=st.sampled_from([1, 2, 3, 0]),
    seed=st.integers(0, 2**16),
)
def test_task_2_fast_kernel_matches_mlx_on_random_problems(
    ext, N, H, group, L, S, E, kind, num_threads, seed
):
    # Random sizes around the tile and vector widths (8 rows per f32x8, 32 per tile), any head
    # grouping, every mask kind and any number of threads: the cases hand-picked shapes miss.
    q, k, v = qkv((N,), H * group, H, L, S, E, seed=seed)
    mask = None
    if kind == "causal":
        mask = "causal"
    elif kind == "additive":
        mask = rand((1, H * group, L, S), seed=seed + 3, scale=2.0)
    elif kind == "bool":
        mask = rand_keep((N, 1, L, S), seed=seed + 4, p_keep=0.7)
    out = fast(ext, q, k, v, mask, num_threads=num_threads)
    expected = mlx_sdpa(q, k, v, mask=mask)
    what = f"N={N}, H_q={H * group}, H={H}, L={L}, S={S}, E={E}, {kind}, {num_threads} threads"
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=what)
