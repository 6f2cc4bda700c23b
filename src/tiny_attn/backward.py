"""Week 4, Day 1: the gradients of attention, and a naive backward pass with MLX ops.

Book: book/src/week4-01-gradients.md

With S = scale * Q K^T (+ mask), P = softmax(S) row by row and O = P V, a loss whose gradient
with respect to O is dO has

    dV = P^T dO                       (S x Ev)
    dP = dO V^T                       (L x S)
    D  = rowsum(dO * O)               (L)     = rowsum(P * dP)
    dS = P * (dP - D)                 (L x S) the softmax's backward, row by row
    dQ = scale * dS K                 (L x E)
    dK = scale * dS^T Q               (S x E)

Under grouped-query attention the G query heads that share a key/value head all read it, so its
dK and dV are the sums over those G heads.
"""

from __future__ import annotations

import mlx.core as mx

from .basics import softmax  # noqa: F401  (you will need it)

_CHAPTER = "book/src/week4-01-gradients.md"

# What a boolean or causal mask puts in a hidden score, as MLX does: the lowest finite float32.
MASKED = float(mx.finfo(mx.float32).min)


def attention_backward(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    d_out: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """The gradients of attention with respect to query, key and value, the naive way.

    The forward is Week 1's scaled_dot_product_attention (the contract of
    mx.fast.scaled_dot_product_attention); this recomputes its scores and probabilities in full
    (L x S per head) and applies the chain rule.

    Args:
        query: (B..., H_q, L, E).
        key: (B..., H, S, E), the same batch dimensions; H_q a multiple of H.
        value: (B..., H, S, Ev).
        d_out: (B..., H_q, L, Ev), the dtype of query: the gradient of the loss with respect
            to the attention's output.
        scale: multiplies the scores; None means 1 / sqrt(E).
        mask: None; "causal" (bottom-right aligned when L != S); a boolean array (True = may
            attend) or an additive floating-point array, broadcastable to (B..., H_q, L, S).

    Returns:
        (d_query, d_key, d_value), the shapes and dtypes of query, key and value, computed in
        float32. A score hidden by a boolean or causal mask is a constant, so it passes no
        gradient to query or key: a row that sees no key gives d_query = 0 there, while its
        output (the mean of the values) still gives every value a share of d_value.

    Raises:
        TypeError / ValueError: as Week 1's scaled_dot_product_attention for query, key, value,
            scale and mask; d_out not an mx.array, of another dtype than query (TypeError) or
            not of the output's shape (ValueError).
    """
    # TODO(Task 1): recompute S and P, then dV, dP, D, dS, dQ, dK in float32.
    # TODO(Task 2): masks: apply them to S as the forward does; no gradient through a hidden score.
    # TODO(Task 3): GQA: sum dK and dV over the G query heads of each key/value head.
    # TODO(Task 4): check the arguments first, with errors that name the argument.
    raise NotImplementedError(f"attention_backward is not implemented yet: see {_CHAPTER}, Task 1")
