"""Week 5, day 1: decoding against a KV cache.

The KV cache (Python), the decode op on the CPU (one task per key/value group) and on the GPU
(decode_attention_<t>_e128, keys spread over the SIMD groups). Answers are checked against
float64 NumPy attention; structure through what ran: kv_rows_read() (K/V read once per group:
B * H * S rows), the dispatched grid and the CPU kernel's report.
"""

import math
import os

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def reference(q, k, v, causal=False):
    return numpy_attention(q, k, v, mask="causal" if causal else None)


# --------------------------------------------------------------------- Task 1: the KV cache


def test_task_1_kv_cache_append_and_views():
    cache = ta.KVCache(2, 3, 10, 8)
    assert (cache.length, cache.capacity) == (0, 10)
    assert cache.nbytes == 2 * 2 * 3 * 10 * 8 * 4
    k1, v1 = rand((2, 3, 4, 8), seed=1), rand((2, 3, 4, 8), seed=2)
    k2, v2 = rand((2, 3, 1, 8), seed=3), rand((2, 3, 1, 8), seed=4)
    cache.append(k1, v1)
    cache.append(k2, v2)
    assert cache.length == 5
    assert cache.keys.shape == (2, 3, 5, 8) and cache.values.shape == (2, 3, 5, 8)
    assert_allclose(cache.keys, np.concatenate([to_numpy(k1), to_numpy(k2)], axis=2), **TOL_F32)
    assert_allclose(cache.values, np.concatenate([to_numpy(v1), to_numpy(v2)], axis=2), **TOL_F32)


def test_task_1_kv_cache_float16():
    cache = ta.KVCache(1, 2, 4, 8, dtype=mx.float16)
    k = rand((1, 2, 3, 8), seed=5, dtype=mx.float16)
    cache.append(k, k)
    assert cache.keys.dtype == mx.float16 and cache.nbytes == 2 * 2 * 4 * 8 * 2
    assert_allclose(cache.keys, k, **TOL_F16)


def test_task_1_kv_cache_bad_input():
    with raises_naming(ValueError, "capacity"):
        ta.KVCache(1, 2, 0, 8)
    with raises_naming(TypeError, "dtype"):
        ta.KVCache(1, 2, 4, 8, dtype=mx.int32)
    cache = ta.KVCache(1, 2, 4, 8)
    with raises_naming(ValueError, "keys"):  # wrong head count
        cache.append(rand((1, 3, 1, 8), seed=1), rand((1, 3, 1, 8), seed=1))
    with raises_naming(TypeError, "values"):
        cache.append(rand((1, 2, 1, 8), seed=1), rand((1, 2, 1, 8), seed=1, dtype=mx.float16))
    cache.append(rand((1, 2, 3, 8), seed=1), rand((1, 2, 3, 8), seed=2))
    with raises_naming(ValueError, "capacity"):  # 3 + 2 > 4
        cache.append(rand((1, 2, 2, 8), seed=1), rand((1, 2, 2, 8), seed=2))
    assert cache.length == 3  # a refused append changes nothing


# --------------------------------------------------------------------- Tasks 2-3: the CPU


CASES = [
    # B, H_q, H, L, S, E, causal
    (1, 4, 4, 1, 50, 64, False),
    (2, 8, 2, 1, 100, 64, False),  # GQA, G = 4
    (1, 4, 1, 1, 33, 128, False),  # multi-query
    (1, 6, 2, 3, 40, 32, True),  # a few drafted tokens, causal
    (2, 4, 2, 8, 70, 20, True),  # L = 8, E not a multiple of 8
    (1, 2, 2, 4, 4, 16, True),  # S = L: the first row sees one key
    (1, 9, 3, 1, 45, 24, False),  # G = 3 rows per group
    (1, 6, 2, 2, 45, 24, True),  # G * L = 6 rows per group
    (1, 8, 2, 2, 300, 128, True),  # E = 128, G * L = 8: two blocks of 4 rows, causal
]
CASE_IDS = [
    f"B{b}-Hq{hq}-H{h}-L{L}-S{S}-E{E}{'-causal' if c else ''}" for b, hq, h, L, S, E, c in CASES
]


@pytest.mark.parametrize("B,H_q,H,L,S,E,causal", CASES, ids=CASE_IDS)
def test_task_2_decode_cpu(ext, B, H_q, H, L, S, E, causal):
    q, k, v = qkv((B,), H_q, H, L, S, E, seed=B + H_q + L + S)
    out = ext.decode_attention(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == mx.float32
    assert_allclose(out, reference(q, k, v, causal), **TOL_F32_REORDERED, what="decode, CPU")


def test_task_2_decode_cpu_scale(ext):
    q, k, v = qkv((1,), 2, 1, 1, 30, 16, seed=9)
    out = ext.decode_attention(q, k, v, 0.3)
    expected = numpy_attention(q, k, v, scale=0.3)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what="scale=0.3")


def test_task_2_decode_cpu_reads_kv_once_per_group(ext):
    # H_q = 8 query heads share H = 2 key/value heads: every key row is read once for its
    # group of 4 heads, B * H * S rows in all (not B * H_q * S).
    B, H_q, H, S = 2, 8, 2, 90
    q, k, v = qkv((B,), H_q, H, 1, S, 32, seed=4)
    ext.reset_kv_rows_read()
    mx.eval(ext.decode_attention(q, k, v))
    assert ext.kv_rows_read() == B * H * S


def test_task_3_decode_cpu_runs_the_decode_kernel_on_threads(ext):
    q, k, v = qkv((2,), 4, 2, 1, 64, 16, seed=5)
    ext.reset_cpu_kernel_runs()
    mx.eval(ext.decode_attention(q, k, v))
    runs = ext.cpu_kernel_runs()
    assert len(runs) == 1 and runs[0][0] == "decode", runs
    # One task per (batch, key/value head): 4 tasks, as many threads as the machine gives.
    assert 1 <= runs[0][1] <= 4
    if (os.cpu_count() or 1) >= 2:
        assert runs[0][1] >= 2, f"the kernel ran on {runs[0][1]} thread(s)"


