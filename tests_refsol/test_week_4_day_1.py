"""Week 4, Day 1: the gradients of attention, a naive backward pass with MLX ops.

Book: book/src/week4-01-gradients.md. References: MLX's own autodiff (mx.vjp) through a naive
attention written here with MLX ops and through mx.fast.scaled_dot_product_attention, and
central finite differences of a float64 NumPy attention. Tolerances: TOL_F32_REORDERED against
autodiff (another order of the same sums); FD_TOL against finite differences (float32 gradients
against float64 differences); TOL_F16 / TOL_BF16 for half precision.
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
    numpy_attention,
    qkv,
    rand,
    rand_keep,
    ta,
    to_numpy,
)

# float32 gradients against float64 central differences.
FD_TOL = {"rtol": 1e-3, "atol": 1e-4}
MASKED = float(np.finfo(np.float32).min)


def mlx_naive_attention(q, k, v, *, scale=None, mask=None):
    """Attention with plain MLX ops (K and V repeated for GQA), for mx.vjp to differentiate."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    G = q.shape[-3] // k.shape[-3]
    k, v = mx.repeat(k, G, axis=-3), mx.repeat(v, G, axis=-3)
    s = scale * (q @ mx.swapaxes(k, -1, -2))
    L, S = s.shape[-2:]
    if isinstance(mask, str):
        mask = mx.arange(S)[None, :] <= mx.arange(L)[:, None] + (S - L)
    if mask is not None and mask.dtype == mx.bool_:
        s = mx.where(mask, s, mx.array(MASKED, s.dtype))
    elif mask is not None:
        s = s + mask
    return mx.softmax(s, axis=-1, precise=True) @ v


def autodiff(fn, q, k, v, d_out, **kw):
    """(dq, dk, dv) of sum(fn(q, k, v) * d_out) by MLX's autodiff, on the CPU."""
    with mx.stream(mx.cpu):
        _, grads = mx.vjp(lambda a, b, c: fn(a, b, c, **kw), [q, k, v], [d_out])
        mx.eval(grads)
    return grads


def fast_sdpa(q, k, v, *, scale=None, mask=None):
    """MLX's fused attention, which takes rank-4 inputs: batch dimensions flattened into one."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch = q.shape[:-3]
    q4, k4, v4 = (x.reshape(-1, *x.shape[-3:]) for x in (q, k, v))
    if isinstance(mask, mx.array) and mask.ndim > 4 - (len(batch) != 1):
        mask = mx.broadcast_to(mask, (*q.shape[:-1], k.shape[-2])).reshape(
            -1, *q.shape[-3:-1], k.shape[-2]
        )
    out = mx.fast.scaled_dot_product_attention(q4, k4, v4, scale=scale, mask=mask)
    return out.reshape(*batch, *out.shape[-3:])


def check(q, k, v, d_out, *, scale=None, mask=None, what=""):
    """attention_backward against mx.vjp of the naive attention and of MLX's fast one."""
    grads = ta.attention_backward(q, k, v, d_out, scale=scale, mask=mask)
    assert isinstance(grads, tuple) and len(grads) == 3, "returns (d_query, d_key, d_value)"
    for ref_fn, ref_name in ((mlx_naive_attention, "naive"), (fast_sdpa, "mx.fast")):
        expected = autodiff(ref_fn, q, k, v, d_out, scale=scale, mask=mask)
        for name, got, want, x in zip(
            ("d_query", "d_key", "d_value"), grads, expected, (q, k, v), strict=True
        ):
            assert got.dtype == x.dtype, f"{name} has the dtype of its input, got {got.dtype}"
            assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} vs {ref_name} {what}")
    return grads


