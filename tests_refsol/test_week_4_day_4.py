"""Week 4, Day 4: the backward pass on the GPU (Metal).

Book: book/src/week4-04-backward-metal.md. The kernels run on a Metal device where there is one
and on metalsim everywhere else, with its checks on. References: MLX's autodiff (mx.vjp)
through mx.fast.scaled_dot_product_attention on the CPU for the gradients, a float64 NumPy
log-sum-exp for the forward's lse. The backward op is tested from an out and an lse computed
here, so that it depends on no other task. Tolerance: TOL_F32_REORDERED (tiles reorder the
sums; dQ's atomic adds reorder them again).
Structure: ext.gpu_dispatches() names the kernels that ran and their grids; the dK/dV and dQ
kernels add the (query row, K/V tile) pairs they compute to ext.gpu_tile_counts(), as the
forward kernels do.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_F32_REORDERED,
    assert_allclose,
    device_for,
    mlx_sdpa,
    qkv,
    rand,
    rand_keep,
    ta,
    to_numpy,
)

GPU = device_for("gpu")
BR = BC = 32
THREADS = (1024, 1, 1)
MASKED = float(np.finfo(np.float32).min)
NAMES = ("d_query", "d_key", "d_value")
PREPROCESS = "flash_attention_backward_preprocess"
DKDV = "flash_attention_backward_dkdv"
DKDV_ATOMIC = "flash_attention_backward_dkdv_atomic_dq"
DQ = "flash_attention_backward_dq"


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


def gpu_backward(ext, q, k, v, d_out, *, mask=None, scale=None, dq="separate"):
    """ext.flash_attention_backward on the GPU, from an out and an lse computed here."""
    scale = default_scale(q) if scale is None else scale
    out = mlx_sdpa(q, k, v, scale=scale, mask=mask)
    lse = mx.array(numpy_lse(q, k, scale=scale, mask=mask).astype(np.float32))
    causal = isinstance(mask, str)
    grads = ext.flash_attention_backward(
        q, k, v, out, lse, d_out, scale, None if causal else mask, causal, dq=dq, stream=GPU
    )
    assert len(grads) == 3, "returns [d_query, d_key, d_value]"
    mx.eval(grads)
    return grads


def check_gpu_backward(ext, q, k, v, d_out, *, mask=None, scale=None, dq="separate", what=""):
    grads = gpu_backward(ext, q, k, v, d_out, mask=mask, scale=scale, dq=dq)
    expected = autodiff(q, k, v, d_out, scale=scale, mask=mask)
    for name, got, want in zip(NAMES, grads, expected, strict=True):
        assert got.shape == want.shape, f"{name} has the shape of its input"
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} {what}")
    return grads


def tiles(n):
    return -(-n // 32)


def kv_tiles_to_visit(first, last, L, S, causal):
    """The forward's rule: how many K/V tiles query rows first..last visit."""
    if not causal or first + S - L < 0:
        return tiles(S)
    return min(tiles(S), (last + S - L) // BC + 1)


def dkdv_counts(N, h_q, L, S, causal):
    """(visited, masked) the dK/dV kernel adds: for every Q tile and every K/V tile it visits
    (the whole Q tile's rule), each query row that exists; masked if the row does not see the
    K/V tile whole (with causal), or on every tile of a mask array (not used here)."""
    visited = masked = 0
    for i0 in range(0, L, BR):
        last = min(i0 + BR, L) - 1
        for j in range(kv_tiles_to_visit(i0, last, L, S, causal)):
            for row in range(i0, last + 1):
                visited += 1
                masked += causal and (j + 1) * BC - 1 > row + S - L
    return N * h_q * visited, N * h_q * masked


def dq_counts(N, h_q, L, S, causal):
    """(visited, masked) the separate dQ kernel adds: the forward's per-row rule."""
    visited = masked = 0
    for row in range(L):
        n = kv_tiles_to_visit(row, row, L, S, causal)
        visited += n
        masked += sum(1 for j in range(n) if causal and (j + 1) * BC - 1 > row + S - L)
    return N * h_q * visited, N * h_q * masked


# --- Task 1: the GPU forward keeps its log-sum-exp --------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["e128", "simdgroup"])
@pytest.mark.parametrize("mask", [None, "causal", "boolean", "additive"])
def test_task_1_the_gpu_forward_returns_the_lse(ext, fast, mask):
    q, k, v, _ = inputs(2, 4, 2, 53, 37, 16, seed=1)  # L > S: causal rows that see no key
    m = {
        None: None,
        "causal": "causal",
        "boolean": rand_keep((53, 37), seed=2, p_keep=0.6),
        "additive": rand((4, 53, 37), seed=3),
    }[mask]
    scale = default_scale(q)
    ext.reset_gpu_dispatches()
    out, lse = ext.flash_attention_with_lse(
        q, k, v, scale, None if mask == "causal" else m, mask == "causal", fast=fast, stream=GPU
    )
    mx.eval(out, lse)
    kernel = "flash_attention_simdgroup_f32" if fast else "flash_attention_f32_e128"
    assert [d[0] for d in ext.gpu_dispatches()] == [kernel], "the Week 3 kernel computes it"
    assert lse.shape == (2, 4, 53) and lse.dtype == mx.float32
    assert_allclose(out, mlx_sdpa(q, k, v, mask=m), **TOL_F32_REORDERED, what="out")
    assert_allclose(lse, numpy_lse(q, k, scale=scale, mask=m), **TOL_F32_REORDERED, what="lse")


@pytest.mark.parametrize("fast", [False, True], ids=["e128", "simdgroup"])
def test_task_1_a_row_that_sees_no_key_has_the_lowest_float_as_lse(ext, fast):
    q, k, v, _ = inputs(1, 1, 1, 40, 10, 8, seed=4)
    _, lse = ext.flash_attention_with_lse(q, k, v, 0.5, None, True, fast=fast, stream=GPU)
    assert np.all(np.array(lse)[0, 0, :30] == MASKED)


# --- Task 2: D, and dK / dV with dQ by atomic adds --------------------------------------------

# (N, H_q, H, L, S, E): one tile, ragged tiles, GQA, MQA, L != S both ways, E = 64 and 128.
SHAPES = [
    (1, 1, 1, 1, 1, 8),
    (1, 2, 2, 64, 64, 16),
    (2, 3, 3, 37, 53, 16),
    (1, 4, 2, 70, 45, 8),
    (2, 4, 1, 7, 40, 8),
    (1, 2, 1, 33, 40, 64),
    (1, 1, 1, 20, 33, 128),
]
SHAPE_IDS = ["N{}-Hq{}-H{}-L{}-S{}-E{}".format(*s) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_task_2_atomic_dq_backward_matches_autodiff(ext, shape):
    q, k, v, d_out = inputs(*shape, seed=sum(shape))
    check_gpu_backward(ext, q, k, v, d_out, dq="atomic", what=f"(atomic dQ, {shape})")


def test_task_2_the_gpu_kernels_are_the_ones_that_ran(ext):
    N, h_q, h, L, S, E = 2, 4, 2, 70, 45, 16
    q, k, v, d_out = inputs(N, h_q, h, L, S, E, seed=5)
    ext.reset_gpu_dispatches()
    gpu_backward(ext, q, k, v, d_out, dq="atomic")
    assert ext.gpu_dispatches() == [
        (PREPROCESS, (N * h_q, tiles(L), 1), THREADS),  # one threadgroup per Q tile
        (DKDV_ATOMIC, (N * h, tiles(S), 1), THREADS),  # one per K/V tile of each K/V head
    ]


def test_task_2_backward_scale(ext):
    q, k, v, d_out = inputs(1, 2, 1, 40, 50, 16, seed=6)
    check_gpu_backward(ext, q, k, v, d_out, scale=0.37, dq="atomic", what="scale 0.37")


def test_task_2_p_is_recomputed_from_the_lse_it_is_given(ext):
    # With lse + log(2), every P halves: dV halves.
    q, k, v, d_out = inputs(1, 2, 2, 40, 40, 16, seed=7)
    scale = default_scale(q)
    out = mlx_sdpa(q, k, v)
    lse = mx.array(numpy_lse(q, k, scale=scale).astype(np.float32))
    _, _, dv = ext.flash_attention_backward(q, k, v, out, lse, d_out, scale, stream=GPU)
    _, _, dv2 = ext.flash_attention_backward(
        q, k, v, out, lse + math.log(2.0), d_out, scale, stream=GPU
    )
    assert_allclose(dv2, 0.5 * np.array(dv), **TOL_F32_REORDERED, what="d_value from lse + log 2")


# --- Task 3: masks, causal tile skipping, rows that see no key ---------------------------------


@pytest.mark.parametrize("dq", ["atomic", "separate"])
@pytest.mark.parametrize("L,S", [(64, 64), (40, 70), (70, 40)], ids=str)
def test_task_3_causal(ext, L, S, dq):
    q, k, v, d_out = inputs(1, 4, 2, L, S, 16, seed=L + S)
    check_gpu_backward(ext, q, k, v, d_out, mask="causal", dq=dq, what=f"causal L={L} S={S}")


@pytest.mark.parametrize("L,S", [(128, 128), (40, 100), (100, 40)], ids=str)
def test_task_3_causal_skips_the_hidden_tiles(ext, L, S):
    # The dK/dV kernel visits, for each Q tile, the K/V tiles the forward visits for it; the
    # tiles above the diagonal are never computed.
    q, k, v, d_out = inputs(1, 2, 1, L, S, 8, seed=L * S)
    ext.reset_gpu_tile_counts()
    gpu_backward(ext, q, k, v, d_out, mask="causal", dq="atomic")
    assert ext.gpu_tile_counts() == dkdv_counts(1, 2, L, S, causal=True)
    if L == S:  # 4 Q tiles x 4 K/V tiles: 1 + 2 + 3 + 4 of 16 pairs, 32 rows each, 2 heads
        assert ext.gpu_tile_counts()[0] == 2 * 32 * (1 + 2 + 3 + 4)
    ext.reset_gpu_tile_counts()
    gpu_backward(ext, q, k, v, d_out, dq="atomic")
    assert ext.gpu_tile_counts() == dkdv_counts(1, 2, L, S, causal=False)


@pytest.mark.parametrize("kind", ["boolean", "additive"])
@pytest.mark.parametrize("mask_shape", [(45, 37), (4, 45, 37), (2, 1, 45, 37)], ids=str)
def test_task_3_masks(ext, kind, mask_shape):
    q, k, v, d_out = inputs(2, 4, 2, 45, 37, 16, seed=8)
    if kind == "boolean":
        mask = rand_keep(mask_shape, seed=9, p_keep=0.6)
    else:
        mask = rand(mask_shape, seed=10)
    check_gpu_backward(ext, q, k, v, d_out, mask=mask, dq="atomic", what=f"{kind} {mask_shape}")


def test_task_3_boolean_rows_that_see_no_key(ext):
    # Rows 0..4 see no key: the forward gives them 1/S of every value (as MLX), so their P is
    # 1/S and their dS is 0.
    q, k, v, d_out = inputs(1, 2, 1, 40, 33, 16, seed=11)
    keep = np.array(rand_keep((40, 33), seed=12, p_keep=0.7))
    keep[:5] = False
    for dq in ("atomic", "separate"):
        check_gpu_backward(ext, q, k, v, d_out, mask=mx.array(keep), dq=dq, what=f"blind, {dq}")


# --- Task 4: the separate dQ kernel: deterministic ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_task_4_separate_dq_backward_matches_autodiff(ext, shape):
    q, k, v, d_out = inputs(*shape, seed=sum(shape) + 1)
    check_gpu_backward(ext, q, k, v, d_out, dq="separate", what=f"(separate dQ, {shape})")


def test_task_4_the_separate_dq_kernel_runs(ext):
    N, h_q, h, L, S, E = 2, 4, 2, 70, 45, 16
    q, k, v, d_out = inputs(N, h_q, h, L, S, E, seed=13)
    ext.reset_gpu_dispatches()
    ext.reset_gpu_tile_counts()
    gpu_backward(ext, q, k, v, d_out, mask="causal", dq="separate")
    assert ext.gpu_dispatches() == [
        (PREPROCESS, (N * h_q, tiles(L), 1), THREADS),
        (DKDV, (N * h, tiles(S), 1), THREADS),  # no dQ in it
        (DQ, (N * h_q, tiles(L), 1), THREADS),  # one threadgroup per Q tile
    ]
    # Both kernels skip what the causal mask hides: dK/dV per Q tile, dQ per row.
    dkdv, dq = dkdv_counts(N, h_q, L, S, True), dq_counts(N, h_q, L, S, True)
    want = [a + b for a, b in zip(dkdv, dq, strict=True)]
    assert list(ext.gpu_tile_counts()) == want


def test_task_4_separate_dq_is_the_same_bits_on_every_run(ext, monkeypatch):
    # Two K/V tiles add into every dQ row: with atomics, in the order the threadgroups happen to
    # run; in the separate kernel, one thread sums them in a fixed order.
    q, k, v, d_out = inputs(1, 4, 2, 70, 90, 16, seed=14)
    first = [np.array(g) for g in gpu_backward(ext, q, k, v, d_out, mask="causal")]
    for schedule in ("forward", "reverse", "random:1"):
        monkeypatch.setenv("METALSIM_SCHEDULE", schedule)  # no effect on a real GPU
        again = gpu_backward(ext, q, k, v, d_out, mask="causal")
        for name, a, b in zip(NAMES, first, again, strict=True):
            assert np.array_equal(a, np.array(b)), f"{name} changed bits ({schedule})"
    # The atomic path gives the same dK and dV bits (they have no atomics) and a dQ that agrees
    # to rounding; its bits are not guaranteed to repeat.
    atomic = gpu_backward(ext, q, k, v, d_out, mask="causal", dq="atomic")
    assert np.array_equal(first[1], np.array(atomic[1])) and np.array_equal(
        first[2], np.array(atomic[2])
    )
    assert_allclose(atomic[0], first[0], **TOL_F32_REORDERED, what="atomic vs separate dQ")


# --- Task 5: mx.grad through ta.flash_attention on the GPU; clear errors ------------------------


@pytest.mark.parametrize("kernel", ["simple", "fast"])
@pytest.mark.parametrize("mask", [None, "causal", "boolean", "additive"])
def test_task_5_vjp_through_flash_attention_on_the_gpu(ext, kernel, mask):
    q, k, v, d_out = inputs(2, 4, 2, 45, 37, 16, seed=15)
    m = {
        None: None,
        "causal": "causal",
        "boolean": rand_keep((45, 37), seed=16, p_keep=0.6),
        "additive": rand((2, 1, 45, 37), seed=17),
    }[mask]
    ext.reset_gpu_dispatches()
    out, grads = mx.vjp(
        lambda a, b, c: ta.flash_attention(a, b, c, mask=m, kernel=kernel, stream=GPU),
        [q, k, v],
        [d_out],
    )
    mx.eval(out, grads)
    forward = "flash_attention_f32_e128" if kernel == "simple" else "flash_attention_simdgroup_f32"
    assert [d[0] for d in ext.gpu_dispatches()] == [forward, PREPROCESS, DKDV, DQ], (
        "forward and backward both run on the GPU (dQ by the separate kernel by default)"
    )
    assert_allclose(out[0], mlx_sdpa(q, k, v, mask=m), **TOL_F32_REORDERED, what="out")
    for name, got, want in zip(NAMES, grads, autodiff(q, k, v, d_out, mask=m), strict=True):
        assert_allclose(got, want, **TOL_F32_REORDERED, what=f"{name} ({mask}, {kernel})")


def test_task_5_grad_and_value_and_grad_on_the_gpu(ext):
    q, k, v, d_out = inputs(1, 2, 2, 40, 40, 8, seed=18)
    q5, k5, v5, d5 = (x.reshape(1, 1, *x.shape[1:]) for x in (q, k, v, d_out))  # batch (1, 1)

    def loss(a, b, c):
        return mx.sum(ta.flash_attention(a, b, c, mask="causal", stream=GPU) * d5)

    value, grads = mx.value_and_grad(loss, argnums=(0, 1, 2))(q5, k5, v5)
    only_k = mx.grad(loss, argnums=1)(q5, k5, v5)
    expected = autodiff(q, k, v, d_out, mask="causal")
    assert_allclose(value, mx.sum(mlx_sdpa(q, k, v, mask="causal") * d_out), **TOL_F32_REORDERED)
    for name, got, want in zip(NAMES, grads, expected, strict=True):
        assert got.shape == q5.shape[:2] + want.shape[1:], f"{name} keeps the batch dimensions"
        assert_allclose(got[0], want, **TOL_F32_REORDERED, what=name)
    assert_allclose(only_k, grads[1], **TOL_F32_REORDERED, what="mx.grad for key alone")


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
        "stream": GPU,
    }


def wide(a):
    """E = 136: more than the 128 columns the kernels keep per row."""
    q, k, v, d_out = inputs(1, 4, 2, 8, 12, 136, seed=25)
    return {**a, "query": q, "key": k, "value": v, "out": mx.zeros_like(q), "d_out": d_out}


BAD_INPUTS = [
    ("E > 128", wide, ValueError, r"E .*128"),
    ("query float16", lambda a: {**a, "query": a["query"].astype(mx.float16)}, ValueError, "query"),
    ("lse shape", lambda a: {**a, "lse": mx.zeros((1, 4, 9))}, ValueError, "lse"),
    ("dq value", lambda a: {**a, "dq": "atomics"}, ValueError, "dq"),
    ("dq type", lambda a: {**a, "dq": True}, TypeError, "dq"),
]


@pytest.mark.parametrize(
    "change,error,words", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_task_5_gpu_backward_rejects_bad_input(ext, change, error, words):
    mx.eval(ext.flash_attention_backward(**good()))  # the good call runs on the GPU
    with pytest.raises(error, match=words):
        mx.eval(ext.flash_attention_backward(**change(good())))
