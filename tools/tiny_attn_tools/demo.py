"""`pdm run demo`: the course in one minute.

Runs every reference implementation of the course on one input (grouped-query attention with a
causal mask), checks each against mx.fast.scaled_dot_product_attention, and prints how long each
took and how much memory it needed at its peak.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

import mlx.core as mx
import numpy as np
import tiny_attn_ref as ta

from tiny_attn_tools.testing import (
    attention_flops,
    gpu_backend_name,
    load_extension,
    numpy_attention,
    qkv,
    to_numpy,
)


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="pdm run demo", description=__doc__)
    parser.add_argument("--heads", type=int, default=8, help="query heads H_q (default 8)")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads H (default 2)")
    parser.add_argument("--length", type=int, default=512, help="L = S (default 512)")
    parser.add_argument("--dim", type=int, default=64, help="head dimension E (default 64)")
    args = parser.parse_args()
    h_q, h, n, e = args.heads, args.kv_heads, args.length, args.dim
    if min(h_q, h, n, e) < 1 or h_q % h:
        parser.error("--heads, --kv-heads, --length, --dim must be positive, heads % kv-heads == 0")

    ext = load_extension("tiny_attn_ext_ref")  # builds the C++ and Metal kernels if needed
    metal = gpu_backend_name("tiny_attn_ext_ref") == "metal"
    gpu = "Metal" if metal else "metalsim, the CPU simulator"
    print(
        f"tiny-attn demo: query (1, {h_q}, {n}, {e}), key/value (1, {h}, {n}, {e}), "
        f"float32, causal mask; MLX {mx.__version__}, GPU kernels on {gpu}\n",
        flush=True,
    )
    q, k, v = qkv((1,), h_q, h, n, n, e, seed=0)
    scale = 1.0 / math.sqrt(e)
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    mx.eval(expected)
    exact = numpy_attention(q, k, v, mask="causal")
    flops = attention_flops(1, h_q, n, n, e, causal=True)

    def tiled() -> mx.array:
        return ta.flash_attention_tiled(q, k, v, mask="causal")[0]

    def varlen() -> mx.array:
        # Week 5: one packed sequence, (n, heads, e), its causal mask computed in the kernel.
        packed = [mx.swapaxes(x[0], 0, 1) for x in (q, k, v)]
        cu = mx.array([0, n], mx.int32)
        out = ext.flash_attention_varlen(*packed, cu, cu, scale, causal=True)
        return mx.swapaxes(out, 0, 1)[None]

    # (week, name, function). Each runs the whole attention and returns the output.
    rows: list[tuple[str, str, Callable[[], mx.array]]] = [
        (
            "-",
            "mx.fast.scaled_dot_product_attention",
            lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal"),
        ),
        (
            "1",
            "scaled_dot_product_attention (naive)",
            lambda: ta.scaled_dot_product_attention(q, k, v, mask="causal"),
        ),
        ("2", "flash_attention_tiled (Python, MLX ops)", tiled),
        (
            "2",
            "flash_attention, C++ simple kernel",
            lambda: ta.flash_attention(q, k, v, mask="causal", kernel="simple"),
        ),
        (
            "2",
            "flash_attention, C++ fast kernel",
            lambda: ta.flash_attention(q, k, v, mask="causal", kernel="fast"),
        ),
        ("5", "flash_attention_varlen, C++ (packed)", varlen),
    ]
    rows += gpu_rows(q, k, v)

    print(
        f"{'week':<5}{'implementation':<46}{'max |err|':>10}{'time ms':>10}{'GFLOP/s':>9}"
        f"{'peak MiB':>10}"
    )
    worst = 0.0
    for week, name, fn in rows:
        print(f"{week:<5}{name:<46}", end="", flush=True)
        # The first call builds extensions / compiles kernels, so it is checked, not timed.
        err = float(np.max(np.abs(to_numpy(fn()) - exact)))
        # Week 1's profiler: one call for peak memory (what MLX allocated beyond what was
        # there before), one timed call.
        p = ta.profile(fn, warmup=0, repeats=1)
        seconds, peak = p.median_s, p.peak_bytes
        worst = max(worst, err) if week != "-" else worst
        note = "  (simulated: not a GPU timing)" if "metalsim" in name else ""
        print(
            f"{err:>10.1e}{seconds * 1e3:>10.1f}{flops / seconds / 1e9:>9.2f}{mib(peak):>10}{note}"
        )
    print(
        "\nmax |err| is against float64 NumPy; the naive path's peak memory holds the whole "
        f"{h_q}x{n}x{n} score matrix ({mib(4 * h_q * n * n).strip()} MiB); "
        "FlashAttention's never does."
    )
    worst = max(worst, gradient_check(q, k, v, scale))
    worst = max(worst, decode_check(q, k, v, exact))
    if worst > 1e-4:
        print(f"FAILED: an implementation differs from the exact answer by {worst:.1e}")
        return 1
    print("All implementations agree with mx.fast.scaled_dot_product_attention.")
    return 0


def gradient_check(q: mx.array, k: mx.array, v: mx.array, scale: float) -> float:
    """Week 4: mx.vjp through the C++ op (its vjp runs the backward kernel) against MLX's
    autodiff through its own attention, on the CPU (Day 3) and on the GPU (Day 4, at most 128
    positions: metalsim is slow); returns the largest difference."""
    worst = one_gradient_check(q, k, v, scale, mx.cpu, "C++ backward kernel")
    n = min(q.shape[2], 128)
    where = "Metal" if gpu_backend_name("tiny_attn_ext_ref") == "metal" else "metalsim"
    short = (x[:, :, :n] for x in (q, k, v))
    return max(worst, one_gradient_check(*short, scale, mx.gpu, f"Metal kernels on {where}"))


def one_gradient_check(
    q: mx.array, k: mx.array, v: mx.array, scale: float, stream: mx.Device, what: str
) -> float:
    d_out = mx.random.normal(q.shape, key=mx.random.key(1))

    def ours(a: mx.array, b: mx.array, c: mx.array) -> mx.array:
        return ta.flash_attention(a, b, c, mask="causal", stream=stream)

    def mlx(a: mx.array, b: mx.array, c: mx.array) -> mx.array:
        return mx.fast.scaled_dot_product_attention(a, b, c, scale=scale, mask="causal")

    got = mx.vjp(ours, [q, k, v], [d_out])[1]
    want = mx.vjp(mlx, [q, k, v], [d_out])[1]
    errs = [float(mx.max(mx.abs(g - w))) for g, w in zip(got, want, strict=True)]
    print(
        f"\nweek 4: the gradients (mx.vjp) through flash_attention, {what}, L = S = "
        f"{q.shape[2]}, against MLX's autodiff of mx.fast.scaled_dot_product_attention: max |err| "
        + ", ".join(f"{n} {e:.1e}" for n, e in zip(("dq", "dk", "dv"), errs, strict=True))
    )
    return max(errs)


def decode_check(q: mx.array, k: mx.array, v: mx.array, exact: np.ndarray) -> float:
    """Week 5: the last query row decoded from a KV cache, a paged cache, with split-K, on the
    CPU and the GPU; under the causal mask that row sees every key, as a decode step does."""
    ext = load_extension("tiny_attn_ext_ref")
    _, h, n, e = k.shape
    cache = ta.KVCache(1, h, n, e)
    cache.append(k, v)
    paged = ta.PagedKVCache(-(-n // 16), 16, h, e)
    seq = paged.new_sequence()
    paged.append(seq, k[0], v[0])
    table, lens = paged.block_table([seq]), paged.seq_lens([seq])
    q1 = q[:, :, -1:, :]
    runs = {
        "decode_attention, CPU": lambda: ext.decode_attention(q1, cache.keys, cache.values),
        "decode_attention, GPU": lambda: ext.decode_attention(
            q1, cache.keys, cache.values, stream=mx.gpu
        ),
        "decode_attention_split, 4 splits": lambda: ext.decode_attention_split(
            q1, cache.keys, cache.values, num_splits=4
        ),
        "paged_decode_attention, CPU": lambda: ext.paged_decode_attention(
            q1, paged.k_pages, paged.v_pages, table, lens
        ),
    }
    worst = 0.0
    print("\nweek 5: decoding the last row (L = 1) from a KV cache:")
    for name, fn in runs.items():
        err = float(np.max(np.abs(to_numpy(fn()) - exact[:, :, -1:, :])))
        worst = max(worst, err)
        print(f"     {name:<46}{err:>10.1e}")
    return worst


def gpu_rows(
    q: mx.array, k: mx.array, v: mx.array
) -> list[tuple[str, str, Callable[[], mx.array]]]:
    """Week 3: the Metal kernels, on the GPU or, without one, on metalsim."""
    where = "Metal" if gpu_backend_name("tiny_attn_ext_ref") == "metal" else "metalsim"

    def run(kernel: str) -> Callable[[], mx.array]:
        return lambda: ta.flash_attention(q, k, v, mask="causal", kernel=kernel, stream=mx.gpu)

    return [
        ("3", f"flash_attention_f32_e128 ({where})", run("simple")),
        ("3", f"flash_attention_simdgroup_f32 ({where})", run("fast")),
    ]


if __name__ == "__main__":
    sys.exit(main())