def finite_differences(q, k, v, d_out, *, scale=None, mask=None, eps=1e-6):
    """d/dx sum(attention * d_out) for every entry of q, k and v, central differences, float64."""
    qn, kn, vn, dn = (to_numpy(x) for x in (q, k, v, d_out))
    mask_np = mask if mask is None or isinstance(mask, str) else mx.array(mask)

    def loss(a, b, c):
        return float(np.sum(numpy_attention(a, b, c, scale=scale, mask=mask_np) * dn))

    grads = []
    for which in range(3):
        args = [qn.copy(), kn.copy(), vn.copy()]
        x = args[which]
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            up = loss(*args)
            x[idx] = old - eps
            down = loss(*args)
            x[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_finite_differences(q, k, v, d_out, *, scale=None, mask=None):
    got = ta.attention_backward(q, k, v, d_out, scale=scale, mask=mask)
    want = finite_differences(q, k, v, d_out, scale=scale, mask=mask)
    for name, g, w in zip(("d_query", "d_key", "d_value"), got, want, strict=True):
        assert_allclose(g, w, **FD_TOL, what=f"{name} vs float64 finite differences")


# (batch, H_q, H, L, S, E): one row, L != S both ways, batch dimensions, E = 64.
SHAPES = [
    ((1,), 1, 1, 1, 1, 8),
    ((1,), 2, 2, 16, 16, 16),
    ((2,), 3, 3, 7, 19, 8),
    ((1,), 1, 1, 33, 5, 32),
    ((1,), 2, 2, 40, 40, 64),
]


def shape_id(shape) -> str:
    batch, h_q, h, L, S, E = shape
    return f"B{batch}-Hq{h_q}-H{h}-L{L}-S{S}-E{E}"


def inputs(batch, h_q, h, L, S, E, seed, dtype=mx.float32, Ev=None):
    q, k, v = qkv(batch, h_q, h, L, S, E, seed=seed, dtype=dtype)
    if Ev is not None:
        v = rand((*batch, h, S, Ev), seed=seed + 5, dtype=dtype)
    d_out = rand((*batch, h_q, L, v.shape[-1]), seed=seed + 7, dtype=dtype)
    return q, k, v, d_out


# --- Task 1: the gradients, no mask ----------------------------------------------------------


def test_task_1_the_worked_example_of_the_chapter():
    # One query, three keys, E = Ev = 2, scale = 1: the numbers the chapter works through.
    q = mx.array([[[[1.0, 0.0]]]])
    k = mx.array([[[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]])
    v = mx.array([[[[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]]])
    d_out = mx.array([[[[1.0, -1.0]]]])
    dq, dk, dv = check(q, k, v, d_out, scale=1.0)
    p = np.exp([1.0, 0.0, 1.0]) / np.sum(np.exp([1.0, 0.0, 1.0]))
    assert_allclose(dv[0, 0], p[:, None] * np.array([[1.0, -1.0]]), **TOL_F32_REORDERED, what="dv")


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_task_1_gradients_match_autodiff(shape):
    q, k, v, d_out = inputs(*shape, seed=sum(shape[1:]))
    dq, dk, dv = check(q, k, v, d_out)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_task_1_gradients_match_finite_differences():
    q, k, v, d_out = inputs((1,), 2, 2, 3, 4, 3, seed=1)
    check_finite_differences(q, k, v, d_out, scale=0.7)


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["no-batch", "batch-2x3"])
def test_task_1_any_number_of_batch_dimensions(batch):
    q, k, v, d_out = inputs(batch, 2, 2, 5, 6, 8, seed=2)
    check(q, k, v, d_out)


def test_task_1_scale_and_a_value_width_of_its_own():
    q, k, v, d_out = inputs((2,), 2, 2, 9, 12, 16, seed=3, Ev=24)
    dq, dk, dv = check(q, k, v, d_out, scale=0.37)
    assert dv.shape == (2, 2, 12, 24) and dq.shape == (2, 2, 9, 16)


def test_task_1_key_gradients_sum_to_zero():
    # Adding one vector c to every key adds scale * q . c to every score of a row, which the
    # softmax cancels: the loss does not change, so the sum of d_key over the keys is 0.
    q, k, v, d_out = inputs((1,), 2, 2, 11, 13, 8, seed=4)
    _, dk, _ = ta.attention_backward(q, k, v, d_out)
    total = to_numpy(dk).sum(axis=-2)
    scale = np.abs(to_numpy(dk)).max()
    assert np.abs(total).max() < 1e-5 * scale * 13, f"sum of d_key over the keys: {total}"


def test_task_1_large_scores_do_not_overflow():
    q, k, v, d_out = inputs((1,), 2, 2, 12, 20, 16, seed=5)
    q = q * 8.0  # scores up to about 100 with scale = 1: exp() overflows without the row maximum
    grads = ta.attention_backward(q, k, v, d_out, scale=1.0)
    expected = autodiff(mlx_naive_attention, q, k, v, d_out, scale=1.0)
    for name, got, want in zip(("d_query", "d_key", "d_value"), grads, expected, strict=True):
        assert np.isfinite(to_numpy(got)).all(), f"{name} has inf or NaN"
        # Nearly one-hot rows: dS = P * (dP - D) cancels, so compare against the largest entry.
        atol = 1e-5 * float(np.abs(to_numpy(want)).max())
        assert_allclose(got, want, rtol=1e-4, atol=atol, what=name)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["float16", "bfloat16"])
def test_task_1_half_precision(dtype):
    q, k, v, d_out = inputs((1,), 2, 2, 10, 14, 16, seed=6, dtype=dtype)
    grads = ta.attention_backward(q, k, v, d_out)
    f32 = [x.astype(mx.float32) for x in (q, k, v, d_out)]
    expected = autodiff(mlx_naive_attention, *f32)
    tol = TOL_F16 if dtype == mx.float16 else TOL_BF16
    for name, got, want in zip(("d_query", "d_key", "d_value"), grads, expected, strict=True):
        assert got.dtype == dtype, f"{name} is {dtype}, got {got.dtype}"
        assert_allclose(got, want, **tol, what=name)


# --- Task 2: masks -----------------------------------------------------------------------------

CAUSAL_SHAPES = [
    ((1,), 2, 2, 16, 16, 8),  # L == S
    ((2,), 2, 2, 7, 19, 8),  # L < S: bottom-right
    ((1,), 2, 2, 19, 7, 8),  # L > S: the first 12 rows see no key
]


@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=shape_id)
def test_task_2_causal(shape):
    q, k, v, d_out = inputs(*shape, seed=shape[3] * shape[4])
    check(q, k, v, d_out, mask="causal", what="causal")


