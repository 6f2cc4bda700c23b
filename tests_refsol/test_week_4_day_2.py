"""Week 4, Day 2: FlashAttention-2's backward pass, tiled, in Python with MLX ops.

Book: book/src/week4-02-flash-attention-backward.md. References: MLX's autodiff (mx.vjp) through
mx.fast.scaled_dot_product_attention on the CPU for the gradients; the forward's out and lse the
backward starts from are computed here (MLX's attention, a float64 NumPy log-sum-exp), so a test
of the backward depends on no other day. Tolerances: TOL_F32_REORDERED (tiles reorder the sums),
TOL_F16 / TOL_BF16 for half precision. Structure: `on_tile(j, i)` reports every tile whose
scores the backward computes, in order; peak memory is read from MLX.
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
    qkv,
    rand,
    rand_keep,
    ta,
    to_numpy,
)

MASKED = float(np.finfo(np.float32).min)


def keep_matrix(L, S, mask, shape):
    """The boolean keep-mask (True = the score is visible) broadcast to `shape`, or None."""
    if isinstance(mask, str):
        keep = np.arange(S)[None, :] <= np.arange(L)[:, None] + (S - L)
        return np.broadcast_to(keep, shape)
    if mask is not None and mask.dtype == mx.bool_:
        return np.broadcast_to(np.array(mask), shape)
    return None


def numpy_lse(q, k, *, scale=None, mask=None) -> np.ndarray:
    """log sum_j exp(s_ij) in float64, hidden scores MASKED as MLX does, -inf for a -inf row."""
    qn, kn = to_numpy(q), to_numpy(k)
    scale = 1.0 / math.sqrt(qn.shape[-1]) if scale is None else scale
    kn = np.repeat(kn, qn.shape[-3] // kn.shape[-3], axis=-3)
    s = scale * qn @ np.swapaxes(kn, -1, -2)
    keep = keep_matrix(s.shape[-2], s.shape[-1], mask, s.shape)
    if keep is not None:
        s = np.where(keep, s, MASKED)
    elif mask is not None:
        s = s + to_numpy(mask)
    m = np.max(s, axis=-1, keepdims=True)
    shift = np.where(np.isneginf(m), 0.0, m)
    with np.errstate(divide="ignore"):
        return (shift + np.log(np.sum(np.exp(s - shift), axis=-1, keepdims=True)))[..., 0]


def forward(q, k, v, *, scale=None, mask=None):
    """What the forward saved: out (MLX's attention) and lse (float64 NumPy, as float32)."""
    out = mlx_sdpa(q, k, v, scale=scale, mask=mask)
    lse = mx.array(numpy_lse(q, k, scale=scale, mask=mask).astype(np.float32))
    return out, lse


def autodiff(q, k, v, d_out, *, scale=None, mask=None):
    """(dq, dk, dv) by mx.vjp through mx.fast.scaled_dot_product_attention, on the CPU."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    def f(a, b, c):
        return mx.fast.scaled_dot_product_attention(a, b, c, scale=scale, mask=mask)

    with mx.stream(mx.cpu):
        _, grads = mx.vjp(f, [q, k, v], [d_out])
        mx.eval(grads)
    return grads


def backward(q, k, v, d_out, *, scale=None, mask=None, block_q=32, block_k=32, saved=None):
    """flash_attention_tiled_backward from the forward's out and lse; also the tiles it visited."""
    out, lse = saved if saved is not None else forward(q, k, v, scale=scale, mask=mask)
    tiles = []
    grads = ta.flash_attention_tiled_backward(
        q,
        k,
        v,
        out,
        lse,
        d_out,
        scale=scale,
        mask=mask,
        block_q=block_q,
        block_k=block_k,
        on_tile=lambda j, i: tiles.append((j, i)),
    )
    assert isinstance(grads, tuple) and len(grads) == 3, "returns (d_query, d_key, d_value)"
    return grads, tiles


def check(q, k, v, d_out, *, scale=None, mask=None, block_q=32, block_k=32, what=""):
    grads, tiles = backward(
        q, k, v, d_out, scale=scale, mask=mask, block_q=block_q, block_k=block_k
    )
    expected = autodiff(q, k, v, d_out, scale=scale, mask=mask)
    for name, got, want, x in zip(
        ("d_query", "d_key", "d_value"), grads, expected, (q, k, v), strict=True
    ):
        assert got.dtype == x.dtype, f"{name} has the dtype of its input, got {got.dtype}"
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} {what}")
    return grads, tiles


