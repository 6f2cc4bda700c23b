"""Week 5, day 4: masks computed in the kernel, over packed sequences of different lengths.

flash_attention_varlen(query (total_q, H_q, E), key/value (total_k, H, E), cu_seqlens_q,
cu_seqlens_k, ...): sequence s owns its rows of each packed array and attends within itself;
its row i of L sits at key position pos = i + S - L and sees key j when pos - left <= j <=
pos + right (and j <= pos if causal); scores are scaled, soft-capped, get ALiBi's
-slope * |pos - j|, and only then masked. Every case is checked against an oracle written here
in float64 NumPy, sequence by sequence, from Week 1's boolean masks. A row that sees no key
averages its sequence's values, as mx.fast.scaled_dot_product_attention does.
"""

import math
import os

import mlx.core as mx
import numpy as np
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")
Br = Bc = 32


# --------------------------------------------------------------------- the oracle


def window_sides(window, causal):
    left, right = (-1, -1) if window is None else (window, 0) if isinstance(window, int) else window
    return left, right


def oracle_keep(L, S, window=None, causal=False):
    """(L, S) bool, from positions: Week 1's causal mask, widened to a window."""
    left, right = window_sides(window, causal)
    pos = np.arange(L)[:, None] + S - L
    j = np.arange(S)[None, :]
    keep = np.ones((L, S), bool)
    if left >= 0:
        keep &= j >= pos - left
    if right >= 0:
        keep &= j <= pos + right
    if causal:
        keep &= j <= pos
    return keep


def oracle(
    q, k, v, lens_q, lens_k, *, scale=None, causal=False, window=None, slopes=None, softcap=None
):
    """float64 NumPy, one sequence at a time; GQA by repeating heads."""
    qn, kn, vn = to_numpy(q), to_numpy(k), to_numpy(v)
    H_q, E = qn.shape[1], qn.shape[2]
    group = H_q // kn.shape[1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    out = np.zeros_like(qn)
    q0 = k0 = 0
    for L, S in zip(lens_q, lens_k, strict=True):
        qs = qn[q0 : q0 + L].transpose(1, 0, 2)  # (H_q, L, E)
        ks = np.repeat(kn[k0 : k0 + S].transpose(1, 0, 2), group, axis=0)
        vs = np.repeat(vn[k0 : k0 + S].transpose(1, 0, 2), group, axis=0)
        s = scale * qs @ ks.transpose(0, 2, 1)
        if softcap is not None:
            s = softcap * np.tanh(s / softcap)
        if slopes is not None:
            pos = np.arange(L)[:, None] + S - L
            s = s - to_numpy(slopes)[:, None, None] * np.abs(pos - np.arange(S)[None, :])
        keep = oracle_keep(L, S, window, causal)
        s = np.where(keep, s, -1e300)  # a row that sees nothing: equal scores, the mean of V
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        out[q0 : q0 + L] = ((p / p.sum(axis=-1, keepdims=True)) @ vs).transpose(1, 0, 2)
        q0, k0 = q0 + L, k0 + S
    return out


def packed(lens_q, lens_k, H_q, H, E, seed):
    q = rand((sum(lens_q), H_q, E), seed=seed)
    k = rand((sum(lens_k), H, E), seed=seed + 1)
    v = rand((sum(lens_k), H, E), seed=seed + 2)
    return q, k, v, cu(lens_q), cu(lens_k)


def cu(lens):
    return mx.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))


def slopes_for(H_q):
    return mx.array([2.0 ** (-8.0 * (h + 1) / H_q) for h in range(H_q)], mx.float32)


# The features, one at a time and together. lens: (queries, keys) of each packed sequence:
# prefill (L = S), a prompt after a cache (L < S), decoding (L = 1), more queries than keys
# (rows that see nothing under causal), a sequence without queries.
LENS = ([40, 1, 70, 0, 9], [40, 33, 100, 5, 5])
CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "window": dict(window=16),
    "window-causal": dict(window=16, causal=True),
    "window-two-sided": dict(window=(20, 7)),
    "alibi": dict(alibi=True),
    "softcap": dict(softcap=1.5),
    "everything": dict(causal=True, window=24, alibi=True, softcap=2.0),
}


def run_case(fn, case, H_q=4, H=2, E=64, lens=LENS, seed=5):
    q, k, v, cq, ck = packed(*lens, H_q, H, E, seed)
    kw = dict(CASES[case])
    slopes = slopes_for(H_q) if kw.pop("alibi", False) else None
    out = fn(q, k, v, cq, ck, alibi_slopes=slopes, **kw)
    expected = oracle(q, k, v, *lens, slopes=slopes, **kw)
    return out, expected


# --------------------------------------------------------------------- Task 1: the naive model


@pytest.mark.parametrize(
    "L,S,window,causal",
    [
        (5, 5, None, True),
        (4, 9, 2, False),
        (9, 4, 2, True),
        (6, 12, (3, 2), False),
        (12, 6, (0, 0), False),
        (7, 7, (1, 4), True),
    ],
    ids=str,
)
def test_task_1_local_mask(L, S, window, causal):
    got = np.array(ta.local_mask(L, S, window, causal=causal))
    assert got.dtype == bool and got.shape == (L, S)
    assert np.array_equal(got, oracle_keep(L, S, window, causal)), f"window={window}"