def test_task_2_causal_matches_finite_differences():
    q, k, v, d_out = inputs((1,), 1, 1, 3, 5, 3, seed=7)
    check_finite_differences(q, k, v, d_out, mask="causal")


def test_task_2_rows_that_see_no_key():
    # L > S, causal: rows 0 .. L - S - 1 see nothing and output the mean of the values. Their
    # scores are constants, so d_query is 0 there and they give d_key nothing; but each value
    # still receives 1/S of their d_out.
    L, S = 6, 3
    q, k, v, d_out = inputs((1,), 1, 1, L, S, 4, seed=8)
    dq, dk, dv = check(q, k, v, d_out, mask="causal")
    assert np.all(to_numpy(dq)[0, 0, : L - S] == 0.0), "d_query of a row that sees nothing is 0"
    _, dk_rest, dv_rest = ta.attention_backward(
        q[..., L - S :, :], k, v, d_out[..., L - S :, :], mask="causal"
    )
    assert_allclose(dk, dk_rest, **TOL_F32_REORDERED, what="d_key: the blind rows add nothing")
    blind = to_numpy(d_out)[0, 0, : L - S].sum(axis=0) / S  # what each value gets from them
    assert_allclose(
        to_numpy(dv) - to_numpy(dv_rest),
        np.broadcast_to(blind, (1, 1, S, 4)),
        **TOL_F32_REORDERED,
        what="d_value: 1/S of each blind row's d_out",
    )


MASK_SHAPES = [(2, 4, 9, 13), (4, 9, 13), (9, 13), (2, 1, 1, 13), (1, 1, 9, 1)]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
def test_task_2_boolean_mask(mask_shape):
    q, k, v, d_out = inputs((2,), 4, 4, 9, 13, 8, seed=9)
    check(q, k, v, d_out, mask=rand_keep(mask_shape, seed=10, p_keep=0.7), what="boolean")


def test_task_2_boolean_fully_masked_rows():
    q, k, v, d_out = inputs((1,), 2, 2, 8, 10, 8, seed=11)
    keep = np.random.default_rng(12).random((1, 2, 8, 10)) < 0.6
    keep[0, 1, 3] = False  # one row of one head hides every key
    keep[0, :, 5] = False  # one row hides every key in every head
    dq, _, _ = check(q, k, v, d_out, mask=mx.array(keep), what="fully masked rows")
    dqn = to_numpy(dq)
    assert np.all(dqn[0, 1, 3] == 0) and np.all(dqn[0, :, 5] == 0)


def additive_mask(shape, seed) -> mx.array:
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(shape).astype(np.float32)
    bias[rng.random(shape) < 0.3] = -np.inf
    bias[..., 0] = 0.0  # every row keeps at least one key
    return mx.array(bias)


@pytest.mark.parametrize("mask_shape", MASK_SHAPES[:4], ids=str)
def test_task_2_additive_mask(mask_shape):
    q, k, v, d_out = inputs((2,), 4, 4, 9, 13, 8, seed=13)
    check(q, k, v, d_out, mask=additive_mask(mask_shape, seed=14), what="additive")


