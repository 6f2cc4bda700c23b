"""Week 5 bench rows: decoding (Days 1-3), as functions the Week 5 bench calls.

Every function takes sizes, runs all its sides in one process on the same inputs, timed in
alternation (round-robin, medians of the rounds, so that every side sees the same load on a
shared machine), and returns plain dicts: times in seconds, bytes, ratios.

  decode_latency(S)       one decode step (L = 1, B = 1, float32): naive MLX ops, the Week 2
                          CPU kernel with L = 1, the decode kernel, split-K, mx.fast sdpa
  kv_read_rate(S)         the decode kernel's K/V bytes per second against a NumPy copy of
                          as many bytes (the machine's memory bandwidth, measured now: the
                          copy's bytes read + written per second)
  gqa_cost(S)             H_q = 32, H = 8 against H_q = 8, H = 8 (K/V read once per group)
  paged_batch(lengths)    16 sequences of different lengths: paged (one dispatch) against
                          each sequence from its own contiguous cache; bytes paged vs padded
                          (page_size: tokens a page, the bench sweeps 16, 64, 256)

  python benches/week5_decode_rows.py [--quick] [--student]    prints every row
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np
from tiny_attn_tools.testing import load_extension

E = 128
PAGE_SIZES = (16, 64, 256)  # tokens a page: the paged batch is timed at each


def interleaved_rounds(
    sides: dict[str, Callable[[], Any]], rounds: int = 5
) -> dict[str, list[float]]:
    """Seconds of each side in every round, the sides timed in turn, round after round."""
    for fn in sides.values():  # warm-up: compile, caches, thread start
        mx.eval(fn())
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            t = time.perf_counter()
            mx.eval(fn())
            times[name].append(time.perf_counter() - t)
    return times


def interleaved(sides: dict[str, Callable[[], Any]], rounds: int = 5) -> dict[str, float]:
    """Median seconds of each side, the sides timed in turn, round after round."""
    times = interleaved_rounds(sides, rounds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _inputs(B: int, H_q: int, H: int, L: int, S: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = mx.array(rng.standard_normal((B, H_q, L, E), dtype=np.float32))
    k = mx.array(rng.standard_normal((B, H, S, E), dtype=np.float32))
    v = mx.array(rng.standard_normal((B, H, S, E), dtype=np.float32))
    mx.eval(q, k, v)
    return q, k, v


def _naive(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
    """Week 1's way: the scores materialised, K/V repeated per query head."""
    G = q.shape[1] // k.shape[1]
    k, v = mx.repeat(k, G, axis=1), mx.repeat(v, G, axis=1)
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)
    return mx.softmax(scores, axis=-1) @ v


def decode_latency(
    S: int, *, H_q: int = 32, H: int = 8, ext: Any = None, rounds: int = 5
) -> dict[str, float]:
    """Seconds per decode step at S keys, per path (B = 1, L = 1, float32, E = 128)."""
    ext = ext or load_extension("tiny_attn_ext_ref")
    q, k, v = _inputs(1, H_q, H, 1, S)
    scale = 1.0 / math.sqrt(E)
    with mx.stream(mx.cpu):
        return interleaved(
            {
                "naive": lambda: _naive(q, k, v),
                "week2-cpu-L1": lambda: ext.flash_attention_fast(q, k, v, scale),
                "decode": lambda: ext.decode_attention(q, k, v),
                "split-k": lambda: ext.decode_attention_split(q, k, v),
                "mx.fast.sdpa": lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale),
            },
            rounds,
        )


