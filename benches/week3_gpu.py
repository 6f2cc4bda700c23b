"""Week 3 benchmark: the course's Metal kernels against mx.fast.scaled_dot_product_attention.

On a Mac with Metal: time, GFLOP/s and peak memory of
  simple    flash_attention_<t>_e128       (ext.flash_attention on mx.gpu)
  simdgroup flash_attention_simdgroup_<t>  (ext.flash_attention_fast on mx.gpu)
  mlx       mx.fast.scaled_dot_product_attention on mx.gpu
for float32 and float16 as the sequence length grows, with plots of time and peak memory into
book/src/images/week3-gpu-time.png and week3-gpu-memory.png (not with --quick).

Everywhere else there is no GPU to time: the script says so and runs every kernel once on the
simulator (metalsim) against MLX's CPU attention, a correctness check with no timings.

  python benches/week3_gpu.py [--student] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
from tiny_attn_tools.testing import (
    TOL_BF16,
    TOL_F16,
    TOL_F32_REORDERED,
    attention_flops,
    gpu_backend_name,
    load_extension,
    mlx_sdpa,
    qkv,
    to_numpy,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "book" / "src" / "images"
DTYPES = {
    "float32": (mx.float32, TOL_F32_REORDERED),
    "float16": (mx.float16, TOL_F16),
    "bfloat16": (mx.bfloat16, TOL_BF16),
}


def kernels(ext) -> dict[str, Callable[..., mx.array]]:
    """name -> f(q, k, v, scale, causal) on the GPU."""
    return {
        "simple": lambda q, k, v, s, c: ext.flash_attention(q, k, v, s, None, c, stream=mx.gpu),
        "simdgroup": lambda q, k, v, s, c: ext.flash_attention_fast(
            q, k, v, s, None, c, stream=mx.gpu
        ),
        "mlx": lambda q, k, v, s, c: mx.fast.scaled_dot_product_attention(
            q, k, v, scale=s, mask="causal" if c else None, stream=mx.gpu
        ),
    }


def bench_metal(ext, ta: Any, quick: bool) -> None:
    """Time and peak memory with Week 1's `profile` (ta.profile): the median of evaluated
    calls, and the most memory one call held beyond what was held before it."""
    lengths = [256, 512, 1024] if quick else [256, 512, 1024, 2048, 4096, 8192]
    B, H, E = 1, 8, 64
    print(f"Metal: {mx.metal.device_info().get('device_name', 'Apple GPU')}, B={B}, H={H}, E={E}")
    print(
        f"{'dtype':>8} {'causal':>6} {'N':>6} {'kernel':>10} {'ms':>9} {'GFLOP/s':>9} "
        f"{'peak MiB':>9}"
    )
    # (dtype, causal, kernel) -> [(N, seconds, peak bytes)]
    results: dict[tuple[str, bool, str], list[tuple[int, float, int]]] = {}
    for dtype_name in ("float32", "float16"):
        dtype = DTYPES[dtype_name][0]
        for causal in (False, True):
            for N in lengths:
                q, k, v = qkv((B,), H, H, N, N, E, seed=N, dtype=dtype)
                mx.eval(q, k, v)
                flops = attention_flops(B, H, N, N, E, causal)
                for name, fn in kernels(ext).items():
                    if name == "simple" and N > 2048:
                        continue  # minutes of GPU time for a point the plot does not need
                    prof = ta.profile(
                        fn, q, k, v, 1 / math.sqrt(E), causal, repeats=3 if quick else 10
                    )
                    seconds, peak = prof.median_s, prof.peak_bytes
                    results.setdefault((dtype_name, causal, name), []).append((N, seconds, peak))
                    print(
                        f"{dtype_name:>8} {causal!s:>6} {N:>6} {name:>10} "
                        f"{seconds * 1e3:>9.3f} {flops / seconds / 1e9:>9.1f} "
                        f"{peak / 2**20:>9.1f}"
                    )
    if not quick:
        plot(results, B, H, E)


def plot(results: dict, B: int, H: int, E: int) -> None:
    """Time and peak memory against N (no causal mask) into book/src/images/week3-gpu-*.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for what, column, label in (("time", 1, "ms per call"), ("memory", 2, "peak MiB")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, dtype_name in zip(axes, ("float32", "float16"), strict=True):
            for name in ("simple", "simdgroup", "mlx"):
                points = results.get((dtype_name, False, name), [])
                scale = 1e3 if column == 1 else 1 / 2**20
                ax.plot(
                    [p[0] for p in points], [p[column] * scale for p in points], "o-", label=name
                )
            ax.set(xscale="log", yscale="log", xlabel="N = L = S", title=dtype_name)
            ax.legend()
        axes[0].set_ylabel(label)
        fig.suptitle(
            f"Week 3 kernels on {mx.metal.device_info().get('device_name', 'Metal')}"
            f" (B={B}, H={H}, E={E})"
        )
        fig.tight_layout()
        path = IMAGES / f"week3-gpu-{what}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"[week3] wrote {path.relative_to(ROOT)}")


def check_on_simulator(ext) -> bool:
    """Every kernel x dtype once on metalsim, against MLX's attention on the CPU."""
    print(
        "GPU timing needs Apple silicon with Metal and the extension built by Apple's Metal "
        "compiler; here its kernels run on metalsim (pdm run check-installation says why)."
    )
    print("Checking every Week 3 kernel on metalsim instead (correctness only, no timings).")
    ok = True
    for dtype_name, (dtype, tol) in DTYPES.items():
        for causal in (False, True):
            q, k, v = qkv((1,), 2, 1, 40, 70, 64, seed=3, dtype=dtype)
            expected = to_numpy(
                mlx_sdpa(
                    *(x.astype(mx.float32) for x in (q, k, v)), mask="causal" if causal else None
                )
            )
            for name, fn in kernels(ext).items():
                if name == "mlx":
                    continue  # MLX's own Metal kernel does not run on the simulator
                got = to_numpy(fn(q, k, v, 1 / math.sqrt(64), causal))
                err = float(abs(got - expected).max())
                good = err <= tol["atol"] + tol["rtol"] * float(abs(expected).max())
                ok &= good
                print(
                    f"  {name:>10} {dtype_name:>9} causal={causal!s:<5} max abs error "
                    f"{err:.2e}  {'ok' if good else 'WRONG'}"
                )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--student",
        action="store_true",
        help="benchmark your extension (tiny_attn_ext) instead of the reference",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args(argv)
    name = "tiny_attn_ext" if args.student else "tiny_attn_ext_ref"
    ext = load_extension(name)
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    if gpu_backend_name(name) == "metal":
        bench_metal(ext, ta, args.quick)
        return 0
    return 0 if check_on_simulator(ext) else 1


if __name__ == "__main__":
    sys.exit(main())
