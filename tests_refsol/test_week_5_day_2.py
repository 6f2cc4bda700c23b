"""Week 5, day 2: split-K decoding (flash-decoding).

The keys cut into num_splits ranges, a partial (o, lse) each, merged with Week 2's rule: the
same answer as one pass for any split count, empty splits included (more splits than keys,
or keys the causal mask hides from every row of a split).
"""

import mlx.core as mx
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def reference(q, k, v, causal=False):
    return numpy_attention(q, k, v, mask="causal" if causal else None)


# --------------------------------------------------------------------- Task 1: the rule


def test_task_1_choose_num_splits(ext):
    # Few tasks, many workers, long sequence: split until the workers are covered.
    assert ext.choose_num_splits(32768, 8, 64) == 8
    # Enough tasks already: no split.
    assert ext.choose_num_splits(32768, 64, 16) == 1
    # Short sequences are not cut below 256 keys per split.
    assert ext.choose_num_splits(1024, 1, 64) == 4
    assert ext.choose_num_splits(100, 1, 64) == 1
    # Never more than 64.
    assert ext.choose_num_splits(1 << 20, 1, 1000) == 64


def test_task_1_choose_num_splits_bad_input(ext):
    with raises_naming(TypeError, "S"):
        ext.choose_num_splits(1.5, 1, 1)
    with pytest.raises(ValueError, match="workers"):
        ext.choose_num_splits(10, 1, 0)
    assert ext.choose_num_splits(10, 1, 1) == 1


# --------------------------------------------------------------------- Task 2: the CPU

SPLITS = [2, 3, 7, 40]


@pytest.mark.parametrize("num_splits", SPLITS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_task_2_split_cpu_any_split_count(ext, num_splits, causal):
    # 40 splits of S = 37 keys: three are empty; causal with L = 4 hides the last keys from
    # the first rows, so some splits are empty for some rows only.
    q, k, v = qkv((2,), 4, 2, 4, 37, 32, seed=num_splits)
    one = ext.decode_attention(q, k, v, causal=causal)
    out = ext.decode_attention_split(q, k, v, num_splits=num_splits, causal=causal)
    assert_allclose(out, reference(q, k, v, causal), **TOL_F32_REORDERED, what="split-K, CPU")
    assert_allclose(out, one, **TOL_F32_REORDERED, what="split-K against one pass")


def test_task_2_split_cpu_runs_the_splits(ext):
    q, k, v = qkv((1,), 8, 2, 1, 600, 16, seed=3)
    ext.reset_cpu_kernel_runs()
    ext.reset_kv_rows_read()
    mx.eval(ext.decode_attention_split(q, k, v, num_splits=5))
    assert ext.cpu_kernel_runs() == [("decode_split", 5)]
    assert ext.kv_rows_read() == 2 * 600  # the splits share out the keys: each read once


def test_task_2_split_cpu_chooses(ext):
    q, k, v = qkv((1,), 2, 1, 1, 2048, 16, seed=4)
    out = ext.decode_attention_split(q, k, v)  # num_splits=0: choose_num_splits
    assert_allclose(out, reference(q, k, v), **TOL_F32_REORDERED, what="chosen split count")


def test_task_2_split_bad_input(ext):
    q, k, v = qkv((1,), 2, 1, 1, 20, 16, seed=1)
    with raises_naming(ValueError, "num_splits"):
        ext.decode_attention_split(q, k, v, num_splits=-1)
    with raises_naming(TypeError, "num_splits"):
        ext.decode_attention_split(q, k, v, num_splits=2.0)
    out = ext.decode_attention_split(q, k, v, num_splits=2)
    assert_allclose(out, reference(q, k, v), **TOL_F32_REORDERED, what="after bad input")


# --------------------------------------------------------------------- Task 3: the GPU


@pytest.mark.parametrize("num_splits", [2, 5, 40])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_task_3_split_gpu_any_split_count(ext, num_splits, causal):
    q, k, v = qkv((1,), 4, 2, 3, 37, 64, seed=num_splits + 10)
    out = ext.decode_attention_split(q, k, v, num_splits=num_splits, causal=causal, stream=GPU)
    mx.eval(out)
    assert_allclose(out, reference(q, k, v, causal), **TOL_F32_REORDERED, what="split-K, GPU")


def test_task_3_split_gpu_dispatches_two_passes(ext):
    B, H_q, H, S, n = 2, 4, 2, 90, 3
    q, k, v = qkv((B,), H_q, H, 1, S, 32, seed=5)
    ext.reset_gpu_dispatches()
    ext.reset_kv_rows_read()
    mx.eval(ext.decode_attention_split(q, k, v, num_splits=n, stream=GPU))
    assert ext.gpu_dispatches() == [
        ("decode_attention_split_f32_e128", (B * H, 1, n), (WholeSimdGroups(ext), 1, 1)),
        ("decode_merge_f32", (B * H_q, 1, 1), (128, 1, 1)),
    ]
    assert ext.kv_rows_read() == B * H * S
