"""Test plumbing shared by tests/ (the student's code) and tests_refsol/ (the reference).

Each graded test file imports `tiny_attn_base`, a three-line module that exists twice: in
tests_refsol/ it binds `ta` to `tiny_attn_ref`, in tests/ to `tiny_attn`. Everything else a
test needs (seeded inputs, reference answers, tolerances, backends) lives here, once.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from tiny_attn_tools import build_ext

# Tolerances, stated once. float32 with the same summation order as the reference: tight.
# A tiled / online algorithm changes the order of the sums: a little looser.
TOL_F32 = {"rtol": 1e-5, "atol": 1e-6}
TOL_F32_REORDERED = {"rtol": 1e-4, "atol": 1e-5}
TOL_F16 = {"rtol": 1e-2, "atol": 1e-3}
TOL_BF16 = {"rtol": 5e-2, "atol": 1e-2}


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """An mx.array (any dtype, bfloat16 included) or array-like as a NumPy array of `dtype`."""
    if isinstance(x, mx.array):
        # Evaluate first, so that an error raised while computing x (a kernel that fails, a
        # bad dispatch) surfaces here as an exception. MLX raises it once, to whatever
        # evaluates the array first; after that the array reads as uninitialised memory.
        mx.eval(x)
        if x.dtype == mx.bfloat16:
            x = x.astype(mx.float32)
        return np.array(x, copy=True).astype(dtype)
    return np.asarray(x, dtype=dtype)


def assert_allclose(
    actual: Any, expected: Any, *, rtol: float, atol: float, what: str = ""
) -> None:
    """Compare two arrays (mx or NumPy); on a mismatch, say where they differ most.

    The message gives how many elements differ, the index of the worst one with both values,
    and the first NaN (or the first missing NaN) if there is one. NaN equals NaN.
    """
    a = to_numpy(actual)
    e = to_numpy(expected)
    label = f" ({what})" if what else ""
    assert a.shape == e.shape, f"shape mismatch{label}: got {a.shape}, expected {e.shape}"
    close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return
    bad = ~close
    lines = [
        f"values differ{label}: {int(bad.sum())} of {a.size} elements are not within "
        f"atol={atol:g} + rtol={rtol:g} * |expected|"
    ]

    def at(index: tuple[int, ...]) -> str:
        where = tuple(int(i) for i in index)
        return f"index {where}: got {float(a[index])!r}, expected {float(e[index])!r}"

    for mask, what_nan in (
        (np.isnan(a) & ~np.isnan(e), "NaN where a number was expected"),
        (~np.isnan(a) & np.isnan(e), "a number where NaN was expected"),
    ):
        if mask.any():
            first = tuple(np.argwhere(mask)[0])
            lines.append(f"{int(mask.sum())} x {what_nan}; the first at {at(first)}")
    numeric = bad & ~np.isnan(a) & ~np.isnan(e)
    if numeric.any():
        with np.errstate(invalid="ignore", over="ignore"):
            excess = np.where(numeric, np.abs(a - e) - (atol + rtol * np.abs(e)), -np.inf)
        excess = np.nan_to_num(excess, nan=np.inf)  # inf - inf: an infinity where it is not
        worst = np.unravel_index(int(np.argmax(excess)), a.shape)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = abs(a[worst] - e[worst])
        lines.append(f"the largest difference, {diff:.6g}, is at {at(worst)}")
    raise AssertionError("\n".join(lines))


def rand(
    shape: Sequence[int], *, seed: int, dtype: mx.Dtype = mx.float32, scale: float = 1.0
) -> mx.array:
    """Standard-normal values times `scale`, reproducible from `seed`, as an mx.array."""
    values = np.random.default_rng(seed).standard_normal(tuple(shape)) * scale
    return mx.array(values.astype(np.float32)).astype(dtype)


def rand_keep(shape: Sequence[int], *, seed: int, p_keep: float) -> mx.array:
    """A boolean keep-mask (True = attend), each entry True with probability `p_keep`."""
    return mx.array(np.random.default_rng(seed).random(tuple(shape)) < p_keep)


def qkv(
    batch: Sequence[int],
    h_q: int,
    h: int,
    L: int,
    S: int,
    E: int,
    *,
    seed: int,
    dtype: mx.Dtype = mx.float32,
    scale: float = 1.0,
) -> tuple[mx.array, mx.array, mx.array]:
    """query (batch..., h_q, L, E), key and value (batch..., h, S, E), seeded."""
    b = tuple(batch)
    q = rand((*b, h_q, L, E), seed=seed, dtype=dtype, scale=scale)
    k = rand((*b, h, S, E), seed=seed + 1, dtype=dtype, scale=scale)
    v = rand((*b, h, S, E), seed=seed + 2, dtype=dtype, scale=scale)
    return q, k, v


def mlx_sdpa(
    q: mx.array, k: mx.array, v: mx.array, *, scale: float | None = None, mask: Any = None
) -> mx.array:
    """The course's reference answer: `mx.fast.scaled_dot_product_attention` on the CPU."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    with mx.stream(mx.cpu):
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        mx.eval(out)
    return out


