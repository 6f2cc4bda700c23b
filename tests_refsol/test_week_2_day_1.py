"""Week 2, Day 1: online softmax, one pass with a running maximum and sum, and the merge rule.

Book: book/src/week2-01-online-softmax.md. References: NumPy in float64 (max, sum of exp,
two-pass softmax) and mx.softmax. Tolerances: TOL_F32 for a maximum (exact), TOL_F32_REORDERED
for sums taken in a different order.
"""

import math

import hypothesis.strategies as st
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_BF16,
    TOL_F16,
    TOL_F32,
    TOL_F32_REORDERED,
    assert_allclose,
    rand,
    ta,
    to_numpy,
)

HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def np_state(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(max, sum exp(x - max)) along `axis` in float64; (-inf, 0) for a row of -inf."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis)
    shift = np.where(np.isneginf(m), 0.0, m)
    return m, np.sum(np.exp(x - np.expand_dims(shift, axis)), axis=axis)


def assert_state(state, m, l, what=""):
    assert isinstance(state, ta.SoftmaxState), f"expected a SoftmaxState, got {type(state)}"
    assert state.m.dtype == mx.float32 and state.l.dtype == mx.float32, "m and l are float32"
    assert_allclose(state.m, m, **TOL_F32, what=f"m {what}")
    assert_allclose(state.l, l, **TOL_F32_REORDERED, what=f"l {what}")


def empty_state(shape) -> "ta.SoftmaxState":
    return ta.SoftmaxState(mx.full(shape, -math.inf), mx.zeros(shape))


def state_from_numpy(x: np.ndarray) -> "ta.SoftmaxState":
    m, l = np_state(x)
    return ta.SoftmaxState(mx.array(m.astype(np.float32)), mx.array(l.astype(np.float32)))


# Rows with ordinary, large, and -inf values (whole blocks and whole rows of -inf included).
def extreme_rows() -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((6, 12)).astype(np.float32)
    rows[0] *= 1e4  # exp(1e4) overflows float32 and float64 without the max trick
    rows[1, ::3] = -np.inf  # scattered -inf
    rows[2, :8] = -np.inf  # the first blocks are -inf only
    rows[3, 4:] = -np.inf  # the last blocks are -inf only
    rows[4] = -np.inf  # nothing to normalise: NaN, as mx.softmax and Week 1 give
    rows[5] = 1e4 + rows[5]  # large and close together: the differences must survive
    return rows


# --- Task 1: the state of a block and the merge rule ------------------------------------------


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((3, 10), -1), ((4, 5, 6), 1), ((5, 3), 0)])
def test_task_1_softmax_state_of_a_block(shape, axis):
    x = rand(shape, seed=1, scale=3.0)
    m, l = np_state(np.array(x), axis)
    assert_state(ta.softmax_state(x, axis=axis), m, l)


def test_task_1_softmax_state_extreme_values():
    x = extreme_rows()
    m, l = np_state(x)
    state = ta.softmax_state(mx.array(x))
    assert_state(state, m, l)
    assert float(state.m[4]) == -math.inf and float(state.l[4]) == 0.0, "a row of -inf: (-inf, 0)"


@pytest.mark.parametrize("split", [1, 5, 11])
def test_task_1_merge_two_blocks_equals_the_whole(split):
    x = rand((4, 12), seed=2, scale=4.0)
    whole = np_state(np.array(x))
    merged = ta.merge_softmax_states(ta.softmax_state(x[:, :split]), ta.softmax_state(x[:, split:]))
    assert_state(merged, *whole, what=f"split at {split}")


@pytest.mark.parametrize("split", [2, 4, 8])
def test_task_1_merge_with_extreme_values(split):
    x = extreme_rows()
    a = ta.softmax_state(mx.array(x[:, :split]))
    b = ta.softmax_state(mx.array(x[:, split:]))
    merged = ta.merge_softmax_states(a, b)
    assert_state(merged, *np_state(x), what=f"split at {split}")


def test_task_1_empty_state_is_the_identity():
    x = extreme_rows()
    s = state_from_numpy(x)
    e = empty_state(x.shape[:1])
    for merged in (ta.merge_softmax_states(e, s), ta.merge_softmax_states(s, e)):
        assert_state(merged, *np_state(x))
    both = ta.merge_softmax_states(e, e)
    assert np.all(np.isneginf(np.array(both.m))) and np.all(np.array(both.l) == 0.0)


