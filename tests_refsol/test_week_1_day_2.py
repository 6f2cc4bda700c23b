"""Week 1, Day 2: multi-head attention with projections.

Book: book/src/week1-02-multi-head-attention.md. References: NumPy reshapes for the head
helpers; for the layer, mx.fast.scaled_dot_product_attention on heads projected and split
here with plain MLX ops, and mlx.nn.MultiHeadAttention loaded with the same weights.
Tolerance: TOL_F32 (same operations, same order up to the projections' matmuls).
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import TOL_F32, assert_allclose, mlx_sdpa, rand, ta, to_numpy

QUICK = settings(max_examples=15, deadline=None, derandomize=True)


# --- Task 1: split_heads and merge_heads ------------------------------------------------------


@pytest.mark.parametrize(
    "lead, L, H, E", [((), 1, 1, 1), ((), 5, 3, 4), ((2,), 7, 4, 8), ((2, 3), 6, 2, 5)]
)
def test_task_1_split_heads_matches_numpy(lead, L, H, E):
    x = rand((*lead, L, H * E), seed=1)
    out = ta.split_heads(x, H)
    assert out.shape == (*lead, H, L, E)
    expected = np.swapaxes(to_numpy(x).reshape(*lead, L, H, E), -3, -2)
    assert_allclose(out, expected, rtol=0, atol=0, what="split_heads is a pure rearrangement")


@pytest.mark.parametrize("lead, H, L, E", [((), 1, 1, 1), ((), 3, 5, 4), ((2, 3), 4, 7, 2)])
def test_task_1_merge_heads_matches_numpy(lead, H, L, E):
    x = rand((*lead, H, L, E), seed=2)
    out = ta.merge_heads(x)
    assert out.shape == (*lead, L, H * E)
    expected = np.swapaxes(to_numpy(x), -3, -2).reshape(*lead, L, H * E)
    assert_allclose(out, expected, rtol=0, atol=0, what="merge_heads is a pure rearrangement")


def test_task_1_head_h_is_columns_h_times_E():
    # The convention MLX and every checkpoint use: head h owns columns h*E .. h*E + E - 1.
    L, H, E = 3, 4, 2
    x = mx.arange(L * H * E, dtype=mx.float32).reshape(L, H * E)
    heads = to_numpy(ta.split_heads(x, H))
    for h in range(H):
        np.testing.assert_array_equal(heads[h], to_numpy(x)[:, h * E : (h + 1) * E])


@QUICK
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    L=st.integers(1, 6),
    H=st.integers(1, 5),
    E=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_task_1_merge_undoes_split_property(lead, L, H, E, seed):
    x = rand((*lead, L, H * E), seed=seed)
    np.testing.assert_array_equal(to_numpy(ta.merge_heads(ta.split_heads(x, H))), to_numpy(x))


# --- Task 2: MultiHeadAttention ---------------------------------------------------------------


def make_weights(Dq, Dk, Dv, H, E, Ev, D_out, seed):
    # Scaled like a trained layer's (about 1/sqrt(fan_in)), so the scores stay moderate.
    wq = rand((Dq, H * E), seed=seed, scale=1 / math.sqrt(Dq))
    wk = rand((Dk, H * E), seed=seed + 1, scale=1 / math.sqrt(Dk))
    wv = rand((Dv, H * Ev), seed=seed + 2, scale=1 / math.sqrt(Dv))
    wo = rand((H * Ev, D_out), seed=seed + 3, scale=1 / math.sqrt(H * Ev))
    return wq, wk, wv, wo


def expected_with_mx_fast(x_q, x_k, x_v, H, wq, wk, wv, wo, mask=None):
    """The same layer, written with MLX ops and mx.fast.scaled_dot_product_attention."""

    def heads(x):  # (B, N, H*E) -> (B, H, N, E)
        return x.reshape(*x.shape[:-1], H, -1).transpose(0, 2, 1, 3)

    q, k, v = heads(x_q @ wq), heads(x_k @ wk), heads(x_v @ wv)
    o = mlx_sdpa(q, k, v, mask=mask)  # scale 1/sqrt(E)
    return o.transpose(0, 2, 1, 3).reshape(*x_q.shape[:-1], -1) @ wo


def mlx_nn_layer(H, wq, wk, wv, wo):
    """mlx.nn.MultiHeadAttention holding our weights. nn.Linear keeps (out, in): transpose."""
    layer = nn.MultiHeadAttention(
        dims=wq.shape[1],
        num_heads=H,
        query_input_dims=wq.shape[0],
        key_input_dims=wk.shape[0],
        value_input_dims=wv.shape[0],
        value_dims=wv.shape[1],
        value_output_dims=wo.shape[1],
        bias=False,
    )
    layer.query_proj.weight = wq.T
    layer.key_proj.weight = wk.T
    layer.value_proj.weight = wv.T
    layer.out_proj.weight = wo.T
    return layer


# (B, L, S, Dq, Dk, Dv, H, E, Ev, D_out)
LAYERS = [
    (1, 1, 1, 8, 8, 8, 1, 8, 8, 8),
    (2, 5, 5, 16, 16, 16, 4, 4, 4, 16),
    (2, 7, 11, 12, 10, 9, 3, 5, 5, 12),
    (3, 9, 4, 24, 24, 24, 2, 12, 7, 6),
]


@pytest.mark.parametrize("B, L, S, Dq, Dk, Dv, H, E, Ev, D_out", LAYERS)
def test_task_2_mha_matches_mx_fast(B, L, S, Dq, Dk, Dv, H, E, Ev, D_out):
    wq, wk, wv, wo = make_weights(Dq, Dk, Dv, H, E, Ev, D_out, seed=10)
    x_q, x_k, x_v = rand((B, L, Dq), seed=20), rand((B, S, Dk), seed=21), rand((B, S, Dv), seed=22)
    out = ta.MultiHeadAttention(H, wq, wk, wv, wo)(x_q, x_k, x_v)
    assert out.shape == (B, L, D_out)
    expected = expected_with_mx_fast(x_q, x_k, x_v, H, wq, wk, wv, wo)
    assert_allclose(out, expected, **TOL_F32)


@pytest.mark.parametrize("B, L, S, Dq, Dk, Dv, H, E, Ev, D_out", LAYERS)
def test_task_2_mha_matches_mlx_nn(B, L, S, Dq, Dk, Dv, H, E, Ev, D_out):
    wq, wk, wv, wo = make_weights(Dq, Dk, Dv, H, E, Ev, D_out, seed=30)
    x_q, x_k, x_v = rand((B, L, Dq), seed=40), rand((B, S, Dk), seed=41), rand((B, S, Dv), seed=42)
    out = ta.MultiHeadAttention(H, wq, wk, wv, wo)(x_q, x_k, x_v)
    with mx.stream(mx.cpu):
        expected = mlx_nn_layer(H, wq, wk, wv, wo)(x_q, x_k, x_v)
    assert_allclose(out, expected, **TOL_F32, what="vs mlx.nn.MultiHeadAttention")


@pytest.mark.parametrize("mask_shape", [(6, 6), (2, 1, 6, 6), (1, 4, 6, 6)])
def test_task_2_mha_additive_mask(mask_shape):
    B, L, D, H = 2, 6, 16, 4
    wq, wk, wv, wo = make_weights(D, D, D, H, 4, 4, D, seed=50)
    x = rand((B, L, D), seed=60)
    mask = rand(mask_shape, seed=61)
    # A causal pattern on top of the random bias, so masking visibly matters.
    mask = mask + mx.where(mx.tril(mx.ones((L, L), dtype=mx.bool_)), 0.0, -math.inf)
    out = ta.MultiHeadAttention(H, wq, wk, wv, wo)(x, x, x, mask=mask)
    assert_allclose(out, expected_with_mx_fast(x, x, x, H, wq, wk, wv, wo, mask=mask), **TOL_F32)
    with mx.stream(mx.cpu):
        expected = mlx_nn_layer(H, wq, wk, wv, wo)(x, x, x, mask=mask)
    assert_allclose(out, expected, **TOL_F32, what="vs mlx.nn.MultiHeadAttention")


def test_task_2_mha_without_batch_dims():
    wq, wk, wv, wo = make_weights(8, 8, 8, 2, 4, 4, 8, seed=70)
    x = rand((5, 8), seed=71)
    out = ta.MultiHeadAttention(2, wq, wk, wv, wo)(x, x, x)
    assert out.shape == (5, 8)
    expected = expected_with_mx_fast(x[None], x[None], x[None], 2, wq, wk, wv, wo)[0]
    assert_allclose(out, expected, **TOL_F32)


@QUICK
@given(
    B=st.integers(1, 2),
    L=st.integers(1, 6),
    S=st.integers(1, 6),
    H=st.integers(1, 4),
    E=st.integers(1, 6),
    D=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_task_2_mha_property(B, L, S, H, E, D, seed):
    wq, wk, wv, wo = make_weights(D, D, D, H, E, E, D, seed=seed)
    x_q, x_kv = rand((B, L, D), seed=seed + 10), rand((B, S, D), seed=seed + 11)
    out = ta.MultiHeadAttention(H, wq, wk, wv, wo)(x_q, x_kv, x_kv)
    with mx.stream(mx.cpu):
        expected = mlx_nn_layer(H, wq, wk, wv, wo)(x_q, x_kv, x_kv)
    assert_allclose(out, expected, **TOL_F32)