def test_task_3_decode_cpu_reads_a_kv_cache_in_place(ext):
    # The live part of a KVCache is a strided view; the op reads it without a dense copy and
    # gets the same answer.
    B, H_q, H, E = 2, 4, 2, 16
    cache = ta.KVCache(B, H, 64, E)
    k, v = rand((B, H, 37, E), seed=1), rand((B, H, 37, E), seed=2)
    cache.append(k, v)
    q = rand((B, H_q, 1, E), seed=3)
    out = ext.decode_attention(q, cache.keys, cache.values)
    assert_allclose(out, reference(q, k, v), **TOL_F32_REORDERED, what="decode from a KVCache")


def test_task_3_decode_cpu_bad_input(ext):
    q, k, v = qkv((1,), 4, 2, 1, 10, 16, seed=1)
    with raises_naming(ValueError, "query"):  # more than 8 rows: a prompt, not a decode
        ext.decode_attention(rand((1, 4, 9, 16), seed=1), k, v)
    with raises_naming(ValueError, "H_q"):
        ext.decode_attention(rand((1, 3, 1, 16), seed=1), k, v)
    with raises_naming(ValueError, "key"):
        ext.decode_attention(q, rand((1, 2, 10, 8), seed=1), rand((1, 2, 10, 8), seed=2))
    with raises_naming(ValueError, "value"):
        ext.decode_attention(q, k, v.astype(mx.float16))
    with raises_naming(ValueError, "key"):  # causal with fewer keys than new tokens
        ext.decode_attention(rand((1, 4, 4, 16), seed=1), k[:, :, :2], v[:, :, :2], causal=True)
    with raises_naming(TypeError, "key"):
        ext.decode_attention(q, np.zeros((1, 2, 10, 16), np.float32), v)
    with raises_naming(TypeError, "scale"):
        ext.decode_attention(q, k, v, True)
    with raises_naming(TypeError, "causal"):
        ext.decode_attention(q, k, v, causal=1)
    with raises_naming(ValueError, "scale"):
        ext.decode_attention(q, k, v, math.inf)
    # Refusing bad input leaves the op working.
    assert_allclose(ext.decode_attention(q, k, v), reference(q, k, v), **TOL_F32_REORDERED)


# --------------------------------------------------------------------- Tasks 4-5: the GPU


GPU_CASES = [CASES[1], CASES[3], CASES[4], CASES[5], (1, 2, 1, 1, 5, 128, False)]
GPU_IDS = [
    f"B{b}-Hq{hq}-H{h}-L{L}-S{S}-E{E}{'-causal' if c else ''}" for b, hq, h, L, S, E, c in GPU_CASES
]


@pytest.mark.parametrize("B,H_q,H,L,S,E,causal", GPU_CASES, ids=GPU_IDS)
def test_task_5_decode_gpu(ext, B, H_q, H, L, S, E, causal):
    q, k, v = qkv((B,), H_q, H, L, S, E, seed=B + H_q + L + S)
    out = ext.decode_attention(q, k, v, causal=causal, stream=GPU)
    mx.eval(out)
    assert out.shape == q.shape and out.dtype == mx.float32
    assert_allclose(out, reference(q, k, v, causal), **TOL_F32_REORDERED, what="decode, GPU")


def test_task_4_decode_gpu_grid_and_reads(ext):
    # One threadgroup (1024 threads where the device allows them) per (batch, key/value head):
    # the group's 4 query heads share it, and each key row is read once for them (B * H * S),
    # not once per query head.
    B, H_q, H, S = 2, 8, 2, 70
    q, k, v = qkv((B,), H_q, H, 1, S, 64, seed=6)
    ext.reset_gpu_dispatches()
    ext.reset_kv_rows_read()
    mx.eval(ext.decode_attention(q, k, v, stream=GPU))
    assert ext.gpu_dispatches() == [
        ("decode_attention_f32_e128", (B * H, 1, 1), (WholeSimdGroups(ext), 1, 1))
    ]
    assert ext.kv_rows_read() == B * H * S


def test_task_5_decode_gpu_float16_and_a_kv_cache(ext):
    B, H_q, H, E = 1, 4, 2, 32
    cache = ta.KVCache(B, H, 48, E, dtype=mx.float16)
    k = rand((B, H, 30, E), seed=7, dtype=mx.float16)
    v = rand((B, H, 30, E), seed=8, dtype=mx.float16)
    cache.append(k, v)
    q = rand((B, H_q, 2, E), seed=9, dtype=mx.float16)
    ext.reset_gpu_dispatches()
    out = ext.decode_attention(q, cache.keys, cache.values, causal=True, stream=GPU)
    mx.eval(out)
    assert out.dtype == mx.float16
    assert ext.gpu_dispatches()[0][0] == "decode_attention_f16_e128"
    assert_allclose(out, reference(q, k, v, causal=True), **TOL_F16, what="float16 decode")


def test_task_4_decode_gpu_bad_input(ext):
    q, k, v = qkv((1,), 2, 1, 1, 10, 160, seed=1)
    with raises_naming(ValueError, "E"):  # the kernel holds E <= 128
        ext.decode_attention(q, k, v, stream=GPU)
    q, k, v = (x[..., :128] for x in (q, k, v))  # E = 128, the largest it holds
    out = ext.decode_attention(q, k, v, stream=GPU)
    assert_allclose(out, reference(q, k, v), **TOL_F32_REORDERED, what="E = 128 on the GPU")
