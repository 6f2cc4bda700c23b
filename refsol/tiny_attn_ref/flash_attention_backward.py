"""Week 4, Day 2: FlashAttention-2's backward pass, tiled, in Python with MLX ops.

Book: book/src/week4-02-flash-attention-backward.md

The forward (Week 2, Day 2) saved only O and the log-sum-exp lse. The backward never forms an
L x S matrix: it recomputes each Br x Bc tile of P from Q, K and lse, and the loop over K/V tiles
is the outer one, so that dK_j and dV_j are finished in registers (here: one MLX array) before
the next tile, while dQ collects a term from every K/V tile:

    D = rowsum(dO * O)                                  once, before the loops
    for each K/V tile j (outer):      dK_j = dV_j = 0
        for each Q tile i (inner):
            S_ij  = scale * Q_i K_j^T (+ mask)
            P_ij  = exp(S_ij - lse_i)                   the forward's probabilities, exactly
            dV_j += P_ij^T dO_i
            dP_ij = dO_i V_j^T
            dS_ij = P_ij * (dP_ij - D_i)
            dQ_i += scale * dS_ij K_j
            dK_j += scale * dS_ij^T Q_i
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx

from tiny_attn_contracts import check_attention_inputs, check_int, dtype_name

from .backward import _check_d_out
from .flash_attention_tiled import (
    MASKED,
    _group_mask_heads,
    _kv_tiles_to_visit,
    _mask_tile,
    flash_attention_tiled,
)


def _check_saved(out: mx.array, lse: mx.array, query: mx.array, value: mx.array) -> None:
    """out and lse must be what the forward returned for these inputs: their shapes and dtypes."""
    out_shape = (*query.shape[:-1], value.shape[-1])
    if not isinstance(out, mx.array):
        raise TypeError(f"out must be an mx.array, got {type(out).__name__}")
    if tuple(out.shape) != out_shape:
        raise ValueError(f"out must have shape (B..., H_q, L, Ev) = {out_shape}, got {out.shape}")
    if not isinstance(lse, mx.array):
        raise TypeError(f"lse must be an mx.array, got {type(lse).__name__}")
    if lse.dtype != mx.float32:
        raise TypeError(f"lse must be float32, got {dtype_name(lse.dtype)}")
    if tuple(lse.shape) != tuple(query.shape[:-1]):
        raise ValueError(
            f"lse must have shape (B..., H_q, L) = {tuple(query.shape[:-1])}, got {lse.shape}"
        )


def _check_on_tile(on_tile: object) -> None:
    if on_tile is not None and not callable(on_tile):
        raise TypeError(f"on_tile must be None or callable, got {type(on_tile).__name__}")


def flash_attention_tiled_backward(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    out: mx.array,
    lse: mx.array,
    d_out: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
    block_q: int = 32,
    block_k: int = 32,
    on_tile: Callable[[int, int], None] | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """The gradients of attention from the forward's out and lse, tile by tile (FlashAttention-2).

    Args:
        query, key, value, scale, mask: as flash_attention_tiled (Week 2, Day 2) got them.
        out: (B..., H_q, L, Ev), what the forward returned.
        lse: (B..., H_q, L) float32, the log-sum-exp the forward returned.
        d_out: (B..., H_q, L, Ev), the dtype of query: the gradient of the loss w.r.t. out.
        block_q: Br, query rows per tile (>= 1).
        block_k: Bc, keys per tile (>= 1).
        on_tile: None, or called as on_tile(j, i) for every (K/V tile j, Q tile i) whose
            scores are computed, in the order they are; causal tile skipping leaves the hidden
            pairs out.

    Returns:
        (d_query, d_key, d_value), the shapes and dtypes of query, key and value, equal to
        attention_backward (Day 1) up to rounding; no L x S array is ever formed.

    Raises:
        TypeError / ValueError: as flash_attention_tiled for query, key, value, scale, mask,
            block_q and block_k; as attention_backward for d_out; out or lse of the wrong type,
            dtype (lse: float32) or shape; on_tile not callable.
    """
    check_attention_inputs(query, key, value, scale, mask)
    _check_d_out(d_out, query, value)
    _check_saved(out, lse, query, value)
    check_int(block_q, "block_q")
    check_int(block_k, "block_k")
    _check_on_tile(on_tile)
    *batch, H_q, L, E = query.shape
    H, S, Ev = key.shape[-3], key.shape[-2], value.shape[-1]
    G = H_q // H
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    Br, Bc = block_q, block_k
    Tr, Tc = math.ceil(L / Br), math.ceil(S / Bc)

    # GQA as in the forward: the G query heads of a key/value head on an axis of their own.
    Q = query.astype(mx.float32).reshape(*batch, H, G, L, E)
    K = mx.expand_dims(key.astype(mx.float32), -3)  # (B..., H, 1, S, E)
    V = mx.expand_dims(value.astype(mx.float32), -3)  # (B..., H, 1, S, Ev)
    dO = d_out.astype(mx.float32).reshape(*batch, H, G, L, Ev)
    LSE = lse.reshape(*batch, H, G, L)
    # D_i = dO_i . O_i: one number per row, from the output, before any tile of P exists.
    D = mx.sum(dO * out.astype(mx.float32).reshape(*batch, H, G, L, Ev), axis=-1)
    # A row that sees no key under a boolean or causal mask has lse = MASKED + log(S), which
    # float32 rounds to MASKED: exp(S_ij - lse_i) would give 1 instead of its 1/S.
    blind = LSE == MASKED
    causal = isinstance(mask, str)
    grouped_mask = None if mask is None or causal else _group_mask_heads(mask, query.ndim, H, G)
    masked = mx.array(MASKED, mx.float32)
    zero = mx.array(0.0, mx.float32)

    dQ_tiles = [mx.zeros((*batch, H, G, min(Br, L - i * Br), E), mx.float32) for i in range(Tr)]
    dK_tiles, dV_tiles = [], []
    for j in range(Tc):  # outer loop: one K/V tile, Bc keys; its dK_j, dV_j finish here
        k0, k1 = j * Bc, min((j + 1) * Bc, S)
        K_j, V_j = K[..., k0:k1, :], V[..., k0:k1, :]
        dK_j = mx.zeros((*batch, H, k1 - k0, E), mx.float32)
        dV_j = mx.zeros((*batch, H, k1 - k0, Ev), mx.float32)
        for i in range(Tr):  # inner loop: every Q tile that sees K/V tile j
            q0, q1 = i * Br, min((i + 1) * Br, L)
            if causal and j >= _kv_tiles_to_visit(q0, q1, L, S, Bc):
                continue  # every score of the tile is hidden: nothing flows through it
            if on_tile is not None:
                on_tile(j, i)
            Q_i, dO_i = Q[..., q0:q1, :], dO[..., q0:q1, :]
            lse_i, D_i = LSE[..., q0:q1, None], D[..., q0:q1, None]
            S_ij = (Q_i * scale) @ mx.swapaxes(K_j, -1, -2)  # (B..., H, G, Br, Bc)
            keep = None
            if causal and k1 - 1 > q0 + S - L:  # the tile crosses the diagonal
                keep = mx.arange(k0, k1)[None, :] <= mx.arange(q0, q1)[:, None] + (S - L)
            elif grouped_mask is not None:
                tile = _mask_tile(grouped_mask, q0, q1, k0, k1)
                if tile.dtype == mx.bool_:
                    keep = tile
                else:
                    S_ij = S_ij + tile.astype(mx.float32)
            if keep is not None:
                S_ij = mx.where(keep, S_ij, masked)
            P_ij = mx.where(blind[..., q0:q1, None], 1.0 / S, mx.exp(S_ij - lse_i))
            dV_j = dV_j + mx.sum(mx.swapaxes(P_ij, -1, -2) @ dO_i, axis=-3)
            dP_ij = dO_i @ mx.swapaxes(V_j, -1, -2)
            dS_ij = P_ij * (dP_ij - D_i)
            if keep is not None:
                dS_ij = mx.where(keep, dS_ij, zero)  # a hidden score is a constant
            dQ_tiles[i] = dQ_tiles[i] + scale * (dS_ij @ K_j)
            dK_j = dK_j + scale * mx.sum(mx.swapaxes(dS_ij, -1, -2) @ Q_i, axis=-3)
            # MLX is lazy: left alone it would build the graph of a whole column of tiles and
            # keep every P_ij and dS_ij of it alive (L x Bc) until the end. Evaluating the three
            # sums after each tile keeps one tile's worth of temporaries at a time.
            mx.eval(dK_j, dV_j, dQ_tiles[i])
        dK_tiles.append(dK_j)
        dV_tiles.append(dV_j)

    dq = mx.concatenate(dQ_tiles, axis=-2).reshape(*batch, H_q, L, E)
    dk = mx.concatenate(dK_tiles, axis=-2)
    dv = mx.concatenate(dV_tiles, axis=-2)
    return dq.astype(query.dtype), dk.astype(key.dtype), dv.astype(value.dtype)


def flash_attention_trainable(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
    block_q: int = 32,
    block_k: int = 32,
) -> mx.array:
    """flash_attention_tiled's output, differentiable: mx.grad and mx.vjp run the tiled backward.

    An mx.custom_function whose forward keeps (out, lse) and whose vjp calls
    flash_attention_tiled_backward with them. Gradients flow to query, key and value; the mask
    is a constant.

    Args and Raises: as flash_attention_tiled.

    Returns:
        out, (B..., H_q, L, Ev) in the dtype of query.
    """
    check_attention_inputs(query, key, value, scale, mask)
    check_int(block_q, "block_q")
    check_int(block_k, "block_k")
    blocks = {"block_q": block_q, "block_k": block_k}

    @mx.custom_function
    def attention(q: mx.array, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        return flash_attention_tiled(q, k, v, scale=scale, mask=mask, **blocks)

    @attention.vjp
    def attention_vjp(primals, cotangents, outputs):  # noqa: ANN001, ANN202
        q, k, v = primals
        out, lse = outputs
        return flash_attention_tiled_backward(
            q, k, v, out, lse, cotangents[0], scale=scale, mask=mask, **blocks
        )

    return attention(query, key, value)[0]