def inputs(batch, h_q, h, L, S, E, seed, dtype=mx.float32):
    q, k, v = qkv(batch, h_q, h, L, S, E, seed=seed, dtype=dtype)
    return q, k, v, rand((*batch, h_q, L, E), seed=seed + 7, dtype=dtype)


def needed_tiles(L, S, Br, Bc, mask):
    """The (j, i) tiles a causal backward must compute, in K/V-outer order, from the mask alone:
    a tile with a visible score, or a tile holding a row that sees no key at all (its output is
    the mean of every value, so every value tile gets a share of its d_out)."""
    keep = keep_matrix(L, S, mask, (L, S))
    blind = ~keep.any(axis=1)
    pairs = []
    for j in range(math.ceil(S / Bc)):
        for i in range(math.ceil(L / Br)):
            rows = slice(i * Br, (i + 1) * Br)
            if keep[rows, j * Bc : (j + 1) * Bc].any() or blind[rows].any():
                pairs.append((j, i))
    return pairs


# (batch, H_q, H, L, S, E, block_q, block_k): tile multiples and not, L != S, GQA and MQA.
SHAPES = [
    ((1,), 1, 1, 1, 1, 8, 32, 32),  # one query, one key
    ((1,), 2, 2, 64, 64, 16, 32, 32),  # whole tiles
    ((2,), 3, 3, 37, 53, 16, 8, 16),  # ragged last tiles
    ((1,), 4, 2, 40, 24, 32, 16, 8),  # GQA, L > S
    ((2,), 6, 1, 7, 90, 8, 4, 32),  # MQA, L < S
    ((1,), 2, 2, 20, 20, 8, 64, 64),  # a tile larger than the sequence
    ((1,), 2, 1, 13, 17, 8, 1, 5),  # one query row per tile
]


def shape_id(shape) -> str:
    batch, h_q, h, L, S, E, br, bc = shape
    return f"B{batch}-Hq{h_q}-H{h}-L{L}-S{S}-E{E}-Br{br}-Bc{bc}"


# --- Task 1: the tiled backward, K/V tiles outside --------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_task_1_gradients_match_autodiff(shape):
    batch, h_q, h, L, S, E, br, bc = shape
    q, k, v, d_out = inputs(batch, h_q, h, L, S, E, seed=L + S)
    (dq, dk, dv), _ = check(q, k, v, d_out, block_q=br, block_k=bc)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_task_1_k_v_tiles_are_the_outer_loop():
    # FlashAttention-2's backward: for each K/V tile j, every Q tile i. dK_j and dV_j are
    # finished before the next j; every tile is computed exactly once.
    q, k, v, d_out = inputs((1,), 2, 2, 37, 53, 8, seed=1)
    _, tiles = check(q, k, v, d_out, block_q=8, block_k=16)
    Tr, Tc = math.ceil(37 / 8), math.ceil(53 / 16)
    assert tiles == [(j, i) for j in range(Tc) for i in range(Tr)], f"tiles in order: {tiles}"


def test_task_1_batch_scale_and_a_value_width_of_its_own():
    q, k, _, _ = inputs((2, 3), 2, 2, 9, 12, 16, seed=2)
    v = rand((2, 3, 2, 12, 24), seed=3)
    d_out = rand((2, 3, 2, 9, 24), seed=4)
    n = lambda x: x.reshape(6, *x.shape[2:])  # noqa: E731  (MLX's attention takes rank 4)
    out, lse = forward(n(q), n(k), n(v), scale=0.37)
    saved = (out.reshape(2, 3, 2, 9, 24), lse.reshape(2, 3, 2, 9))
    (dq, dk, dv), _ = backward(q, k, v, d_out, scale=0.37, block_q=4, block_k=8, saved=saved)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    expected = autodiff(n(q), n(k), n(v), n(d_out), scale=0.37)
    for name, got, want in zip(
        ("d_query", "d_key", "d_value"), (dq, dk, dv), expected, strict=True
    ):
        assert_allclose(n(got), want, **TOL_F32_REORDERED, what=name)


