"""Week 1, Day 4: the memory wall of naive attention, measured and plotted.

    pdm run python benches/week1_memory_wall.py             # the reference solution
    pdm run python benches/week1_memory_wall.py --student   # your src/tiny_attn
    pdm run python benches/week1_memory_wall.py --max-n 4096   # further up the wall

For each sequence length N (L = S = N, one batch, H heads of E = 64, float32) it profiles
three implementations with `profile` (median time, peak memory): the Day 1 attention, the
Day 3 attention with a causal mask, and mx.fast.scaled_dot_product_attention. It prints a
table and draws book/src/images/week1-memory-wall.png (time and peak memory against N, with
the size of one score matrix, H * N * N * 4 bytes, for comparison).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLOT = ROOT / "book" / "src" / "images" / "week1-memory-wall.png"
MiB = 2**20


def implementations(ta: Any) -> dict[str, Any]:
    def mlx_fast(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))

    return {
        "day 1: scaled_dot_product_attention_simple": ta.scaled_dot_product_attention_simple,
        "day 3: scaled_dot_product_attention, causal": lambda q, k, v: (
            ta.scaled_dot_product_attention(q, k, v, mask="causal")
        ),
        "mx.fast.scaled_dot_product_attention": mlx_fast,
    }


def sweep(ta: Any, ns: list[int], heads: int, E: int, repeats: int) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {name: [] for name in implementations(ta)}
    for n in ns:
        q = mx.random.normal((1, heads, n, E), key=mx.random.key(n))
        k = mx.random.normal((1, heads, n, E), key=mx.random.key(n + 1))
        v = mx.random.normal((1, heads, n, E), key=mx.random.key(n + 2))
        mx.eval(q, k, v)
        for name, fn in implementations(ta).items():
            p = ta.profile(fn, q, k, v, warmup=1, repeats=repeats)
            results[name].append(p)
            print(
                f"  N={n:>5}  {name:<44} {p.median_s * 1e3:9.1f} ms  {p.peak_bytes / MiB:9.1f} MiB",
                flush=True,
            )
        del q, k, v
        mx.clear_cache()
    return results


def print_table(ta: Any, ns: list[int], heads: int, E: int, results: dict[str, list[Any]]) -> None:
    names = list(results)
    short = ["day 1", "day 3 causal", "mx.fast"]
    print()
    # Columns as wide as their labels: the table fits in 100 columns (and in the book).
    header = f"{'N':>6} {'scores MiB':>11}" + "".join(f" | {s} ms {s} MiB" for s in short)
    print(header)
    print("-" * len(header))
    for i, n in enumerate(ns):
        scores = ta.scores_nbytes((1, heads, n, E), (1, heads, n, E), mx.float32) / MiB
        row = f"{n:>6} {scores:>11.1f}"
        for s, name in zip(short, names, strict=True):
            p = results[name][i]
            row += f" | {p.median_s * 1e3:>{len(s) + 3}.1f} {p.peak_bytes / MiB:>{len(s) + 4}.1f}"
        print(row)


def plot(
    ta: Any, ns: list[int], heads: int, E: int, results: dict[str, list[Any]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, profiles in results.items():
        ax_t.plot(ns, [p.median_s * 1e3 for p in profiles], marker="o", label=name)
        ax_m.plot(ns, [p.peak_bytes / MiB for p in profiles], marker="o", label=name)
    scores = [ta.scores_nbytes((1, heads, n, E), (1, heads, n, E), mx.float32) / MiB for n in ns]
    ax_m.plot(ns, scores, "k--", label=f"one score matrix: {heads}·N²·4 bytes")
    for ax, title, unit in ((ax_t, "time per call", "ms"), (ax_m, "peak memory", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (L = S = N)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=8)
    fig.suptitle(f"Naive attention on the CPU: B=1, H={heads}, E={E}, float32")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", action="store_true", help="profile src/tiny_attn")
    parser.add_argument("--min-n", type=int, default=256, help="smallest N (default 256)")
    parser.add_argument("--max-n", type=int, default=2048, help="largest N (default 2048)")
    parser.add_argument("--heads", type=int, default=4, help="H (default 4)")
    parser.add_argument("--head-dim", type=int, default=64, help="E (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per point")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="where the PNG goes")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    for name in ("min_n", "max_n", "heads", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_n < args.min_n:
        parser.error("--max-n must be at least --min-n")

    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    ns = []
    n = args.min_n
    while n <= args.max_n:
        ns.append(n)
        n *= 2
    mx.set_default_device(mx.cpu)
    peak_guess = 3 * ta.scores_nbytes(
        (1, args.heads, ns[-1], 1), (1, args.heads, ns[-1], 1), mx.float32
    )
    print(
        f"[week1 memory wall] {ta.__name__}: N = {ns}, H = {args.heads}, E = {args.head_dim}; "
        f"largest point needs about {peak_guess / MiB:.0f} MiB",
        flush=True,
    )
    results = sweep(ta, ns, args.heads, args.head_dim, args.repeats)
    print_table(ta, ns, args.heads, args.head_dim, results)
    if not args.no_plot:
        plot(ta, ns, args.heads, args.head_dim, results, args.plot)
        shown = args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot
        print(f"\nplot written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