def numpy_softmax(x: Any, axis: int = -1) -> np.ndarray:
    """The course's softmax oracle: two passes in float64 NumPy, independent of MLX.

    A row of -inf only gives NaN (0 / 0), as mx.softmax does.
    """
    xn = to_numpy(x)
    with np.errstate(invalid="ignore"):
        e = np.exp(xn - np.max(xn, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def numpy_attention(
    q: Any, k: Any, v: Any, *, scale: float | None = None, mask: Any = None
) -> np.ndarray:
    """Attention in float64 NumPy, independent of MLX: GQA by repeating heads, masks as MLX."""
    qn, kn, vn = to_numpy(q), to_numpy(k), to_numpy(v)
    E = qn.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    h_q, h = qn.shape[-3], kn.shape[-3]
    if h_q != h:
        kn = np.repeat(kn, h_q // h, axis=-3)
        vn = np.repeat(vn, h_q // h, axis=-3)
    scores = scale * qn @ np.swapaxes(kn, -1, -2)
    L, S = scores.shape[-2], scores.shape[-1]
    if isinstance(mask, str):
        assert mask == "causal"
        keep = np.arange(L)[:, None] + (S - L) >= np.arange(S)[None, :]
        scores = np.where(keep, scores, -np.inf)
    elif mask is not None:
        if isinstance(mask, mx.array) and mask.dtype == mx.bool_:
            scores = np.where(np.array(mask), scores, -np.inf)
        else:
            scores = scores + to_numpy(mask)
    row_max = np.max(scores, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(scores - row_max)
    denom = p.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (p / denom) @ vn
    return out


def peak_bytes_while(fn: Any) -> int:
    """The most memory MLX held while evaluating fn(), above what it held just before.

    The same measurement as Week 1's profile (its peak_bytes): MLX's cache emptied first, so
    that reused buffers do not hide allocations, and the result evaluated inside.
    """
    mx.synchronize()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn())
    mx.synchronize()
    return max(mx.get_peak_memory() - before, 0)


def time_numpy(fn: Any, repeats: int) -> tuple[float, float]:
    """(best time in seconds, peak MiB traced by tracemalloc) of `repeats` calls of fn(), a
    NumPy computation: the benches' NumPy baseline, beside MLX's profile."""
    best, peak = math.inf, 0
    for _ in range(repeats):
        tracemalloc.start()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del out
    return best, peak / 2**20


def attention_flops(B: int, H: int, L: int, S: int, E: int, causal: bool = False) -> float:
    """4·B·H·L·S·E (two matmuls, a multiply and an add each), halved for causal."""
    flops = 4.0 * B * H * L * S * E
    return flops / 2 if causal else flops


def gpu_backend_name(extension: str) -> str:
    """Where the extension `extension` ("tiny_attn_ext" or "tiny_attn_ext_ref") runs its GPU
    kernels: "metal", or "metalsim" (the CPU simulator: Linux, or a Mac without the Metal
    compiler, whose MLX has a GPU all the same). Imports, and so builds, the extension."""
    return importlib.import_module(f"{extension}._core").gpu_backend


# Whatever imports the test plumbing (the graded tests, the benches, the demo) builds a course
# extension the first time it is imported, also when a course package imports it.
build_ext.build_on_import()


# The Mac view: a machine without Metal answers as a Mac does where the answer depends on the
# platform. On a Mac, MLX's default device is the GPU; MLX's CPU build cannot set that, so the
# extensions' glue (metalsim/mlx_extension.h) reads it from this variable instead, and so do the
# helpers below. `pdm run test --mac-view` (and test-refsol) set it for a whole run.
MAC_VIEW_ENV = "METALSIM_DEFAULT_DEVICE"


def mac_view() -> bool:
    """True when this run sees the platform as a Mac does (`--mac-view`)."""
    return os.environ.get(MAC_VIEW_ENV) == "gpu"


def default_device() -> mx.Device:
    """The default device as a Mac sees it under the Mac view, else MLX's own."""
    return mx.gpu if mac_view() else mx.default_device()


def load_extension(module_name: str) -> Any:
    """Import a course extension, building it first if it is missing or out of date.

    `module_name` is "tiny_attn_ext" (the student's) or "tiny_attn_ext_ref" (the reference).
    """
    return importlib.import_module(module_name)


def raises_naming(error: type[Exception], argument: str) -> Any:
    """pytest.raises(error) whose message names `argument` (as a word: "mask", not "masks").

    The graded tests check what a good error says, the kind of error and the argument it
    blames, and leave the wording to the author.
    """
    return pytest.raises(error, match=rf"(?<![\w.]){re.escape(argument)}(?![\w(])")


# --- pytest fixtures, re-exported by tests/conftest.py and tests_refsol/conftest.py ---------


# The backends a GPU day runs on: "cpu" is the C++ CPU path, "gpu" is the Metal kernel
# (on a real Metal device where there is one, on metalsim everywhere else).
BACKENDS = ["cpu", "gpu"]


class WholeSimdGroups:
    """A threadgroup width that a dispatch chooses from its pipeline: `most` threads where the
    device allows that many (metalsim always does, so there it must be exactly `most`), else as
    many whole SIMD groups of 32 as a real Metal device allows for the kernel, and at least
    `least`. Compares equal to such a width, so it can stand in a dispatch tuple:
    `(name, grid, (WholeSimdGroups(ext), 1, 1))`."""

    def __init__(self, extension: Any, most: int = 1024, least: int = 128) -> None:
        self.simulated = extension.gpu_backend == "metalsim"
        self.most, self.least = most, least

    def __eq__(self, width: object) -> bool:
        if not isinstance(width, int):
            return NotImplemented
        if self.simulated:
            return width == self.most
        return width % 32 == 0 and self.least <= width <= self.most

    def __repr__(self) -> str:
        if self.simulated:
            return str(self.most)
        return f"<a multiple of 32 in [{self.least}, {self.most}]>"


def device_for(backend: str) -> mx.Device:
    """The MLX device an extension op is given for a backend name ("cpu" or "gpu")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return mx.cpu if backend == "cpu" else mx.gpu


class _LazyExtension:
    """Stands for the extension module: imports it (building it first if needed) on first use.

    If the build fails, the first test that uses the extension shows the compiler's messages;
    every later one says so in one line instead of repeating them.
    """

    _build_failure: str | None = None

    def __init__(self, module_name: str) -> None:
        self._module_name = module_name
        self._module: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            if _LazyExtension._build_failure is not None:
                pytest.fail(
                    f"{_LazyExtension._build_failure} "
                    "(the compiler's messages are in the first such failure)",
                    pytrace=False,
                )
            try:
                self._module = load_extension(self._module_name)
            except build_ext.BuildError:
                _LazyExtension._build_failure = f"{self._module_name} did not build"
                raise
        return getattr(self._module, attr)


@pytest.fixture
def as_on_a_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one test with the Mac view on: MLX's default device is the GPU, as on a Mac."""
    monkeypatch.setenv(MAC_VIEW_ENV, "gpu")


def pytest_report_header() -> str:
    """The first lines of a test run say whether MLX has a GPU here, and the view."""
    gpu = "Metal" if mx.metal.is_available() else "none, GPU kernels run on metalsim"
    view = " (Mac view: the default device is the GPU, as on a Mac)" if mac_view() else ""
    return f"tiny-attn: MLX's GPU: {gpu}{view}"


@pytest.fixture(scope="session")
def ext() -> Any:
    """The extension under test (tiny_attn_ext or tiny_attn_ext_ref), built on first use."""
    import tiny_attn_base

    return _LazyExtension(tiny_attn_base.EXTENSION)
