"""Week 2, Day 3: the first MLX C++ extension, `ext.softmax_rows`.

Book: book/src/week2-03-first-extension.md. Reference: softmax in float64 NumPy (and
mx.softmax); the same summation order per row, so TOL_F32.
"""

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import TOL_F32, assert_allclose, default_device, rand, to_numpy

# --- Task 1: the op ----------------------------------------------------------------------


def test_task_1_softmax_rows_builds_a_lazy_array(ext):
    x = rand((3, 4, 17), seed=1)
    y = ext.softmax_rows(x)
    assert isinstance(y, mx.array)
    assert y.shape == x.shape and y.dtype == mx.float32


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16, mx.int32])
def test_task_1_softmax_rows_rejects_other_dtypes(ext, dtype):
    with raises_naming(ValueError, "x"):
        ext.softmax_rows(mx.zeros((2, 3), dtype=dtype))


def test_task_1_softmax_rows_rejects_a_scalar(ext):
    with raises_naming(ValueError, "x"):
        ext.softmax_rows(mx.array(1.0))


# --- Task 2: eval_cpu ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 33), (2, 1, 4, 129)])
def test_task_2_softmax_rows_matches_numpy(ext, shape):
    x = rand(shape, seed=sum(shape), scale=3.0)
    y = ext.softmax_rows(x)
    assert_allclose(y, numpy_softmax(x), **TOL_F32, what=f"softmax_rows{shape}")
    assert_allclose(y, mx.softmax(x, axis=-1), **TOL_F32, what="vs mx.softmax")


def test_task_2_softmax_rows_is_stable_for_large_values(ext):
    x = mx.array([[1000.0, 1001.0, 1002.0], [-1e30, 0.0, 1e30], [88.0, 89.0, 90.0]])
    y = ext.softmax_rows(x)
    assert np.isfinite(to_numpy(y)).all(), "exp overflowed: subtract the row max first"
    assert_allclose(y, numpy_softmax(x), **TOL_F32)


def test_task_2_softmax_rows_masked_entries(ext):
    x = mx.array([[0.5, -np.inf, 1.5, -np.inf], [-np.inf, -np.inf, 2.0, -np.inf]])
    y = to_numpy(ext.softmax_rows(x))
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0 and y[1, 2] == 1.0
    assert_allclose(y, numpy_softmax(x), **TOL_F32)


def test_task_2_softmax_rows_fully_masked_row_is_nan_like_mx_softmax(ext):
    # A row with no finite entry has no distribution: 0 / 0, as in mx.softmax and NumPy.
    x = mx.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]])
    y = to_numpy(ext.softmax_rows(x))
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    assert_allclose(y, mx.softmax(x, axis=-1), **TOL_F32)


def test_task_2_softmax_rows_noncontiguous_input(ext):
    x = rand((6, 9), seed=4)
    xt = mx.transpose(x)  # a view with swapped strides: rows are not contiguous in memory
    assert_allclose(ext.softmax_rows(xt), numpy_softmax(to_numpy(x).T), **TOL_F32)
    xs = rand((5, 12), seed=5)[:, ::3]
    assert_allclose(ext.softmax_rows(xs), numpy_softmax(xs), **TOL_F32)


def test_task_2_softmax_rows_on_an_explicit_stream_and_in_a_graph(ext):
    x = rand((4, 10), seed=6)
    y = ext.softmax_rows(x * 2.0 + 1.0, stream=mx.cpu)  # its input is itself lazy
    assert_allclose(y, numpy_softmax(to_numpy(x) * 2.0 + 1.0), **TOL_F32)
    rows_sum = mx.sum(ext.softmax_rows(x), axis=-1)
    assert_allclose(rows_sum, np.ones(4), **TOL_F32)


def test_task_2_softmax_rows_runs_on_the_cpu_without_a_stream(ext, as_on_a_mac):
    # With no stream the op runs eval_cpu, even where MLX's default device is the GPU (a Mac;
    # `as_on_a_mac` makes this machine answer as one): Week 3's eval_gpu is not needed yet.
    assert default_device() == mx.gpu
    x = rand((3, 40), seed=8)
    assert_allclose(ext.softmax_rows(x), numpy_softmax(x), **TOL_F32)


def test_task_2_softmax_rows_under_compile(ext):
    x = rand((3, 8), seed=7)
    f = mx.compile(lambda a: ext.softmax_rows(a) * 3.0)
    assert_allclose(f(x), 3.0 * numpy_softmax(x), **TOL_F32)
