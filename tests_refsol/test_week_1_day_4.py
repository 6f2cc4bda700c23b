"""Week 1, Day 4: the memory wall, float16 overflow and fully masked rows.

Book: book/src/week1-04-memory-wall.md. The profiler is checked on structure, never on
absolute times: positive numbers, the right number of calls, peak memory at least the size of
what a call must hold, and growing about 4x when the sequence length doubles (with generous
bounds). References: MLX's own arrays' nbytes, mx.softmax, mx.fast.scaled_dot_product_attention.
"""

import math
import statistics

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import TOL_F16, TOL_F32, assert_allclose, mlx_sdpa, qkv, rand, ta, to_numpy


def naive_attention(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
    """The whole (L, S) score matrix at once, written here so the test does not depend on Day 1."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ mx.swapaxes(k, -1, -2)
    return mx.softmax(scores, axis=-1) @ v


# --- Task 1: scores_nbytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, H_q, H, L, S, E, dtype",
    [
        ((), 1, 1, 1, 1, 1, mx.float32),
        ((2,), 8, 8, 128, 128, 64, mx.float32),
        ((2,), 8, 2, 100, 37, 64, mx.float16),
        ((3, 2), 4, 1, 5, 9, 16, mx.bfloat16),
    ],
)
def test_task_1_scores_nbytes_is_the_score_matrix(batch, H_q, H, L, S, E, dtype):
    q_shape, k_shape = (*batch, H_q, L, E), (*batch, H, S, E)
    # What MLX allocates for an array of the scores' shape: (B..., H_q, L, S).
    expected = mx.zeros((*batch, H_q, L, S), dtype=dtype).nbytes
    assert ta.scores_nbytes(q_shape, k_shape, dtype) == expected


def test_task_1_scores_nbytes_grows_quadratically():
    one = ta.scores_nbytes((1, 8, 1024, 64), (1, 8, 1024, 64), mx.float32)
    two = ta.scores_nbytes((1, 8, 2048, 64), (1, 8, 2048, 64), mx.float32)
    assert one == 32 * 2**20, "8 heads x 1024 x 1024 float32 scores are 32 MiB"
    assert two == 4 * one


# --- Task 2: profile --------------------------------------------------------------------------


def test_task_2_profile_counts_calls_and_reports_positive_numbers():
    q, k, v = qkv((1,), 2, 2, 64, 64, 16, seed=1)
    calls = []

    def fn(q, k, v):
        calls.append(1)
        return naive_attention(q, k, v)

    p = ta.profile(fn, q, k, v, warmup=2, repeats=4)
    assert isinstance(p, ta.Profile)
    assert len(calls) == 2 + 1 + 4, "warmup calls, one memory call, then the timed repeats"
    assert len(p.times_s) == 4 and all(t > 0 for t in p.times_s)
    assert p.median_s == statistics.median(p.times_s)
    assert p.output_bytes == 2 * 64 * 16 * 4
    assert p.peak_bytes >= p.output_bytes > 0


def test_task_2_profile_passes_kwargs_and_accepts_tuples():
    x = rand((32, 32), seed=2)
    p = ta.profile(lambda x, scale: (x * scale, x + scale), x, scale=2.0, warmup=0, repeats=1)
    assert p.output_bytes == 2 * x.nbytes
    assert len(p.times_s) == 1


def test_task_2_profile_evaluates_lazy_results():
    # MLX is lazy: without mx.eval the call would build a graph and allocate nothing.
    x = rand((256, 256), seed=3)
    p = ta.profile(lambda x: x @ x + 1.0, x, warmup=0, repeats=2)
    assert p.peak_bytes >= x.nbytes, "the result was never computed: call mx.eval on it"


def test_task_2_profile_sees_the_memory_wall():
    # Naive attention holds (H, N, N) float32 scores (and their softmax): 4x the memory for
    # 2x the length. Bounds are generous: we check the shape of the curve, not MLX internals.
    peaks = {}
    for n in (256, 512, 1024):
        q, k, v = qkv((1,), 4, 4, n, n, 32, seed=4)
        p = ta.profile(naive_attention, q, k, v, warmup=1, repeats=1)
        scores = 4 * n * n * 4  # (H=4, N, N) float32, written out so Task 2 stands alone
        assert scores <= p.peak_bytes <= 4 * scores + 8 * q.nbytes, (
            f"N={n}: peak {p.peak_bytes} B for a {scores} B score matrix"
        )
        peaks[n] = p.peak_bytes
    for small, big in ((256, 512), (512, 1024)):
        ratio = peaks[big] / peaks[small]
        assert 2.5 <= ratio <= 6.0, f"peak memory N={small}->{big} grew {ratio:.2f}x, expected ~4x"


# --- Task 3: softmax_naive and float16 overflow -------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((5,), -1), ((3, 7), -1), ((3, 7), 0)])
def test_task_3_softmax_naive_is_a_softmax(shape, axis):
    x = rand(shape, seed=10)
    out = ta.softmax_naive(x, axis=axis)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_allclose(out, mx.softmax(x, axis=axis, precise=True), **TOL_F32)


def test_task_3_softmax_naive_overflows_in_float16():
    # e^11.09 ~ 65504, the largest float16: one score of 12 is enough to break the formula.
    x = mx.array([[0.0, 5.0, 12.0], [1.0, 2.0, 3.0]], dtype=mx.float16)
    out = to_numpy(ta.softmax_naive(x))
    assert not np.isfinite(out[0]).all(), "exp(12) is inf in float16: the row cannot be finite"
    assert_allclose(out[1], to_numpy(mx.softmax(x[1].astype(mx.float32))), **TOL_F16)
    # The same numbers in float32 are harmless: the overflow is a float16 story (until ~88).
    assert np.isfinite(to_numpy(ta.softmax_naive(x.astype(mx.float32)))).all()


# --- Task 4: float16 and fully masked rows, end to end --------------------------------------------


def test_task_4_stable_softmax_survives_float16():
    # Scores of a few hundred are ordinary in float16 attention (|q|, |k| of ~20 with E=64).
    x = rand((4, 50), seed=20, scale=200.0).astype(mx.float16)
    naive = to_numpy(ta.softmax_naive(x))
    stable = to_numpy(ta.softmax(x))
    assert not np.isfinite(naive).all(), "this input must overflow the naive formula"
    assert np.isfinite(stable).all(), "the max subtraction keeps every exponent <= 0"
    np.testing.assert_allclose(stable.astype(np.float64).sum(axis=-1), 1.0, rtol=1e-2)
    assert_allclose(stable, mx.softmax(x.astype(mx.float32), axis=-1), **TOL_F16)


@pytest.mark.parametrize("mask", [None, "causal"])
def test_task_4_float16_attention_with_large_scores(mask):
    # q and k of magnitude ~6 with E=64: scores of ~50 to 300 after scaling.
    q, k, v = qkv((1,), 4, 2, 24, 40, 64, seed=21, dtype=mx.float16, scale=6.0)
    out = ta.scaled_dot_product_attention(q, k, v, mask=mask)
    assert out.dtype == mx.float16
    assert np.isfinite(to_numpy(out)).all()
    assert_allclose(out, mlx_sdpa(q, k, v, mask=mask), **TOL_F16)


@pytest.mark.parametrize("dtype, tol", [(mx.float32, TOL_F32), (mx.float16, TOL_F16)])
@pytest.mark.parametrize("kind", ["bool", "causal_L_gt_S", "additive_minus_inf", "additive_big"])
def test_task_4_fully_masked_rows_match_mlx(kind, dtype, tol):
    L, S = (9, 4) if kind == "causal_L_gt_S" else (6, 5)
    q, k, v = qkv((2,), 4, 1, L, S, 8, seed=22, dtype=dtype)
    keep = np.ones((2, 1, L, S), dtype=bool)
    keep[:, :, 2, :] = False  # query 2 may look at nothing
    keep[1, :, 4, 1:] = False  # query 4 of sequence 1 only at key 0
    if kind == "bool":
        mask = mx.array(keep)
    elif kind == "causal_L_gt_S":
        mask = "causal"  # the first L - S = 5 queries see no key
    elif kind == "additive_minus_inf":
        mask = mx.array(np.where(keep, 0.0, -np.inf)).astype(dtype)
    else:
        mask = mx.array(np.where(keep, 0.0, -1e4)).astype(dtype)
    out = to_numpy(ta.scaled_dot_product_attention(q, k, v, mask=mask))
    expected = to_numpy(mlx_sdpa(q, k, v, mask=mask))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected), err_msg="NaN where MLX has")
    assert_allclose(out, expected, **tol)
