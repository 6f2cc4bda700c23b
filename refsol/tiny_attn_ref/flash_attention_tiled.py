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

import math

import mlx.core as mx

from tiny_attn_contracts import check_attention_inputs, check_int

# What a boolean or causal mask puts in a masked score, as MLX does: the lowest finite float32.
# A row that may see no key at all then holds equal scores and averages the values, where -inf
# would give 0 / 0 = NaN.
MASKED = float(mx.finfo(mx.float32).min)


def _group_mask_heads(mask: mx.array, ndim: int, H: int, G: int) -> mx.array:
    """A mask broadcastable to (B..., H_q, L, S), reshaped to broadcast to (B..., H, G, L, S).

    Only the mask's own axes are reshaped: a (L, S) mask stays (L, S)-sized, never H_q times.
    """
    mask = mask.reshape((1,) * (ndim - mask.ndim) + tuple(mask.shape))
    *batch, h, Lm, Sm = mask.shape
    heads = (H, G) if h != 1 else (1, 1)  # query head h * G + g is kv head h, group member g
    return mask.reshape(*batch, *heads, Lm, Sm)


def _mask_tile(mask: mx.array, q0: int, q1: int, k0: int, k1: int) -> mx.array:
    """The (Br, Bc) window of a grouped mask; an axis of size 1 broadcasts and is kept whole."""
    rows = slice(q0, q1) if mask.shape[-2] != 1 else slice(None)
    cols = slice(k0, k1) if mask.shape[-1] != 1 else slice(None)
    return mask[..., rows, cols]


def _kv_tiles_to_visit(q0: int, q1: int, L: int, S: int, Bc: int) -> int:
    """How many K tiles (from the first) the causal Q rows [q0, q1) must visit.

    The rule of the course's kernels, under the same name: kv_tiles_to_visit in the C++
    extension (Week 2, Day 4) and in flash_attention.metal (Week 3).

    Query i sees keys j <= i + S - L, so no row of the tile sees past key q1 - 1 + S - L: the
    K tiles after the one holding that key are masked everywhere and are skipped. Except when
    the tile's first row sees no key at all (L > S): that row must meet all S keys to give
    MLX's answer (their mean), so nothing is skipped.
    """
    Tc = math.ceil(S / Bc)
    if q0 + S - L < 0:
        return Tc
    last_key = min(S - 1, q1 - 1 + S - L)
    return last_key // Bc + 1


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
    *batch, H_q, L, E = query.shape
    H, S, Ev = key.shape[-3], key.shape[-2], value.shape[-1]
    G = H_q // H
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    Br, Bc = block_q, block_k
    Tr, Tc = math.ceil(L / Br), math.ceil(S / Bc)

    # Grouped-query attention without copying K and V: the G query heads that share a
    # key/value head get their own axis, and matmul broadcasts K and V over it.
    # Everything is accumulated in float32, whatever the input dtype.
    Q = query.astype(mx.float32).reshape(*batch, H, G, L, E)  # (B..., H, G, L, E)
    K = mx.expand_dims(key.astype(mx.float32), -3)  # (B..., H, 1, S, E)
    V = mx.expand_dims(value.astype(mx.float32), -3)  # (B..., H, 1, S, Ev)
    causal = isinstance(mask, str)
    grouped_mask = None if mask is None or causal else _group_mask_heads(mask, query.ndim, H, G)
    masked = mx.array(MASKED, mx.float32)

    o_tiles, lse_tiles = [], []
    for i in range(Tr):  # outer loop: one Q tile, Br rows
        q0, q1 = i * Br, min((i + 1) * Br, L)
        # Scale the (Br, E) queries rather than every (Br, Bc) score tile: same result, less work.
        Q_i = Q[..., q0:q1, :] * scale
        m_i = mx.full((*batch, H, G, q1 - q0), -mx.inf, mx.float32)  # running row maximum
        l_i = mx.zeros((*batch, H, G, q1 - q0), mx.float32)  # running sum of exp(s - m_i)
        o_i = mx.zeros((*batch, H, G, q1 - q0, Ev), mx.float32)  # running sum of exp(s - m_i) v
        n_tiles = _kv_tiles_to_visit(q0, q1, L, S, Bc) if causal else Tc
        for j in range(n_tiles):  # inner loop: one K/V tile, Bc keys
            k0, k1 = j * Bc, min((j + 1) * Bc, S)
            S_ij = Q_i @ mx.swapaxes(K[..., k0:k1, :], -1, -2)  # (B..., H, G, Br, Bc)
            if causal and k1 - 1 > q0 + S - L:  # the tile crosses the diagonal
                rows = mx.arange(q0, q1)[:, None]
                cols = mx.arange(k0, k1)[None, :]
                S_ij = mx.where(cols <= rows + (S - L), S_ij, masked)
            elif grouped_mask is not None:
                tile = _mask_tile(grouped_mask, q0, q1, k0, k1)
                if tile.dtype == mx.bool_:
                    S_ij = mx.where(tile, S_ij, masked)
                else:
                    S_ij = S_ij + tile.astype(mx.float32)
            m_new = mx.maximum(m_i, mx.max(S_ij, axis=-1))
            # While a row has seen only -inf (an additive mask), m_new is -inf too and
            # S_ij - m_new would be -inf - (-inf) = NaN: shift by 0 instead, exp(-inf) = 0.
            shift = mx.where(m_new == -mx.inf, mx.array(0.0, mx.float32), m_new)
            P_ij = mx.exp(S_ij - shift[..., None])
            # The old sums were taken relative to the old maximum: rescale them to the new one.
            alpha = mx.exp(m_i - shift)
            l_i = alpha * l_i + mx.sum(P_ij, axis=-1)
            o_i = alpha[..., None] * o_i + P_ij @ V[..., k0:k1, :]
            m_i = m_new
        # Normalise once, at the end (FlashAttention-2), not after every K tile.
        o_tiles.append(o_i / l_i[..., None])
        lse_tiles.append(m_i + mx.log(l_i))

    out = mx.concatenate(o_tiles, axis=-2).reshape(*batch, H_q, L, Ev)
    lse = mx.concatenate(lse_tiles, axis=-1).reshape(*batch, H_q, L)
    return out.astype(query.dtype), lse
