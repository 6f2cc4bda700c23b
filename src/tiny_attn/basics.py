"""Week 1, Day 1: a numerically stable softmax and scaled dot-product attention.

Book: book/src/week1-01-softmax-attention.md

    softmax(x)_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))
    attention(Q, K, V) = softmax(scale * Q K^T + mask) V,   scale = 1 / sqrt(E)
"""

from __future__ import annotations

import mlx.core as mx

from tiny_attn_contracts import check_attention_simple_inputs, check_softmax_args

_CHAPTER = "book/src/week1-01-softmax-attention.md"


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    """Numerically stable softmax of `x` along `axis`.

    Args:
        x: a floating-point array of any shape.
        axis: the axis to normalise over (negative values count from the end).

    Returns:
        An array of the same shape and dtype as `x`; along `axis` the values are in [0, 1]
        and sum to 1. float16 / bfloat16 inputs are computed in float32 and cast back.

    Raises:
        TypeError: x is not a floating-point mx.array, or axis is not an int.
        ValueError: axis is out of range for x.
    """
    axis = check_softmax_args(x, axis)  # the contract: see src/tiny_attn_contracts
    # TODO(Task 1): subtract the maximum along `axis` before exponentiating.
    raise NotImplementedError(f"softmax is not implemented yet: see {_CHAPTER}, Task 1")


def scaled_dot_product_attention_simple(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    scale: float | None = None,
    mask: mx.array | None = None,
) -> mx.array:
    """softmax(scale * query @ key^T + mask) @ value, with the same number of heads in each.

    Args:
        query: (..., L, E).
        key: (..., S, E); its leading dimensions broadcast against query's.
        value: (..., S, Ev); the same leading dimensions and S as key.
        scale: multiplies the scores; None means 1 / sqrt(E).
        mask: None or an additive floating-point array broadcastable to (..., L, S):
            0 where a query may attend, -inf (or a large negative number) where it may not.

    Returns:
        (..., L, Ev), the dtype of query.

    Raises:
        TypeError: an argument is not an mx.array of a floating dtype (or differs in dtype
            from query); mask is boolean; scale is not a number.
        ValueError: a shape does not fit (rank < 2, E of key != E of query, value's (..., S)
            != key's, L or S of 0, leading dimensions that do not broadcast, a mask not
            broadcastable to (..., L, S)).
    """
    check_attention_simple_inputs(query, key, value, scale, mask)
    # TODO(Task 2): scores -> mask -> softmax -> @ value.
    raise NotImplementedError(
        f"scaled_dot_product_attention_simple is not implemented yet: see {_CHAPTER}, Task 2"
    )