def test_task_1_local_mask_causal_is_week_1s():
    assert np.array_equal(
        np.array(ta.local_mask(5, 9, causal=True)), np.array(ta.causal_mask(5, 9))
    )


@pytest.mark.parametrize("case", list(CASES))
def test_task_1_varlen_naive(case):
    out, expected = run_case(ta.varlen_attention_naive, case)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=case)


def test_task_1_varlen_naive_bad_input():
    q, k, v, cq, ck = packed([4, 4], [4, 4], 2, 1, 8, seed=1)
    with raises_naming(TypeError, "cu_seqlens_q"):
        ta.varlen_attention_naive(q, k, v, cq.astype(mx.int64), ck)
    with raises_naming(ValueError, "cu_seqlens_k"):
        ta.varlen_attention_naive(q, k, v, cq, mx.array([0, 3, 8], mx.int32)[::-1])
    with raises_naming(ValueError, "window"):
        ta.varlen_attention_naive(q, k, v, cq, ck, window=-1)
    with raises_naming(ValueError, "softcap"):
        ta.varlen_attention_naive(q, k, v, cq, ck, softcap=0.0)


# --------------------------------------------------------------------- Task 2: the CPU kernel


def cpu_varlen(ext):
    def fn(*args, **kw):
        out = ext.flash_attention_varlen(*args, **kw, stream=mx.cpu)
        mx.eval(out)
        return out

    return fn


@pytest.mark.parametrize("case", list(CASES))
def test_task_2_varlen_cpu(ext, case):
    out, expected = run_case(cpu_varlen(ext), case)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=case)


@pytest.mark.parametrize("H_q,H,E", [(6, 3, 32), (4, 1, 80), (2, 2, 128)], ids=str)
def test_task_2_varlen_cpu_gqa_and_head_dims(ext, H_q, H, E):
    out, expected = run_case(cpu_varlen(ext), "everything", H_q, H, E, seed=H_q + E)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=f"H_q={H_q}, H={H}, E={E}")


def test_task_2_varlen_cpu_sequences_stay_apart(ext):
    # Changing one sequence's keys and values changes no other sequence's rows.
    lens = ([10, 20, 7], [30, 20, 40])
    q, k, v, cq, ck = packed(*lens, 2, 2, 32, seed=9)
    before = to_numpy(cpu_varlen(ext)(q, k, v, cq, ck))
    k2 = mx.concatenate([k[:30], k[30:50] * 3.0 + 1.0, k[50:]])
    v2 = mx.concatenate([v[:30], v[30:50] - 5.0, v[50:]])
    after = to_numpy(cpu_varlen(ext)(q, k2, v2, cq, ck))
    assert_allclose(after[:10], before[:10], **TOL_F32, what="sequence 0")
    assert_allclose(after[30:], before[30:], **TOL_F32, what="sequence 2")
    assert not np.allclose(after[10:30], before[10:30]), "sequence 1 changed"


def cpu_tiles(lens_q, lens_k, window=None, causal=False):
    """The (Q tile, K/V tile) pairs the CPU kernel visits, per query head: from the first key
    any row of the Q tile sees to the last (every tile for a row that sees none)."""
    left, right = window_sides(window, causal)
    total = 0
    for L, S in zip(lens_q, lens_k, strict=True):
        keep = oracle_keep(L, S, window, causal)
        for r0 in range(0, L, Br):
            lo, hi = S, -1
            for r in range(r0, min(r0 + Br, L)):
                cols = np.flatnonzero(keep[r])
                a, b = (0, S - 1) if cols.size == 0 else (cols[0], cols[-1])
                lo, hi = min(lo, a), max(hi, b)
            total += hi // Bc - lo // Bc + 1
    return total


@pytest.mark.parametrize(
    "lens,window,causal",
    [
        (([1], [1024]), 64, True),  # decoding with a window: 3 tiles of 32, not 32
        (([64], [1024]), (100, 100), False),  # the window's tiles, in the middle of the keys
        (([300, 5], [300, 700]), 48, True),
        (([40, 1, 70, 0, 9], [40, 33, 100, 5, 5]), None, True),
    ],
    ids=["decode-window", "two-sided-middle", "prefill-window", "causal"],
)
def test_task_2_varlen_cpu_skips_tiles_outside_the_window(ext, lens, window, causal):
    H_q = 2
    q, k, v, cq, ck = packed(*lens, H_q, 1, 32, seed=13)
    ext.reset_tiles_visited()
    out = cpu_varlen(ext)(q, k, v, cq, ck, window=window, causal=causal)
    assert ext.tiles_visited() == H_q * cpu_tiles(*lens, window, causal)
    assert_allclose(out, oracle(q, k, v, *lens, window=window, causal=causal), **TOL_F32_REORDERED)
    if window == (100, 100):
        # Q tile 0 (positions 960..991) sees keys 860..1023: tiles 26..31; Q tile 1 (992..1023)
        # keys 892..1023: tiles 27..31. The 26 and 27 tiles before the window are skipped.
        assert ext.tiles_visited() == H_q * (6 + 5), "tiles before the window are skipped"
    if window == 64:
        assert ext.tiles_visited() == H_q * 3


