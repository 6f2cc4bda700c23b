"""Week 2 benchmark: attention on the CPU, naive against FlashAttention.

One run, one machine, the same inputs (B = 1, float32, L = S = N) for every path:
  numpy-naive    NumPy float32, scores materialised, OpenBLAS matmuls
  mlx-naive      the Week 1 reference scaled_dot_product_attention (MLX ops)
  mlx-fast       mx.fast.scaled_dot_product_attention on the CPU
  python-tiled   flash_attention_tiled (Week 2 day 2, MLX ops tile by tile)
  cpp-simple     the extension's day 4 kernel (one thread, plain loops)
  cpp-fast       the extension's day 5 kernel (vectorised, threads); also with a causal mask
Columns: time, GFLOP/s (4·B·H·L·S·E, halved for causal) and the extra peak memory of the call
beyond its inputs: for the MLX paths as Week 1's `profile` measures it (its peak_bytes), for
NumPy tracemalloc's peak (NumPy reports its buffers to tracemalloc). Plots go to
book/src/images/week2-bench-*.png.

Then the fast kernel against the BLAS line: NumPy's float32 matmul and cpp-fast (unmasked and
causal) at N = 4096, H = 8, E = 128, timed in alternation for several rounds; the medians and
their ratio (kernel GFLOP/s / matmul GFLOP/s) are printed. On a shared machine single timings
move a lot; alternating and taking medians lets both sides see the same load.

  python benches/week2_cpu.py [--quick] [--student]
  python benches/week2_cpu.py --blas-line-only [--min-ratio 0.7]   only the ratio, ~20 s
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np
from tiny_attn_tools.testing import attention_flops, load_extension, time_numpy

ROOT = Path(__file__).resolve().parent.parent

IMAGES = ROOT / "book" / "src" / "images"

# Past these sizes a path is skipped: too slow (minutes) or too big for the machine.
LIMITS = {"python-tiled": 1024, "cpp-simple": 2048, "mlx-naive": 4096, "mlx-fast": 4096}
MiB = 1024 * 1024


def numpy_naive(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    s = (q * np.float32(scale)) @ np.swapaxes(k, -1, -2)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s @ v


def time_mlx(profile: Callable, fn: Callable[[], mx.array], repeats: int) -> tuple[float, float]:
    """Best wall time of `repeats` evaluated calls, and the extra peak memory of a call, both
    measured by Week 1's `profile` (peak_bytes: the most memory a call holds beyond what was
    held before it)."""
    p = profile(fn, warmup=0, repeats=repeats)
    return min(p.times_s), p.peak_bytes / MiB


def blas_baseline(n: int, profile: Callable) -> None:
    """One n x n float32 matmul in MLX and in NumPy: the BLAS each naive path stands on."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    am = mx.array(a)
    mlx_s, _ = time_mlx(profile, lambda: am @ am, repeats=2)
    numpy_s, _ = time_numpy(lambda: a @ a, repeats=2)
    f = 2.0 * n**3
    print(
        f"[bench] BLAS baseline, one {n}x{n} float32 matmul: MLX {f / mlx_s / 1e9:.1f} GFLOP/s, "
        f"NumPy {f / numpy_s / 1e9:.1f} GFLOP/s"
    )


def blas_line(ext, N: int, H: int, E: int, n_matmul: int, rounds: int) -> dict[str, float]:
    """cpp-fast against NumPy's matmul, timed in alternation: median GFLOP/s and ratios."""
    rng = np.random.default_rng(0)
    a = rng.random((n_matmul, n_matmul), dtype=np.float32)
    q, k, v = (mx.array(rng.standard_normal((1, H, N, E), dtype=np.float32)) for _ in range(3))
    mx.eval(q, k, v)
    scale = 1.0 / math.sqrt(E)
    runs: dict[str, tuple[Callable[[], object], float]] = {
        "numpy-matmul": (lambda: a @ a, 2.0 * n_matmul**3),
        "cpp-fast": (
            lambda: mx.eval(ext.flash_attention_fast(q, k, v, scale, causal=False)),
            attention_flops(1, H, N, N, E, False),
        ),
        "cpp-fast causal": (
            lambda: mx.eval(ext.flash_attention_fast(q, k, v, scale, causal=True)),
            attention_flops(1, H, N, N, E, True),
        ),
    }
    for fn, _ in runs.values():  # warm-up: first-touch page faults, thread start-up
        fn()
    gflops: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, flops) in runs.items():
            t = time.perf_counter()
            fn()
            gflops[name].append(flops / (time.perf_counter() - t) / 1e9)
    med = {name: statistics.median(g) for name, g in gflops.items()}
    base = med["numpy-matmul"]
    print(f"[bench] the BLAS line (N={N} H={H} E={E}; {rounds} alternating rounds, medians):")
    print(
        f"[bench] NumPy {n_matmul}x{n_matmul} matmul {base:.1f} GFLOP/s; "
        f"cpp-fast {med['cpp-fast']:.1f} GFLOP/s = {med['cpp-fast'] / base:.2f}x; "
        f"causal {med['cpp-fast causal']:.1f} GFLOP/s = {med['cpp-fast causal'] / base:.2f}x",
        flush=True,
    )
    return {
        "ratio": med["cpp-fast"] / base,
        "ratio_causal": med["cpp-fast causal"] / base,
    }


def load_ext(student: bool):
    return load_extension("tiny_attn_ext" if student else "tiny_attn_ext_ref")


