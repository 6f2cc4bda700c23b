"""Every public function of both trees rejects bad input through tiny_attn_contracts.

Each case runs against the student's package (whose stubs call the checks before their TODO)
and the reference. A case passes when the function raises the expected kind of error and its
message names the argument at fault: the wording is the contract module's, once.
Week 1, Day 3's scaled_dot_product_attention is not here: writing its checks is that day's
Task 4, graded in tests_refsol/test_week_1_day_3.py.
"""

from __future__ import annotations

import importlib
import math

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_tools.testing import qkv, raises_naming, rand

import tiny_attn_contracts as contracts

PACKAGES = ["tiny_attn", "tiny_attn_ref"]


@pytest.fixture(params=PACKAGES)
def ta(request):
    return importlib.import_module(request.param)


def _weights(seed: int = 80):
    return [rand(shape, seed=seed + i) for i, shape in enumerate([(8, 8), (8, 8), (8, 8), (8, 8)])]


X = rand((2, 3), seed=4)
Q, K, V = qkv((1,), 2, 2, 4, 5, 8, seed=70)
Q4, K4, V4 = qkv((2,), 4, 2, 5, 6, 8, seed=90)
W = _weights()
# Packed sequences (Week 5, Day 4): lengths 2 and 4, 4 query heads on 2 key/value heads.
QP, KP = rand((6, 4, 8), seed=94), rand((6, 2, 8), seed=95)
CU = mx.array([0, 2, 6], mx.int32)