def test_task_2_varlen_cpu_skips_tiles_after_the_window(ext):
    # A two-sided local window in a prefill (L = S = 1024, not causal): the Q tile of rows
    # 32t .. 32t + 31 sees keys 32t - 8 .. 32t + 39, so it reads K/V tiles t - 1 .. t + 1 and
    # skips those before and after them.
    lens = ([1024], [1024])
    q, k, v, cq, ck = packed(*lens, 1, 1, 32, seed=18)
    ext.reset_tiles_visited()
    out = cpu_varlen(ext)(q, k, v, cq, ck, window=(8, 8))
    assert ext.tiles_visited() == cpu_tiles(*lens, (8, 8)) == 3 * 32 - 2
    assert_allclose(out, oracle(q, k, v, *lens, window=(8, 8)), **TOL_F32_REORDERED)


def test_task_2_varlen_cpu_runs_on_threads(ext):
    ext.reset_cpu_kernel_runs()
    run_case(cpu_varlen(ext), "causal")
    runs = ext.cpu_kernel_runs()
    assert [name for name, _ in runs] == ["varlen"]
    if (os.cpu_count() or 1) >= 2:
        assert runs[0][1] >= 2, f"the kernel ran on {runs[0][1]} thread(s)"


def test_task_2_varlen_cpu_no_mask_array(ext):
    # One sequence of 2048 x 2048: a mask or score matrix would be 16 MiB per head; the kernel
    # holds a tile of scores. (Week 1's profile measures the same way.)
    lens = ([2048], [2048])
    q, k, v, cq, ck = packed(*lens, 1, 1, 32, seed=19)
    peak = peak_bytes_while(lambda: cpu_varlen(ext)(q, k, v, cq, ck, window=64, causal=True))
    assert peak < 2 * 2048 * 32 * 4 + 2**20, f"peak {peak} bytes: an L x S array was built"


# --------------------------------------------------------------------- Task 3: the Metal kernel


def gpu_varlen(ext):
    def fn(*args, **kw):
        out = ext.flash_attention_varlen(*args, **kw, stream=GPU)
        mx.eval(out)
        return out

    return fn


@pytest.mark.parametrize("case", list(CASES))
def test_task_3_varlen_gpu(ext, case):
    ext.reset_gpu_dispatches()
    out, expected = run_case(gpu_varlen(ext), case)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=case)
    assert [d[0] for d in ext.gpu_dispatches()] == ["flash_attention_varlen_f32"]


@pytest.mark.parametrize("H_q,H,E", [(6, 3, 32), (4, 1, 80), (2, 2, 128)], ids=str)
def test_task_3_varlen_gpu_gqa_and_head_dims(ext, H_q, H, E):
    out, expected = run_case(gpu_varlen(ext), "everything", H_q, H, E, seed=H_q + E)
    assert_allclose(out, expected, **TOL_F32_REORDERED, what=f"H_q={H_q}, H={H}, E={E}")


def gpu_row_tiles(lens_q, lens_k, window=None, causal=False):
    """(visited, masked) (row, K/V tile) pairs per query head: each row from the tile of the
    first key it sees to the tile of its last (every tile if it sees none); a tile goes through
    the mask unless the row sees all of the tile's keys."""
    visited = masked = 0
    for L, S in zip(lens_q, lens_k, strict=True):
        keep = oracle_keep(L, S, window, causal)
        for r in range(L):
            cols = np.flatnonzero(keep[r])
            a, b = (0, S - 1) if cols.size == 0 else (cols[0], cols[-1])
            for j in range(a // Bc, b // Bc + 1):
                visited += 1
                masked += not keep[r, j * Bc : min((j + 1) * Bc, S)].all()
    return visited, masked


@pytest.mark.parametrize(
    "lens,window,causal",
    [
        (([1, 1], [1024, 300]), 64, True),
        (([64], [1024]), (100, 100), False),
        (([70, 9], [100, 9]), 20, True),
        (([40, 50], [40, 90]), None, False),
    ],
    ids=["decode-window", "two-sided-middle", "prefill-window", "no-mask"],
)
def test_task_3_varlen_gpu_skips_tiles_outside_the_window(ext, lens, window, causal):
    H_q = 2
    q, k, v, cq, ck = packed(*lens, H_q, 2, 32, seed=23)
    ext.reset_gpu_tile_counts()
    out = gpu_varlen(ext)(q, k, v, cq, ck, window=window, causal=causal)
    visited, masked = gpu_row_tiles(*lens, window, causal)
    assert ext.gpu_tile_counts() == (H_q * visited, H_q * masked)
    assert_allclose(out, oracle(q, k, v, *lens, window=window, causal=causal), **TOL_F32_REORDERED)
    if window is None:
        assert masked == 0, "without a mask no tile is compared"
