"""Week 1, Day 3: masks (additive, boolean, causal, padding) and grouped-query attention.

Book: book/src/week1-03-masks-and-gqa.md

`scaled_dot_product_attention` here takes everything mx.fast.scaled_dot_product_attention
takes: batch dimensions, H_q query heads sharing H key/value heads (H_q a multiple of H),
mask None | "causal" | a boolean or additive floating-point array broadcastable to
(B..., H_q, L, S), and gives the same answer, fully masked rows included.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from tiny_attn_contracts import check_lengths, check_mask_dtype_arg, check_mask_size

from .basics import softmax  # noqa: F401  (you will need it)

_CHAPTER = "book/src/week1-03-masks-and-gqa.md"


def causal_mask(L: int, S: int, dtype: mx.Dtype = mx.bool_) -> mx.array:
    """The causal mask for L queries and S keys, aligned bottom-right.

    Query i may attend to key j when j <= i + (S - L): the last query sees every key, as
    when L new tokens follow S - L cached ones. When L > S the first L - S rows see nothing.

    Args:
        L: number of queries (>= 1).
        S: number of keys (>= 1).
        dtype: mx.bool_ for a boolean mask (True = may attend), or a floating dtype for an
            additive mask (0 = may attend, -inf = may not).

    Returns:
        (L, S) array of `dtype`.

    Raises:
        TypeError: L or S is not an int; dtype is neither mx.bool_ nor a floating dtype.
        ValueError: L or S is below 1.
    """
    check_mask_size(L, S)
    check_mask_dtype_arg(dtype)
    # TODO(Task 1): compare a column of query indices with a row of key indices.
    raise NotImplementedError(f"causal_mask is not implemented yet: see {_CHAPTER}, Task 1")


def padding_mask(lengths: Sequence[int] | mx.array, S: int) -> mx.array:
    """A key-padding mask for a batch of sequences padded to S keys.

    Args:
        lengths: B valid lengths, a list of ints or a 1-D integer mx.array; each in [0, S].
        S: the padded number of keys (>= 1).

    Returns:
        (B, 1, 1, S) boolean array, True where key j < lengths[b]; it broadcasts to the
        scores' shape (B, H_q, L, S).

    Raises:
        TypeError: lengths is not a sequence of ints / a 1-D integer array; S is not an int.
        ValueError: lengths is empty, a length is outside [0, S], S is below 1.
    """
    lengths = check_lengths(lengths, S)  # as a list of ints
    # TODO(Task 2): one comparison, broadcast over (B, 1, 1, S).
    raise NotImplementedError(f"padding_mask is not implemented yet: see {_CHAPTER}, Task 2")


def scaled_dot_product_attention(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
) -> mx.array:
    """Attention with the contract of mx.fast.scaled_dot_product_attention.

    Args:
        query: (B..., H_q, L, E).
        key: (B..., H, S, E), the same batch dimensions as query; H_q must be a multiple of H
            (query head i uses key/value head i // (H_q / H)).
        value: (B..., H, S, Ev).
        scale: multiplies the scores; None means 1 / sqrt(E).
        mask: None; "causal" (aligned bottom-right when L != S); a boolean array (True = may
            attend) or an additive floating-point array, broadcastable to (B..., H_q, L, S).
            A row with nothing to attend to gives what MLX gives: the mean of the values for
            boolean and "causal" masks, NaN for an additive mask that is -inf everywhere.

    Returns:
        (B..., H_q, L, Ev), the dtype of query.

    Raises:
        TypeError: an input is not a floating mx.array or differs in dtype from query; mask
            is not None / a str / an mx.array, or has an integer dtype, or a floating dtype
            other than query's when query is float16 / bfloat16; scale is not a number.
        ValueError: rank below 3 or ranks that differ; batch dimensions that differ; E of key
            != E of query; value's (B..., H, S) != key's; H_q not a multiple of H; L or S of 0;
            a mask string other than "causal"; a mask not broadcastable to (B..., H_q, L, S).
    """
    # TODO(Task 3): grouped-query attention with masks; never mx.repeat K or V.
    # TODO(Task 4): the checks listed under Raises, with messages naming the argument.
    raise NotImplementedError(
        f"scaled_dot_product_attention is not implemented yet: see {_CHAPTER}, Task 3"
    )
