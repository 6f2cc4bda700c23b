"""Real-world Metal: MLX's own kernels, from the headers the mlx wheel installs, run unchanged.

sdpa_vector is the kernel behind mx.fast.scaled_dot_product_attention for decoding (one query
row, L = 1). Our mlx_kernels/sdpa_vector.metal instantiates it with [[host_name]]; the tests set
its function constants at pipeline creation and bind its buffers as MLX's host code does.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import metalsim

HERE = Path(__file__).resolve().parent
MLX_INCLUDE = Path(mx.__file__).resolve().parent / "include"
KERNELS = MLX_INCLUDE / "mlx/backend/metal/kernels/sdpa_vector.h"

pytestmark = pytest.mark.skipif(
    not KERNELS.exists(), reason="this mlx wheel ships no Metal kernel headers"
)

# sdpa_vector's [[function_constant(n)]] indices.
HAS_MASK, QUERY_TRANSPOSED, DO_CAUSAL, BOOL_MASK, FLOAT_MASK, HAS_SINKS = range(20, 26)


@pytest.fixture(scope="module")
def lib() -> metalsim.Library:
    return metalsim.Library.from_files(
        [HERE / "mlx_kernels" / "sdpa_vector.metal"], include_dirs=[MLX_INCLUDE]
    )


def sdpa_vector(
    lib: metalsim.Library,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    *,
    causal: bool = False,
    bool_mask: np.ndarray | None = None,
) -> np.ndarray:
    """MLX's host side of sdpa_vector: q (B, Hq, 1, D), k and v (B, Hkv, S, D), contiguous."""
    b, hq, lq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    dtype = {np.dtype(np.float32): "float", np.dtype(np.float16): "float16_t"}[q.dtype]
    constants = {
        HAS_MASK: bool_mask is not None,
        QUERY_TRANSPOSED: False,
        DO_CAUSAL: causal,
        BOOL_MASK: bool_mask is not None,
        FLOAT_MASK: False,
        HAS_SINKS: False,
    }
    pipeline = lib.pipeline(f"sdpa_vector_{dtype}_{d}_{d}", constants)
    buffers = {
        0: q,
        1: k,
        2: v,
        3: out,
        4: np.int32(hq // hkv),  # gqa_factor
        5: np.int32(s),  # N
        6: np.uint64(s * d),  # k_head_stride (size_t)
        7: np.uint64(d),  # k_seq_stride
        8: np.uint64(s * d),  # v_head_stride
        9: np.uint64(d),  # v_seq_stride
        10: np.float32(scale),
    }
    if bool_mask is not None:  # (B, Hq, 1, S)
        buffers.update({11: bool_mask, 13: np.int32(1), 14: np.int32(s), 15: np.int32(s)})
    pipeline.dispatch(grid=(b * hq, lq, 1), threadgroup=(1024, 1, 1), buffers=buffers)
    return out


@pytest.mark.parametrize(
    ("dtype", "d", "hq", "hkv", "s"),
    [
        (np.float32, 64, 4, 4, 1),
        (np.float32, 64, 8, 2, 33),
        (np.float16, 64, 8, 2, 100),
        (np.float32, 128, 4, 1, 4096),
        (np.float16, 64, 2, 1, 4096),
    ],
)
def test_sdpa_vector_matches_mlx(
    lib: metalsim.Library, dtype: type, d: int, hq: int, hkv: int, s: int
) -> None:
    rng = np.random.default_rng(s + hq)
    q = rng.standard_normal((1, hq, 1, d)).astype(dtype)
    k = rng.standard_normal((1, hkv, s, d)).astype(dtype)
    v = rng.standard_normal((1, hkv, s, d)).astype(dtype)
    scale = d**-0.5
    got = sdpa_vector(lib, q, k, v, scale)
    want = np.array(
        mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=scale),
        copy=False,
    )
    tol = 1e-5 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_vector_masks_match_mlx(lib: metalsim.Library, causal: bool) -> None:
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 50, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 50, 64)).astype(np.float32)
    keep = rng.random((1, 4, 1, 50)) < 0.6
    keep[..., 0] = True
    if causal:  # one query row at the end: causal keeps every key
        got = sdpa_vector(lib, q, k, v, 0.125, causal=True)
        mask = "causal"
    else:
        got = sdpa_vector(lib, q, k, v, 0.125, bool_mask=keep)
        mask = mx.array(keep)
    want = np.array(
        mx.fast.scaled_dot_product_attention(
            mx.array(q), mx.array(k), mx.array(v), scale=0.125, mask=mask
        )
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pipeline_checks_function_constants(lib: metalsim.Library) -> None:
    with pytest.raises(
        metalsim.BindingError, match=r"function_constants\[99\].*has_mask \(20, bool\)"
    ):
        lib.pipeline("sdpa_vector_float_64_64", {99: True})
    with pytest.raises(metalsim.BindingError, match=r"'has_mask'\) is a bool, got .* float"):
        lib.pipeline("sdpa_vector_float_64_64", {HAS_MASK: 1.5})
    with pytest.raises(TypeError, match=r"function_constants\[20\]: expected a bool"):
        lib.pipeline("sdpa_vector_float_64_64", {HAS_MASK: "yes"})
    with pytest.raises(TypeError, match="function_constants must be a dict"):
        lib.pipeline("sdpa_vector_float_64_64", [(20, True)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"function_constants: key -1"):
        lib.pipeline("sdpa_vector_float_64_64", {-1: True})
    with pytest.raises(metalsim.KernelNotFoundError, match="sdpa_vector_float_32_32"):
        lib.pipeline("sdpa_vector_float_32_32", {})


def test_sdpa_vector_needs_its_function_constants(lib: metalsim.Library) -> None:
    q = np.zeros((1, 1, 1, 64), np.float32)
    kv = np.zeros((1, 1, 4, 64), np.float32)
    pipeline = lib.pipeline("sdpa_vector_float_64_64", {HAS_MASK: False})
    with pytest.raises(metalsim.BindingError, match="function constant 'bool_mask'.* no value"):
        pipeline.dispatch(
            1,
            1024,
            {
                0: q,
                1: kv,
                2: kv,
                3: np.zeros_like(q),
                4: np.int32(1),
                5: np.int32(4),
                6: np.uint64(256),
                7: np.uint64(64),
                8: np.uint64(256),
                9: np.uint64(64),
                10: np.float32(1),
            },
        )