def test_task_1_block_sizes_do_not_change_the_answer():
    q, k, v, d_out = inputs((1,), 2, 1, 30, 41, 8, seed=5)
    first, _ = backward(q, k, v, d_out, block_q=30, block_k=41)
    for br, bc in ((1, 1), (7, 13), (16, 32), (64, 8)):
        grads, _ = backward(q, k, v, d_out, block_q=br, block_k=bc)
        for name, got, want in zip(("d_query", "d_key", "d_value"), grads, first, strict=True):
            assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name}, Br={br}, Bc={bc}")


def test_task_1_p_is_recomputed_from_the_saved_lse():
    # P_ij = exp(S_ij - lse_i): hand the backward lse + log 2 and every P halves, and with it
    # dV, dS (D comes from out, which is unchanged), dQ and dK.
    q, k, v, d_out = inputs((1,), 2, 2, 20, 24, 8, seed=6)
    out, lse = forward(q, k, v)
    grads, _ = backward(q, k, v, d_out, block_q=8, block_k=8, saved=(out, lse))
    halved, _ = backward(q, k, v, d_out, block_q=8, block_k=8, saved=(out, lse + math.log(2.0)))
    for name, g, h in zip(("d_query", "d_key", "d_value"), grads, halved, strict=True):
        assert_allclose(h, to_numpy(g) / 2, **TOL_F32_REORDERED, what=f"{name} with lse + log 2")


def test_task_1_d_comes_from_the_saved_output():
    # D_i = rowsum(dO_i * O_i) uses the saved out: change out and dQ, dK change, dV does not.
    q, k, v, d_out = inputs((1,), 2, 2, 12, 16, 8, seed=7)
    out, lse = forward(q, k, v)
    (dq, dk, dv), _ = backward(q, k, v, d_out, block_q=4, block_k=8, saved=(out, lse))
    (dq2, dk2, dv2), _ = backward(q, k, v, d_out, block_q=4, block_k=8, saved=(out + 1.0, lse))
    assert_allclose(dv2, dv, **TOL_F32_REORDERED, what="d_value does not read out")
    assert np.abs(to_numpy(dq2) - to_numpy(dq)).max() > 1e-3, "d_query must use D from out"


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["float16", "bfloat16"])
def test_task_1_half_precision(dtype):
    q, k, v, d_out = inputs((1,), 4, 2, 20, 27, 16, seed=8, dtype=dtype)
    f32 = [x.astype(mx.float32) for x in (q, k, v, d_out)]
    out, lse = forward(*f32[:3])
    grads, _ = backward(q, k, v, d_out, block_q=8, block_k=8, saved=(out.astype(dtype), lse))
    expected = autodiff(*f32)
    tol = TOL_F16 if dtype == mx.float16 else TOL_BF16
    for name, got, want in zip(("d_query", "d_key", "d_value"), grads, expected, strict=True):
        assert got.dtype == dtype, f"{name} is {dtype}, got {got.dtype}"
        assert_allclose(got, want, **tol, what=name)


# --- Task 2: masks, causal tile skipping, O(N) memory -----------------------------------------

CAUSAL_SHAPES = [
    ((1,), 2, 2, 64, 64, 16, 16, 16),  # L == S: the diagonal tiles need the mask
    ((2,), 4, 2, 37, 53, 8, 8, 16),  # L < S: bottom-right
    ((1,), 3, 1, 53, 37, 8, 16, 8),  # L > S: the first 16 rows see no key at all
    ((1,), 2, 2, 30, 7, 8, 4, 3),  # L >> S: whole Q tiles of rows that see nothing
]


@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=shape_id)
def test_task_2_causal(shape):
    batch, h_q, h, L, S, E, br, bc = shape
    q, k, v, d_out = inputs(batch, h_q, h, L, S, E, seed=L * S)
    _, tiles = check(q, k, v, d_out, mask="causal", block_q=br, block_k=bc, what="causal")
    assert tiles == needed_tiles(L, S, br, bc, "causal"), "the tiles a causal mask needs"


