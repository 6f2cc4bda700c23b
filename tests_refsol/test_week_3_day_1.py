"""Week 3, day 1: the row softmax as a Metal kernel, dispatched from SoftmaxRows::eval_gpu.

Runs on a Metal device where there is one and on metalsim everywhere else.
"""

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


@pytest.mark.parametrize(
    "shape",
    [(1,), (3, 10), (4, 32), (2, 3, 33), (5, 100), (2, 1024)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_task_1_softmax_rows_gpu(ext, shape):
    x = rand(shape, seed=sum(shape), scale=3.0)
    y = ext.softmax_rows(x, stream=GPU)
    mx.eval(y)
    assert y.shape == x.shape and y.dtype == mx.float32
    assert_allclose(y, numpy_softmax(x), **TOL_F32, what=f"softmax_rows on the GPU, {shape}")


def test_task_1_softmax_rows_gpu_matches_cpu(ext):
    x = rand((6, 77), seed=3, scale=5.0)
    gpu = ext.softmax_rows(x, stream=GPU)
    cpu = ext.softmax_rows(x, stream=mx.cpu)
    assert_allclose(gpu, cpu, **TOL_F32, what="GPU against the Week 2 CPU path")


def test_task_1_softmax_rows_gpu_extreme_values(ext):
    # Large scores overflow exp() unless the row max is subtracted; -inf entries get 0.
    x = np.random.default_rng(7).standard_normal((4, 50)).astype(np.float32) * 1000.0
    x[1, ::3] = -np.inf
    x[2, :] = 88.0  # exp(88) is near the float32 limit: all equal -> uniform
    y = ext.softmax_rows(mx.array(x), stream=GPU)
    expected = numpy_softmax(mx.array(x))
    assert np.isfinite(to_numpy(y)).all(), "a finite row must give a finite softmax"
    assert_allclose(y, expected, **TOL_F32, what="rows with huge values and -inf")


def test_task_1_softmax_rows_gpu_noncontiguous(ext):
    # A transposed input: the op makes it row-contiguous before eval_gpu sees it.
    x = rand((40, 6), seed=11).T
    y = ext.softmax_rows(x, stream=GPU)
    assert_allclose(y, numpy_softmax(x), **TOL_F32, what="transposed input")


def test_task_1_softmax_rows_gpu_empty(ext):
    # No rows: nothing to launch (Metal's API validation rejects a grid with a zero extent).
    y = ext.softmax_rows(mx.zeros((0, 7)), stream=GPU)
    mx.eval(y)
    assert y.shape == (0, 7)
    x = rand((2, 5), seed=1)  # and the next call still works
    assert_allclose(ext.softmax_rows(x, stream=GPU), numpy_softmax(x), **TOL_F32)


@pytest.mark.parametrize("n", [1025, 3000])
def test_task_2_softmax_rows_gpu_long_rows(ext, n):
    # More columns than threads in a threadgroup: every thread must loop.
    x = rand((3, n), seed=n, scale=4.0)
    y = ext.softmax_rows(x, stream=GPU)
    assert_allclose(y, numpy_softmax(x), **TOL_F32, what=f"rows of {n} columns")
    assert_allclose(mx.sum(y, axis=-1), np.ones(3), rtol=1e-5, atol=1e-5, what="row sums")
