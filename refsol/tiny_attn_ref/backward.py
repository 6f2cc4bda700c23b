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

import math
from typing import Any

import mlx.core as mx

from tiny_attn_contracts import check_attention_inputs, dtype_name

from .basics import softmax
from .masks import causal_mask

# What a boolean or causal mask puts in a hidden score, as MLX does: the lowest finite float32.
MASKED = float(mx.finfo(mx.float32).min)


def _check_d_out(d_out: Any, query: mx.array, value: mx.array) -> None:
    """d_out, the gradient of the loss with respect to the output: the output's shape, dtype."""
    if not isinstance(d_out, mx.array):
        raise TypeError(f"d_out must be an mx.array, got {type(d_out).__name__}")
    if d_out.dtype != query.dtype:
        want, got = dtype_name(query.dtype), dtype_name(d_out.dtype)
        raise TypeError(f"d_out must have the dtype of query ({want}), got {got}")
    want_shape = (*query.shape[:-1], value.shape[-1])
    if tuple(d_out.shape) != want_shape:
        raise ValueError(
            f"d_out must have the output's shape (B..., H_q, L, Ev) = {want_shape}, "
            f"got {tuple(d_out.shape)}"
        )


def _grouped(mask: mx.array, ndim: int, H: int, G: int) -> mx.array:
    """A mask broadcastable to (B..., H_q, L, S), reshaped to broadcast to (B..., H, G, L, S)."""
    mask = mask.reshape((1,) * (ndim - mask.ndim) + tuple(mask.shape))
    *batch, h, Lm, Sm = mask.shape
    heads = (H, G) if h != 1 else (1, 1)  # query head h * G + g: kv head h, group member g
    return mask.reshape(*batch, *heads, Lm, Sm)


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
    check_attention_inputs(query, key, value, scale, mask)
    _check_d_out(d_out, query, value)
    *batch, H_q, L, E = query.shape
    H, S, Ev = key.shape[-3], key.shape[-2], value.shape[-1]
    G = H_q // H
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)

    # GQA as in Week 1: the G query heads of a key/value head on their own axis, K and V
    # broadcast over it by matmul, never repeated. Everything in float32.
    Q = query.astype(mx.float32).reshape(*batch, H, G, L, E)
    K = mx.expand_dims(key.astype(mx.float32), -3)  # (B..., H, 1, S, E)
    V = mx.expand_dims(value.astype(mx.float32), -3)  # (B..., H, 1, S, Ev)
    dO = d_out.astype(mx.float32).reshape(*batch, H, G, L, Ev)

    # The forward again, keeping P: (B..., H, G, L, S).
    scores = scale * (Q @ mx.swapaxes(K, -1, -2))
    keep = None  # where a score depends on Q and K (None: everywhere)
    if isinstance(mask, str):
        keep = causal_mask(L, S)
    elif mask is not None and mask.dtype == mx.bool_:
        keep = _grouped(mask, query.ndim, H, G)
    elif mask is not None:
        scores = scores + _grouped(mask, query.ndim, H, G).astype(mx.float32)
    if keep is not None:
        scores = mx.where(keep, scores, mx.array(MASKED, mx.float32))
    P = softmax(scores, axis=-1)
    O = P @ V  # (B..., H, G, L, Ev)

    # The backward, one line per formula.
    dV = mx.sum(mx.swapaxes(P, -1, -2) @ dO, axis=-3)  # (B..., H, S, Ev): summed over G
    dP = dO @ mx.swapaxes(V, -1, -2)  # (B..., H, G, L, S)
    D = mx.sum(dO * O, axis=-1, keepdims=True)  # (B..., H, G, L, 1)
    dS = P * (dP - D)
    if keep is not None:
        # A hidden score is the constant MASKED, not a function of Q and K: no gradient. This
        # matters only in a row that hides every key (its P is uniform, not 0).
        dS = mx.where(keep, dS, mx.array(0.0, mx.float32))
    dQ = scale * (dS @ K)  # (B..., H, G, L, E)
    dK = scale * mx.sum(mx.swapaxes(dS, -1, -2) @ Q, axis=-3)  # (B..., H, S, E): summed over G

    return (
        dQ.reshape(*batch, H_q, L, E).astype(query.dtype),
        dK.astype(key.dtype),
        dV.astype(value.dtype),
    )
