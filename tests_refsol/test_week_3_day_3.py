"""Week 3, day 3: grouped-query attention, causal masks and mask arrays on the GPU.

The same contract as the CPU op (Week 2): query head h reads key/value head h // (H_q // H);
causal is bottom-right aligned when L != S; masks are bool (True = keep) or additive and
broadcast to (N, H_q, L, S) through their strides; fully masked rows give what
mx.fast.scaled_dot_product_attention gives.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def gpu_attention(ext, q, k, v, mask=None, causal=False):
    out = ext.flash_attention(q, k, v, 1.0 / math.sqrt(q.shape[-1]), mask, causal, stream=GPU)
    mx.eval(out)
    return out


# --------------------------------------------------------------------- Task 1: GQA


# Every case has H >= 2: with H = 1 (multi-query) any head inside K is the right one, so the
# case could not tell a GQA mapping from none. Task 3's sweep covers H = 1.
@pytest.mark.parametrize("N,H_q,H", [(1, 4, 2), (2, 6, 2), (1, 6, 3)], ids=str)
def test_task_1_gqa_gpu(ext, N, H_q, H):
    q, k, v = qkv((N,), H_q, H, 17, 40, 64, seed=H_q * 10 + H)
    out = gpu_attention(ext, q, k, v)
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32_REORDERED, what=f"H_q={H_q}, H={H}")


# --------------------------------------------------------------------- Task 2: causal


@pytest.mark.parametrize(
    "L,S",
    [(40, 40), (8, 70), (33, 65), (70, 20), (100, 130)],
    ids=["L=S", "L<S", "L<S-two-tiles", "L>S-fully-masked-rows", "many-tiles"],
)
def test_task_2_causal_gpu(ext, L, S):
    q, k, v = qkv((1,), 2, 2, L, S, 64, seed=L + S)
    out = gpu_attention(ext, q, k, v, causal=True)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32_REORDERED, what=f"causal, L={L}, S={S}"
    )


def test_task_2_causal_gpu_ignores_future_keys(ext):
    # Changing keys and values a row cannot see must not change that row.
    L = S = 48
    q, k, v = qkv((1,), 1, 1, L, S, 64, seed=21)
    before = to_numpy(gpu_attention(ext, q, k, v, causal=True))
    assert_allclose(before, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32_REORDERED, what="causal")
    k2 = mx.concatenate([k[:, :, :20], k[:, :, 20:] * 5.0 + 3.0], axis=2)
    v2 = mx.concatenate([v[:, :, :20], v[:, :, 20:] - 7.0], axis=2)
    after = to_numpy(gpu_attention(ext, q, k2, v2, causal=True))
    assert_allclose(
        after[:, :, :20], before[:, :, :20], **TOL_F32, what="rows 0..19 see keys 0..19 only"
    )


# --------------------------------------------------------------------- Task 3: mask arrays


@pytest.mark.parametrize(
    "mask_shape",
    [(20, 45), (1, 1, 20, 45), (2, 1, 20, 45), (2, 4, 20, 45), (2, 1, 1, 45), (4, 1, 45)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_task_3_additive_mask_gpu(ext, mask_shape):
    q, k, v = qkv((2,), 4, 2, 20, 45, 64, seed=31)
    mask = rand(mask_shape, seed=32, scale=2.0)
    out = gpu_attention(ext, q, k, v, mask=mask)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32_REORDERED, what=f"additive mask {mask_shape}"
    )


@pytest.mark.parametrize(
    "mask_shape", [(20, 45), (2, 4, 20, 45), (2, 1, 1, 45)], ids=lambda s: "x".join(map(str, s))
)
def test_task_3_boolean_mask_gpu(ext, mask_shape):
    q, k, v = qkv((2,), 4, 4, 20, 45, 80, seed=41)
    mask = rand_keep(mask_shape, seed=42, p_keep=0.7)
    out = gpu_attention(ext, q, k, v, mask=mask)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32_REORDERED, what=f"boolean mask {mask_shape}"
    )


def test_task_3_strided_mask_gpu(ext):
    # A transposed view: strides (1, S) instead of (S, 1). The kernel reads it in place.
    q, k, v = qkv((1,), 2, 2, 36, 40, 64, seed=51)
    mask = mx.swapaxes(rand((40, 36), seed=52), 0, 1)
    out = gpu_attention(ext, q, k, v, mask=mask)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32_REORDERED, what="transposed additive mask"
    )


@pytest.mark.parametrize("flip", ["rows", "columns"])
@pytest.mark.parametrize("kind", ["additive", "boolean"])
def test_task_3_reversed_mask_gpu(ext, flip, kind):
    # mask[::-1] and mask[:, ::-1] are views with a negative stride: the mask's first element is
    # not the first one in memory, and the kernel steps back from it.
    q, k, v = qkv((1,), 2, 2, 36, 40, 64, seed=53)
    base = (
        rand((36, 40), seed=54) if kind == "additive" else rand_keep((36, 40), seed=55, p_keep=0.7)
    )
    mask = base[::-1] if flip == "rows" else base[:, ::-1]
    out = gpu_attention(ext, q, k, v, mask=mask)
    assert_allclose(
        out,
        mlx_sdpa(q, k, v, mask=mask),
        **TOL_F32_REORDERED,
        what=f"{kind} mask reversed along its {flip}",
    )


def test_task_3_fully_masked_rows_gpu(ext):
    q, k, v = qkv((1,), 1, 1, 6, 40, 64, seed=61)
    keep = np.random.default_rng(62).random((6, 40)) < 0.5
    keep[2, :] = False  # a row that sees nothing: MLX gives uniform weights
    keep[4, :] = False
    mask = mx.array(keep)
    assert_allclose(
        gpu_attention(ext, q, k, v, mask=mask),
        mlx_sdpa(q, k, v, mask=mask),
        **TOL_F32_REORDERED,
        what="boolean mask with fully masked rows",
    )

    additive = np.where(keep, 0.0, -np.inf).astype(np.float32)
    additive[0, 35:] = -np.inf  # partly -inf, in the last tile
    additive[1, :] = 0.0
    additive[1, :34] = -np.inf  # the whole first K tile is -inf, the second is not
    mask = mx.array(additive)
    out = gpu_attention(ext, q, k, v, mask=mask)
    expected = mlx_sdpa(q, k, v, mask=mask)  # NaN in the rows of -inf only
    assert np.array_equal(np.isnan(to_numpy(out)), np.isnan(to_numpy(expected))), (
        "NaN exactly where MLX has NaN (rows whose every score is -inf)"
    )
    assert_allclose(out, expected, **TOL_F32_REORDERED, what="additive -inf mask")


def test_task_3_mask_and_gqa_gpu(ext):
    q, k, v = qkv((2,), 6, 2, 33, 70, 128, seed=71)
    mask = rand_keep((2, 6, 33, 70), seed=72, p_keep=0.8)
    out = gpu_attention(ext, q, k, v, mask=mask)
    assert_allclose(
        out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32_REORDERED, what="GQA with a full boolean mask"
    )


def test_task_3_python_wrapper_on_gpu(ext):
    # ta.flash_attention (Week 2) flattens batch dimensions and passes stream=mx.gpu through:
    # the same kernel, for any number of batch dimensions (MLX's own op takes rank 4 only).
    # (kernel="fast" is day 4's kernel: tested there.)
    q, k, v = qkv((2, 3), 4, 2, 18, 37, 64, seed=81)
    mask = rand_keep((3, 1, 18, 37), seed=82, p_keep=0.7)
    out = ta.flash_attention(q, k, v, mask=mask, kernel="simple", stream=GPU)
    assert_allclose(
        out,
        numpy_attention(q, k, v, mask=mask),
        **TOL_F32_REORDERED,
        what="ta.flash_attention on the GPU",
    )
    out = ta.flash_attention(q, k, v, mask="causal", kernel="simple", stream=GPU)
    assert_allclose(
        out, numpy_attention(q, k, v, mask="causal"), **TOL_F32_REORDERED, what="causal"
    )


@settings(max_examples=12, deadline=None)
@given(
    L=st.integers(1, 70),
    S=st.integers(1, 70),
    E=st.sampled_from([8, 24, 64, 128]),
    group=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2)]),
    kind=st.sampled_from(["none", "causal", "additive", "boolean"]),
    seed=st.integers(0, 10_000),
)
def test_task_3_random_problems_gpu(ext, L, S, E, group, kind, seed):
    # Any shape, head grouping and mask: the edges hand-picked cases miss. (Day 4 runs the
    # same sweep on its kernel.)
    H_q, H = group
    q, k, v = qkv((1,), H_q, H, L, S, E, seed=seed)
    mask = None
    if kind == "additive":
        mask = rand((L, S), seed=seed + 3)
    elif kind == "boolean":
        mask = rand_keep((1, H_q, L, S), seed=seed + 4, p_keep=0.7)
    out = gpu_attention(ext, q, k, v, mask=mask, causal=kind == "causal")
    expected = mlx_sdpa(q, k, v, mask="causal" if kind == "causal" else mask)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=f"{kind}, {q.shape}")