def test_task_2_causal_skips_the_hidden_tiles():
    # L = S = 128, Br = Bc = 32: 10 of the 16 tiles hold a visible score.
    q, k, v, d_out = inputs((1,), 1, 1, 128, 128, 8, seed=9)
    _, full = backward(q, k, v, d_out)
    _, tiles = check(q, k, v, d_out, mask="causal", what="causal")
    assert len(full) == 16 and len(tiles) == 10, f"visited {len(tiles)} tiles of {len(full)}"
    assert all(j <= i for j, i in tiles), "a tile above the diagonal was computed"


MASK_SHAPES = [(2, 4, 21, 35), (4, 21, 35), (21, 35), (2, 1, 1, 35), (1, 1, 21, 1)]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
def test_task_2_boolean_mask(mask_shape):
    q, k, v, d_out = inputs((2,), 4, 2, 21, 35, 8, seed=10)
    check(q, k, v, d_out, mask=rand_keep(mask_shape, seed=11, p_keep=0.6), block_q=8, block_k=16)


def test_task_2_boolean_rows_that_see_no_key():
    # A row that hides every key: lse = MASKED + log(S) is MASKED in float32, yet its P is 1/S.
    q, k, v, d_out = inputs((1,), 4, 2, 10, 19, 8, seed=12)
    keep = np.random.default_rng(13).random((1, 4, 10, 19)) < 0.5
    keep[0, 1, 3] = False
    keep[0, :, 7] = False
    (dq, _, _), _ = check(q, k, v, d_out, mask=mx.array(keep), block_q=4, block_k=8)
    assert np.all(to_numpy(dq)[0, 1, 3] == 0) and np.all(to_numpy(dq)[0, :, 7] == 0)


def additive_mask(shape, seed) -> mx.array:
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(shape).astype(np.float32)
    bias[rng.random(shape) < 0.3] = -np.inf
    bias[..., -1] = 0.0  # every row keeps a key
    return mx.array(bias)


@pytest.mark.parametrize("mask_shape", MASK_SHAPES[:4], ids=str)
def test_task_2_additive_mask(mask_shape):
    q, k, v, d_out = inputs((2,), 4, 2, 21, 35, 8, seed=14)
    check(q, k, v, d_out, mask=additive_mask(mask_shape, seed=15), block_q=8, block_k=16)


def test_task_2_additive_minus_inf_tiles():
    # Whole tiles of -inf: P = exp(-inf - lse) = 0 there, no NaN.
    q, k, v, d_out = inputs((1,), 2, 2, 12, 40, 8, seed=16)
    bias = np.zeros((12, 40), dtype=np.float32)
    bias[:, :16] = -np.inf
    grads, _ = check(q, k, v, d_out, mask=mx.array(bias), block_q=4, block_k=8)
    assert all(np.isfinite(to_numpy(g)).all() for g in grads)
    assert np.all(to_numpy(grads[2])[0, :, :16] == 0), "a hidden value gets no gradient"


def test_task_2_mask_per_query_head_with_gqa():
    q, k, v, d_out = inputs((1,), 6, 2, 16, 24, 8, seed=17)
    check(q, k, v, d_out, mask=rand_keep((1, 6, 16, 24), seed=18, p_keep=0.6), block_q=8)
    check(q, k, v, d_out, mask=additive_mask((6, 16, 24), seed=19), block_q=8, block_k=8)


def test_task_2_memory_grows_with_n_not_n_squared():
    # One head, L = S = 1024, E = 64: one L x S float32 matrix is 4 MiB. The backward's peak
    # (its temporaries and its three outputs, 0.75 MiB) must stay well under it.
    n, E = 1024, 64
    q, k, v, d_out = inputs((1,), 1, 1, n, n, E, seed=20)
    out, lse = forward(q, k, v)
    mx.eval(q, k, v, d_out, out, lse)
    mx.synchronize()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    grads = ta.flash_attention_tiled_backward(q, k, v, out, lse, d_out, block_q=128, block_k=128)
    mx.eval(grads)
    peak = mx.get_peak_memory() - before
    scores = n * n * 4
    assert peak < scores / 2, f"peak {peak / 2**20:.2f} MiB, one L x S matrix is 4 MiB"


