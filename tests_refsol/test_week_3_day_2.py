"""Week 3, day 2: flash_attention_f32_e128, the one-score-per-thread Metal kernel.

`ext.flash_attention(..., stream=GPU)` runs FlashAttention::eval_gpu: on a Metal device where
there is one, on metalsim everywhere else. Sizes stay small: the simulator runs 1024 fibers
per threadgroup.
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def gpu_attention(ext, q, k, v, **kwargs):
    scale = kwargs.pop("scale", 1.0 / math.sqrt(q.shape[-1]))
    out = ext.flash_attention(q, k, v, scale, stream=GPU, **kwargs)
    mx.eval(out)
    return out


# --------------------------------------------------------------------- Task 1: eval_gpu


@pytest.mark.parametrize("E", [129, 160])
def test_task_1_gpu_rejects_head_dim_over_128(ext, E):
    q, k, v = qkv((1,), 1, 1, 4, 4, E, seed=1)
    with pytest.raises(ValueError, match=r"\bE\b.*128|128.*\bE\b"):
        gpu_attention(ext, q, k, v)


@pytest.mark.parametrize("E", [12, 60, 136])
def test_task_1_gpu_fast_kernel_rejects_head_dim(ext, E):
    # eval_gpu checks the limits of both kernels (the fast one is Day 4's): its 8x8 blocks
    # need E to be a multiple of 8, and the tiles hold at most E = 128.
    q, k, v = qkv((1,), 1, 1, 4, 4, E, seed=E)
    with pytest.raises(ValueError, match=r"\bE\b"):
        out = ext.flash_attention_fast(q, k, v, 1.0 / math.sqrt(E), stream=GPU)
        mx.eval(out)


# --------------------------------------------------------------------- Task 2: the kernel

SHAPES = [
    # (N, H, L, S, E)
    (1, 1, 32, 32, 64),  # one tile each way
    (1, 2, 40, 70, 80),  # L and S not multiples of 32, E = 80
    (2, 1, 5, 3, 128),  # tiny tiles, E = 128
    (1, 1, 64, 33, 128),  # L > S, two Q tiles
    (1, 1, 1, 100, 64),  # a single query row (decoding)
]


@pytest.mark.parametrize("N,H,L,S,E", SHAPES, ids=lambda v: str(v))
def test_task_2_flash_attention_gpu(ext, N, H, L, S, E):
    q, k, v = qkv((N,), H, H, L, S, E, seed=N * 1000 + L + S + E)
    out = gpu_attention(ext, q, k, v)
    assert out.shape == q.shape and out.dtype == mx.float32
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32_REORDERED, what=f"{(N, H, L, S, E)}")


def test_task_2_flash_attention_gpu_rescale(ext):
    # Scores grow along the keys, so the running max changes at every K tile: a kernel that
    # forgets to rescale O or l by exp(m_old - m_new) is far off.
    N, H, L, S, E = 1, 1, 8, 96, 64
    q, k, v = qkv((N,), H, H, L, S, E, seed=5)
    ramp = mx.arange(S, dtype=mx.float32).reshape(1, 1, S, 1) / 8.0
    k = k * 0.1 + ramp * mx.ones((1, 1, 1, E)) / math.sqrt(E)
    q = mx.abs(q) + 1.0
    out = gpu_attention(ext, q, k, v)
    assert_allclose(out, numpy_attention(q, k, v), **TOL_F32_REORDERED, what="growing scores")


def test_task_2_flash_attention_gpu_scale(ext):
    q, k, v = qkv((1,), 2, 2, 20, 45, 64, seed=9, scale=2.0)
    out = gpu_attention(ext, q, k, v, scale=0.3)
    assert_allclose(out, mlx_sdpa(q, k, v, scale=0.3), **TOL_F32_REORDERED, what="scale=0.3")


def test_task_2_flash_attention_gpu_matches_cpu(ext):
    q, k, v = qkv((1,), 1, 1, 36, 50, 80, seed=13)
    gpu = gpu_attention(ext, q, k, v)
    cpu = ext.flash_attention(q, k, v, 1.0 / math.sqrt(80), stream=mx.cpu)
    assert_allclose(gpu, cpu, **TOL_F32_REORDERED, what="GPU against the Week 2 CPU op")


def test_task_2_flash_attention_gpu_noncontiguous(ext):
    # query as a transposed view: the op hands eval_gpu a row-contiguous copy.
    q, k, v = qkv((1,), 2, 2, 24, 24, 64, seed=17)
    q_t = mx.swapaxes(mx.swapaxes(q, 1, 2), 1, 2)  # same values, strided through a view
    q_view = mx.swapaxes(mx.array(to_numpy(q, np.float32).transpose(0, 2, 1, 3)), 1, 2)
    for query in (q_t, q_view):
        assert_allclose(
            gpu_attention(ext, query, k, v),
            mlx_sdpa(q, k, v),
            **TOL_F32_REORDERED,
            what="non-contiguous query",
        )


def test_task_2_gpu_error_leaves_extension_usable(ext):
    # A refused call (Task 1) must not poison the stream: the next good call works, which
    # needs the kernel of Task 2.
    q, k, v = qkv((1,), 1, 1, 4, 4, 130, seed=2)
    with pytest.raises(ValueError):
        gpu_attention(ext, q, k, v)
    q, k, v = qkv((1,), 1, 1, 4, 4, 8, seed=3)
    assert_allclose(gpu_attention(ext, q, k, v), mlx_sdpa(q, k, v), **TOL_F32_REORDERED)
