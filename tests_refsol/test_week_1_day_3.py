"""Week 1, Day 3: masks and grouped-query attention.

Book: book/src/week1-03-masks-and-gqa.md. References: mx.fast.scaled_dot_product_attention
(`mlx_sdpa`, the contract we copy, fully masked rows included) and NumPy in float64
(`numpy_attention`). Tolerances: TOL_F32 for float32, TOL_F16 / TOL_BF16 for half precision.
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


def reference(q, k, v, scale=None, mask=None):
    """mlx_sdpa for any number of batch dimensions: fold them into one (mx.fast wants rank 4)."""
    batch = q.shape[:-3]
    fold = (lambda x: x.reshape(-1, *x.shape[-3:])) if len(batch) != 1 else (lambda x: x)
    if isinstance(mask, mx.array) and mask.ndim > 2:
        mask = fold(mx.broadcast_to(mask, (*batch, q.shape[-3], q.shape[-2], k.shape[-2])))
    out = mlx_sdpa(fold(q), fold(k), fold(v), scale=scale, mask=mask)
    return out.reshape(*batch, *out.shape[-3:])


def numpy_keep(L, S):
    """Causal keep-mask, bottom-right aligned, written independently in NumPy."""
    return np.array([[j <= i + S - L for j in range(S)] for i in range(L)])


# --- Task 1: causal_mask ----------------------------------------------------------------------

LS = [(1, 1), (4, 4), (3, 7), (7, 3), (5, 1), (1, 6)]


@pytest.mark.parametrize("L, S", LS)
def test_task_1_causal_mask_bool(L, S):
    m = ta.causal_mask(L, S)
    assert m.shape == (L, S) and m.dtype == mx.bool_
    np.testing.assert_array_equal(np.array(m), numpy_keep(L, S))


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
@pytest.mark.parametrize("L, S", [(4, 6), (6, 4)])
def test_task_1_causal_mask_additive(L, S, dtype):
    m = ta.causal_mask(L, S, dtype=dtype)
    assert m.shape == (L, S) and m.dtype == dtype
    expected = np.where(numpy_keep(L, S), 0.0, -np.inf)
    np.testing.assert_array_equal(to_numpy(m), expected)


@pytest.mark.parametrize("L, S", [(4, 4), (3, 9), (9, 3)])
def test_task_1_causal_mask_is_what_mlx_means_by_causal(L, S):
    # Fed to MLX's own op, our boolean mask must do exactly what mask="causal" does.
    q, k, v = qkv((2,), 2, 2, L, S, 8, seed=1)
    assert_allclose(
        mlx_sdpa(q, k, v, mask=ta.causal_mask(L, S)), mlx_sdpa(q, k, v, mask="causal"), **TOL_F32
    )


# --- Task 2: padding_mask ---------------------------------------------------------------------


@pytest.mark.parametrize("lengths, S", [([3], 3), ([3, 1, 5], 5), ([0, 2], 4), ([7, 7, 7, 2], 9)])
def test_task_2_padding_mask(lengths, S):
    for given_lengths in (lengths, mx.array(lengths)):
        m = ta.padding_mask(given_lengths, S)
        assert m.shape == (len(lengths), 1, 1, S) and m.dtype == mx.bool_
        expected = np.array([[j < n for j in range(S)] for n in lengths])
        np.testing.assert_array_equal(np.array(m)[:, 0, 0, :], expected)


def test_task_2_padding_mask_in_attention_ignores_padding():
    # Whatever sits in the padded keys/values must not change the output.
    B, H, L, S, E = 3, 2, 4, 6, 8
    lengths = [6, 2, 4]
    q, k, v = qkv((B,), H, H, L, S, E, seed=2)
    m = ta.padding_mask(lengths, S)
    noisy_k = k + 100.0 * (1.0 - m.astype(mx.float32)).reshape(B, 1, S, 1)
    noisy_v = v - 100.0 * (1.0 - m.astype(mx.float32)).reshape(B, 1, S, 1)
    out = mlx_sdpa(q, noisy_k, noisy_v, mask=m)
    for b, n in enumerate(lengths):
        expected = numpy_attention(q[b], k[b, :, :n], v[b, :, :n])
        assert_allclose(out[b], expected, **TOL_F32, what=f"sequence {b}")


# --- Task 3: scaled_dot_product_attention -----------------------------------------------------

# (batch, H_q, H, L, S, E, Ev): MHA, GQA, MQA, L != S both ways, odd sizes, 0 to 2 batch dims.
SHAPES = [
    ((1,), 1, 1, 1, 1, 1, 1),
    ((2,), 4, 4, 7, 7, 16, 16),
    ((2,), 8, 2, 5, 9, 8, 8),
    ((1,), 6, 1, 9, 5, 12, 12),
    ((3,), 6, 3, 13, 31, 5, 7),
    ((), 4, 2, 6, 3, 8, 8),
    ((2, 2), 4, 1, 3, 8, 4, 4),
    ((1,), 32, 8, 17, 33, 64, 64),
]
IDS = [f"b{b}-hq{hq}-h{h}-L{L}-S{S}-E{E}-Ev{ev}" for b, hq, h, L, S, E, ev in SHAPES]


@pytest.mark.parametrize("batch, H_q, H, L, S, E, Ev", SHAPES, ids=IDS)
def test_task_3_sdpa_no_mask(batch, H_q, H, L, S, E, Ev):
    q, k, _ = qkv(batch, H_q, H, L, S, E, seed=10)
    v = rand((*batch, H, S, Ev), seed=13)
    out = ta.scaled_dot_product_attention(q, k, v)
    assert out.shape == (*batch, H_q, L, Ev) and out.dtype == mx.float32
    assert_allclose(out, reference(q, k, v), **TOL_F32, what="vs mx.fast")
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32, what="vs NumPy")


@pytest.mark.parametrize("batch, H_q, H, L, S, E, Ev", SHAPES, ids=IDS)
def test_task_3_sdpa_causal(batch, H_q, H, L, S, E, Ev):
    q, k, _ = qkv(batch, H_q, H, L, S, E, seed=20)
    v = rand((*batch, H, S, Ev), seed=23)
    out = ta.scaled_dot_product_attention(q, k, v, mask="causal")
    assert_allclose(out, reference(q, k, v, mask="causal"), **TOL_F32, what="vs mx.fast")


def random_mask(shape, kind, seed):
    """A boolean or additive mask of `shape` that leaves at least key 0 visible in every row."""
    rng = np.random.default_rng(seed)
    keep = rng.random(shape) < 0.6
    keep[..., 0] = True
    if kind == "bool":
        return mx.array(keep)
    bias = rng.standard_normal(shape).astype(np.float32)
    return mx.array(np.where(keep, bias, -np.inf).astype(np.float32))


MASK_SHAPES = [
    lambda b, hq, L, S: (L, S),
    lambda b, hq, L, S: (hq, L, S),
    lambda b, hq, L, S: (*b, 1, L, S),
    lambda b, hq, L, S: (*b, hq, L, S),
    lambda b, hq, L, S: (1, S),
    lambda b, hq, L, S: (*b, hq, L, 1),
]


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=["LS", "HLS", "B1LS", "BHLS", "1S", "BHL1"])
@pytest.mark.parametrize(
    "batch, H_q, H, L, S, E", [((2,), 8, 2, 5, 9, 8), ((2, 3), 2, 1, 7, 4, 6), ((), 3, 3, 4, 4, 4)]
)
def test_task_3_sdpa_array_masks(batch, H_q, H, L, S, E, mask_shape, kind):
    q, k, v = qkv(batch, H_q, H, L, S, E, seed=30)
    mask = random_mask(mask_shape(batch, H_q, L, S), kind, seed=31)
    out = ta.scaled_dot_product_attention(q, k, v, mask=mask)
    assert out.shape == q.shape
    assert_allclose(out, reference(q, k, v, mask=mask), **TOL_F32, what="vs mx.fast")
    assert_allclose(out, numpy_attention(q, k, v, mask=mask), **TOL_F32, what="vs NumPy")


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_task_3_sdpa_scale(scale):
    q, k, v = qkv((2,), 4, 2, 6, 10, 8, seed=40)
    out = ta.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    assert_allclose(out, mlx_sdpa(q, k, v, scale=scale, mask="causal"), **TOL_F32)


def test_task_3_sdpa_fully_masked_rows_match_mlx():
    # Rows with nothing to attend to. MLX turns a boolean (or "causal") mask into a huge but
    # finite negative number, so such a row is uniform: the mean of the values. An additive
    # -inf mask makes the row exp(-inf - (-inf)) = NaN. We must give the same.
    B, H_q, H, L, S, E = 2, 4, 2, 5, 6, 8
    q, k, v = qkv((B,), H_q, H, L, S, E, seed=50)
    keep = np.ones((B, 1, L, S), dtype=bool)
    keep[0, 0, 1, :] = False
    keep[1, 0, 3, :] = False
    bool_mask = mx.array(keep)
    out = ta.scaled_dot_product_attention(q, k, v, mask=bool_mask)
    expected = mlx_sdpa(q, k, v, mask=bool_mask)
    assert_allclose(out, expected, **TOL_F32, what="boolean mask")
    mean_v = np.repeat(to_numpy(v).mean(axis=-2), H_q // H, axis=1)  # (B, H_q, E)
    assert_allclose(out[0, :, 1], mean_v[0], **TOL_F32, what="a fully masked row is mean(V)")

    add_mask = mx.where(bool_mask, 0.0, -math.inf)
    out = to_numpy(ta.scaled_dot_product_attention(q, k, v, mask=add_mask))
    expected = to_numpy(mlx_sdpa(q, k, v, mask=add_mask))
    assert np.isnan(expected[0, :, 1]).all(), "MLX gives NaN here (has it changed?)"
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert_allclose(out, expected, **TOL_F32, what="additive -inf mask")


def test_task_3_sdpa_causal_more_queries_than_keys():
    # L > S, bottom-right: the first L - S queries see no key at all.
    q, k, v = qkv((1,), 2, 1, 7, 3, 4, seed=60)
    out = ta.scaled_dot_product_attention(q, k, v, mask="causal")
    assert_allclose(out, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32)


@pytest.mark.parametrize("dtype, tol", [(mx.float16, TOL_F16), (mx.bfloat16, TOL_BF16)])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
def test_task_3_sdpa_half_precision(dtype, tol, mask):
    q, k, v = qkv((2,), 4, 2, 9, 12, 16, seed=70, dtype=dtype)
    if mask in ("bool", "additive"):
        mask = random_mask((9, 12), mask, seed=71)
        if mask.dtype != mx.bool_:
            mask = mask.astype(dtype)
    out = ta.scaled_dot_product_attention(q, k, v, mask=mask)
    assert out.dtype == dtype
    assert_allclose(out, mlx_sdpa(q, k, v, mask=mask), **tol)


def test_task_3_sdpa_gqa_does_not_repeat_kv(monkeypatch):
    # Grouped-query attention by broadcasting, not by copying K and V H_q / H times.
    def forbidden(*args, **kwargs):
        raise AssertionError("K/V must not be repeated: reshape the query heads instead")

    monkeypatch.setattr(mx, "repeat", forbidden)
    monkeypatch.setattr(mx, "tile", forbidden)
    q, k, v = qkv((2,), 8, 2, 5, 7, 8, seed=80)
    out = ta.scaled_dot_product_attention(q, k, v, mask="causal")
    monkeypatch.undo()
    assert_allclose(out, mlx_sdpa(q, k, v, mask="causal"), **TOL_F32)


@QUICK
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    group=st.integers(1, 3),
    L=st.integers(1, 10),
    S=st.integers(1, 10),
    E=st.integers(1, 10),
    mask=st.sampled_from([None, "causal", "bool", "additive"]),
    seed=st.integers(0, 2**16),
)
def test_task_3_sdpa_property(B, H, group, L, S, E, mask, seed):
    q, k, v = qkv((B,), H * group, H, L, S, E, seed=seed)
    if mask in ("bool", "additive"):
        mask = random_mask((B, 1, L, S), mask, seed=seed + 7)
    out = ta.scaled_dot_product_attention(q, k, v, mask=mask)
    assert_allclose(out, mlx_sdpa(q, k, v, mask=mask), **TOL_F32)


# --- Task 4: bad input gets a clear error -----------------------------------------------------


def bad_cases():
    """(id, arguments, the exception, the argument its message must name)."""
    q, k, v = qkv((2,), 4, 2, 5, 6, 8, seed=90)
    h16 = dict(query=q.astype(mx.float16), key=k.astype(mx.float16), value=v.astype(mx.float16))
    return [
        ("rank", dict(query=q[0, 0], key=k, value=v), ValueError, "query"),
        ("rank_kv", dict(query=q, key=k[0], value=v), ValueError, "key"),
        ("batch", dict(query=q, key=k[:1], value=v[:1]), ValueError, "key"),
        ("heads", dict(query=q[:, :3], key=k, value=v), ValueError, "H_q"),
        ("no_kv_heads", dict(query=q, key=k[:, :0], value=v[:, :0]), ValueError, "key"),
        ("E", dict(query=q[..., :4], key=k, value=v), ValueError, "key"),
        ("kv_S", dict(query=q, key=k, value=v[:, :, :5]), ValueError, "value"),
        ("kv_H", dict(query=q, key=k, value=v[:, :1]), ValueError, "value"),
        ("L0", dict(query=q[:, :, :0], key=k, value=v), ValueError, "L"),
        ("S0", dict(query=q, key=k[:, :, :0], value=v[:, :, :0]), ValueError, "S"),
        ("mask_str", dict(query=q, key=k, value=v, mask="upper"), ValueError, "mask"),
        (
            "mask_type",
            dict(query=q, key=k, value=v, mask=np.zeros((5, 6), np.float32)),
            TypeError,
            "mask",
        ),
        ("mask_shape", dict(query=q, key=k, value=v, mask=mx.zeros((5, 5))), ValueError, "mask"),
        ("mask_heads", dict(query=q, key=k, value=v, mask=mx.zeros((2, 5, 6))), ValueError, "mask"),
        (
            "mask_rank",
            dict(query=q, key=k, value=v, mask=mx.zeros((1, 2, 4, 5, 6))),
            ValueError,
            "mask",
        ),
        (
            "mask_int",
            dict(query=q, key=k, value=v, mask=mx.zeros((5, 6), mx.int32)),
            TypeError,
            "mask",
        ),
        ("mask_widens", dict(**h16, mask=mx.zeros((5, 6))), TypeError, "mask"),
        ("dtype", dict(query=q, key=k.astype(mx.float16), value=v), TypeError, "key"),
        ("int", dict(query=q.astype(mx.int32), key=k, value=v), TypeError, "query"),
        (
            "not_array",
            dict(query=np.zeros((2, 4, 5, 8), np.float32), key=k, value=v),
            TypeError,
            "query",
        ),
        ("scale", dict(query=q, key=k, value=v, scale="0.5"), TypeError, "scale"),
        ("scale_bool", dict(query=q, key=k, value=v, scale=True), TypeError, "scale"),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())), ids=[c[0] for c in bad_cases()])
def test_task_4_sdpa_rejects_bad_input(case):
    # What matters is the kind of error and which argument it blames, not the wording.
    _, kwargs, error, argument = bad_cases()[case]
    with raises_naming(error, argument):
        ta.scaled_dot_product_attention(**kwargs)
