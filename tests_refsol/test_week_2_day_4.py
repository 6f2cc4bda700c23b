"""Week 2, Day 4: FlashAttention in C++ on the CPU (`ext.flash_attention`, the simple kernel)
and its Python wrapper `ta.flash_attention`.

Book: book/src/week2-04-flash-attention-cpp.md. Reference: mx.fast.scaled_dot_product_attention
on the CPU (`mlx_sdpa`), and float64 NumPy (`numpy_attention`) where MLX needs 4-D inputs.
Tolerance: TOL_F32_REORDERED (tiles change the order of the sums).
"""

import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import (
    TOL_F32_REORDERED,
    assert_allclose,
    default_device,
    mlx_sdpa,
    qkv,
    rand,
    ta,
    to_numpy,
)

BR = BC = 32


def call(ext, q, k, v, mask=None, scale=None):
    """ext.flash_attention with the mask as mlx_sdpa takes it (None, "causal" or an array)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if isinstance(mask, str):
        return ext.flash_attention(q, k, v, scale, causal=True)
    return ext.flash_attention(q, k, v, scale, mask)


def tiles(L: int, S: int) -> int:
    return math.ceil(L / BR) * math.ceil(S / BC)


def causal_tiles(L: int, S: int) -> int:
    """K/V tiles a causal kernel visits per head: up to the diagonal of each Q tile's last row;
    a Q tile whose first row sees no key (L > S) visits every tile."""
    total = 0
    for i0 in range(0, L, BR):
        first, last = i0 + S - L, min(i0 + BR, L) - 1 + S - L
        total += math.ceil(S / BC) if first < 0 else math.ceil(min(S, last + 1) / BC)
    return total


# --- Task 1: the op: validation and the lazy array -------------------------------------------

BAD_INPUTS = [
    # (what, query shape, key shape, value shape, the argument the error must name)
    ("rank", (2, 8, 4), (1, 2, 8, 4), (1, 2, 8, 4), "query"),
    ("key rank", (1, 2, 8, 4), (2, 8, 4), (2, 8, 4), "key"),
    ("heads", (1, 3, 8, 4), (1, 2, 8, 4), (1, 2, 8, 4), "H_q"),
    ("E", (1, 2, 8, 4), (1, 2, 8, 5), (1, 2, 8, 5), "key"),
    ("k/v", (1, 2, 8, 4), (1, 2, 8, 4), (1, 2, 9, 4), "value"),
    ("N", (2, 2, 8, 4), (1, 2, 8, 4), (1, 2, 8, 4), "key"),
    ("L = 0", (1, 2, 0, 4), (1, 2, 8, 4), (1, 2, 8, 4), "query"),
    ("S = 0", (1, 2, 8, 4), (1, 2, 0, 4), (1, 2, 0, 4), "key"),
    ("E = 0", (1, 2, 8, 0), (1, 2, 8, 0), (1, 2, 8, 0), "query"),
]


@pytest.mark.parametrize("what,qs,ks,vs,argument", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_task_1_flash_attention_rejects_bad_shapes(ext, what, qs, ks, vs, argument):
    # A good error is a ValueError that names the argument at fault; the wording is yours.
    q, k, v = mx.zeros(qs), mx.zeros(ks), mx.zeros(vs)
    with raises_naming(ValueError, argument):
        ext.flash_attention(q, k, v, 0.5)


@pytest.mark.parametrize("arg", ["query", "key", "value"])
def test_task_1_flash_attention_rejects_other_dtypes(ext, arg):
    arrays = {"query": mx.zeros((1, 2, 8, 4)), "key": mx.zeros((1, 2, 8, 4))}
    arrays["value"] = mx.zeros((1, 2, 8, 4))
    arrays[arg] = arrays[arg].astype(mx.float16)
    with raises_naming(ValueError, arg):
        ext.flash_attention(arrays["query"], arrays["key"], arrays["value"], 0.5)


def test_task_1_flash_attention_rejects_bad_masks(ext):
    q, k, v = qkv((1,), 2, 2, 8, 6, 4, seed=1)
    with raises_naming(ValueError, "mask"):
        ext.flash_attention(q, k, v, 0.5, mx.zeros((8, 5)))
    with raises_naming(ValueError, "mask"):
        ext.flash_attention(q, k, v, 0.5, mx.zeros((1, 1, 1, 8, 6)))
    with raises_naming(ValueError, "mask"):
        ext.flash_attention(q, k, v, 0.5, mx.zeros((8, 6), dtype=mx.int32))
    with raises_naming(ValueError, "causal"):
        ext.flash_attention(q, k, v, 0.5, mx.zeros((8, 6)), True)


def test_task_1_flash_attention_rejects_a_bad_scale(ext):
    q, k, v = qkv((1,), 1, 1, 4, 4, 4, seed=2)
    with raises_naming(ValueError, "scale"):
        ext.flash_attention(q, k, v, float("nan"))


def test_task_1_flash_attention_builds_a_lazy_array(ext):
    q, k, v = qkv((2,), 4, 2, 40, 50, 8, seed=3)
    out = ext.flash_attention(q, k, v, 0.3)
    assert out.shape == (2, 4, 40, 8) and out.dtype == mx.float32


# --- Task 2: the kernel, no mask -------------------------------------------------------------

SHAPES = [
    # (N, H_q, H, L, S, E)
    (1, 1, 1, 1, 1, 1),
    (1, 2, 2, 32, 32, 16),
    (1, 1, 1, 33, 31, 8),
    (2, 4, 2, 70, 45, 20),  # GQA: 2 query heads per key/value head
    (1, 8, 1, 17, 100, 7),  # multi-query attention
    (3, 2, 2, 5, 130, 64),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_task_2_flash_attention_matches_mlx(ext, shape):
    N, h_q, h, L, S, E = shape
    q, k, v = qkv((N,), h_q, h, L, S, E, seed=sum(shape))
    out = call(ext, q, k, v)
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32_REORDERED, what=f"shape {shape}")


def test_task_2_flash_attention_scale_and_large_scores(ext):
    q, k, v = qkv((1,), 2, 2, 40, 40, 16, seed=4, scale=6.0)  # scores in the hundreds
    out = call(ext, q, k, v, scale=0.9)
    assert np.isfinite(to_numpy(out)).all()
    # Scores this large magnify float32 rounding inside exp(): a slightly looser atol.
    assert_allclose(out, mlx_sdpa(q, k, v, scale=0.9), rtol=1e-4, atol=1e-4)


def test_task_2_flash_attention_is_lazy_and_counts_tiles(ext):
    q, k, v = qkv((2,), 3, 3, 70, 45, 8, seed=5)
    mx.eval(q, k, v)
    ext.reset_tiles_visited()
    out = call(ext, q, k, v)
    assert ext.tiles_visited() == 0, "the op must only build the graph; eval_cpu runs later"
    mx.eval(out)
    assert ext.tiles_visited() == 2 * 3 * tiles(70, 45)


def test_task_2_flash_attention_runs_on_the_cpu_without_a_stream(ext, as_on_a_mac):
    # The course's ops run on the CPU unless a stream says otherwise, on every machine, even
    # where MLX's default device is the GPU (a Mac; `as_on_a_mac` makes this machine answer as
    # one): a call with no stream refuses float16 as the CPU kernel does and counts its tiles.
    assert default_device() == mx.gpu
    q, k, v = qkv((1,), 2, 2, 40, 40, 8, seed=11)
    half = [x.astype(mx.float16) for x in (q, k, v)]
    with pytest.raises(ValueError, match=r"query must be float32"):
        ext.flash_attention(*half, 0.5)
    mx.eval(q, k, v)
    ext.reset_tiles_visited()
    mx.eval(ext.flash_attention(q, k, v, 0.5))
    assert ext.tiles_visited() == 2 * tiles(40, 40)


def test_task_2_flash_attention_noncontiguous_inputs(ext):
    q, k, v = qkv((1,), 2, 2, 24, 36, 8, seed=6)
    # (N, L, H, E) arrays seen as (N, H, L, E): transposed views, not row-contiguous.
    qt = mx.transpose(mx.array(to_numpy(q, np.float32).transpose(0, 2, 1, 3)), (0, 2, 1, 3))
    kt = mx.transpose(mx.array(to_numpy(k, np.float32).transpose(0, 2, 1, 3)), (0, 2, 1, 3))
    out = call(ext, qt, kt, v[:, :, ::1])
    assert_allclose(out, mlx_sdpa(q, k, v), **TOL_F32_REORDERED)


# --- Task 3: masks and causal block skipping --------------------------------------------------

MASK_CASES = ["causal", "additive", "additive_heads", "bool", "bool_batch"]


def make_mask(kind: str, N: int, h_q: int, L: int, S: int, seed: int):
    if kind == "causal":
        return "causal"
    if kind == "additive":
        return rand((L, S), seed=seed)
    if kind == "additive_heads":
        return rand((1, h_q, L, S), seed=seed, scale=2.0)
    if kind == "bool":
        return rand((L, S), seed=seed) > -0.5
    return rand((N, 1, L, S), seed=seed) > 0.0


@pytest.mark.parametrize("kind", MASK_CASES)
@pytest.mark.parametrize("L,S", [(32, 32), (45, 70), (70, 45), (1, 33)])
def test_task_3_flash_attention_masks(ext, kind, L, S):
    N, h_q, h, E = 2, 4, 2, 12
    q, k, v = qkv((N,), h_q, h, L, S, E, seed=L * 100 + S)
    mask = make_mask(kind, N, h_q, L, S, seed=L + S)
    expected = mlx_sdpa(q, k, v, mask=mask)
    assert_allclose(call(ext, q, k, v, mask), expected, **TOL_F32_REORDERED, what=kind)


def test_task_3_fully_masked_rows_match_mlx(ext):
    N, h_q, L, S, E = 1, 2, 40, 36, 8
    q, k, v = qkv((N,), h_q, h_q, L, S, E, seed=7)
    keep = np.ones((L, S), dtype=bool)
    keep[3] = False  # a boolean row with nothing to keep: MLX averages every value
    bias = np.zeros((L, S), dtype=np.float32)
    bias[5] = -np.inf  # an additive row of -inf: MLX gives NaN
    bias[6, :34] = -np.inf  # -inf over the first tile only: the row is still fine
    for mask in (mx.array(keep), mx.array(bias)):
        out, expected = call(ext, q, k, v, mask), mlx_sdpa(q, k, v, mask=mask)
        np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-4, atol=1e-5)
    # causal with L > S: the first L - S query rows see no key at all
    q, k, v = qkv((1,), 2, 2, 50, 20, 8, seed=8)
    out, expected = call(ext, q, k, v, "causal"), mlx_sdpa(q, k, v, mask="causal")
    np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("L,S", [(256, 256), (100, 300), (300, 100)])
def test_task_3_causal_block_skipping(ext, L, S):
    q, k, v = qkv((1,), 2, 1, L, S, 4, seed=9)
    mx.eval(q, k, v)
    ext.reset_tiles_visited()
    mx.eval(call(ext, q, k, v, "causal"))
    assert ext.tiles_visited() == 2 * causal_tiles(L, S)
    if L == S:  # about half the tiles of the unmasked run: 36 of 64 for 8 x 8 tiles
        assert ext.tiles_visited() == 2 * 36


# Random problems: the sizes around the tile edges (1, 31, 32, 33, ...), head groupings and mask
# broadcast shapes that hand-picked cases miss. Seeded: the same examples on every run.
TILE_EDGES = [1, 2, 31, 32, 33, 63, 64, 65]
MASK_KINDS = ["none", "causal", "additive", "bool"]


@st.composite
def attention_problems(draw: st.DrawFn) -> dict:
    """Sizes, a scale and a mask for ext.flash_attention. The mask's shape broadcasts to
    (N, H_q, L, S): the last 1 to 4 of those axes, each either full or 1."""
    N, H, group = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    L = draw(st.one_of(st.sampled_from(TILE_EDGES), st.integers(1, 100)))
    S = draw(st.one_of(st.sampled_from(TILE_EDGES), st.integers(1, 100)))
    full = (N, H * group, L, S)
    rank = draw(st.integers(1, 4))
    kept = draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
    return {
        "N": N,
        "H_q": H * group,
        "H": H,
        "L": L,
        "S": S,
        "E": draw(st.integers(1, 40)),
        "kind": draw(st.sampled_from(MASK_KINDS)),
        "mask_shape": tuple(
            d if keep else 1 for d, keep in zip(full[4 - rank :], kept, strict=True)
        ),
        "scale": draw(st.floats(0.05, 1.0)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(problem=attention_problems())
def test_task_3_flash_attention_matches_mlx_on_random_problems(ext, problem):
    p = problem
    q, k, v = qkv((p["N"],), p["H_q"], p["H"], p["L"], p["S"], p["E"], seed=p["seed"])
    mask = None
    if p["kind"] == "causal":
        mask = "causal"
    elif p["kind"] == "additive":
        mask = rand(p["mask_shape"], seed=p["seed"] + 3, scale=2.0)
    elif p["kind"] == "bool":  # some rows may keep no key at all: MLX averages V there
        mask = rand_keep(p["mask_shape"], seed=p["seed"] + 4, p_keep=0.7)
    out = call(ext, q, k, v, mask, scale=p["scale"])
    expected = mlx_sdpa(q, k, v, scale=p["scale"], mask=mask)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=str(p))


# --- Task 4: the Python wrapper -------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive_batch"])
def test_task_4_flash_attention_wrapper(batch, mask):
    h_q, h, L, S, E = 4, 2, 37, 50, 16
    q, k, v = qkv(batch, h_q, h, L, S, E, seed=len(batch) + 11)
    m = mask
    if mask == "bool":
        m = rand((L, S), seed=12) > -0.3
    elif mask == "additive_batch":
        m = rand((*batch, 1, L, S), seed=13)
    out = ta.flash_attention(q, k, v, mask=m, kernel="simple")
    assert out.shape == (*batch, h_q, L, E)
    # mx.fast.scaled_dot_product_attention takes 4-D arrays: compare batch-flattened.
    n = math.prod(batch)
    m4 = m.reshape(n, 1, L, S) if mask == "additive_batch" else m
    expected = mlx_sdpa(
        q.reshape(n, h_q, L, E), k.reshape(n, h, S, E), v.reshape(n, h, S, E), mask=m4
    )
    assert_allclose(out.reshape(n, h_q, L, E), expected, **TOL_F32_REORDERED)


def test_task_4_flash_attention_wrapper_scale(ext):
    q, k, v = qkv((2,), 2, 2, 20, 20, 8, seed=14)
    out = ta.flash_attention(q, k, v, scale=0.7, kernel="simple")
    assert_allclose(out, mlx_sdpa(q, k, v, scale=0.7), **TOL_F32_REORDERED)
