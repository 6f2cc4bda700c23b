"""The C++ ops' Python arguments: a wrong one is a TypeError or ValueError that names it.

The bindings (src/extension_common/bindings.cpp, shared by both extensions) convert each
argument themselves, so a list, None, a NumPy array, a string or an int out of range never
reaches nanobind's "incompatible function arguments". What the op checks on the arrays
(ranks, dtypes, shapes) is Week 2, Day 4's Task 1 and graded there.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_tools.testing import load_extension, raises_naming

EXTENSIONS = ["tiny_attn_ext", "tiny_attn_ext_ref"]


@pytest.fixture(params=EXTENSIONS, scope="module")
def ext(request):
    return load_extension(request.param)


Q = mx.zeros((1, 2, 8, 4))
P = mx.zeros((6, 2, 4))  # packed rows (total, heads, E) of Week 5, Day 4
CU = mx.array([0, 2, 6], mx.int32)

CASES = [
    ("query list", lambda e: e.flash_attention([[1.0]], Q, Q, 0.5), TypeError, "query"),
    ("key None", lambda e: e.flash_attention(Q, None, Q, 0.5), TypeError, "key"),
    (
        "value numpy",
        lambda e: e.flash_attention(Q, Q, np.zeros((1, 2, 8, 4)), 0.5),
        TypeError,
        "value",
    ),
    ("scale None", lambda e: e.flash_attention(Q, Q, Q, None), TypeError, "scale"),
    ("scale str", lambda e: e.flash_attention(Q, Q, Q, "0.5"), TypeError, "scale"),
    ("scale bool", lambda e: e.flash_attention(Q, Q, Q, True), TypeError, "scale"),
    ("scale overflows float32", lambda e: e.flash_attention(Q, Q, Q, 1e300), ValueError, "scale"),
    ("mask numpy", lambda e: e.flash_attention(Q, Q, Q, 0.5, np.zeros((8, 8))), TypeError, "mask"),
    ("mask list", lambda e: e.flash_attention_fast(Q, Q, Q, 0.5, [[0.0]]), TypeError, "mask"),
    ("causal int", lambda e: e.flash_attention(Q, Q, Q, 0.5, None, 1), TypeError, "causal"),
    ("stream str", lambda e: e.flash_attention(Q, Q, Q, 0.5, stream="gpu"), TypeError, "stream"),
    (
        "num_threads str",
        lambda e: e.flash_attention_fast(Q, Q, Q, 0.5, num_threads="2"),
        TypeError,
        "num_threads",
    ),
    (
        "num_threads None",
        lambda e: e.flash_attention_fast(Q, Q, Q, 0.5, num_threads=None),
        TypeError,
        "num_threads",
    ),
    (
        "num_threads huge",
        lambda e: e.flash_attention_fast(Q, Q, Q, 0.5, num_threads=2**40),
        ValueError,
        "num_threads",
    ),
    ("softmax_rows list", lambda e: e.softmax_rows([1.0, 2.0]), TypeError, "x"),
    ("softmax_rows stream", lambda e: e.softmax_rows(Q, stream=[mx.cpu]), TypeError, "stream"),
    # Week 5, Day 4
    (
        "varlen query list",
        lambda e: e.flash_attention_varlen([1.0], P, P, CU, CU),
        TypeError,
        "query",
    ),
    (
        "varlen cu None",
        lambda e: e.flash_attention_varlen(P, P, P, None, CU),
        TypeError,
        "cu_seqlens_q",
    ),
    (
        "varlen scale str",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, "1"),
        TypeError,
        "scale",
    ),
    (
        "varlen causal int",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, causal=1),
        TypeError,
        "causal",
    ),
    (
        "varlen window float",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, window=2.0),
        TypeError,
        "window",
    ),
    (
        "varlen window triple",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, window=(1, 2, 3)),
        ValueError,
        "window",
    ),
    (
        "varlen window negative",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, window=-3),
        ValueError,
        "window",
    ),
    (
        "varlen softcap str",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, softcap="2"),
        TypeError,
        "softcap",
    ),
    (
        "varlen softcap inf",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, softcap=float("inf")),
        ValueError,
        "softcap",
    ),
    (
        "varlen alibi numpy",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, alibi_slopes=np.ones(2)),
        TypeError,
        "alibi_slopes",
    ),
    (
        "varlen stream str",
        lambda e: e.flash_attention_varlen(P, P, P, CU, CU, stream="cpu"),
        TypeError,
        "stream",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "argument"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_wrong_argument_is_named(ext, call, error, argument):
    with raises_naming(error, argument):
        call(ext)


def test_streams_and_devices_are_taken_as_mlx_takes_them():
    ext = load_extension("tiny_attn_ext_ref")
    q = mx.ones((1, 1, 4, 4))
    for stream in (None, mx.cpu, mx.gpu, mx.Device(mx.cpu), mx.default_stream(mx.cpu)):
        out = ext.flash_attention(q, q, q, 0.5, stream=stream)
        np.testing.assert_allclose(np.array(out), np.ones((1, 1, 4, 4)), rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_flash_attention_varlen_checks_its_arrays(ext, device):
    # Week 5, Day 4's op is given (src/extension_common/flash_attention_varlen_op.cpp): its
    # checks of ranks, dtypes and cumulative lengths, on both streams.
    stream = mx.cpu if device == "cpu" else mx.gpu
    q, k = mx.zeros((8, 4, 16)), mx.zeros((10, 2, 16))
    cq, ck = mx.array([0, 4, 8], mx.int32), mx.array([0, 4, 10], mx.int32)

    def call(*args, **kw):
        return ext.flash_attention_varlen(*args, **kw, stream=stream)

    for args, kw, error, argument in [
        ((q[None], k, k, cq, ck), {}, ValueError, "query"),
        ((q, k.astype(mx.float16), k, cq, ck), {}, ValueError, "key"),
        ((q, k, k[:, :1], cq, ck), {}, ValueError, "value"),
        ((q, k, k, [0, 4, 8], ck), {}, TypeError, "cu_seqlens_q"),
        ((q, k, k, cq.astype(mx.int64), ck), {}, ValueError, "cu_seqlens_q"),
        ((q, k, k, mx.array([1, 4, 8], mx.int32), ck), {}, ValueError, "cu_seqlens_q"),
        ((q, k, k, cq, mx.array([0, 6, 4], mx.int32)), {}, ValueError, "cu_seqlens_k"),
        ((q, k, k, cq, mx.array([0, 10], mx.int32)), {}, ValueError, "cu_seqlens_k"),
        ((q, k, k, cq, mx.array([0, 0, 10], mx.int32)), {}, ValueError, "cu_seqlens_k"),
        ((q, k, k, cq, ck), {"alibi_slopes": mx.ones((2,))}, ValueError, "alibi_slopes"),
        ((q, k, k, cq, ck), {"softcap": -1.0}, ValueError, "softcap"),
        ((q, k, k, cq, ck), {"window": (-2, 0)}, ValueError, "window"),
        ((mx.zeros((8, 3, 16)), k, k, cq, ck), {}, ValueError, "H_q"),
    ]:
        with raises_naming(error, argument):
            call(*args, **kw)
    if device == "gpu":
        big = mx.zeros((3, 1, 136))
        cu3 = mx.array([0, 3], mx.int32)
        with raises_naming(ValueError, "E"):
            call(big, big, big, cu3, cu3)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_decode_ops_bound_num_splits(ext, device):
    # Week 5, Days 2-3: the ops are given (src/extension_common/decode_attention_ops.cpp). A
    # split past the keys is empty; a huge count would only allocate a huge partial (o, lse):
    # num_splits is refused above max(S, 64), before any kernel runs.
    stream = mx.cpu if device == "cpu" else mx.gpu
    q, k = mx.zeros((1, 4, 1, 16)), mx.zeros((1, 2, 10, 16))
    pages = mx.zeros((5, 2, 4, 16))
    table, lens = mx.array([[0, 1, 2]], mx.int32), mx.array([10], mx.int32)
    for n in (65, 2**31 - 1):
        with raises_naming(ValueError, "num_splits"):
            ext.decode_attention_split(q, k, k, num_splits=n, stream=stream)
        with raises_naming(ValueError, "num_splits"):
            ext.paged_decode_attention(q, pages, pages, table, lens, num_splits=n, stream=stream)