def run(args: argparse.Namespace) -> list[dict]:
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    ext = load_ext(args.student)
    tiled = getattr(ta, "flash_attention_tiled", None)
    if tiled is None:
        print("[bench] flash_attention_tiled is not in the package yet: python-tiled skipped")

    H, E = args.heads, args.head_dim
    scale = 1.0 / math.sqrt(E)
    paths: dict[str, Callable] = {
        "mlx-naive": lambda q, k, v, c: ta.scaled_dot_product_attention(
            q, k, v, scale, "causal" if c else None
        ),
        "mlx-fast": lambda q, k, v, c: mx.fast.scaled_dot_product_attention(
            q, k, v, scale=scale, mask="causal" if c else None
        ),
        "cpp-simple": lambda q, k, v, c: ext.flash_attention(q, k, v, scale, causal=c),
        "cpp-fast": lambda q, k, v, c: ext.flash_attention_fast(q, k, v, scale, causal=c),
    }
    if tiled is not None:
        paths["python-tiled"] = lambda q, k, v, c: tiled(q, k, v, scale, "causal" if c else None)[0]

    blas_baseline(512 if args.quick else 2048, ta.profile)
    rows: list[dict] = []

    def record(name: str, N: int, h: int, causal: bool, seconds: float, mib: float) -> None:
        gflops = attention_flops(1, h, N, N, E, causal) / seconds / 1e9
        rows.append(dict(path=name, N=N, H=h, causal=causal, s=seconds, gflops=gflops, mib=mib))
        label = name + (" causal" if causal else "")
        print(
            f"  {label:<18} N={N:<6} H={h:<2} {seconds * 1e3:10.1f} ms {gflops:8.1f} GFLOP/s "
            f"{mib:10.1f} MiB",
            flush=True,
        )

    with mx.stream(mx.cpu):
        for N in args.sizes:
            print(f"[bench] N = {N} (B=1, H={H}, E={E})", flush=True)
            rng = np.random.default_rng(N)
            qn, kn, vn = (rng.standard_normal((1, H, N, E), dtype=np.float32) for _ in range(3))
            q, k, v = mx.array(qn), mx.array(kn), mx.array(vn)
            mx.eval(q, k, v)
            repeats = 1 if N >= 2048 else 2
            record(
                "numpy-naive",
                N,
                H,
                False,
                *time_numpy(partial(numpy_naive, qn, kn, vn, scale), repeats),
            )
            for name, fn in paths.items():
                if N > LIMITS.get(name, math.inf):
                    continue
                timed = time_mlx(ta.profile, partial(fn, q, k, v, False), repeats)
                record(name, N, H, False, *timed)
            record(
                "cpp-fast",
                N,
                H,
                True,
                *time_mlx(ta.profile, partial(paths["cpp-fast"], q, k, v, True), repeats),
            )
            del q, k, v

        for N in args.long:
            # One head of a long sequence: the naive paths would need N * N * 4 bytes of scores.
            print(
                f"[bench] N = {N} (B=1, H=1, E={E}): naive scores would take "
                f"{N * N * 4 / 2**30:.1f} GiB; only the C++ kernel runs",
                flush=True,
            )
            q, k, v = (mx.random.normal((1, 1, N, E), key=mx.random.key(i)) for i in range(3))
            mx.eval(q, k, v)
            for causal in (False, True):
                record(
                    "cpp-fast",
                    N,
                    1,
                    causal,
                    *time_mlx(ta.profile, partial(paths["cpp-fast"], q, k, v, causal), 1),
                )
    return rows


def plot(rows: list[dict], H: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    written = []
    for key, ylabel, fname in [
        ("s", "time (s)", "week2-bench-time.png"),
        ("mib", "extra peak memory (MiB)", "week2-bench-memory.png"),
    ]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["H"] != H:
                continue
            label = r["path"] + (" (causal)" if r["causal"] else "")
            series.setdefault(label, []).append((r["N"], max(r[key], 1e-3)))
        for label, pts in series.items():
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (L = S)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Attention on the CPU, B=1, H={H}, float32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = IMAGES / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--student", action="store_true", help="bench src/ instead of refsol/")
    parser.add_argument("--heads", type=int, default=None, help="H (default 8; quick: 4)")
    parser.add_argument("--head-dim", type=int, default=128, help="E (default 128)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    parser.add_argument(
        "--blas-line-only", action="store_true", help="only cpp-fast against NumPy's matmul"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--min-ratio",
        type=float,
        default=None,
        help="exit 1 if cpp-fast (unmasked or causal) is below this fraction of the matmul",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.long, args.heads = [256, 512, 1024], [], args.heads or 4
    else:
        args.sizes, args.long, args.heads = [512, 1024, 2048, 4096], [32768], args.heads or 8
    print(f"[bench] week 2: CPU attention, {mx.__version__=}, numpy {np.__version__}", flush=True)
    t0 = time.perf_counter()
    if not args.blas_line_only:
        rows = run(args)
        if not args.no_plots and not args.quick:
            for p in plot(rows, args.heads):
                print(f"[bench] wrote {p.relative_to(ROOT)}")
    N, n_matmul = (1024, 512) if args.quick else (4096, 2048)
    with mx.stream(mx.cpu):
        ext = load_ext(args.student)
        line = blas_line(ext, N, args.heads, args.head_dim, n_matmul, args.rounds)
    print(f"[bench] week 2 done in {time.perf_counter() - t0:.0f} s")
    worst = min(line["ratio"], line["ratio_causal"])
    if args.min_ratio is not None and worst < args.min_ratio:
        print(f"[bench] cpp-fast at {worst:.2f}x of the matmul: below --min-ratio {args.min_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
