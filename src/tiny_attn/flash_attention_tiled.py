"""Week 2, Day 2: FlashAttention-2, tiled, in Python with MLX ops.

Book: book/src/week2-02-flash-attention-tiled.md

For each tile Q_i of Br query rows (outer loop) and each tile K_j, V_j of Bc keys (inner loop):

    S_ij  = scale * Q_i K_j^T (+ mask)                      Br x Bc scores, never L x S
    m_new = max(m_i, rowmax(S_ij))
    P_ij  = exp(S_ij - m_new)
    l_i   = exp(m_i - m_new) * l_i + rowsum(P_ij)
    o_i   = exp(m_i - m_new) * o_i + P_ij V_j               unnormalised
    m_i   = m_new

and after the last K tile: O_i = o_i / l_i, lse_i = m_i + log(l_i).
"""

from __future__ import annotations

import mlx.core as mx

from tiny_attn_contracts import check_attention_inputs, check_int

_CHAPTER = "book/src/week2-02-flash-attention-tiled.md"


# What a boolean or causal mask puts in a masked score, as MLX does: the lowest finite float32.
# A row that may see no key at all then holds equal scores and averages the values, where -inf
# would give 0 / 0 = NaN.
MASKED = float(mx.finfo(mx.float32).min)


def flash_attention_tiled(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
    block_q: int = 32,
    block_k: int = 32,
) -> tuple[mx.array, mx.array]:
    """Attention computed tile by tile (FlashAttention-2), never forming the L x S scores.

    Args:
        query: (B..., H_q, L, E).
        key: (B..., H, S, E), the same batch dimensions as query; H_q must be a multiple of H
            (query head i uses key/value head i // (H_q / H)).
        value: (B..., H, S, Ev).
        scale: multiplies the scores; None means 1 / sqrt(E).
        mask: None; "causal" (aligned bottom-right when L != S); a boolean array (True = may
            attend) or an additive floating-point array, broadcastable to (B..., H_q, L, S).
        block_q: Br, query rows per tile (>= 1).
        block_k: Bc, keys per tile (>= 1).

    Returns:
        (out, lse):
        out: (B..., H_q, L, Ev), the dtype of query, equal to
            mx.fast.scaled_dot_product_attention up to rounding, fully masked rows included
            (the mean of the values for boolean and causal masks, NaN for an additive mask that
            is -inf on the whole row).
        lse: (B..., H_q, L) float32, lse[..., i] = log sum_j exp(scale * q_i . k_j + mask_ij),
            where a boolean or causal mask contributes 0 (kept) or MASKED, the lowest float32
            (masked); -inf for a row whose additive mask is -inf everywhere.

    Raises:
        TypeError: an input is not a floating-point mx.array, the dtypes differ, the mask is
            neither None, a string nor an mx.array (or has an integer dtype), or scale,
            block_q or block_k has the wrong type.
        ValueError: wrong ranks, batch dimensions, E or S that do not match, H_q not a
            multiple of H, L or S of 0, a mask that does not broadcast to (B..., H_q, L, S),
            a mask string other than "causal", or block_q / block_k < 1.
    """
    check_attention_inputs(query, key, value, scale, mask)
    check_int(block_q, "block_q")
    check_int(block_k, "block_k")
    # TODO(Task 1): outer loop over Q tiles, inner loop over K/V tiles, keeping m_i, l_i, o_i.
    # TODO(Task 2): apply the mask to each score tile; skip the K tiles "causal" hides.
    raise NotImplementedError(
        f"flash_attention_tiled is not implemented yet: see {_CHAPTER}, Task 1"
    )