CASES = [
    # Week 1, Day 1: softmax and scaled_dot_product_attention_simple
    ("softmax axis range", lambda ta: ta.softmax(X, axis=2), ValueError, "axis"),
    ("softmax axis negative", lambda ta: ta.softmax(X, axis=-3), ValueError, "axis"),
    ("softmax int x", lambda ta: ta.softmax(mx.array([[1, 2, 3]])), TypeError, "x"),
    ("softmax float64 x", lambda ta: ta.softmax(X.astype(mx.float64)), TypeError, "x"),
    ("softmax numpy x", lambda ta: ta.softmax(np.zeros((2, 3), np.float32)), TypeError, "x"),
    ("softmax float axis", lambda ta: ta.softmax(X, axis=1.0), TypeError, "axis"),
    (
        "simple E",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K[..., :6], V),
        ValueError,
        "key",
    ),
    (
        "simple value S",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K, V[..., :4, :]),
        ValueError,
        "value",
    ),
    (
        "simple rank",
        lambda ta: ta.scaled_dot_product_attention_simple(mx.zeros((8,)), K, V),
        ValueError,
        "query",
    ),
    (
        "simple L0",
        lambda ta: ta.scaled_dot_product_attention_simple(Q[..., :0, :], K, V),
        ValueError,
        "L",
    ),
    (
        "simple E0",
        lambda ta: ta.scaled_dot_product_attention_simple(Q[..., :0], K[..., :0], V),
        ValueError,
        "E",
    ),
    (
        "simple batch",
        lambda ta: ta.scaled_dot_product_attention_simple(
            Q, mx.concatenate([K] * 3, 1), mx.concatenate([V] * 3, 1)
        ),
        ValueError,
        "key",
    ),
    (
        "simple mask shape",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K, V, mask=mx.zeros((4, 4))),
        ValueError,
        "mask",
    ),
    (
        "simple bool mask",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K, V, mask=mx.ones((4, 5), mx.bool_)),
        TypeError,
        "mask",
    ),
    (
        "simple float64 mask",
        lambda ta: ta.scaled_dot_product_attention_simple(
            Q, K, V, mask=mx.zeros((4, 5), mx.float64)
        ),
        TypeError,
        "mask",
    ),
    (
        "simple key dtype",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K.astype(mx.float16), V),
        TypeError,
        "key",
    ),
    (
        "simple numpy query",
        lambda ta: ta.scaled_dot_product_attention_simple(np.zeros((4, 8), np.float32), K, V),
        TypeError,
        "query",
    ),
    (
        "simple scale bool",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K, V, scale=True),
        TypeError,
        "scale",
    ),
    (
        "simple scale huge",
        lambda ta: ta.scaled_dot_product_attention_simple(Q, K, V, scale=1e300),
        ValueError,
        "scale",
    ),
    # Week 1, Day 2: heads and multi-head attention
    (
        "split_heads divides",
        lambda ta: ta.split_heads(rand((2, 5, 12), seed=3), 5),
        ValueError,
        "num_heads",
    ),
    (
        "split_heads zero",
        lambda ta: ta.split_heads(rand((2, 5, 12), seed=3), 0),
        ValueError,
        "num_heads",
    ),
    (
        "split_heads float",
        lambda ta: ta.split_heads(rand((2, 5, 12), seed=3), 2.0),
        TypeError,
        "num_heads",
    ),
    ("split_heads rank", lambda ta: ta.split_heads(rand((12,), seed=4), 3), ValueError, "x"),
    ("merge_heads rank", lambda ta: ta.merge_heads(rand((5, 12), seed=5)), ValueError, "x"),
    (
        "mha wk columns",
        lambda ta: ta.MultiHeadAttention(2, W[0], W[1][:, :6], W[2], W[3]),
        ValueError,
        "wk",
    ),
    ("mha heads divide wq", lambda ta: ta.MultiHeadAttention(3, *W), ValueError, "wq"),
    (
        "mha wo rows",
        lambda ta: ta.MultiHeadAttention(2, W[0], W[1], W[2], W[3][:4]),
        ValueError,
        "wo",
    ),
    (
        "mha wq rank",
        lambda ta: ta.MultiHeadAttention(2, W[0].reshape(-1), *W[1:]),
        ValueError,
        "wq",
    ),
    ("mha num_heads", lambda ta: ta.MultiHeadAttention(0, *W), ValueError, "num_heads"),
    (
        "mha wv numpy",
        lambda ta: ta.MultiHeadAttention(2, W[0], W[1], np.zeros((8, 8), np.float32), W[3]),
        TypeError,
        "wv",
    ),
    # Week 1, Day 3: masks
    ("causal L0", lambda ta: ta.causal_mask(0, 4), ValueError, "L"),
    ("causal S0", lambda ta: ta.causal_mask(4, 0), ValueError, "S"),
    ("causal L float", lambda ta: ta.causal_mask(4.0, 4), TypeError, "L"),
    ("causal dtype int", lambda ta: ta.causal_mask(4, 4, dtype=mx.int32), TypeError, "dtype"),
    ("causal dtype str", lambda ta: ta.causal_mask(4, 4, "float32"), TypeError, "dtype"),
    ("causal too large", lambda ta: ta.causal_mask(2**31 + 5, 2), ValueError, "L"),
    ("padding too long", lambda ta: ta.padding_mask([2, 5], 4), ValueError, "lengths"),
    ("padding negative", lambda ta: ta.padding_mask([-1], 4), ValueError, "lengths"),
    ("padding empty", lambda ta: ta.padding_mask([], 4), ValueError, "lengths"),
    ("padding 2-D", lambda ta: ta.padding_mask(mx.array([[1, 2]]), 4), TypeError, "lengths"),
    (
        "padding float array",
        lambda ta: ta.padding_mask(mx.array([1.0, 2.0]), 4),
        TypeError,
        "lengths",
    ),
    ("padding float", lambda ta: ta.padding_mask([1.5, 2], 4), TypeError, "lengths"),
    ("padding S0", lambda ta: ta.padding_mask([0], 0), ValueError, "S"),
    # Week 1, Day 4: profiling
    (
        "nbytes query rank",
        lambda ta: ta.scores_nbytes((4, 8), (1, 4, 8), mx.float32),
        ValueError,
        "query_shape",
    ),
    (
        "nbytes negative",
        lambda ta: ta.scores_nbytes((1, 4, 8), (1, -4, 8), mx.float32),
        ValueError,
        "key_shape",
    ),
    (
        "nbytes ranks",
        lambda ta: ta.scores_nbytes((2, 1, 4, 8), (1, 4, 8), mx.float32),
        ValueError,
        "key_shape",
    ),
    (
        "nbytes dtype",
        lambda ta: ta.scores_nbytes((1, 4, 8), (1, 4, 8), "float32"),
        TypeError,
        "dtype",
    ),
    ("profile fn", lambda ta: ta.profile(X, X), TypeError, "fn"),
    ("profile repeats", lambda ta: ta.profile(mx.abs, X, repeats=0), ValueError, "repeats"),
    ("profile warmup", lambda ta: ta.profile(mx.abs, X, warmup=-1), ValueError, "warmup"),
    ("profile repeats float", lambda ta: ta.profile(mx.abs, X, repeats=2.5), TypeError, "repeats"),
    ("naive axis", lambda ta: ta.softmax_naive(X, axis=5), ValueError, "axis"),
    ("naive int", lambda ta: ta.softmax_naive(mx.array([1, 2])), TypeError, "x"),
    # Week 2, Day 1: online softmax
    (
        "online block 0",
        lambda ta: ta.online_softmax(rand((3, 8), seed=9), 0),
        ValueError,
        "block_size",
    ),
    (
        "online block float",
        lambda ta: ta.online_softmax(rand((3, 8), seed=9), 2.5),
        TypeError,
        "block_size",
    ),
    (
        "state block 0",
        lambda ta: ta.online_softmax_state(rand((3, 8), seed=9), 0),
        ValueError,
        "block_size",
    ),
    (
        "online axis",
        lambda ta: ta.online_softmax(rand((3, 8), seed=9), 2, axis=2),
        ValueError,
        "axis",
    ),
    ("online empty", lambda ta: ta.online_softmax(rand((3, 0), seed=9), 2), ValueError, "x"),
    ("state empty", lambda ta: ta.softmax_state(rand((3, 0), seed=9)), ValueError, "x"),
    ("online numpy", lambda ta: ta.online_softmax(np.zeros((3, 8)), 2), TypeError, "x"),
    ("merge states type", lambda ta: ta.merge_softmax_states((1, 2), (1, 2)), TypeError, "a"),
    (
        "merge states shapes",
        lambda ta: ta.merge_softmax_states(
            ta.SoftmaxState(mx.zeros((3,)), mx.ones((3,))),
            ta.SoftmaxState(mx.zeros((4,)), mx.ones((4,))),
        ),
        ValueError,
        "b",
    ),
    (
        "partials o_b",
        lambda ta: ta.merge_attention_partials(
            rand((2, 4, 6), seed=1),
            rand((2, 4), seed=2),
            rand((2, 4, 5), seed=3),
            rand((2, 4), seed=4),
        ),
        ValueError,
        "o_b",
    ),
    (
        "partials lse_a",
        lambda ta: ta.merge_attention_partials(
            rand((2, 4, 6), seed=1),
            rand((2, 6), seed=2),
            rand((2, 4, 6), seed=3),
            rand((2, 4), seed=4),
        ),
        ValueError,
        "lse_a",
    ),
    # Week 2, Day 2: the tiled attention takes the contract of Week 1, Day 3 plus its tiles
    ("tiled heads", lambda ta: ta.flash_attention_tiled(Q4[:, :3], K4, V4), ValueError, "H_q"),
    (
        "tiled E0",
        lambda ta: ta.flash_attention_tiled(Q4[..., :0], K4[..., :0], V4),
        ValueError,
        "E",
    ),
    (
        "tiled mask list",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, mask=[[0.0]]),
        TypeError,
        "mask",
    ),
    (
        "tiled mask float64",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, mask=mx.zeros((5, 6), mx.float64)),
        TypeError,
        "mask",
    ),
    (
        "tiled block_q",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, block_q=0),
        ValueError,
        "block_q",
    ),
    (
        "tiled block_k",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, block_k=8.0),
        TypeError,
        "block_k",
    ),
    (
        "tiled scale bool",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, scale=True),
        TypeError,
        "scale",
    ),
    (
        "tiled scale huge",
        lambda ta: ta.flash_attention_tiled(Q4, K4, V4, scale=1e300),
        ValueError,
        "scale",
    ),
    # Week 2, Day 4: what the Python face of the C++ op checks before the op sees the arrays
    ("wrapper list", lambda ta: ta.flash_attention([[1.0]], K4, V4), TypeError, "query"),
    ("wrapper rank", lambda ta: ta.flash_attention(Q4[0, 0], K4, V4), ValueError, "query"),
    (
        "wrapper huge batch",
        lambda ta: ta.flash_attention(
            *[mx.broadcast_to(Q4[:1, None], (2**16, 2**16, 4, 5, 8))] * 3
        ),
        ValueError,
        "query",
    ),
    ("wrapper batch", lambda ta: ta.flash_attention(Q4, K4[:1], V4[:1]), ValueError, "key"),
    (
        "wrapper mask type",
        lambda ta: ta.flash_attention(Q4, K4, V4, mask=np.zeros((5, 6))),
        TypeError,
        "mask",
    ),
    (
        "wrapper mask string",
        lambda ta: ta.flash_attention(Q4, K4, V4, mask="upper"),
        ValueError,
        "mask",
    ),
    (
        "wrapper mask shape",
        lambda ta: ta.flash_attention(Q4, K4, V4, mask=mx.zeros((3, 1, 4, 5, 6))),
        ValueError,
        "mask",
    ),
    (
        "wrapper kernel",
        lambda ta: ta.flash_attention(Q4, K4, V4, kernel="best"),
        ValueError,
        "kernel",
    ),
    ("wrapper E0", lambda ta: ta.flash_attention(Q4[..., :0], K4[..., :0], V4), ValueError, "E"),
    (
        "wrapper scale bool",
        lambda ta: ta.flash_attention(Q4, K4, V4, scale=True),
        TypeError,
        "scale",
    ),
    (
        "wrapper scale huge",
        lambda ta: ta.flash_attention(Q4, K4, V4, scale=1e300),
        ValueError,
        "scale",
    ),
    (
        "wrapper threads simple",
        lambda ta: ta.flash_attention(Q4, K4, V4, kernel="simple", num_threads=2),
        ValueError,
        "num_threads",
    ),
    (
        "wrapper threads negative",
        lambda ta: ta.flash_attention(Q4, K4, V4, num_threads=-1),
        ValueError,
        "num_threads",
    ),
    (
        "wrapper threads float",
        lambda ta: ta.flash_attention(Q4, K4, V4, num_threads=2.0),
        TypeError,
        "num_threads",
    ),
    # Week 5, Day 4: local masks and the naive varlen model
    ("local_mask window negative", lambda ta: ta.local_mask(4, 4, -1), ValueError, "window"),
    ("local_mask window str", lambda ta: ta.local_mask(4, 4, "2"), TypeError, "window"),
    ("local_mask L zero", lambda ta: ta.local_mask(0, 4, 2), ValueError, "L"),
    (
        "varlen cu_seqlens int64",
        lambda ta: ta.varlen_attention_naive(QP, KP, KP, CU.astype(mx.int64), CU),
        TypeError,
        "cu_seqlens_q",
    ),
    (
        "varlen cu_seqlens short",
        lambda ta: ta.varlen_attention_naive(QP, KP, KP, CU, mx.array([0, 2, 5], mx.int32)),
        ValueError,
        "cu_seqlens_k",
    ),
    (
        "varlen key rank",
        lambda ta: ta.varlen_attention_naive(QP, KP[None], KP, CU, CU),
        ValueError,
        "key",
    ),
    (
        "varlen alibi shape",
        lambda ta: ta.varlen_attention_naive(QP, KP, KP, CU, CU, alibi_slopes=mx.ones((3,))),
        ValueError,
        "alibi_slopes",
    ),
    (
        "varlen softcap zero",
        lambda ta: ta.varlen_attention_naive(QP, KP, KP, CU, CU, softcap=0),
        ValueError,
        "softcap",
    ),
    # Week 5, Day 5: the Generator
    ("Generator model str", lambda ta: ta.Generator("a model"), TypeError, "model"),
]