# --- Task 3: mx.grad through the tiled attention ----------------------------------------------


def test_task_3_grad_through_flash_attention_trainable():
    q, k, v, d_out = inputs((2,), 4, 2, 19, 23, 8, seed=21)

    def loss(a, b, c):
        return mx.sum(ta.flash_attention_trainable(a, b, c, block_q=8, block_k=8) * d_out)

    value, grads = mx.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    expected = autodiff(q, k, v, d_out)
    assert_allclose(value, mx.sum(mlx_sdpa(q, k, v) * d_out), **TOL_F32_REORDERED, what="loss")
    for name, got, want in zip(("d_query", "d_key", "d_value"), grads, expected, strict=True):
        assert_allclose(got, want, **TOL_F32_REORDERED, what=name)


@pytest.mark.parametrize("mask", ["causal", "boolean", "additive"])
def test_task_3_grad_with_masks(mask):
    q, k, v, d_out = inputs((1,), 4, 2, 21, 17, 8, seed=22)
    m = {
        "causal": "causal",
        "boolean": rand_keep((21, 17), seed=23, p_keep=0.6),
        "additive": additive_mask((4, 21, 17), seed=24),
    }[mask]
    out = ta.flash_attention_trainable(q, k, v, mask=m, block_q=4, block_k=4)
    assert_allclose(out, mlx_sdpa(q, k, v, mask=m), **TOL_F32_REORDERED, what="output")
    _, grads = mx.vjp(
        lambda a, b, c: ta.flash_attention_trainable(a, b, c, mask=m, block_q=4, block_k=4),
        [q, k, v],
        [d_out],
    )
    expected = autodiff(q, k, v, d_out, mask=m)
    for name, got, want in zip(("d_query", "d_key", "d_value"), grads, expected, strict=True):
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} ({mask})")


# --- Task 4: bad input is a clear error ------------------------------------------------------


def good():
    q, k, v, d_out = inputs((2,), 4, 2, 8, 12, 16, seed=25)
    out, lse = forward(q, k, v)
    return {"query": q, "key": k, "value": v, "out": out, "lse": lse, "d_out": d_out}


BAD_INPUTS = [
    ("out not an array", lambda a: {**a, "out": np.array(a["out"])}, TypeError, "out"),
    ("out shape", lambda a: {**a, "out": a["out"][..., :4, :]}, ValueError, "out"),
    ("lse not an array", lambda a: {**a, "lse": 0.0}, TypeError, "lse"),
    ("lse dtype", lambda a: {**a, "lse": a["lse"].astype(mx.float16)}, TypeError, "lse"),
    ("lse shape", lambda a: {**a, "lse": a["lse"][..., None]}, ValueError, "lse"),
    ("d_out dtype", lambda a: {**a, "d_out": a["d_out"].astype(mx.float16)}, TypeError, "d_out"),
    ("d_out shape", lambda a: {**a, "d_out": a["d_out"][:1]}, ValueError, "d_out"),
    ("query rank", lambda a: {**a, "query": a["query"][0, 0]}, ValueError, "query"),
    ("E differs", lambda a: {**a, "key": a["key"][..., :8]}, ValueError, "key"),
    ("mask shape", lambda a: {**a, "mask": mx.zeros((8, 11))}, ValueError, "mask"),
    ("block_q = 0", lambda a: {**a, "block_q": 0}, ValueError, "block_q"),
    ("block_k float", lambda a: {**a, "block_k": 8.0}, TypeError, "block_k"),
    ("on_tile", lambda a: {**a, "on_tile": 3}, TypeError, "on_tile"),
]


@pytest.mark.parametrize(
    "change,error,words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_task_4_bad_input_is_a_clear_error(change, error, words):
    with pytest.raises(error, match=words):
        ta.flash_attention_tiled_backward(**change(good()))


def test_task_4_flash_attention_trainable_checks_its_arguments():
    a = good()
    with pytest.raises(ValueError, match="block_q"):
        ta.flash_attention_trainable(a["query"], a["key"], a["value"], block_q=0)
    with pytest.raises(ValueError, match="mask"):
        ta.flash_attention_trainable(a["query"], a["key"], a["value"], mask="upper")