@HYPOTHESIS
@given(
    values=st.lists(
        st.one_of(
            st.floats(-50.0, 50.0, width=32),
            st.floats(-1e4, 1e4, width=32),
            st.just(-math.inf),
        ),
        min_size=3,
        max_size=24,
    ),
    data=st.data(),
)
def test_task_1_merge_is_order_independent(values, data):
    x = np.array(values, dtype=np.float32)
    i = data.draw(st.integers(1, len(x) - 2), label="first cut")
    j = data.draw(st.integers(i + 1, len(x) - 1), label="second cut")
    a, b, c = (state_from_numpy(part) for part in (x[:i], x[i:j], x[j:]))
    expected = np_state(x)
    merge = ta.merge_softmax_states
    for what, s in {
        "(a b) c": merge(merge(a, b), c),
        "a (b c)": merge(a, merge(b, c)),
        "(c a) b": merge(merge(c, a), b),
        "b (c a)": merge(b, merge(c, a)),
    }.items():
        assert_state(s, *expected, what=what)


# --- Task 2: the one-pass scan and the block-by-block softmax -------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 8, 16, 17, 100])
def test_task_2_online_state_matches_one_read(block_size):
    x = rand((5, 17), seed=3, scale=5.0)
    assert_state(
        ta.online_softmax_state(x, block_size),
        *np_state(np.array(x)),
        what=f"block_size={block_size}",
    )


@pytest.mark.parametrize("shape,axis", [((3, 4, 9), 1), ((9, 2), 0), ((2, 3, 10), -1)])
def test_task_2_online_state_along_any_axis(shape, axis):
    x = rand(shape, seed=4, scale=2.0)
    assert_state(ta.online_softmax_state(x, 4, axis=axis), *np_state(np.array(x), axis))


@pytest.mark.parametrize("block_size", [1, 4, 5, 12, 64])
def test_task_2_online_softmax_equals_plain_softmax(block_size):
    x = rand((6, 40), seed=5, scale=3.0)
    y = ta.online_softmax(x, block_size)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_allclose(y, numpy_softmax(np.array(x)), **TOL_F32_REORDERED)
    assert_allclose(y, mx.softmax(x, axis=-1), **TOL_F32_REORDERED, what="vs mx.softmax")


@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_task_2_online_softmax_extreme_values(block_size):
    x = extreme_rows()
    y = ta.online_softmax(mx.array(x), block_size)
    # Row 4 is -inf everywhere: NaN like the plain softmax; every other row is a distribution.
    assert_allclose(y, numpy_softmax(x), **TOL_F32_REORDERED)
    assert_allclose(y, mx.softmax(mx.array(x), axis=-1), **TOL_F32_REORDERED, what="vs mx")
    yn = np.array(y)
    assert np.all(np.isnan(yn[4])), "a row of -inf has nothing to normalise: NaN"
    others = np.delete(yn, 4, axis=0)
    assert np.all(np.isfinite(others)), "no overflow on large logits, no NaN from -inf blocks"
    assert_allclose(others.sum(axis=-1), np.ones(len(others)), **TOL_F32_REORDERED)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_task_2_online_softmax_along_any_axis(axis):
    x = rand((7, 9, 5), seed=6, scale=2.0)
    assert_allclose(
        ta.online_softmax(x, 2, axis=axis), numpy_softmax(np.array(x), axis), **TOL_F32_REORDERED
    )


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_task_2_online_softmax_half_precision(dtype):
    x = rand((4, 33), seed=8, scale=4.0, dtype=dtype)
    y = ta.online_softmax(x, 8)
    assert y.dtype == dtype
    tol = TOL_F16 if dtype == mx.float16 else TOL_BF16
    assert_allclose(y, numpy_softmax(to_numpy(x)), **tol)


@HYPOTHESIS
@given(
    rows=st.integers(1, 3),
    n=st.integers(1, 30),
    block_size=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.1, 1.0, 30.0, 3e3]),
    neg_inf=st.floats(0.0, 1.0),
)
def test_task_2_online_softmax_property(rows, n, block_size, seed, scale, neg_inf):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * scale).astype(np.float32)
    x[rng.random((rows, n)) < neg_inf] = -np.inf
    assert_state(ta.online_softmax_state(mx.array(x), block_size), *np_state(x))
    assert_allclose(
        ta.online_softmax(mx.array(x), block_size), numpy_softmax(x), **TOL_F32_REORDERED
    )


