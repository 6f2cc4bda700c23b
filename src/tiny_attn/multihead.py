"""Week 1, Day 2: multi-head attention with projections.

Book: book/src/week1-02-multi-head-attention.md

    Q = x_q Wq, K = x_k Wk, V = x_v Wv          (one matmul each for all heads)
    head_h = attention(Q_h, K_h, V_h)           (Q_h: the h-th slice of E columns of Q)
    out = concat(head_0, ..., head_{H-1}) Wo

Weights are stored (in_features, out_features), so a projection is `x @ w`.
(mlx.nn.Linear stores the transpose, (out_features, in_features), and computes x @ w.T.)
"""

from __future__ import annotations

import mlx.core as mx

from tiny_attn_contracts import (
    check_float_array,
    check_projection_inputs,
    check_projection_weights,
    check_split_heads,
)

from .basics import scaled_dot_product_attention_simple  # noqa: F401  (you will need it)

_CHAPTER = "book/src/week1-02-multi-head-attention.md"


def split_heads(x: mx.array, num_heads: int) -> mx.array:
    """Split the last dimension into heads and move the heads before the sequence.

    Args:
        x: (B..., L, H * E).
        num_heads: H, which must divide the last dimension.

    Returns:
        (B..., H, L, E): head h holds columns h*E ... h*E + E - 1 of x.

    Raises:
        TypeError: x is not a floating mx.array, num_heads is not an int.
        ValueError: x has fewer than 2 dimensions, num_heads < 1 or does not divide H * E.
    """
    check_split_heads(x, num_heads)
    # TODO(Task 1): a reshape and a swapaxes.
    raise NotImplementedError(f"split_heads is not implemented yet: see {_CHAPTER}, Task 1")


def merge_heads(x: mx.array) -> mx.array:
    """The inverse of split_heads.

    Args:
        x: (B..., H, L, E).

    Returns:
        (B..., L, H * E): the heads side by side along the last dimension.

    Raises:
        TypeError: x is not a floating mx.array.
        ValueError: x has fewer than 3 dimensions.
    """
    check_float_array(x, "x", 3, "(B..., H, L, E)")
    # TODO(Task 1): undo split_heads.
    raise NotImplementedError(f"merge_heads is not implemented yet: see {_CHAPTER}, Task 1")


class MultiHeadAttention:
    """Multi-head attention with given (bias-free) projection weights.

    Weight shapes, with D = num_heads * E and Dv = num_heads * Ev:
        wq: (Dq_in, D)     projects the query input
        wk: (Dk_in, D)     projects the key input
        wv: (Dv_in, Dv)    projects the value input
        wo: (Dv, D_out)    projects the concatenated heads

    Calling it with query (B..., L, Dq_in), key (B..., S, Dk_in), value (B..., S, Dv_in)
    and an optional additive float mask broadcastable to (B..., H, L, S) returns
    (B..., L, D_out). Each head uses scale 1 / sqrt(E).
    """

    def __init__(
        self, num_heads: int, wq: mx.array, wk: mx.array, wv: mx.array, wo: mx.array
    ) -> None:
        """Check the weights' shapes against each other and keep them.

        Raises:
            TypeError: num_heads is not an int, a weight is not a floating mx.array.
            ValueError: num_heads < 1, a weight is not 2-D, wq and wk differ in output
                columns, num_heads does not divide wq's or wv's output columns, wo's rows
                differ from wv's output columns.
        """
        check_projection_weights(num_heads, wq, wk, wv, wo)
        # TODO(Task 2): store num_heads and the four weights.
        raise NotImplementedError(
            f"MultiHeadAttention is not implemented yet: see {_CHAPTER}, Task 2"
        )

    def __call__(
        self,
        query: mx.array,
        key: mx.array,
        value: mx.array,
        mask: mx.array | None = None,
    ) -> mx.array:
        """query (B..., L, Dq_in), key (B..., S, Dk_in), value (B..., S, Dv_in) -> (B..., L, D_out).

        Raises:
            ValueError: an input's last dimension does not match its weight's rows, or key
                and value differ in batch dimensions or S.
        """
        check_projection_inputs(query, key, value, self.wq, self.wk, self.wv)
        # TODO(Task 2): project, split_heads, attention, merge_heads, project.
        raise NotImplementedError(
            f"MultiHeadAttention.__call__ is not implemented yet: see {_CHAPTER}, Task 2"
        )
