"""Week 4 benchmark: the backward pass on the CPU, FlashAttention against the naive paths.

One run, one machine, the same inputs (B = 1, float32, L = S = N, E = 128) for every path:
  cpp            the extension: the fast forward (with its lse), the backward kernel alone,
                 and forward + backward through mx.value_and_grad(ta.flash_attention); also causal
  mlx-fast grad  forward + backward by MLX's autodiff through mx.fast.scaled_dot_product_attention
                 on MLX's CPU backend
  numpy-naive    the naive backward with NumPy GEMMs (OpenBLAS), float32, the L x S matrices
                 held in memory: the BLAS-speed anchor
FLOPs: the forward is 4·B·H·L·S·E (halved for causal), the backward 2.5 times that. Memory: the
extra peak of the call beyond its inputs (MLX's allocator peak for the MLX paths, tracemalloc's
peak for NumPy). The summary lines compare the two sides of one run.

  python benches/week4_backward.py [--quick] [--student]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable
from functools import partial

import mlx.core as mx
import numpy as np
from tiny_attn_tools.testing import attention_flops, load_extension, time_numpy

MiB = 1024 * 1024


def time_mlx(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time of `repeats` evaluated calls, and the extra MLX peak memory."""
    best = math.inf
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        mx.eval(out)
        best = min(best, time.perf_counter() - t)
        del out
    return best, (mx.get_peak_memory() - base) / MiB


def numpy_backward(q, k, v, d_out, scale):
    """Week 4 Day 1's naive backward in NumPy float32: S, P, dP and dS are H x L x S each."""
    s = (q * np.float32(scale)) @ np.swapaxes(k, -1, -2)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)
    o = p @ v
    dv = np.swapaxes(p, -1, -2) @ d_out
    dp = d_out @ np.swapaxes(v, -1, -2)
    dp -= np.sum(d_out * o, axis=-1, keepdims=True)
    ds = np.multiply(p, dp, out=dp)
    dq = np.float32(scale) * (ds @ k)
    dk = np.float32(scale) * (np.swapaxes(ds, -1, -2) @ q)
    return dq, dk, dv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--student", action="store_true", help="bench src/ instead of refsol/")
    args = parser.parse_args(argv)
    N, H, E, long_n = (1024, 4, 128, None) if args.quick else (4096, 8, 128, 32768)
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    ext = load_extension("tiny_attn_ext" if args.student else "tiny_attn_ext_ref")
    print(
        f"[bench] week 4: the backward pass on the CPU, mlx {mx.__version__}, numpy "
        f"{np.__version__}",
        flush=True,
    )
    t0 = time.perf_counter()
    scale = 1.0 / math.sqrt(E)
    results: dict[str, tuple[float, float]] = {}

    def record(name: str, flops: float, seconds: float, mib: float) -> None:
        results[name] = (seconds, mib)
        print(
            f"  {name:<44} {seconds * 1e3:10.1f} ms {flops / seconds / 1e9:8.1f} GFLOP/s "
            f"{mib:10.1f} MiB",
            flush=True,
        )

    def loss(a: mx.array, b: mx.array, c: mx.array, d_out: mx.array, mask: str | None):
        return mx.sum(ta.flash_attention(a, b, c, mask=mask) * d_out)

    def cpp_paths(N: int, H: int, causal_only: bool = False) -> tuple:
        rng = np.random.default_rng(N)
        qn, kn, vn, dn = (rng.standard_normal((1, H, N, E), dtype=np.float32) for _ in range(4))
        q, k, v, d_out = (mx.array(x) for x in (qn, kn, vn, dn))
        mx.eval(q, k, v, d_out)
        for causal in (True,) if causal_only else (False, True):
            tag = f"N={N} H={H}" + (" causal" if causal else "")
            f = attention_flops(1, H, N, N, E, causal=causal)
            out, lse = ext.flash_attention_with_lse(q, k, v, scale, None, causal)
            mx.eval(out, lse)
            record(
                f"cpp forward {tag}",
                f,
                *time_mlx(partial(ext.flash_attention_fast, q, k, v, scale, causal=causal), 1),
            )
            record(
                f"cpp backward {tag}",
                2.5 * f,
                *time_mlx(
                    partial(
                        ext.flash_attention_backward, q, k, v, out, lse, d_out, scale, None, causal
                    ),
                    1,
                ),
            )
            step = mx.value_and_grad(
                partial(loss, d_out=d_out, mask="causal" if causal else None), argnums=(0, 1, 2)
            )
            record(f"cpp forward+backward {tag}", 3.5 * f, *time_mlx(partial(step, q, k, v), 1))
        return qn, kn, vn, dn, q, k, v, d_out

    with mx.stream(mx.cpu):
        print(f"[bench] B=1, H={H}, L=S={N}, E={E}, float32", flush=True)
        qn, kn, vn, dn, q, k, v, d_out = cpp_paths(N, H)
        f = attention_flops(1, H, N, N, E)
        record(
            f"numpy-naive backward N={N} H={H}",
            2.5 * f,
            *time_numpy(lambda: numpy_backward(qn, kn, vn, dn, scale), 1),
        )

        def mlx_grad():
            fn = lambda a, b, c: mx.fast.scaled_dot_product_attention(a, b, c, scale=scale)  # noqa: E731
            return mx.vjp(fn, [q, k, v], [d_out])

        record(f"mlx-fast grad forward+backward N={N} H={H}", 3.5 * f, *time_mlx(mlx_grad, 1))

        tag = f"N={N} H={H}"
        fwd, bwd = results[f"cpp forward {tag}"][0], results[f"cpp backward {tag}"][0]
        both = results[f"cpp forward+backward {tag}"][0]
        print("[bench] summary (one run, same machine, same inputs):")
        print(
            f"  cpp forward+backward vs mlx-fast grad: "
            f"{results[f'mlx-fast grad forward+backward {tag}'][0] / both:.1f}x faster"
        )
        print(
            f"  cpp backward throughput / numpy-naive backward throughput: "
            f"{results[f'numpy-naive backward {tag}'][0] / bwd:.2f}"
        )
        print(f"  cpp backward time / cpp forward time: {bwd / fwd:.2f}")
        print(f"  cpp backward causal / full: {results[f'cpp backward {tag} causal'][0] / bwd:.2f}")
        naive_mib = min(
            results[f"numpy-naive backward {tag}"][1],
            results[f"mlx-fast grad forward+backward {tag}"][1],
        )
        print(
            f"  cpp backward peak memory / naive peak (the smaller of numpy and mlx-fast): "
            f"{results[f'cpp backward {tag}'][1] / naive_mib:.3f}"
        )
        if long_n:
            print(
                f"[bench] B=1, H=1, L=S={long_n}, E={E}: naive scores would take "
                f"{long_n * long_n * 4 / 2**30:.0f} GiB per matrix; only the C++ path runs",
                flush=True,
            )
            cpp_paths(long_n, 1, causal_only=True)
    print(f"[bench] week 4 done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