def test_task_2_additive_mask_matches_finite_differences():
    q, k, v, d_out = inputs((1,), 1, 1, 3, 4, 3, seed=15)
    bias = np.array(to_numpy(rand((3, 4), seed=16)), dtype=np.float32)
    bias[1, 2] = -np.inf
    check_finite_differences(q, k, v, d_out, mask=mx.array(bias))


# --- Task 3: grouped-query attention ----------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [((1,), 6, 2, 10, 14, 8), ((2,), 4, 1, 9, 5, 16)], ids=["GQA-6-2", "MQA-4-1"]
)
def test_task_3_gqa_sums_over_the_group(shape):
    q, k, v, d_out = inputs(*shape, seed=17)
    dq, dk, dv = check(q, k, v, d_out, what="GQA")
    assert dk.shape == k.shape and dv.shape == v.shape
    # The same as repeating K and V for every query head, then summing each group's gradients.
    G = shape[1] // shape[2]
    _, dk_rep, dv_rep = ta.attention_backward(
        q, mx.repeat(k, G, axis=-3), mx.repeat(v, G, axis=-3), d_out
    )
    folded = to_numpy(dk_rep).reshape(*k.shape[:-3], shape[2], G, *k.shape[-2:]).sum(axis=-3)
    assert_allclose(dk, folded, **TOL_F32_REORDERED, what="d_key = sum over the group")
    folded = to_numpy(dv_rep).reshape(*v.shape[:-3], shape[2], G, *v.shape[-2:]).sum(axis=-3)
    assert_allclose(dv, folded, **TOL_F32_REORDERED, what="d_value = sum over the group")


def test_task_3_gqa_with_masks():
    q, k, v, d_out = inputs((1,), 6, 2, 12, 17, 8, seed=18)
    check(q, k, v, d_out, mask="causal", what="GQA causal")
    check(q, k, v, d_out, mask=rand_keep((1, 6, 12, 17), seed=19, p_keep=0.6), what="GQA bool")
    check(q, k, v, d_out, mask=additive_mask((6, 12, 17), seed=20), what="GQA additive")


def test_task_3_gqa_matches_finite_differences():
    q, k, v, d_out = inputs((1,), 4, 2, 3, 4, 2, seed=21)
    check_finite_differences(q, k, v, d_out, mask="causal")


# --- Task 4: bad input is a clear error ------------------------------------------------------


def good():
    q, k, v, d_out = inputs((2,), 4, 2, 8, 12, 16, seed=22)
    return {"query": q, "key": k, "value": v, "d_out": d_out}


BAD_INPUTS = [
    ("d_out not an array", lambda a: {**a, "d_out": np.array(a["d_out"])}, TypeError, "d_out"),
    ("d_out dtype", lambda a: {**a, "d_out": a["d_out"].astype(mx.float16)}, TypeError, "d_out"),
    ("d_out shape", lambda a: {**a, "d_out": a["d_out"][..., :5, :]}, ValueError, "d_out"),
    ("d_out heads", lambda a: {**a, "d_out": a["d_out"][:, :2]}, ValueError, "d_out"),
    ("query rank", lambda a: {**a, "query": a["query"][0, 0]}, ValueError, "query"),
    ("integer key", lambda a: {**a, "key": a["key"].astype(mx.int32)}, TypeError, "key"),
    ("E differs", lambda a: {**a, "key": a["key"][..., :8]}, ValueError, "key"),
    ("value S differs", lambda a: {**a, "value": a["value"][..., :5, :]}, ValueError, "value"),
    (
        "H_q % H",
        lambda a: {
            **a,
            "key": mx.concatenate([a["key"], a["key"][:, :1]], axis=1),
            "value": mx.concatenate([a["value"], a["value"][:, :1]], axis=1),
        },
        ValueError,
        "multiple",
    ),
    ("mask shape", lambda a: {**a, "mask": mx.zeros((8, 11))}, ValueError, "mask"),
    ("mask string", lambda a: {**a, "mask": "upper"}, ValueError, "mask"),
    ("scale string", lambda a: {**a, "scale": "0.5"}, TypeError, "scale"),
]


@pytest.mark.parametrize(
    "change,error,words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_task_4_bad_input_is_a_clear_error(change, error, words):
    with pytest.raises(error, match=words):
        ta.attention_backward(**change(good()))