@pytest.mark.parametrize(
    ("call", "error", "argument"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_names_the_argument(ta, call, error, argument):
    with raises_naming(error, argument):
        call(ta)


def test_profile_checks_what_fn_returns():
    ta = importlib.import_module("tiny_attn_ref")  # the stub stops before calling fn
    with raises_naming(TypeError, "fn"):
        ta.profile(lambda x: 3, X)


def test_multi_head_attention_checks_its_inputs():
    ta = importlib.import_module("tiny_attn_ref")  # the stub's constructor stops at its TODO
    wq, wk, wv, wo = rand((8, 8), seed=1), rand((6, 8), seed=2), rand((5, 8), seed=3), W[3]
    layer = ta.MultiHeadAttention(2, wq, wk, wv, wo)
    x_q, x_k, x_v = rand((2, 3, 8), seed=91), rand((2, 4, 6), seed=92), rand((2, 4, 5), seed=93)
    for args, argument in (
        ((x_k, x_k, x_v), "query"),
        ((x_q, x_k, x_k), "value"),
        ((x_q, x_k, x_v[:, :3]), "value"),
    ):
        with raises_naming(ValueError, argument):
            layer(*args)


def test_softmax_over_an_empty_axis_is_empty_like_mlx():
    ta = importlib.import_module("tiny_attn_ref")
    x = mx.zeros((3, 0))
    out = ta.softmax(x)
    expected = mx.softmax(x, axis=-1)
    assert out.shape == expected.shape == (3, 0) and out.dtype == expected.dtype


def test_every_message_starts_with_the_argument():
    # The module's own convention, checked on a few representative calls.
    for call, argument in (
        (lambda: contracts.check_int(0, "num_heads"), "num_heads"),
        (lambda: contracts.check_scale(math.inf), "scale"),
        (lambda: contracts.check_float_array([1.0], "query"), "query"),
        (lambda: contracts.check_mask_size(2**31 + 5, 2), "L"),
    ):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        assert str(info.value).startswith(argument), str(info.value)


def test_generate_checks_its_arguments():
    # The student's Generator needs the Day 3 cache to exist: checked on the reference.
    ta = importlib.import_module("tiny_attn_ref")
    gen = ta.Generator(ta.Transformer(10, dims=8, num_heads=2, num_layers=1, max_len=16))
    for args, error, argument in (
        (([[1, 2]], 15), ValueError, "max_new_tokens"),
        (([[1, 2]], -1), ValueError, "max_new_tokens"),
        (("hi", 3), TypeError, "prompts"),
        (([[1, -2]], 3), ValueError, "prompts[0]"),
        (([[1, 2], [3, 10]], 3), ValueError, "prompts[1]"),  # vocab_size = 10
        (([[1, 2**40]], 3), ValueError, "prompts[0]"),  # once a read past the embeddings
    ):
        with raises_naming(error, argument):
            gen.generate(*args)


def test_prefill_and_decode_step_check_their_tokens():
    # An id past the embedding table, or a position past the model's, would be read from
    # outside its table: refused before the model runs (on the reference, as above).
    ta = importlib.import_module("tiny_attn_ref")
    gen = ta.Generator(ta.Transformer(10, dims=8, num_heads=2, num_layers=1, max_len=8))
    for prompt, error in (([1, 10], ValueError), ([], TypeError), ([1] * 9, ValueError)):
        with raises_naming(error, "prompt"):
            gen.prefill(prompt)
    seq, _ = gen.prefill([1] * 7)
    for seqs, tokens, error, argument in (
        ([seq], [2**40], ValueError, "tokens"),
        ([seq], [1, 2], ValueError, "tokens"),
        (seq, [1], TypeError, "seqs"),
        ([seq + 1], [1], ValueError, "seq"),
    ):
        with raises_naming(error, argument):
            gen.decode_step(seqs, tokens)
    gen.decode_step([seq], [3])  # position 7, the last one
    with raises_naming(ValueError, "seqs"):
        gen.decode_step([seq], [3])  # position 8 does not exist
