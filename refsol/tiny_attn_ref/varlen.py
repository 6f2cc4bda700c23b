"""Week 5, Day 4: masks from positions, and packed batches of sequences of different lengths.

Book: book/src/week5-04-computed-masks.md

The naive way, with Week 1's tools: build each sequence's (L, S) mask from positions (a sliding
window generalises Week 1's causal mask), add ALiBi's distance penalty, and run softmax
attention sequence by sequence. It is the model the kernels of this day (which never build
an L x S array) are checked against.
"""

from __future__ import annotations

import math

import mlx.core as mx

from tiny_attn_contracts import check_mask_size, check_varlen_inputs, check_window

from .basics import softmax


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
    left, right = check_window(window)
    pos = mx.arange(L)[:, None] + (S - L)  # (L, 1)
    j = mx.arange(S)[None, :]  # (1, S)
    keep = mx.ones((L, S), dtype=mx.bool_)
    if left >= 0:
        keep = keep & (j >= pos - left)
    if right >= 0:
        keep = keep & (j <= pos + right)
    if causal:
        keep = keep & (j <= pos)
    return keep


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
    H_q, E = query.shape[1], query.shape[2]
    group = H_q // key.shape[1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    outs = []
    for s in range(len(cu_q) - 1):
        L, S = cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]
        if L == 0:
            continue
        q = mx.swapaxes(query[cu_q[s] : cu_q[s + 1]], 0, 1)  # (H_q, L, E)
        k = mx.repeat(mx.swapaxes(key[cu_k[s] : cu_k[s + 1]], 0, 1), group, axis=0)
        v = mx.repeat(mx.swapaxes(value[cu_k[s] : cu_k[s + 1]], 0, 1), group, axis=0)
        scores = (q @ mx.swapaxes(k, -1, -2)) * scale  # (H_q, L, S)
        if softcap is not None:
            scores = softcap * mx.tanh(scores / softcap)
        if alibi_slopes is not None:
            pos = mx.arange(L)[:, None] + (S - L)
            distance = mx.abs(pos - mx.arange(S)[None, :]).astype(scores.dtype)
            scores = scores - alibi_slopes[:, None, None] * distance
        keep = local_mask(L, S, window, causal=causal)
        scores = mx.where(keep, scores, mx.finfo(scores.dtype).min)
        outs.append(mx.swapaxes(softmax(scores, axis=-1) @ v, 0, 1))  # (L, H_q, E)
    return mx.concatenate(outs, axis=0)
