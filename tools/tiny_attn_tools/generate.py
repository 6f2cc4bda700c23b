"""`pdm run generate`: serve Week 4's small transformer: prefill, then decode from a paged cache.

A character model over the book's text (seeded random weights; `--train-steps N` trains it on
the book first, about half a second a step on 2 cores, so that samples start to look like text)
generates greedily for a batch of prompts of different lengths with
Week 5's Generator: each prompt through flash_attention once, then every sequence's next token
from one paged_decode_attention per layer and step. Then Week 4's generate, which recomputes the
whole context for every token with naive attention, on the same prompts: both sides' tokens/s,
and whether the tokens are the same.

  pdm run generate [--batch 8] [--new-tokens 64] [--train-steps 0] [--gpu] [--student]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from tiny_attn_tools.testing import load_extension
from tiny_attn_tools.train import corpus


def bar(label: str, done: int, total: int, seconds: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    print(
        f"\r[generate] {label} [{'#' * filled}{'-' * (width - filled)}] {done}/{total} "
        f"{seconds:.1f} s",
        end="",
        flush=True,
    )


def train(ta, model, data: np.ndarray, steps: int, seed: int) -> None:
    """A few Adam steps on the book's text, so that the samples look like text."""
    opt = optim.Adam(learning_rate=3e-3)
    step = nn.value_and_grad(model, ta.lm_loss)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    loss = mx.array(0.0)
    for i in range(steps):
        starts = rng.integers(0, len(data) - 65, 16)
        tokens = mx.array(np.stack([data[s : s + 65] for s in starts]))
        loss, grads = step(model, tokens)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        bar(f"training, loss {loss.item():.3f}", i + 1, steps, time.perf_counter() - t0)
    if steps:
        print()


MAX_LEN = 256  # the model's positions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pdm run generate", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--train-steps", type=int, default=0, help="0: random weights")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="the Metal kernels (metalsim: slow)")
    parser.add_argument("--student", action="store_true", help="your code (src/)")
    args = parser.parse_args(argv)
    # Prompts are 8 to 48 characters and the model holds 256 positions; a decode rate needs
    # at least one decode step (the first new token comes from the prefill).
    for name, value, low, high in (
        ("--batch", args.batch, 1, None),
        ("--new-tokens", args.new_tokens, 2, MAX_LEN - 48),
        ("--train-steps", args.train_steps, 0, None),
        ("--dims", args.dims, 1, None),
        ("--heads", args.heads, 1, None),
        ("--layers", args.layers, 1, None),
    ):
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            parser.error(f"{name} must be {allowed}, got {value}")
    if args.dims % args.heads:
        parser.error(f"--dims must be a multiple of --heads ({args.heads}), got {args.dims}")
    ta = importlib.import_module("tiny_attn" if args.student else "tiny_attn_ref")
    load_extension("tiny_attn_ext" if args.student else "tiny_attn_ext_ref")
    mx.set_default_device(mx.cpu)
    t0 = time.perf_counter()

    text = corpus()
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text], dtype=np.int32)
    mx.random.seed(args.seed)
    model = ta.Transformer(len(chars), args.dims, args.heads, args.layers, max_len=MAX_LEN)
    mx.eval(model.parameters())
    print(
        f"[generate] model: {args.layers} layers, dims {args.dims}, {args.heads} heads, "
        f"{len(chars)} characters, seed {args.seed}; "
        + (
            f"{args.train_steps} training steps on the book"
            if args.train_steps
            else "random weights"
        ),
        flush=True,
    )
    train(ta, model, data, args.train_steps, args.seed)

    rng = np.random.default_rng(args.seed)
    prompts = []
    for n in rng.integers(8, 49, args.batch):
        s = int(rng.integers(0, len(data) - n))
        prompts.append([int(t) for t in data[s : s + n]])

    stream = mx.gpu if args.gpu else None
    where = "the GPU kernels" + (" on metalsim" if not mx.metal.is_available() else "")
    print(
        f"[generate] {args.batch} prompts of {min(map(len, prompts))}..{max(map(len, prompts))} "
        f"characters, {args.new_tokens} new tokens each, greedy, on "
        f"{where if args.gpu else 'the CPU kernels'}",
        flush=True,
    )
    gen = ta.Generator(model, stream=stream)
    t = time.perf_counter()
    out = gen.generate(
        prompts,
        args.new_tokens,
        on_step=lambda i, n: bar(
            "decoding, tokens per sequence", i + 1, n, time.perf_counter() - t
        ),
    )
    print()
    st = gen.stats
    served = (st["prefill_tokens"] / st["prefill_s"], st["decode_tokens"] / st["decode_s"])

    # The other side: Week 4's loop, the whole context through the model for every token.
    model.set_attention("naive")
    t = time.perf_counter()
    naive = []
    for i, p in enumerate(prompts):
        naive.append(ta.generate(model, p, args.new_tokens, temperature=0))
        bar("Week 4's loop (naive)", i + 1, len(prompts), time.perf_counter() - t)
    print()
    naive_s = time.perf_counter() - t
    naive_rate = len(prompts) * args.new_tokens / naive_s

    print(
        f"[generate] served: prefill {served[0]:,.0f} tokens/s ({st['prefill_tokens']} tokens, "
        f"flash_attention), decode {served[1]:,.0f} tokens/s ({st['decode_tokens']} tokens in "
        f"{args.new_tokens - 1} steps of {args.batch} sequences, paged_decode_attention)"
    )
    print(
        f"[generate] Week 4's loop: {naive_rate:,.0f} tokens/s ({len(prompts) * args.new_tokens}"
        f" tokens, every step recomputes its context); served decode / naive = "
        f"{served[1] / naive_rate:.1f}x"
    )
    same = out == naive
    print(f"[generate] the same tokens as Week 4's loop: {'yes' if same else 'NO'}")
    for p, o in list(zip(prompts, out, strict=True))[:3]:
        prompt = "".join(chars[c] for c in p).replace("\n", " ")
        new = "".join(chars[c] for c in o[len(p) :]).replace("\n", " ")
        print(f"  {prompt!r} -> {new!r}")
    print(f"[generate] done in {time.perf_counter() - t0:.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
