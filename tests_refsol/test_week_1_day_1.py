"""Week 1, Day 1: softmax and scaled dot-product attention.

Book: book/src/week1-01-softmax-attention.md. References: mx.softmax, NumPy in float64 and
mx.fast.scaled_dot_product_attention (`mlx_sdpa`). Tolerances: TOL_F32 for float32 (the
same sums in the same order), TOL_F16 / TOL_BF16 for half precision.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_BF16,
    TOL_F16,
    TOL_F32,
    assert_allclose,
    mlx_sdpa,
    numpy_attention,
    qkv,
    rand,
    ta,
    to_numpy,
)

QUICK = settings(max_examples=20, deadline=None, derandomize=True)


# --- Task 1: softmax ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis",
    [((7,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 17), 1), ((2, 3, 17), -3), ((1, 1), -1)],
)
def test_task_1_softmax_matches_mlx_and_numpy(shape, axis):
    x = rand(shape, seed=1, scale=3.0)
    out = ta.softmax(x, axis=axis)
    assert out.shape == x.shape and out.dtype == mx.float32
    assert_allclose(out, mx.softmax(x, axis=axis, precise=True), **TOL_F32, what="vs mx.softmax")
    assert_allclose(out, numpy_softmax(to_numpy(x), axis), **TOL_F32, what="vs NumPy")


def test_task_1_softmax_default_axis_is_last():
    x = rand((4, 6), seed=2)
    assert_allclose(ta.softmax(x), numpy_softmax(to_numpy(x), -1), **TOL_F32)


def test_task_1_softmax_large_values_stay_finite():
    # exp(1000) overflows float32 (and float64): only the max subtraction saves this row.
    x = mx.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    out = ta.softmax(x)
    assert np.all(np.isfinite(to_numpy(out))), "softmax of large inputs must stay finite"
    assert_allclose(out, numpy_softmax(to_numpy(x), -1), **TOL_F32)


def test_task_1_softmax_minus_inf_entries_get_zero_weight():
    x = mx.array([[0.0, -math.inf, 1.0, -math.inf]])
    out = to_numpy(ta.softmax(x))
    assert out[0, 1] == 0.0 and out[0, 3] == 0.0
    assert_allclose(out, numpy_softmax(np.array([[0.0, -np.inf, 1.0, -np.inf]]), -1), **TOL_F32)


@pytest.mark.parametrize("dtype, tol", [(mx.float16, TOL_F16), (mx.bfloat16, TOL_BF16)])
def test_task_1_softmax_half_precision(dtype, tol):
    x = rand((5, 33), seed=3, scale=4.0, dtype=dtype)
    out = ta.softmax(x)
    assert out.dtype == dtype, "softmax keeps the input dtype"
    assert_allclose(out, numpy_softmax(to_numpy(x), -1), **tol)


@QUICK
@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 40),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_task_1_softmax_property(rows, cols, magnitude, seed):
    x = rand((rows, cols), seed=seed, scale=magnitude)
    out = to_numpy(ta.softmax(x))
    assert np.all(out >= 0) and np.all(out <= 1)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
    assert_allclose(out, numpy_softmax(to_numpy(x), -1), **TOL_F32)


# --- Task 2: scaled_dot_product_attention_simple --------------------------------------------

# (leading dims, L, S, E, Ev): no leading dims, batch and heads, odd sizes, L != S, Ev != E.
SHAPES = [
    ((), 1, 1, 1, 1),
    ((), 5, 7, 8, 8),
    ((1, 1), 16, 16, 32, 32),
    ((2, 3), 7, 13, 5, 5),
    ((2, 3), 13, 7, 5, 9),
    ((3,), 33, 65, 16, 16),
    ((2, 1, 2), 4, 3, 6, 2),
]


def as_rank4(x: mx.array) -> mx.array:
    """(..., N, D) -> (1, prod(...), N, D): mx.fast wants exactly 4 dimensions."""
    return x.reshape(1, -1, *x.shape[-2:])


def reference(q, k, v, scale=None, mask=None):
    """mlx_sdpa on the inputs folded to rank 4, unfolded back."""
    out = mlx_sdpa(as_rank4(q), as_rank4(k), as_rank4(v), scale=scale, mask=mask)
    return out.reshape(*q.shape[:-1], v.shape[-1])


def inputs(lead, L, S, E, Ev, seed, dtype=mx.float32):
    q = rand((*lead, L, E), seed=seed, dtype=dtype)
    k = rand((*lead, S, E), seed=seed + 1, dtype=dtype)
    v = rand((*lead, S, Ev), seed=seed + 2, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("lead, L, S, E, Ev", SHAPES)
def test_task_2_attention_simple_matches_mlx(lead, L, S, E, Ev):
    q, k, v = inputs(lead, L, S, E, Ev, seed=10)
    out = ta.scaled_dot_product_attention_simple(q, k, v)
    assert out.shape == (*lead, L, Ev) and out.dtype == mx.float32
    assert_allclose(out, reference(q, k, v), **TOL_F32, what="vs mx.fast")


@pytest.mark.parametrize("lead, L, S, E, Ev", SHAPES[2:5])
def test_task_2_attention_simple_matches_numpy(lead, L, S, E, Ev):
    q, k, v = inputs(lead, L, S, E, Ev, seed=20)
    out = ta.scaled_dot_product_attention_simple(q, k, v)
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32, what="vs NumPy float64")


@pytest.mark.parametrize("scale", [0.05, 1.0, 2.5])
def test_task_2_attention_simple_scale(scale):
    q, k, v = qkv((2,), 3, 3, 6, 9, 8, seed=30)
    out = ta.scaled_dot_product_attention_simple(q, k, v, scale=scale)
    assert_allclose(out, mlx_sdpa(q, k, v, scale=scale), **TOL_F32)


@pytest.mark.parametrize("mask_shape", [(6, 9), (1, 6, 9), (3, 6, 9), (2, 3, 6, 9), (6, 1)])
def test_task_2_attention_simple_additive_mask(mask_shape):
    q, k, v = qkv((2,), 3, 3, 6, 9, 8, seed=40)
    mask = rand(mask_shape, seed=41, scale=2.0)
    # Knock some keys out with -inf, but never a whole row (that is Day 3's business).
    keep = np.random.default_rng(42).random(mask_shape) < 0.7
    keep[..., 0] = True
    mask = mx.where(mx.array(keep), mask, -math.inf)
    out = ta.scaled_dot_product_attention_simple(q, k, v, mask=mask)
    assert_allclose(out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32, what="vs mx.fast")
    assert_allclose(out, numpy_attention(q, k, v, mask=mask), **TOL_F32, what="vs NumPy")


def test_task_2_attention_simple_broadcasts_leading_dims():
    # One key/value set shared by a batch of 4 queries.
    q = rand((4, 2, 5, 8), seed=50)
    k = rand((1, 2, 7, 8), seed=51)
    v = rand((1, 2, 7, 8), seed=52)
    out = ta.scaled_dot_product_attention_simple(q, k, v)
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32)


@pytest.mark.parametrize("dtype, tol", [(mx.float16, TOL_F16), (mx.bfloat16, TOL_BF16)])
def test_task_2_attention_simple_half_precision(dtype, tol):
    q, k, v = qkv((1,), 2, 2, 9, 17, 16, seed=60, dtype=dtype)
    out = ta.scaled_dot_product_attention_simple(q, k, v)
    assert out.dtype == dtype
    assert_allclose(out, mlx_sdpa(q, k, v), **tol)


@QUICK
@given(
    heads=st.integers(1, 3),
    L=st.integers(1, 12),
    S=st.integers(1, 12),
    E=st.integers(1, 12),
    magnitude=st.sampled_from([0.1, 1.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_task_2_attention_simple_property(heads, L, S, E, magnitude, seed):
    q, k, v = qkv((1,), heads, heads, L, S, E, seed=seed, scale=magnitude)
    out = ta.scaled_dot_product_attention_simple(q, k, v)
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32)
