"""Week 5 benchmark: attention for inference on the CPU (B = 1, float32, E = 128).

Every comparison runs its sides in this one process, on the same inputs, timed in alternation
(round-robin; medians of the rounds), and prints both sides and their ratio next to the target
it is measured against:

  decode latency    one decode step (L = 1), H_q = 32, H = 8, S = 1K .. 32K: naive MLX ops, the
                    Week 2 CPU kernel with L = 1, the decode kernel, split-K, mx.fast sdpa
  K/V read rate     the decode kernel's K/V bytes per second, against a NumPy copy of as many
                    bytes (this machine's memory bandwidth, now)        target: within 2x
  GQA               H_q = 32, H = 8 against H_q = 8, H = 8              target: about 1x
  paged batch       16 sequences of 100 .. 8K tokens, paged (one dispatch) against contiguous
                    caches, at page sizes 16, 64, 256                   target: within 1.3x
                    and the bytes each holds: paged, the tokens themselves, padded to the longest
  sliding window    flash_attention_varlen, L = 1, W = 1024 at S = 1K .. 32K against S = W
                                                                        target: about 1x
  peak memory       of one decode step at the largest S, naive against the kernels, measured by
                    Week 1's `profile`

The decode rows (Days 1-3) are benches/week5_decode_rows.py's functions; the window rows are
here. Plots go to book/src/images/week5-*.png (not with --quick).

  pdm run bench --week 5 [--quick] [--student]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tiny_attn_tools.testing import load_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGES = ROOT / "book" / "src" / "images"
E = 128
MiB = 2**20


def _decode_rows():
    """benches/week5_decode_rows.py as a module (the benches are scripts, not a package)."""
    path = HERE / "week5_decode_rows.py"
    spec = importlib.util.spec_from_file_location("week5_decode_rows", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _varlen_decode(ext: Any, S: int, H_q: int = 32, H: int = 8, seed: int = 0):
    """One decode step of one sequence through flash_attention_varlen: L = 1 against S keys."""
    rng = np.random.default_rng(seed)
    q = mx.array(rng.standard_normal((1, H_q, E), dtype=np.float32))
    k = mx.array(rng.standard_normal((S, H, E), dtype=np.float32))
    v = mx.array(rng.standard_normal((S, H, E), dtype=np.float32))
    cu_q, cu_k = mx.array([0, 1], mx.int32), mx.array([0, S], mx.int32)
    mx.eval(q, k, v, cu_q, cu_k)
    return q, k, v, cu_q, cu_k


def window_cost(ext: Any, rows: Any, S: int, W: int, rounds: int) -> dict[str, float]:
    """A decode step with a sliding window of W keys at S keys against no window at S = W,
    timed in alternation (seconds: medians; their ratio round by round: median and range),
    and no window at S, timed apart (its long calls would empty the caches between the two
    short ones)."""
    at_s = _varlen_decode(ext, S, seed=1)
    at_w = _varlen_decode(ext, W, seed=2)
    with mx.stream(mx.cpu):
        t = rows.interleaved_rounds(
            {
                "window": lambda: ext.flash_attention_varlen(*at_s, causal=True, window=W - 1),
                "S=W": lambda: ext.flash_attention_varlen(*at_w, causal=True),
            },
            rounds,
        )
        full = rows.interleaved({"full": lambda: ext.flash_attention_varlen(*at_s, causal=True)}, 3)
    ratios = sorted(a / b for a, b in zip(t["window"], t["S=W"], strict=True))
    return {
        "window": statistics.median(t["window"]),
        "S=W": statistics.median(t["S=W"]),
        "full": full["full"],
        "ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
    }


def peak_memory(ta: Any, ext: Any, rows: Any, S: int) -> dict[str, float]:
    """Extra peak memory (MiB) of one decode step at S keys, by Week 1's `profile`."""
    q, k, v = rows._inputs(1, 32, 8, 1, S)
    scale = 1.0 / math.sqrt(E)
    paths = {
        "naive": lambda: rows._naive(q, k, v),
        "week2-cpu-L1": lambda: ext.flash_attention_fast(q, k, v, scale),
        "decode": lambda: ext.decode_attention(q, k, v),
        "split-k": lambda: ext.decode_attention_split(q, k, v),
    }
    with mx.stream(mx.cpu):
        return {n: ta.profile(fn, warmup=1, repeats=1).peak_bytes / MiB for n, fn in paths.items()}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def plot_lines(
    series: dict[str, list[tuple[int, float]]], title: str, ylabel: str, fname: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("keys in the cache S")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / fname
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bytes(paged: list[dict[str, Any]], fname: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["tokens stored"] + [f"paged, page_size {pb['page_size']}" for pb in paged]
    labels.append("padded to the longest")
    values = [paged[0]["tokens_bytes"]] + [pb["paged_bytes"] for pb in paged]
    values.append(paged[0]["padded_bytes"])
    colors = ["#888888"] + ["#2a7ab0"] * len(paged) + ["#d0583a"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(labels, [v / MiB for v in values], color=colors)
    ax.set_xlabel("K/V bytes (MiB)")
    ax.set_title("16 sequences of 100 .. 8K tokens, H = 8, E = 128, float32", fontsize=10)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / fname
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no plots")
    parser.add_argument("--student", action="store_true", help="bench src/ instead of refsol/")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    args = parser.parse_args(argv)
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    ext = load_extension("tiny_attn_ext" if args.student else "tiny_attn_ext_ref")
    rows = _decode_rows()
    sizes = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    rounds = 3 if args.quick else 5
    W = 256 if args.quick else 1024
    plots = not (args.quick or args.no_plots)
    print(f"[bench] week 5: inference on the CPU, mlx {mx.__version__}, numpy {np.__version__}")
    t0 = time.perf_counter()

    # ---- decode latency
    names = ["naive", "week2-cpu-L1", "decode", "split-k", "mx.fast.sdpa"]
    print("[bench] decode latency per token, ms (B=1, L=1, H_q=32, H=8, E=128, float32, CPU)")
    print(f"[bench] {'S':>6} " + " ".join(f"{n:>13}" for n in names), flush=True)
    latency: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    for S in sizes:
        t = rows.decode_latency(S, ext=ext, rounds=rounds)
        for n in names:
            latency[n].append((S, t[n]))
        line = " ".join(f"{1e3 * t[n]:13.2f}" for n in names)
        print(f"[bench] {S:>6} {line}", flush=True)
    if plots:
        p = plot_lines(
            {n: [(s, 1e3 * x) for s, x in pts] for n, pts in latency.items()},
            "One decode step, H_q=32, H=8, E=128, float32, CPU",
            "ms per token",
            "week5-decode-latency.png",
        )
        print(f"[bench] wrote {p.relative_to(ROOT)}")

    # ---- K/V read rate against the machine's bandwidth
    S = sizes[-1]
    r = rows.kv_read_rate(S, ext=ext, rounds=2 * rounds + 1)
    print(
        f"[bench] K/V read rate at S={S} ({r['kv_bytes'] / MiB:.0f} MiB of K/V): the decode kernel "
        f"reads them at {r['decode_GBps']:.1f} GB/s; a NumPy copy of as many bytes (one thread) "
        f"reads and writes them at {r['copy_GBps']:.1f} GB/s (read + write counted) -> "
        f"bandwidth / decode = 2 t_decode / t_copy = {r['ratio']:.2f}x (per round "
        f"{r['ratio_min']:.2f}..{r['ratio_max']:.2f})   target <= 2x: {verdict(r['ratio'] <= 2.0)}",
        flush=True,
    )

    # ---- GQA
    gqa: dict[str, list[tuple[int, float]]] = {"H_q=32, H=8": [], "H_q=8, H=8": []}
    for S in sizes:
        # Calls of a millisecond or two at the short lengths: more rounds, so that a burst of
        # load elsewhere on the machine does not decide the median of the ratios.
        g = rows.gqa_cost(S, ext=ext, rounds=4 * rounds + 1)
        gqa["H_q=32, H=8"].append((S, 1e3 * g["Hq32-H8"]))
        gqa["H_q=8, H=8"].append((S, 1e3 * g["Hq8-H8"]))
        print(
            f"[bench] GQA at S={S}: decode H_q=32/H=8 {1e3 * g['Hq32-H8']:.2f} ms, "
            f"H_q=8/H=8 {1e3 * g['Hq8-H8']:.2f} ms, ratio {g['ratio']:.2f} (per round "
            f"{g['ratio_min']:.2f}..{g['ratio_max']:.2f})   "
            f"target about 1x (<= 1.3): {verdict(g['ratio'] <= 1.3)}",
            flush=True,
        )
    if plots:
        title = "Decode kernel: 32 query heads on 8 K/V heads vs 8 on 8"
        p = plot_lines(gqa, title, "ms per token", "week5-gqa.png")
        print(f"[bench] wrote {p.relative_to(ROOT)}")

    # ---- paged batch
    rng = np.random.default_rng(0)
    top = 2048 if args.quick else 8192
    lengths = sorted(int(n) for n in rng.integers(100, top + 1, size=16))
    # Page size is a trade: short pages waste little memory (at most one partly filled page a
    # sequence) but break the reads of K and V into short runs; long pages the other way round.
    paged = []
    for page_size in rows.PAGE_SIZES:
        pb = rows.paged_batch(lengths, page_size=page_size, ext=ext, ta=ta, rounds=rounds)
        paged.append(pb)
        print(
            f"[bench] paged batch of 16 (lengths {lengths[0]}..{lengths[-1]}), page_size "
            f"{page_size}: paged {1e3 * pb['seconds']['paged']:.2f} ms, contiguous "
            f"{1e3 * pb['seconds']['contiguous']:.2f} ms, ratio {pb['ratio']:.2f} (per round "
            f"{pb['ratio_min']:.2f}..{pb['ratio_max']:.2f}); paged cache "
            f"{pb['paged_bytes'] / MiB:.1f} MiB (fragmentation {pb['fragmentation']:.3f})   "
            f"target <= 1.3x at page_size {page_size}: {verdict(pb['ratio'] <= 1.3)}",
            flush=True,
        )
    print(
        f"[bench] bytes: tokens stored {pb['tokens_bytes'] / MiB:.1f} MiB, padded to the "
        f"longest {pb['padded_bytes'] / MiB:.1f} MiB",
        flush=True,
    )
    if plots:
        p = plot_bytes(paged, "week5-paged-bytes.png")
        print(f"[bench] wrote {p.relative_to(ROOT)}")

    # ---- sliding window
    window: dict[str, list[tuple[int, float]]] = {f"window W={W}": [], "no window": []}
    for S in [s for s in sizes if s >= W]:
        # A few milliseconds a call: more rounds, so that a burst of load elsewhere on the
        # machine does not decide the median.
        w = window_cost(ext, rows, S, W, 5 * rounds)
        window[f"window W={W}"].append((S, 1e3 * w["window"]))
        window["no window"].append((S, 1e3 * w["full"]))
        print(
            f"[bench] sliding window W={W} at S={S}: {1e3 * w['window']:.2f} ms, S=W "
            f"{1e3 * w['S=W']:.2f} ms, no window at S {1e3 * w['full']:.2f} ms; window / S=W "
            f"= {w['ratio']:.2f} (per round {w['ratio_min']:.2f}..{w['ratio_max']:.2f})   "
            f"target about 1x (<= 1.3): {verdict(w['ratio'] <= 1.3)}",
            flush=True,
        )
    if plots:
        p = plot_lines(
            window,
            f"flash_attention_varlen, one decode step, H_q=32, H=8 (S=W: {W})",
            "ms per token",
            "week5-window.png",
        )
        print(f"[bench] wrote {p.relative_to(ROOT)}")

    # ---- peak memory
    S = sizes[-1]
    mem = peak_memory(ta, ext, rows, S)
    print(
        f"[bench] extra peak memory of one decode step at S={S} (Week 1's profile): "
        + ", ".join(f"{n} {m:.1f} MiB" for n, m in mem.items())
    )
    print(f"[bench] week 5 done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
