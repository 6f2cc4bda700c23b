"""The sanitizer over the course's own reference kernels: they pass as written, and the
mistakes the chapters warn about are reported (a barrier removed or moved inside an `if`, a
guard removed), with the kernel, the threads and the .metal line.

Each mistake is a small edit of the reference .metal source, compiled and dispatched here with
NumPy buffers as the extension would dispatch it.

Run: pdm run pytest src/metalsim/tests/test_course_kernels.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import metalsim

REFSOL = Path(__file__).resolve().parents[3] / "refsol" / "extensions_ref" / "src"
SOFTMAX = REFSOL / "softmax_rows.metal"
FLASH = REFSOL / "flash_attention.metal"


def compile_edited(path: Path, old: str = "", new: str = "") -> tuple[metalsim.Library, str]:
    """The reference source with the regular expression `old` replaced by `new` (once),
    compiled; and the edited text."""
    text = path.read_text()
    if old:
        text, n = re.subn(old, new, text, flags=re.S)
        assert n == 1, f"the reference no longer matches {old!r} once (matches: {n})"
    return metalsim.Library.from_source(text, name=path.name), text


def line_of(text: str, fragment: str) -> str:
    lines = [i for i, t in enumerate(text.splitlines(), start=1) if fragment in t]
    assert len(lines) == 1, fragment
    return f"{FLASH.name}:{lines[0]}"


# ---------------------------------------------------------------- Week 3, Day 1: row softmax


def softmax(lib: metalsim.Library, x: np.ndarray, threads: int) -> np.ndarray:
    out = np.zeros_like(x)
    rows, n = x.shape
    lib.dispatch(
        "softmax_rows_f32",
        grid=rows,
        threadgroup=threads,
        buffers={0: x, 1: out, 2: np.int32(n)},
    )
    return out


def softmax_input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 300)).astype(np.float32)


def test_softmax_reference_passes_the_checks() -> None:
    lib, _ = compile_edited(SOFTMAX)
    x = softmax_input()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax(lib, x, 256), e / e.sum(axis=1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("barrier", ["Barrier 1", "Barrier 2", "Barrier 3"])
def test_softmax_without_a_barrier_is_a_race(barrier: str) -> None:
    text = SOFTMAX.read_text()
    start = text.index(f"  // {barrier}:")
    end = text.index("threadgroup_barrier(mem_flags::mem_threadgroup);\n", start)
    old = text[start : end + len("threadgroup_barrier(mem_flags::mem_threadgroup);\n")]
    lib, _ = compile_edited(SOFTMAX, re.escape(old), "")
    with pytest.raises(metalsim.RaceError, match="kernel 'softmax_rows_f32': data race"):
        softmax(lib, softmax_input(), 256)


# ---------------------------------------------------------------- Week 3, Days 2-4: attention

PARAMS = np.dtype(
    [
        ("mask_strides", "<i8", 4),
        ("N", "<i4"),
        ("H_q", "<i4"),
        ("H", "<i4"),
        ("L", "<i4"),
        ("S", "<i4"),
        ("E", "<i4"),
        ("scale", "<f4"),
        ("mask_kind", "<i4"),
    ]
)
MASK_ADD = 2


def attention(lib, kernel, q, k, v, mask=None, threads=1024, br=32):
    N, H_q, L, E = q.shape
    H, S = k.shape[1], k.shape[2]
    p = np.zeros((), PARAMS)
    p["N"], p["H_q"], p["H"], p["L"], p["S"], p["E"] = N, H_q, H, L, S, E
    p["scale"] = 1.0 / np.sqrt(E)
    if mask is not None:
        p["mask_kind"] = MASK_ADD
        p["mask_strides"] = [0, 0, S, 1]  # an (L, S) mask broadcast over (N, H_q)
    out = np.zeros_like(q)
    buffers = {
        0: q,
        1: k,
        2: v,
        3: out,
        4: mask if mask is not None else np.zeros(1, np.float32),
        5: np.zeros(1, np.bool_),
        6: p.tobytes(),
        7: np.zeros(2, np.int32),  # the work counters (visited, masked tiles)
        8: np.zeros((N, H_q, L), np.float32),  # each row's log-sum-exp (Week 4)
    }
    lib.dispatch(
        kernel, grid=(N * H_q, (L + br - 1) // br, 1), threadgroup=threads, buffers=buffers
    )
    return out


def attention_model(q, k, v, mask):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + mask
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def problem(L=40, S=50, E=64):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, n, E)).astype(np.float32) for n in (L, S, S))
    mask = rng.standard_normal((L, S)).astype(np.float32)
    return q, k, v, mask


@pytest.mark.parametrize(
    "kernel,threads", [("flash_attention_f32_e128", 1024), ("flash_attention_simdgroup_f32", 128)]
)
def test_attention_references_pass_the_checks(kernel: str, threads: int) -> None:
    lib, _ = compile_edited(FLASH)
    q, k, v, mask = problem()
    out = attention(lib, kernel, q, k, v, mask, threads)
    np.testing.assert_allclose(out, attention_model(q, k, v, mask), rtol=1e-4, atol=1e-5)


def test_last_barrier_inside_if_row_valid_is_reported() -> None:
    # The mistake of issue "barrier in an if": rows past L skip the barrier and return.
    # The barrier just before the kernel's `if (row_valid) {` (its last one) moves inside it.
    old = r"threadgroup_barrier\(mem_flags::mem_threadgroup\);\n(\s*)if \(row_valid\) \{\n"
    new = r"if (row_valid) {\n\1  threadgroup_barrier(mem_flags::mem_threadgroup); // moved\n"
    lib, text = compile_edited(FLASH, old, new)
    q, k, v, mask = problem(L=40)  # the second Q tile has 8 valid rows of 32
    with pytest.raises(metalsim.DeadlockError) as e:
        attention(lib, "flash_attention_f32_e128", q, k, v, mask)
    msg = str(e.value)
    assert "divergent threadgroup_barrier" in msg and line_of(text, "// moved") in msg


def test_mask_read_for_rows_past_L_is_out_of_bounds() -> None:
    # Without the row guard, the rows past L of the last Q tile read mask rows that do not exist.
    old = r"const int tiles = row_valid \? (\w+\(row, row, p\)) : 0;"
    new = r"const int tiles = \1;"
    lib, _ = compile_edited(FLASH, old, new)
    q, k, v, mask = problem(L=40)
    with pytest.raises(
        metalsim.MemoryAccessError, match=r"out-of-bounds read .*\[\[buffer\(4\)\]\]"
    ):
        attention(lib, "flash_attention_f32_e128", q, k, v, mask)


def test_simdgroup_kernel_without_the_q_tile_barrier_is_a_race() -> None:
    old = re.escape(
        "  threadgroup_barrier(mem_flags::mem_threadgroup); // the Q tile is complete\n"
    )
    lib, _ = compile_edited(FLASH, old, "")
    q, k, v, mask = problem()
    with pytest.raises(metalsim.RaceError, match="flash_attention_simdgroup_f32"):
        attention(lib, "flash_attention_simdgroup_f32", q, k, v, mask, threads=128)
