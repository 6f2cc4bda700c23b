"""Week 2, Day 2: tiled FlashAttention-2 in Python, returning the output and the log-sum-exp.

Book: book/src/week2-02-flash-attention-tiled.md. References: mx.fast.scaled_dot_product_attention
on the CPU (`mlx_sdpa`) for the output, a float64 NumPy log-sum-exp for lse. Tolerances:
TOL_F32_REORDERED (the tiles change the order of the sums), TOL_F16 / TOL_BF16 for half precision.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_BF16,
    TOL_F16,
    TOL_F32_REORDERED,
    assert_allclose,
    mlx_sdpa,
    numpy_attention,
    qkv,
    rand,
    rand_keep,
    ta,
    to_numpy,
)

# What MLX puts in a score that a boolean or causal mask hides: the lowest finite float32.
MASKED = float(np.finfo(np.float32).min)


def numpy_scores(q, k, *, scale=None, mask=None) -> np.ndarray:
    """scale * q k^T + mask in float64, (B..., H_q, L, S); hidden scores are MASKED."""
    qn, kn = to_numpy(q), to_numpy(k)
    scale = 1.0 / math.sqrt(qn.shape[-1]) if scale is None else scale
    kn = np.repeat(kn, qn.shape[-3] // kn.shape[-3], axis=-3)
    s = scale * qn @ np.swapaxes(kn, -1, -2)
    L, S = s.shape[-2:]
    if isinstance(mask, str):
        s = np.where(np.arange(S)[None, :] <= np.arange(L)[:, None] + (S - L), s, MASKED)
    elif mask is not None and mask.dtype == mx.bool_:
        s = np.where(np.array(mask), s, MASKED)
    elif mask is not None:
        s = s + to_numpy(mask)
    return s


def numpy_lse(q, k, *, scale=None, mask=None) -> np.ndarray:
    """log sum_j exp(s_ij) in float64, -inf for a row of -inf scores."""
    s = numpy_scores(q, k, scale=scale, mask=mask)
    m = np.max(s, axis=-1, keepdims=True)
    shift = np.where(np.isneginf(m), 0.0, m)
    with np.errstate(divide="ignore"):
        return (shift + np.log(np.sum(np.exp(s - shift), axis=-1, keepdims=True)))[..., 0]


def check(q, k, v, *, scale=None, mask=None, block_q=32, block_k=32, what=""):
    out, lse = ta.flash_attention_tiled(
        q, k, v, scale=scale, mask=mask, block_q=block_q, block_k=block_k
    )
    assert out.dtype == q.dtype, f"out has query's dtype {q.dtype}, got {out.dtype}"
    assert lse.dtype == mx.float32, f"lse is float32, got {lse.dtype}"
    assert_allclose(out, mlx_sdpa(q, k, v, scale=scale, mask=mask), **TOL_F32_REORDERED, what=what)
    assert_allclose(lse, numpy_lse(q, k, scale=scale, mask=mask), **TOL_F32_REORDERED, what="lse")
    return out, lse


# (batch, H_q, H, L, S, E, block_q, block_k): tile multiples and not, L != S, GQA and MQA.
SHAPES = [
    ((1,), 1, 1, 1, 1, 8, 32, 32),  # one query, one key
    ((1,), 2, 2, 64, 64, 16, 32, 32),  # whole tiles
    ((2,), 3, 3, 37, 53, 16, 8, 16),  # ragged last tiles
    ((1,), 4, 2, 40, 24, 32, 16, 8),  # GQA, L > S
    ((2,), 6, 1, 7, 90, 8, 4, 32),  # MQA, L < S
    ((1,), 2, 2, 20, 20, 8, 64, 64),  # a tile larger than the sequence
    ((1,), 2, 1, 33, 47, 8, 1, 5),  # one query row per tile
    ((1,), 1, 1, 128, 96, 64, 32, 32),  # E = 64
]


def shape_id(shape) -> str:
    batch, h_q, h, L, S, E, br, bc = shape
    return f"B{batch}-Hq{h_q}-H{h}-L{L}-S{S}-E{E}-Br{br}-Bc{bc}"


# --- Task 1: the tiled loop, no mask ----------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_task_1_flash_attention_tiled_no_mask(shape):
    batch, h_q, h, L, S, E, br, bc = shape
    q, k, v = qkv(batch, h_q, h, L, S, E, seed=L + S)
    out, lse = check(q, k, v, block_q=br, block_k=bc)
    assert out.shape == (*batch, h_q, L, E) and lse.shape == (*batch, h_q, L)


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["no-batch", "batch-2x3"])
def test_task_1_any_number_of_batch_dimensions(batch):
    q, k, v = qkv(batch, 4, 2, 19, 23, 8, seed=3)
    out, lse = ta.flash_attention_tiled(q, k, v, block_q=8, block_k=8)
    assert out.shape == (*batch, 4, 19, 8) and lse.shape == (*batch, 4, 19)
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32_REORDERED)
    assert_allclose(lse, numpy_lse(q, k), **TOL_F32_REORDERED, what="lse")


def test_task_1_scale_and_a_value_width_of_its_own():
    q, k, _ = qkv((2,), 2, 2, 21, 30, 16, seed=4)
    v = rand((2, 2, 30, 24), seed=5)  # Ev = 24 != E = 16
    out, _ = check(q, k, v, scale=0.37, block_q=8, block_k=16)
    assert out.shape == (2, 2, 21, 24)


def test_task_1_block_sizes_do_not_change_the_answer():
    q, k, v = qkv((1,), 2, 1, 50, 61, 16, seed=6)
    first, first_lse = ta.flash_attention_tiled(q, k, v, block_q=50, block_k=61)
    for br, bc in ((1, 1), (7, 13), (16, 32), (64, 8)):
        out, lse = ta.flash_attention_tiled(q, k, v, block_q=br, block_k=bc)
        assert_allclose(out, first, **TOL_F32_REORDERED, what=f"Br={br}, Bc={bc}")
        assert_allclose(lse, first_lse, **TOL_F32_REORDERED, what=f"lse, Br={br}, Bc={bc}")


def test_task_1_large_scores_do_not_overflow():
    # Scores of several hundred: exp() of them overflows float32 without the running maximum.
    q, k, v = qkv((1,), 2, 2, 24, 40, 16, seed=7, scale=8.0)
    out, lse = check(q, k, v, scale=1.0, block_q=8, block_k=8)
    assert np.isfinite(np.array(out)).all() and float(mx.max(lse)) > 89.0


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["float16", "bfloat16"])
def test_task_1_half_precision(dtype):
    q, k, v = qkv((1,), 4, 2, 33, 45, 16, seed=8, dtype=dtype)
    out, lse = ta.flash_attention_tiled(q, k, v, block_q=16, block_k=16)
    assert out.dtype == dtype and lse.dtype == mx.float32
    tol = TOL_F16 if dtype == mx.float16 else TOL_BF16
    assert_allclose(out, mlx_sdpa(q, k, v), **tol)
    assert_allclose(lse, numpy_lse(q, k), **tol, what="lse")


def test_task_1_lse_merges_two_halves_of_the_keys():
    # With its lse, attention over keys [0, s) and over [s, S) combine into attention over all.
    q, k, v = qkv((2,), 4, 2, 17, 50, 8, seed=9)
    whole, whole_lse = ta.flash_attention_tiled(q, k, v, block_q=8, block_k=8)
    o_a, lse_a = ta.flash_attention_tiled(q, k[..., :19, :], v[..., :19, :], block_q=8, block_k=8)
    o_b, lse_b = ta.flash_attention_tiled(q, k[..., 19:, :], v[..., 19:, :], block_q=8, block_k=8)
    la, lb = to_numpy(lse_a)[..., None], to_numpy(lse_b)[..., None]
    lse = np.logaddexp(la, lb)
    merged = np.exp(la - lse) * to_numpy(o_a) + np.exp(lb - lse) * to_numpy(o_b)
    assert_allclose(merged, whole, **TOL_F32_REORDERED, what="merged halves")
    assert_allclose(lse[..., 0], whole_lse, **TOL_F32_REORDERED, what="merged lse")


# --- Task 2: masks -----------------------------------------------------------------------------

CAUSAL_SHAPES = [
    ((1,), 2, 2, 64, 64, 16, 32, 32),  # L == S, whole tiles: the diagonal tiles need the mask
    ((2,), 4, 2, 37, 53, 16, 8, 16),  # L < S: bottom-right
    ((1,), 3, 1, 53, 37, 16, 16, 8),  # L > S: the first 16 rows see no key at all
    ((1,), 2, 2, 53, 7, 8, 4, 3),  # L >> S: whole Q tiles of fully masked rows
    ((1,), 2, 1, 1, 70, 8, 32, 32),  # one query row (decoding): it sees everything
    ((1,), 1, 1, 30, 30, 8, 1, 1),  # one score per tile
]


@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=shape_id)
def test_task_2_causal(shape):
    batch, h_q, h, L, S, E, br, bc = shape
    q, k, v = qkv(batch, h_q, h, L, S, E, seed=L * S)
    check(q, k, v, mask="causal", block_q=br, block_k=bc, what="causal")


def test_task_2_causal_fully_masked_rows_average_the_values():
    # L > S: query i sees keys j <= i + S - L, so rows 0 .. L - S - 1 see none. MLX gives them
    # the mean of all the values, not NaN.
    q, k, v = qkv((1,), 2, 2, 12, 5, 8, seed=10)
    out, _ = check(q, k, v, mask="causal", block_q=4, block_k=2)
    mean_v = np.broadcast_to(to_numpy(v).mean(axis=-2, keepdims=True), (1, 2, 7, 8))
    assert_allclose(out[..., :7, :], mean_v, **TOL_F32_REORDERED, what="fully masked rows")


def additive_mask(shape, seed) -> mx.array:
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(shape).astype(np.float32)
    bias[rng.random(shape) < 0.3] = -np.inf
    return mx.array(bias)


# mask shapes broadcastable to (B, H_q, L, S) = (2, 4, 21, 35): full, per query head, shared
# by heads, per key only (padding), per query row only.
MASK_SHAPES = [(2, 4, 21, 35), (4, 21, 35), (21, 35), (2, 1, 1, 35), (1, 1, 21, 1)]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
def test_task_2_boolean_mask(mask_shape):
    q, k, v = qkv((2,), 4, 2, 21, 35, 8, seed=11)
    check(q, k, v, mask=rand_keep(mask_shape, seed=12, p_keep=0.6), block_q=8, block_k=16)


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
def test_task_2_additive_mask(mask_shape):
    q, k, v = qkv((2,), 4, 2, 21, 35, 8, seed=13)
    mask = additive_mask(mask_shape, seed=14) if mask_shape[-1] != 1 else rand(mask_shape, seed=14)
    check(q, k, v, mask=mask, block_q=8, block_k=16)


def test_task_2_boolean_fully_masked_rows_average_the_values():
    q, k, v = qkv((1,), 4, 2, 10, 19, 8, seed=15)
    keep = np.random.default_rng(16).random((1, 4, 10, 19)) < 0.5
    keep[0, 1, 3] = False  # one row of one head hides every key
    keep[0, :, 7] = False  # one row hides every key in every head
    out, _ = check(q, k, v, mask=mx.array(keep), block_q=4, block_k=8)
    mean_v = to_numpy(v).mean(axis=-2)  # (1, 2, 8): per key/value head
    assert_allclose(out[0, 1, 3], mean_v[0, 0], **TOL_F32_REORDERED, what="row (1, 3)")
    assert_allclose(out[0, 2, 7], mean_v[0, 1], **TOL_F32_REORDERED, what="row (2, 7)")


def test_task_2_additive_minus_inf_rows_and_tiles():
    # Additive -inf: a whole row gives NaN (as MLX does) and lse = -inf; rows whose first K
    # tiles are -inf only must not turn into NaN (-inf - (-inf)) once a finite score arrives.
    q, k, v = qkv((1,), 2, 2, 12, 40, 8, seed=17)
    bias = np.zeros((12, 40), dtype=np.float32)
    bias[:, :16] = -np.inf  # the first two K tiles (Bc = 8) of every row
    bias[5] = -np.inf  # row 5 sees nothing
    out, lse = check(q, k, v, mask=mx.array(bias), block_q=4, block_k=8)
    on, ln = np.array(out), np.array(lse)
    assert np.isnan(on[0, :, 5]).all() and np.isneginf(ln[0, :, 5]).all()
    others = np.delete(on, 5, axis=-2)
    assert np.isfinite(others).all()


def test_task_2_mask_per_query_head_with_gqa():
    # A different mask for each of the H_q = 6 query heads sharing H = 2 key/value heads:
    # query head i reads key/value head i // 3; the mask's heads must stay in query-head order.
    q, k, v = qkv((1,), 6, 2, 16, 24, 8, seed=18)
    check(q, k, v, mask=rand_keep((1, 6, 16, 24), seed=19, p_keep=0.6), block_q=8, block_k=8)
    check(q, k, v, mask=additive_mask((6, 16, 24), seed=20), block_q=8, block_k=8)


def test_task_2_masks_in_half_precision():
    q, k, v = qkv((1,), 2, 1, 20, 33, 16, seed=21, dtype=mx.float16)
    for mask in (
        "causal",
        rand_keep((20, 33), seed=22, p_keep=0.6),
        rand((20, 33), seed=23).astype(mx.float16),
    ):
        out, _ = ta.flash_attention_tiled(q, k, v, mask=mask, block_q=8, block_k=8)
        assert out.dtype == mx.float16
        assert_allclose(out, mlx_sdpa(q, k, v, mask=mask), **TOL_F16)
