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

from collections.abc import Callable

import mlx.core as mx

from .flash_attention_tiled import flash_attention_tiled  # noqa: F401  (Task 3 needs it)

_CHAPTER = "book/src/week4-02-flash-attention-backward.md"

# What a boolean or causal mask puts in a hidden score, as MLX does: the lowest finite float32.
MASKED = float(mx.finfo(mx.float32).min)


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
    # TODO(Task 1): D from out; K/V tiles outside, Q tiles inside; P_ij from lse; on_tile(j, i).
    # TODO(Task 2): masks, rows that see no key, causal tile skipping; evaluate as you go.
    # TODO(Task 4): check the arguments first, with errors that name the argument.
    raise NotImplementedError(
        f"flash_attention_tiled_backward is not implemented yet: see {_CHAPTER}, Task 1"
    )


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
    # TODO(Task 3): an mx.custom_function around flash_attention_tiled, with a vjp.
    raise NotImplementedError(
        f"flash_attention_trainable is not implemented yet: see {_CHAPTER}, Task 3"
    )
