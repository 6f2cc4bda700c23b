"""Week 3, day 4: flash_attention_simdgroup_f32, 8x8 simdgroup_matrix products.

`ext.flash_attention_fast(..., stream=GPU)` dispatches the fast kernel; it must give what the
day 2 kernel gives, masks and GQA included.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def fast_gpu(ext, q, k, v, mask=None, causal=False, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = ext.flash_attention_fast(q, k, v, scale, mask, causal, stream=GPU)
    mx.eval(out)
    return out


# --------------------------------------------------------------------- Task 1: the products

SHAPES = [
    # (N, H, L, S, E)
    (1, 1, 32, 32, 64),
    (1, 2, 40, 70, 80),
    (2, 1, 5, 3, 128),
    (1, 1, 70, 100, 128),
    (1, 1, 1, 9, 8),
]


@pytest.mark.parametrize("N,H,L,S,E", SHAPES, ids=lambda v: str(v))
def test_task_1_simdgroup_kernel(ext, N, H, L, S, E):
    q, k, v = qkv((N,), H, H, L, S, E, seed=7 * L + S + E)
    out = fast_gpu(ext, q, k, v)
    assert out.shape == q.shape and out.dtype == mx.float32
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32_REORDERED, what=f"{(N, H, L, S, E)}")


def test_task_1_simdgroup_kernel_rescale(ext):
    # The max grows from tile to tile: the spilled accumulator must be rescaled each time.
    N, H, L, S, E = 1, 1, 16, 128, 64
    q, k, v = qkv((N,), H, H, L, S, E, seed=3)
    ramp = mx.arange(S, dtype=mx.float32).reshape(1, 1, S, 1) / 6.0
    k = k * 0.1 + ramp * mx.ones((1, 1, 1, E)) / math.sqrt(E)
    q = mx.abs(q) + 1.0
    out = fast_gpu(ext, q, k, v)
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32_REORDERED, what="growing scores")


def test_task_1_simdgroup_kernel_matches_simple_kernel(ext):
    q, k, v = qkv((1,), 2, 2, 45, 37, 64, seed=11)
    scale = 0.2
    simple = ext.flash_attention(q, k, v, scale, stream=GPU)
    fast = fast_gpu(ext, q, k, v, scale=scale)
    assert_allclose(fast, mlx_sdpa(q, k, v, scale=scale), **TOL_F32_REORDERED, what="MLX")
    assert_allclose(fast, simple, **TOL_F32_REORDERED, what="day 4 kernel against day 2's")


# --------------------------------------------------------------------- Task 2: masks and GQA


@pytest.mark.parametrize(
    "L,S", [(40, 40), (8, 70), (70, 20), (100, 130)], ids=["L=S", "L<S", "L>S", "many-tiles"]
)
def test_task_2_simdgroup_kernel_causal(ext, L, S):
    q, k, v = qkv((1,), 2, 1, L, S, 64, seed=L * S)
    out = fast_gpu(ext, q, k, v, causal=True)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32_REORDERED, what=f"causal, L={L}, S={S}"
    )


def test_task_2_simdgroup_kernel_masks(ext):
    q, k, v = qkv((2,), 4, 2, 20, 45, 64, seed=31)
    additive = rand((2, 1, 20, 45), seed=32, scale=2.0)
    assert_allclose(
        fast_gpu(ext, q, k, v, mask=additive),
        mlx_sdpa(q, k, v, mask=additive),
        **TOL_F32_REORDERED,
        what="additive (2, 1, L, S) mask",
    )
    first_tile_masked = np.zeros((20, 45), np.float32)
    first_tile_masked[::3, :33] = -np.inf  # every third row: its whole first K tile is -inf
    first_tile_masked = mx.array(first_tile_masked)
    assert_allclose(
        fast_gpu(ext, q, k, v, mask=first_tile_masked),
        mlx_sdpa(q, k, v, mask=first_tile_masked),
        **TOL_F32_REORDERED,
        what="a first K tile of -inf, then valid keys",
    )
    keep = np.random.default_rng(33).random((20, 45)) < 0.6
    keep[3, :] = False  # fully masked row
    keep_mx = mx.array(keep)
    assert_allclose(
        fast_gpu(ext, q, k, v, mask=keep_mx),
        mlx_sdpa(q, k, v, mask=keep_mx),
        **TOL_F32_REORDERED,
        what="boolean (L, S) mask with a fully masked row",
    )


@pytest.mark.parametrize("flip", ["rows", "columns"])
@pytest.mark.parametrize("kind", ["additive", "boolean"])
def test_task_2_simdgroup_kernel_reversed_mask(ext, flip, kind):
    # Views with a negative stride (mask[::-1], mask[:, ::-1]) read in place, as on day 3.
    q, k, v = qkv((1,), 2, 2, 36, 40, 64, seed=35)
    base = (
        rand((36, 40), seed=36) if kind == "additive" else rand_keep((36, 40), seed=37, p_keep=0.7)
    )
    mask = base[::-1] if flip == "rows" else base[:, ::-1]
    assert_allclose(
        fast_gpu(ext, q, k, v, mask=mask),
        mlx_sdpa(q, k, v, mask=mask),
        **TOL_F32_REORDERED,
        what=f"{kind} mask reversed along its {flip}",
    )


def test_task_2_python_wrapper_fast_on_gpu(ext):
    # ta.flash_attention(kernel="fast") (Week 2) with stream=mx.gpu reaches this kernel, for
    # any number of batch dimensions.
    q, k, v = qkv((2, 3), 4, 2, 18, 37, 64, seed=81)
    mask = rand_keep((3, 1, 18, 37), seed=82, p_keep=0.7)
    for m in (mask, "causal"):
        out = ta.flash_attention(q, k, v, mask=m, kernel="fast", stream=GPU)
        assert_allclose(
            out,
            numpy_attention(q, k, v, mask=m),
            **TOL_F32_REORDERED,
            what=f"ta.flash_attention(kernel='fast'), mask {'causal' if m is not mask else 'bool'}",
        )


@settings(max_examples=10, deadline=None)
@given(
    L=st.integers(1, 70),
    S=st.integers(1, 70),
    E=st.sampled_from([8, 24, 64, 128]),
    group=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2)]),
    kind=st.sampled_from(["none", "causal", "additive", "boolean"]),
    seed=st.integers(0, 10_000),
)
def test_task_2_random_problems_fast_gpu(ext, L, S, E, group, kind, seed):
    # Day 3's sweep of shapes, head groupings and masks, on the simdgroup kernel.
    H_q, H = group
    q, k, v = qkv((1,), H_q, H, L, S, E, seed=seed)
    mask = None
    if kind == "additive":
        mask = rand((L, S), seed=seed + 3)
    elif kind == "boolean":
        mask = rand_keep((1, H_q, L, S), seed=seed + 4, p_keep=0.7)
    out = fast_gpu(ext, q, k, v, mask=mask, causal=kind == "causal")
    expected = mlx_sdpa(q, k, v, mask="causal" if kind == "causal" else mask)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=f"fast, {kind}, {q.shape}")
