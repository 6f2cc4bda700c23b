"""Week 5, Day 4: masks from positions, and packed batches of sequences of different lengths.

Book: book/src/week5-04-computed-masks.md

The naive way, with Week 1's tools: build each sequence's (L, S) mask from positions (a sliding
window generalises Week 1's causal mask), add ALiBi's distance penalty, and run softmax
attention sequence by sequence. It is the model the kernels of this day (which never build
an L x S array) are checked against.
"""

from __future__ import annotations

import math  # noqa: F401  (you will need it)

import mlx.core as mx

from tiny_attn_contracts import check_mask_size, check_varlen_inputs, check_window

from .basics import softmax  # noqa: F401  (you will need it)

_CHAPTER = "book/src/week5-04-computed-masks.md"


def local_mask(
    L: int, S: int, window: int | tuple[int, int] | None = None, *, causal: bool = False
) -> mx.array:
    """Which keys each query sees, (L, S) bool: Week 1's causal mask with a sliding window.

    Query i sits at key position pos = i + S - L (bottom-right, as causal_mask) and sees key j
    when pos - left <= j <= pos + right, and j <= pos if `causal`.

    Args:
        L, S: queries and keys (>= 1).
        window: None (no window), w (the w keys before pos and pos itself) or (left, right).
        causal: also hide the keys after pos.
    """
    check_mask_size(L, S)
    left, right = check_window(window)  # -1: an unbounded side
    # TODO(Task 1): compare a column of positions with a row of key indices, as causal_mask.
    raise NotImplementedError(f"local_mask is not implemented yet: see {_CHAPTER}, Task 1")


def alibi_slopes(num_heads: int) -> mx.array:
    """ALiBi's head slopes, 2^(-8 (h + 1) / num_heads) for h = 0 .. num_heads - 1, float32."""
    return mx.array([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], mx.float32)


def varlen_attention_naive(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    cu_seqlens_q: mx.array,
    cu_seqlens_k: mx.array,
    scale: float | None = None,
    *,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    alibi_slopes: mx.array | None = None,
    softcap: float | None = None,
) -> mx.array:
    """The contract of the extension's flash_attention_varlen, sequence by sequence.

    Args:
        query: (total_q, H_q, E), the sequences' query rows one after the other.
        key, value: (total_k, H, E); H_q a multiple of H.
        cu_seqlens_q, cu_seqlens_k: int32 (num_seqs + 1,): sequence s owns query rows
            cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 and the keys likewise.
        scale: None means 1 / sqrt(E).
        causal, window: the mask of local_mask, in every sequence.
        alibi_slopes: (H_q,): adds -slope[h] * |pos - j| to the scores.
        softcap: scores become softcap * tanh(score / softcap), before ALiBi and the mask.

    Returns:
        (total_q, H_q, E). A row that sees no key averages its sequence's values (as MLX).
    """
    cu_q, cu_k = check_varlen_inputs(
        query, key, value, cu_seqlens_q, cu_seqlens_k, scale, alibi_slopes, softcap
    )
    # TODO(Task 1): for each sequence: its (H_q, L, E) queries and (H_q, S, E) keys and values
    #   (GQA: repeat the heads, this is the naive model), scores, soft-capping, ALiBi, the mask
    #   of local_mask (masked scores become the lowest float), softmax, @ V; concatenate.
    raise NotImplementedError(
        f"varlen_attention_naive is not implemented yet: see {_CHAPTER}, Task 1"
    )
