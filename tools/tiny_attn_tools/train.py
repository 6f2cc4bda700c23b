"""`pdm run train`: train a small character transformer with naive attention and with yours.

Two models from the same seed, on the same batches of the book's own text, one with Week 1's
naive attention and one with the C++ flash_attention (whose vjp runs the Week 4 backward kernel),
trained side by side. Prints both losses as it goes, how far apart the curves are, the time and
peak memory of one training step of each at a long sequence, and a sample from the flash model.
The loss curves are plotted into book/src/images/week4-training-loss.png.

  pdm run train [--steps 200] [--student] [--no-plot]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from tiny_attn_tools.testing import load_extension

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "book" / "src" / "images" / "week4-training-loss.png"


def corpus() -> str:
    """The book's chapters, in reading order: the course trains on its own text."""
    chapters = sorted((ROOT / "book" / "src").glob("*.md"))
    return "\n".join(p.read_text() for p in chapters if p.name != "SUMMARY.md")


def progress(step: int, steps: int, naive: float, flash: float, seconds: float) -> None:
    width = 30
    done = int(width * step / steps)
    bar = "#" * done + "-" * (width - done)
    print(
        f"\r[train] [{bar}] {step}/{steps}  loss naive {naive:.4f}  flash {flash:.4f}  "
        f"{seconds:.0f} s",
        end="",
        flush=True,
    )


def one_step_cost(ta, model, tokens) -> tuple[float, float]:
    """Time and extra peak memory (MiB) of one training step (loss, gradients, Adam update)."""
    opt = optim.Adam(learning_rate=1e-3)
    step = nn.value_and_grad(model, ta.lm_loss)
    loss, grads = step(model, tokens)  # warm-up, outside the measurement
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state, loss)
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    t = time.perf_counter()
    loss, grads = step(model, tokens)
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state, loss)
    return time.perf_counter() - t, (mx.get_peak_memory() - base) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdm run train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64, help="characters per example")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--long-len", type=int, default=1024, help="L of the memory comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", action="store_true", help="train with your code (src/)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    load_extension("tiny_attn_ext" if args.student else "tiny_attn_ext_ref")
    mx.set_default_device(mx.cpu)

    text = corpus()
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text], dtype=np.int32)
    print(
        f"[train] corpus: the book, {len(text)} characters, {len(chars)} distinct; model: "
        f"{args.layers} layers, dims {args.dims}, {args.heads} heads; batch {args.batch} x "
        f"{args.seq_len}; Adam lr {args.lr}; {args.steps} steps; seed {args.seed}",
        flush=True,
    )
    max_len = max(args.seq_len, args.long_len)
    models, opts, steps = {}, {}, {}
    for attention in ("naive", "flash"):
        mx.random.seed(args.seed)  # the same initial weights
        models[attention] = ta.Transformer(
            len(chars), args.dims, args.heads, args.layers, max_len, attention=attention
        )
        opts[attention] = optim.Adam(learning_rate=args.lr)
        steps[attention] = nn.value_and_grad(models[attention], ta.lm_loss)
    rng = np.random.default_rng(args.seed)
    curves: dict[str, list[float]] = {"naive": [], "flash": []}
    times = {"naive": 0.0, "flash": 0.0}
    t0 = time.perf_counter()
    for i in range(args.steps):
        starts = rng.integers(0, len(data) - args.seq_len - 1, args.batch)
        tokens = mx.array(np.stack([data[s : s + args.seq_len + 1] for s in starts]))
        for attention in ("naive", "flash"):
            t = time.perf_counter()
            m, opt = models[attention], opts[attention]
            loss, grads = steps[attention](m, tokens)
            opt.update(m, grads)
            mx.eval(m.parameters(), opt.state, loss)
            times[attention] += time.perf_counter() - t
            curves[attention].append(loss.item())
        progress(
            i + 1, args.steps, curves["naive"][-1], curves["flash"][-1], time.perf_counter() - t0
        )
    print()

    naive, flash = np.array(curves["naive"]), np.array(curves["flash"])
    rel = np.abs(flash - naive) / np.abs(naive)
    first = int(np.argmax(rel > 1e-4)) if (rel > 1e-4).any() else None
    print(
        f"[train] final loss: naive {naive[-1]:.4f}, flash {flash[-1]:.4f}; mean step: "
        f"naive {times['naive'] / args.steps * 1e3:.0f} ms, "
        f"flash {times['flash'] / args.steps * 1e3:.0f} ms"
    )
    print(
        f"[train] the curves agree step by step: max |flash - naive| / naive = {rel.max():.1e} "
        f"over {args.steps} steps (the first {args.steps if first is None else first} steps within "
        f"1e-4); max over the first 20 steps {rel[:20].max():.1e}"
    )

    # One training step of each at a long sequence: the naive path's L x S matrices.
    L = args.long_len
    tokens = mx.array(data[None, : L + 1].repeat(2, axis=0))
    print(f"[train] one training step at batch 2 x L = {L}:", flush=True)
    for attention in ("naive", "flash"):
        seconds, mib = one_step_cost(ta, models[attention], tokens)
        print(f"  {attention:<6} {seconds * 1e3:8.0f} ms {mib:8.1f} MiB peak")

    prompt = "FlashAttention "
    out = ta.generate(models["flash"], [chars.index(c) for c in prompt], 240, 0.8, args.seed)
    print("[train] a sample from the flash model (temperature 0.8):\n")
    print("".join(chars[t] for t in out))
    print()

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[3, 1])
        x = np.arange(1, args.steps + 1)
        ax.plot(x, naive, label="naive attention (Week 1)")
        ax.plot(x, flash, "--", label="flash_attention (C++, Week 4 backward)")
        ax.set_ylabel("training loss (cross-entropy)")
        ax.set_title("Same seed, same batches: the two curves")
        ax.legend()
        ax.grid(True, alpha=0.3)
        ax2.semilogy(x, np.maximum(rel, 1e-9))
        ax2.set_xlabel("step")
        ax2.set_ylabel("|flash - naive| / naive")
        ax2.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        IMAGE.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(IMAGE, dpi=110)
        plt.close(fig)
        print(f"[train] wrote {IMAGE.relative_to(ROOT)}")
    print(f"[train] done in {time.perf_counter() - t0:.0f} s")
    return 0 if math.isfinite(flash[-1]) else 1


if __name__ == "__main__":
    sys.exit(main())