def kv_read_rate(S: int, *, H_q: int = 32, H: int = 8, ext: Any = None, rounds: int = 9):
    """The decode kernel's K/V read rate against a NumPy copy of the same bytes, one run.

    The decode reads N = K + V bytes. The copy (np.copyto, one thread) reads N bytes and writes
    N: the machine's bandwidth counts both, 2 N / t_copy, as STREAM counts a copy. So
    bandwidth / decode rate = 2 * t_decode / t_copy, taken round by round (each round times
    both sides back to back) and summarised by its median and its range."""
    ext = ext or load_extension("tiny_attn_ext_ref")
    q, k, v = _inputs(1, H_q, H, 1, S)
    kv_bytes = k.nbytes + v.nbytes
    src = np.ones(kv_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = interleaved_rounds(
        {
            "decode": lambda: ext.decode_attention(q, k, v),
            "numpy-copy": lambda: np.copyto(dst, src) or mx.array(0),
        },
        rounds,
    )
    ratios = sorted(2 * d / c for d, c in zip(t["decode"], t["numpy-copy"], strict=True))
    seconds = {name: statistics.median(ts) for name, ts in t.items()}
    return {
        "kv_bytes": kv_bytes,
        "decode_GBps": kv_bytes / seconds["decode"] / 1e9,
        "copy_GBps": 2 * kv_bytes / seconds["numpy-copy"] / 1e9,
        "ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "seconds": seconds,
    }


def gqa_cost(S: int, *, ext: Any = None, rounds: int = 5) -> dict[str, float]:
    """Decode seconds with H_q = 32, H = 8 against H_q = 8, H = 8 at S keys (medians), and
    their ratio round by round: median and range."""
    ext = ext or load_extension("tiny_attn_ext_ref")
    gqa = _inputs(1, 32, 8, 1, S, seed=1)
    mha = _inputs(1, 8, 8, 1, S, seed=2)
    t = interleaved_rounds(
        {
            "Hq32-H8": lambda: ext.decode_attention(*gqa),
            "Hq8-H8": lambda: ext.decode_attention(*mha),
        },
        rounds,
    )
    ratios = sorted(a / b for a, b in zip(t["Hq32-H8"], t["Hq8-H8"], strict=True))
    return {
        "Hq32-H8": statistics.median(t["Hq32-H8"]),
        "Hq8-H8": statistics.median(t["Hq8-H8"]),
        "ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
    }


def paged_batch(
    lengths: list[int],
    *,
    H_q: int = 32,
    H: int = 8,
    page_size: int = 16,
    ext: Any = None,
    ta: Any = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """A batch of sequences of `lengths`: one paged dispatch against each sequence decoded from
    its own contiguous cache (the same tokens read), and the bytes each layout holds. The time
    ratio paged / contiguous is taken round by round (median and range)."""
    ext = ext or load_extension("tiny_attn_ext_ref")
    if ta is None:
        import tiny_attn_ref as ta
    pages = sum(-(-n // page_size) for n in lengths)
    cache = ta.PagedKVCache(pages, page_size, H, E)
    rng = np.random.default_rng(3)
    contiguous = []
    seqs = []
    for n in lengths:
        s = cache.new_sequence()
        k = mx.array(rng.standard_normal((H, n, E), dtype=np.float32))
        v = mx.array(rng.standard_normal((H, n, E), dtype=np.float32))
        cache.append(s, k, v)
        contiguous.append((k[None], v[None]))
        seqs.append(s)
    B = len(lengths)
    q = mx.array(rng.standard_normal((B, H_q, 1, E), dtype=np.float32))
    table, lens = cache.block_table(seqs), cache.seq_lens(seqs)
    mx.eval(q, table, lens, *[x for kv in contiguous for x in kv])
    times = interleaved_rounds(
        {
            "paged": lambda: ext.paged_decode_attention(
                q, cache.k_pages, cache.v_pages, table, lens
            ),
            "contiguous": lambda: [
                ext.decode_attention(q[b : b + 1], *contiguous[b]) for b in range(B)
            ],
        },
        rounds,
    )
    ratios = sorted(a / b for a, b in zip(times["paged"], times["contiguous"], strict=True))
    padded_bytes = 2 * B * H * max(lengths) * E * 4
    return {
        "page_size": page_size,
        "seconds": {name: statistics.median(ts) for name, ts in times.items()},
        "ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "paged_bytes": cache.bytes_in_use,
        "tokens_bytes": 2 * H * sum(lengths) * E * 4,
        "padded_bytes": padded_bytes,
        "fragmentation": cache.fragmentation,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--student", action="store_true", help="your code (src/)")
    args = parser.parse_args(argv)
    ext = load_extension("tiny_attn_ext" if args.student else "tiny_attn_ext_ref")
    sizes = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    rounds = 3 if args.quick else 5

    print("decode latency per token, ms (B = 1, L = 1, H_q = 32, H = 8, E = 128, float32, CPU)")
    names = ["naive", "week2-cpu-L1", "decode", "split-k", "mx.fast.sdpa"]
    print(f"{'S':>6} " + " ".join(f"{n:>13}" for n in names))
    for S in sizes:
        t = decode_latency(S, ext=ext, rounds=rounds)
        print(f"{S:>6} " + " ".join(f"{1e3 * t[n]:13.2f}" for n in names), flush=True)

    S = sizes[-1]
    r = kv_read_rate(S, ext=ext, rounds=2 * rounds + 1)
    print(
        f"\nK/V read rate at S = {S} ({r['kv_bytes'] / 2**20:.0f} MiB of K/V): decode reads them "
        f"at {r['decode_GBps']:.1f} GB/s; a NumPy copy of as many bytes (one thread) reads and "
        f"writes them at {r['copy_GBps']:.1f} GB/s (read + write counted); bandwidth / decode "
        f"= 2 t_decode / t_copy = {r['ratio']:.2f}x "
        f"(rounds {r['ratio_min']:.2f}..{r['ratio_max']:.2f})"
    )
    g = gqa_cost(S, ext=ext, rounds=2 * rounds + 1)
    print(
        f"GQA at S = {S}: H_q=32/H=8 {1e3 * g['Hq32-H8']:.2f} ms, H_q=8/H=8 "
        f"{1e3 * g['Hq8-H8']:.2f} ms, ratio {g['ratio']:.2f} "
        f"(rounds {g['ratio_min']:.2f}..{g['ratio_max']:.2f})"
    )
    rng = np.random.default_rng(0)
    top = 2048 if args.quick else 8192
    lengths = sorted(int(n) for n in rng.integers(100, top + 1, size=16))
    print(f"paged batch of 16 (lengths {lengths[0]}..{lengths[-1]}), page sizes {PAGE_SIZES}")
    for page_size in PAGE_SIZES:
        p = paged_batch(lengths, page_size=page_size, ext=ext, rounds=rounds)
        print(
            f"page_size {page_size:>3}: paged {1e3 * p['seconds']['paged']:.2f} ms, contiguous "
            f"{1e3 * p['seconds']['contiguous']:.2f} ms, ratio {p['ratio']:.2f} (rounds "
            f"{p['ratio_min']:.2f}..{p['ratio_max']:.2f}); paged {p['paged_bytes'] / 2**20:.1f} "
            f"MiB (tokens stored {p['tokens_bytes'] / 2**20:.1f} MiB, fragmentation "
            f"{p['fragmentation']:.3f}), padded to the longest {p['padded_bytes'] / 2**20:.1f} MiB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
