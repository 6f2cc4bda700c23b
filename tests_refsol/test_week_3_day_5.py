"""Week 3, day 5: float16 and bfloat16 inputs on the GPU, float32 accumulation.

The reference is MLX's attention in float32 on the very same (rounded) half-precision values,
so the only differences left are the final rounding of the output and the order of the sums.
"""

import math

import mlx.core as mx
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")
HALF = {"float16": (mx.float16, TOL_F16), "bfloat16": (mx.bfloat16, TOL_BF16)}


def run(ext, kernel, q, k, v, mask=None, causal=False):
    op = ext.flash_attention if kernel == "simple" else ext.flash_attention_fast
    out = op(q, k, v, 1.0 / math.sqrt(q.shape[-1]), mask, causal, stream=GPU)
    mx.eval(out)
    return out


def reference(q, k, v, mask=None):
    f32 = [x.astype(mx.float32) for x in (q, k, v)]
    return mlx_sdpa(*f32, mask=mask)


def check(ext, kernel, dtype_name, shape, *, mask=None, causal=False, seed=0):
    dtype, tol = HALF[dtype_name]
    N, H_q, H, L, S, E = shape
    q, k, v = qkv((N,), H_q, H, L, S, E, seed=seed, dtype=dtype)
    out = run(ext, kernel, q, k, v, mask=mask, causal=causal)
    assert out.dtype == dtype, f"the output keeps the inputs' dtype {dtype}, got {out.dtype}"
    expected = reference(q, k, v, mask="causal" if causal else mask)
    assert_allclose(out, expected, **tol, what=f"{kernel} kernel, {dtype_name}, {shape}")


# --------------------------------------------------------------------- Task 1: the simple kernel


@pytest.mark.parametrize("dtype_name", list(HALF))
@pytest.mark.parametrize("shape", [(1, 2, 2, 40, 70, 64), (2, 4, 2, 9, 33, 128)], ids=str)
def test_task_1_half_simple_kernel(ext, dtype_name, shape):
    check(ext, "simple", dtype_name, shape, seed=sum(shape))


def test_task_1_half_simple_kernel_causal_and_mask(ext):
    check(ext, "simple", "float16", (1, 2, 1, 33, 40, 64), causal=True, seed=5)
    mask = rand((33, 40), seed=6)  # a float32 additive mask with float16 inputs
    check(ext, "simple", "bfloat16", (1, 2, 1, 33, 40, 64), mask=mask, seed=7)


def test_task_1_half_large_scores(ext):
    # Scores of a few hundred: exp() of them overflows float16, not the float32 accumulator.
    q, k, v = qkv((1,), 1, 1, 16, 48, 64, seed=9, dtype=mx.float16, scale=4.0)
    out = run(ext, "simple", q, k, v)
    assert_allclose(out, reference(q, k, v), **TOL_F16, what="large float16 scores")


def test_task_1_half_dtype_rules(ext):
    # float16 runs on the GPU; mixing dtypes, integers, and float16 on the CPU are refused.
    q, k, v = qkv((1,), 1, 1, 8, 8, 64, seed=11, dtype=mx.float16)
    assert_allclose(
        run(ext, "simple", q, k, v), reference(q, k, v), **TOL_F16, what="float16 on the GPU"
    )
    # Each error names the argument at fault: key's dtype differs from query's; an integer
    # query; a float16 query on the CPU, whose kernels (Week 2) read float32 only.
    with raises_naming(ValueError, "key"):
        run(ext, "simple", q, k.astype(mx.float32), v)
    with raises_naming(ValueError, "query"):
        run(ext, "simple", q.astype(mx.int32), k.astype(mx.int32), v.astype(mx.int32))
    with raises_naming(ValueError, "query"):
        mx.eval(ext.flash_attention(q, k, v, 0.125, stream=mx.cpu))


# --------------------------------------------------------------------- Task 2: the fast kernel


@pytest.mark.parametrize("dtype_name", list(HALF))
@pytest.mark.parametrize("shape", [(1, 2, 2, 40, 70, 64), (2, 4, 2, 9, 33, 128)], ids=str)
def test_task_2_half_simdgroup_kernel(ext, dtype_name, shape):
    check(ext, "fast", dtype_name, shape, seed=sum(shape) + 1)


def test_task_2_half_simdgroup_kernel_causal(ext):
    check(ext, "fast", "bfloat16", (1, 4, 2, 50, 50, 80), causal=True, seed=13)
