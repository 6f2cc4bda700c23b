"""Week 4, Day 3: the backward pass in C++ on the CPU, wired into MLX autodiff.

Book: book/src/week4-03-backward-cpp.md. References: MLX's autodiff (mx.vjp) through
mx.fast.scaled_dot_product_attention on the CPU for the gradients, a float64 NumPy log-sum-exp
for the forward's lse. The backward op is tested from an out and an lse computed here, so that
it depends on no other task. Tolerance: TOL_F32_REORDERED (tiles reorder the sums).
Structure: ext.backward_tiles_visited() counts the (K/V tile, Q tile) pairs the backward kernel
computes, ext.backward_threads() says how many threads it ran on; MLX's peak memory shows
whether an L x S array was allocated.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_F32_REORDERED,
    assert_allclose,
    mlx_sdpa,
    qkv,
    rand,
    rand_keep,
    ta,
    to_numpy,
)

BR = BC = 32
MASKED = float(np.finfo(np.float32).min)
NAMES = ("d_query", "d_key", "d_value")


def default_scale(q):
    return 1.0 / math.sqrt(q.shape[-1])


def numpy_lse(q, k, *, scale, mask=None) -> np.ndarray:
    """log sum_j exp(s_ij) in float64; hidden scores are MASKED, as MLX does."""
    qn, kn = to_numpy(q), to_numpy(k)
    kn = np.repeat(kn, qn.shape[-3] // kn.shape[-3], axis=-3)
    s = scale * qn @ np.swapaxes(kn, -1, -2)
    L, S = s.shape[-2:]
    if isinstance(mask, str):
        s = np.where(np.arange(S)[None, :] <= np.arange(L)[:, None] + (S - L), s, MASKED)
    elif mask is not None and mask.dtype == mx.bool_:
        s = np.where(np.array(mask), s, MASKED)
    elif mask is not None:
        s = s + to_numpy(mask)
    m = np.max(s, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(s - m), axis=-1, keepdims=True)))[..., 0]


def autodiff(q, k, v, d_out, *, scale=None, mask=None):
    scale = default_scale(q) if scale is None else scale

    def f(a, b, c):
        return mx.fast.scaled_dot_product_attention(a, b, c, scale=scale, mask=mask)

    with mx.stream(mx.cpu):
        _, grads = mx.vjp(f, [q, k, v], [d_out])
        mx.eval(grads)
    return grads


def inputs(N, h_q, h, L, S, E, seed):
    q, k, v = qkv((N,), h_q, h, L, S, E, seed=seed)
    return q, k, v, rand((N, h_q, L, E), seed=seed + 7)


def backward(ext, q, k, v, d_out, *, mask=None, scale=None, num_threads=0, lse_shift=0.0):
    """ext.flash_attention_backward from an out and an lse computed here."""
    scale = default_scale(q) if scale is None else scale
    out = mlx_sdpa(q, k, v, scale=scale, mask=mask)
    lse = mx.array((numpy_lse(q, k, scale=scale, mask=mask) + lse_shift).astype(np.float32))
    causal = isinstance(mask, str)
    grads = ext.flash_attention_backward(
        q,
        k,
        v,
        out,
        lse,
        d_out,
        scale,
        None if causal else mask,
        causal,
        num_threads=num_threads,
    )
    assert len(grads) == 3, "returns [d_query, d_key, d_value]"
    mx.eval(grads)
    return grads


def check_backward(ext, q, k, v, d_out, *, mask=None, scale=None, num_threads=0, what=""):
    grads = backward(ext, q, k, v, d_out, mask=mask, scale=scale, num_threads=num_threads)
    expected = autodiff(q, k, v, d_out, scale=scale, mask=mask)
    for name, got, want in zip(NAMES, grads, expected, strict=True):
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} {what}")
    return grads


def kv_tiles_causal(L, S, G=1):
    """(K/V tile, Q tile) pairs a causal backward computes per key/value head: the forward's
    rule, Q tile by Q tile (a Q tile whose first row sees no key visits every K/V tile)."""
    total = 0
    for i0 in range(0, L, BR):
        first, last = i0 + S - L, min(i0 + BR, L) - 1 + S - L
        total += math.ceil(S / BC) if first < 0 else math.ceil(min(S, last + 1) / BC)
    return G * total


# --- Task 1: the forward keeps its log-sum-exp ------------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["simple", "fast"])
@pytest.mark.parametrize("mask", [None, "causal", "boolean", "additive"])
def test_task_1_the_forward_returns_the_lse(ext, fast, mask):
    q, k, v, _ = inputs(2, 4, 2, 53, 37, 16, seed=1)  # L > S: causal rows that see no key
    m = {
        None: None,
        "causal": "causal",
        "boolean": rand_keep((53, 37), seed=2, p_keep=0.6),
        "additive": rand((4, 53, 37), seed=3),
    }[mask]
    scale = default_scale(q)
    out, lse = ext.flash_attention_with_lse(
        q, k, v, scale, None if mask == "causal" else m, mask == "causal", fast=fast
    )
    assert lse.shape == (2, 4, 53) and lse.dtype == mx.float32
    assert_allclose(out, mlx_sdpa(q, k, v, mask=m), **TOL_F32_REORDERED, what="out")
    assert_allclose(lse, numpy_lse(q, k, scale=scale, mask=m), **TOL_F32_REORDERED, what="lse")


def test_task_1_a_row_that_sees_no_key_has_the_lowest_float_as_lse(ext):
    # lse = MASKED + log(S), and float32 cannot tell it from MASKED.
    q, k, v, _ = inputs(1, 1, 1, 40, 10, 8, seed=4)
    _, lse = ext.flash_attention_with_lse(q, k, v, 0.5, None, True)
    assert np.all(np.array(lse)[0, 0, :30] == MASKED)


# --- Task 2: the backward kernel ---------------------------------------------------------------

# (N, H_q, H, L, S, E): one tile, ragged tiles, GQA, MQA, L != S both ways, E = 64 and 128.
SHAPES = [
    (1, 1, 1, 1, 1, 8),
    (1, 2, 2, 64, 64, 16),
    (2, 3, 3, 37, 53, 16),
    (1, 4, 2, 70, 45, 32),
    (2, 6, 1, 7, 90, 8),
    (1, 2, 1, 100, 100, 64),
    (1, 1, 1, 33, 65, 128),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-Hq{}-H{}-L{}-S{}-E{}".format(*s))
def test_task_2_backward_matches_autodiff(ext, shape):
    q, k, v, d_out = inputs(*shape, seed=sum(shape))
    dq, dk, dv = check_backward(ext, q, k, v, d_out)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_task_2_backward_scale_and_large_scores(ext):
    q, k, v, d_out = inputs(1, 2, 2, 40, 50, 16, seed=5)
    check_backward(ext, q, k, v, d_out, scale=0.37)


def test_task_2_p_is_recomputed_from_the_lse_it_is_given(ext):
    # P = exp(S - lse): hand the kernel lse + log 2 and every gradient halves.
    q, k, v, d_out = inputs(1, 2, 1, 45, 70, 16, seed=6)
    grads = backward(ext, q, k, v, d_out)
    halved = backward(ext, q, k, v, d_out, lse_shift=math.log(2.0))
    for name, g, h in zip(NAMES, grads, halved, strict=True):
        assert_allclose(h, to_numpy(g) / 2, **TOL_F32_REORDERED, what=f"{name} with lse + log 2")


@pytest.mark.parametrize("L,S", [(64, 64), (45, 70), (70, 45), (100, 20)])
def test_task_2_causal(ext, L, S):
    q, k, v, d_out = inputs(1, 4, 2, L, S, 16, seed=L + S)
    check_backward(ext, q, k, v, d_out, mask="causal", what="causal")


def test_task_2_causal_skips_the_hidden_tiles(ext):
    # L = S = 256, Br = Bc = 32: 36 of the 64 (K/V tile, Q tile) pairs hold a visible score.
    q, k, v, d_out = inputs(1, 2, 1, 256, 256, 8, seed=7)  # GQA: 2 query heads per K/V head
    ext.reset_backward_tiles_visited()
    backward(ext, q, k, v, d_out)
    assert ext.backward_tiles_visited() == 2 * 64
    ext.reset_backward_tiles_visited()
    backward(ext, q, k, v, d_out, mask="causal")
    assert ext.backward_tiles_visited() == 2 * 36 == kv_tiles_causal(256, 256, G=2)


@pytest.mark.parametrize("L,S", [(70, 45), (100, 20), (45, 130)])
def test_task_2_causal_tiles_when_l_and_s_differ(ext, L, S):
    q, k, v, d_out = inputs(1, 1, 1, L, S, 8, seed=8)
    ext.reset_backward_tiles_visited()
    check_backward(ext, q, k, v, d_out, mask="causal")
    assert ext.backward_tiles_visited() == kv_tiles_causal(L, S)


@pytest.mark.parametrize("mask_shape", [(2, 4, 45, 70), (4, 45, 70), (45, 70), (2, 1, 1, 70)])
@pytest.mark.parametrize("kind", ["boolean", "additive"])
def test_task_2_masks(ext, kind, mask_shape):
    q, k, v, d_out = inputs(2, 4, 2, 45, 70, 16, seed=9)
    if kind == "boolean":
        mask = rand_keep(mask_shape, seed=10, p_keep=0.6)
    else:
        bias = np.array(to_numpy(rand(mask_shape, seed=11)), dtype=np.float32)
        bias[..., 40:64] = -np.inf  # a whole K/V tile hidden in every row
        mask = mx.array(bias)
    check_backward(ext, q, k, v, d_out, mask=mask, what=kind)


def test_task_2_boolean_rows_that_see_no_key(ext):
    q, k, v, d_out = inputs(1, 2, 2, 40, 50, 8, seed=12)
    keep = np.random.default_rng(13).random((1, 2, 40, 50)) < 0.5
    keep[0, 1, 3] = False
    keep[0, :, 37] = False
    dq, _, _ = check_backward(ext, q, k, v, d_out, mask=mx.array(keep))
    assert np.all(np.array(dq)[0, 1, 3] == 0) and np.all(np.array(dq)[0, :, 37] == 0)


def test_task_2_the_kernel_runs_on_threads(ext):
    q, k, v, d_out = inputs(1, 4, 4, 64, 64, 8, seed=25)  # 4 heads: work for 2 and 3 threads
    for n in (1, 2, 3):
        backward(ext, q, k, v, d_out, num_threads=n)
        assert ext.backward_threads() == n, f"num_threads={n}: ran on {ext.backward_threads()}"
    q, k, v, d_out = inputs(1, 1, 1, 64, 96, 8, seed=26)  # one head, 3 K/V tiles: split them
    backward(ext, q, k, v, d_out, num_threads=2)
    assert ext.backward_threads() == 2, "one head's K/V tiles are dealt to 2 threads"


def test_task_2_threads_own_their_key_value_tiles(ext):
    # dK_j and dV_j are each computed by one thread, in one order: the same bits with 1, 2 or 3
    # threads. dQ sums terms from every K/V tile and may differ in the last bits.
    q, k, v, d_out = inputs(1, 2, 1, 150, 200, 16, seed=14)
    one = backward(ext, q, k, v, d_out, num_threads=1, mask="causal")
    for n in (2, 3):
        dq, dk, dv = backward(ext, q, k, v, d_out, num_threads=n, mask="causal")
        assert np.array_equal(np.array(dk), np.array(one[1])), f"d_key, {n} threads"
        assert np.array_equal(np.array(dv), np.array(one[2])), f"d_value, {n} threads"
        assert_allclose(dq, one[0], **TOL_F32_REORDERED, what=f"d_query, {n} threads")


# --- Task 3: mx.grad through ta.flash_attention -----------------------------------------------


@pytest.mark.parametrize("mask", [None, "causal", "boolean", "additive"])
def test_task_3_vjp_through_flash_attention(ext, mask):
    q, k, v, d_out = inputs(2, 4, 2, 45, 37, 16, seed=15)
    m = {
        None: None,
        "causal": "causal",
        "boolean": rand_keep((45, 37), seed=16, p_keep=0.6),
        "additive": rand((2, 1, 45, 37), seed=17),
    }[mask]
    ext.reset_backward_tiles_visited()
    out, grads = mx.vjp(lambda a, b, c: ta.flash_attention(a, b, c, mask=m), [q, k, v], [d_out])
    mx.eval(out, grads)
    assert ext.backward_tiles_visited() > 0, "the vjp must run the C++ backward kernel"
    assert_allclose(out[0], mlx_sdpa(q, k, v, mask=m), **TOL_F32_REORDERED, what="out")
    for name, got, want in zip(NAMES, grads, autodiff(q, k, v, d_out, mask=m), strict=True):
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} ({mask})")


@pytest.mark.parametrize("kernel", ["simple", "fast"])
def test_task_3_grad_and_value_and_grad(kernel):
    q, k, v, d_out = inputs(1, 2, 2, 40, 40, 8, seed=18)
    q5, k5, v5, d5 = (x.reshape(1, 1, *x.shape[1:]) for x in (q, k, v, d_out))  # batch (1, 1)

    def loss(a, b, c):
        return mx.sum(ta.flash_attention(a, b, c, mask="causal", kernel=kernel) * d5)

    value, grads = mx.value_and_grad(loss, argnums=(0, 1, 2))(q5, k5, v5)
    only_k = mx.grad(loss, argnums=1)(q5, k5, v5)
    expected = autodiff(q, k, v, d_out, mask="causal")
    assert_allclose(value, mx.sum(mlx_sdpa(q, k, v, mask="causal") * d_out), **TOL_F32_REORDERED)
    for name, got, want in zip(NAMES, grads, expected, strict=True):
        assert got.shape == q5.shape[:2] + want.shape[1:], f"{name} keeps the batch dimensions"
        assert_allclose(got[0], want, **TOL_F32_REORDERED, what=name)
    assert_allclose(only_k, grads[1], **TOL_F32_REORDERED, what="mx.grad for key alone")


def test_task_3_works_under_mx_compile():
    q, k, v, d_out = inputs(1, 4, 2, 33, 47, 16, seed=19)

    def loss(a, b, c):
        return mx.sum(ta.flash_attention(a, b, c, mask="causal") * d_out)

    step = mx.compile(mx.value_and_grad(loss, argnums=(0, 1, 2)))
    for _ in range(2):  # the second call reuses the compiled graph
        value, grads = step(q, k, v)
        expected = autodiff(q, k, v, d_out, mask="causal")
        for name, got, want in zip(NAMES, grads, expected, strict=True):
            assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name}, compiled")
    assert_allclose(value, mx.sum(mlx_sdpa(q, k, v, mask="causal") * d_out), **TOL_F32_REORDERED)


def test_task_3_no_l_by_s_array_on_the_way(ext):
    # Forward and backward at L = S = 2048, one head, E = 64: one L x S float32 matrix is
    # 16 MiB. What MLX allocates for both passes (the lse, the gradients, copies of the
    # inputs) stays far below it.
    q, k, v, d_out = inputs(1, 1, 1, 2048, 2048, 64, seed=20)
    mx.eval(q, k, v, d_out)
    mx.synchronize()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    _, grads = mx.vjp(lambda a, b, c: ta.flash_attention(a, b, c), [q, k, v], [d_out])
    mx.eval(grads)
    peak = mx.get_peak_memory() - before
    assert peak < 2048 * 2048 * 4 / 4, f"peak {peak / 2**20:.1f} MiB; one L x S matrix is 16 MiB"


def test_task_3_the_mask_gets_no_gradient():
    q, k, v, d_out = inputs(1, 2, 2, 8, 12, 8, seed=21)
    bias = rand((8, 12), seed=22)
    with pytest.raises(ValueError, match="mask"):
        mx.grad(lambda m: mx.sum(ta.flash_attention(q, k, v, mask=m) * d_out))(bias)
    # Differentiating for query with a mask is fine.
    g = mx.grad(lambda a: mx.sum(ta.flash_attention(a, k, v, mask=bias) * d_out))(q)
    assert_allclose(g, autodiff(q, k, v, d_out, mask=bias)[0], **TOL_F32_REORDERED)


def test_task_3_a_gpu_call_gets_its_backward_too():
    # The vjp builds the backward of a GPU call as well, on the device the forward ran on; its
    # kernels are Day 4's, so nothing is evaluated here.
    q, k, v, d_out = inputs(1, 2, 2, 8, 12, 8, seed=23)
    _, grads = mx.vjp(
        lambda a, b, c: ta.flash_attention(a, b, c, stream=mx.gpu), [q, k, v], [d_out]
    )
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert [g.dtype for g in grads] == [mx.float32] * 3


# --- Task 4: bad input is a clear error ------------------------------------------------------


def good():
    q, k, v, d_out = inputs(1, 4, 2, 8, 12, 16, seed=24)
    return {
        "query": q,
        "key": k,
        "value": v,
        "out": mx.zeros_like(q),
        "lse": mx.zeros((1, 4, 8)),
        "d_out": d_out,
        "scale": 0.25,
    }


BAD_INPUTS = [
    ("query rank", lambda a: {**a, "query": a["query"][0]}, "query"),
    ("query float16", lambda a: {**a, "query": a["query"].astype(mx.float16)}, "query"),
    ("value S", lambda a: {**a, "value": a["value"][..., :5, :]}, "value"),
    (
        "H_q % H",
        lambda a: {
            **a,
            "key": a["key"][:, :1].astype(mx.float32).reshape(1, 1, 12, 16) * mx.ones((1, 3, 1, 1)),
            "value": a["value"][:, :1] * mx.ones((1, 3, 1, 1)),
        },
        "multiple",
    ),
    ("out shape", lambda a: {**a, "out": a["out"][..., :4, :]}, "out"),
    ("lse shape", lambda a: {**a, "lse": mx.zeros((1, 4, 8, 1))}, "lse"),
    ("lse dtype", lambda a: {**a, "lse": mx.zeros((1, 4, 8), mx.float16)}, "lse"),
    ("d_out shape", lambda a: {**a, "d_out": a["d_out"][:, :2]}, "d_out"),
    ("mask shape", lambda a: {**a, "mask": mx.zeros((8, 11))}, "mask"),
    ("mask and causal", lambda a: {**a, "mask": mx.zeros((8, 12)), "causal": True}, "causal"),
    ("scale", lambda a: {**a, "scale": float("nan")}, "scale"),
    ("num_threads", lambda a: {**a, "num_threads": -1}, "num_threads"),
]


@pytest.mark.parametrize(
    "change,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_task_4_backward_rejects_bad_input(ext, change, words):
    with pytest.raises(ValueError, match=words):
        ext.flash_attention_backward(**change(good()))