# --- Task 3: merging two partial attention results -------------------------------------------


def f32(a: np.ndarray) -> mx.array:
    return mx.array(a.astype(np.float32))


def np_partial_attention(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """softmax(s) v and log sum exp(s) over the last axis of the scores s, in float64."""
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(axis=-1, keepdims=True)
    return (e / l) @ v, (m + np.log(l))[..., 0]


@pytest.mark.parametrize(
    "shape,split", [((1, 5, 10, 4), 3), ((2, 3, 7, 19, 8), 18), ((4, 9, 6), 1)]
)
def test_task_3_merge_attention_partials_equals_whole(shape, split):
    *lead, S, Ev = shape
    s = np.array(rand((*lead, S), seed=10, scale=3.0), dtype=np.float64)  # scores (..., L, S)
    v = np.array(rand((*lead[:-1], S, Ev), seed=11), dtype=np.float64)  # values (..., S, Ev)
    o_a, lse_a = np_partial_attention(s[..., :split], v[..., :split, :])
    o_b, lse_b = np_partial_attention(s[..., split:], v[..., split:, :])
    o, lse = np_partial_attention(s, v)
    for order in ("ab", "ba"):
        args = (f32(o_a), f32(lse_a), f32(o_b), f32(lse_b))
        if order == "ba":
            args = args[2:] + args[:2]
        got_o, got_lse = ta.merge_attention_partials(*args)
        assert got_lse.dtype == mx.float32
        assert_allclose(got_o, o, **TOL_F32_REORDERED, what=f"o, order {order}")
        assert_allclose(got_lse, lse, **TOL_F32_REORDERED, what=f"lse, order {order}")


def test_task_3_merge_attention_partials_three_way_and_large_lse():
    # Three chunks of keys, merged in two different orders. Scores near 100 overflow a float32
    # exp() (exp(89) is already inf); the log-sum-exps must be combined without one.
    s = np.array(rand((3, 30), seed=12, scale=2.0), dtype=np.float64) + 100.0
    v = np.array(rand((30, 5), seed=13), dtype=np.float64)
    parts = [np_partial_attention(s[:, a:b], v[a:b]) for a, b in ((0, 7), (7, 20), (20, 30))]
    (oa, la), (ob, lb), (oc, lc) = [(f32(o), f32(lse)) for o, lse in parts]
    o_ab, l_ab = ta.merge_attention_partials(oa, la, ob, lb)
    o1, l1 = ta.merge_attention_partials(o_ab, l_ab, oc, lc)
    o_bc, l_bc = ta.merge_attention_partials(ob, lb, oc, lc)
    o2, l2 = ta.merge_attention_partials(o_bc, l_bc, oa, la)
    o, lse = np_partial_attention(s, v)
    for got_o, got_l in ((o1, l1), (o2, l2)):
        assert_allclose(got_o, o, **TOL_F32_REORDERED, what="o")
        assert_allclose(got_l, lse, **TOL_F32_REORDERED, what="lse")


def test_task_3_an_empty_part_contributes_nothing():
    # Part b saw no key (every score -inf): lse_b = -inf and o_b = 0/0 = NaN. It must not leak.
    o_a = rand((2, 4, 6), seed=14)
    lse_a = rand((2, 4), seed=15)
    o_b = mx.full((2, 4, 6), math.nan)
    lse_b = mx.full((2, 4), -math.inf)
    for o, lse in (
        ta.merge_attention_partials(o_a, lse_a, o_b, lse_b),
        ta.merge_attention_partials(o_b, lse_b, o_a, lse_a),
    ):
        assert_allclose(o, o_a, **TOL_F32)
        assert_allclose(lse, lse_a, **TOL_F32)
    # Both parts empty: there is no answer (NaN) and the row's log-sum-exp is -inf.
    o, lse = ta.merge_attention_partials(o_b, lse_b, o_b, lse_b)
    assert np.all(np.isnan(np.array(o))) and np.all(np.isneginf(np.array(lse)))
