"""Week 2, Day 1: online softmax, one pass with a running maximum and a running sum.

Book: book/src/week2-01-online-softmax.md

A softmax only needs two numbers per row to normalise: the maximum m and the sum
l = sum_j exp(x_j - m). Both can be kept up to date while the row streams past in blocks, and
two partial results merge exactly:

    m = max(m_a, m_b)
    l = l_a * exp(m_a - m) + l_b * exp(m_b - m)

The empty state (m, l) = (-inf, 0) is the identity of that merge. For attention the same rule
merges two partial outputs through their log-sum-exps (lse = m + log l).
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

from tiny_attn_contracts import (
    check_int,
    check_nonempty_axis,
    check_partials,
    check_softmax_args,
    check_softmax_states,
)


class SoftmaxState(NamedTuple):
    """What a softmax remembers about the part of a row it has seen.

    Attributes:
        m: the maximum so far (-inf while only -inf has been seen), float32.
        l: sum_j exp(x_j - m) over the values seen so far, float32 (0 while only -inf).

    Both have the shape of the input without the softmax axis.
    """

    m: mx.array
    l: mx.array


def _safe_max(m: mx.array) -> mx.array:
    """m, with -inf replaced by 0: the shift to subtract before exp().

    Subtracting the true maximum keeps every exponent <= 0. When the maximum is -inf (nothing
    but -inf seen), -inf - (-inf) would be NaN; shifting by 0 instead gives exp(-inf) = 0.
    """
    return mx.where(m == -mx.inf, mx.array(0.0, m.dtype), m)


def softmax_state(x: mx.array, axis: int = -1) -> SoftmaxState:
    """The state (m, l) of one block of values, read in one go.

    Args:
        x: a floating-point array with at least one element along `axis`.
        axis: the softmax axis.

    Returns:
        SoftmaxState with m = max(x) and l = sum exp(x - m) along `axis`, both float32 of
        x's shape without `axis`. A slice that is -inf everywhere gives (-inf, 0).

    Raises:
        TypeError: x is not a floating-point mx.array, or axis is not an int.
        ValueError: axis is out of range, or x has no element along it.
    """
    axis = check_softmax_args(x, axis)
    check_nonempty_axis(x, axis)
    xf = x.astype(mx.float32)
    m = mx.max(xf, axis=axis)
    l = mx.sum(mx.exp(xf - mx.expand_dims(_safe_max(m), axis)), axis=axis)
    return SoftmaxState(m, l)


def merge_softmax_states(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """The state of the concatenation of two blocks, from the states of each block.

    Args:
        a, b: SoftmaxStates whose m and l broadcast together.

    Returns:
        SoftmaxState(m, l) with m = max(a.m, b.m), l = a.l exp(a.m - m) + b.l exp(b.m - m).
        The merge is commutative and associative (up to rounding) and (-inf, 0) is its
        identity.

    Raises:
        TypeError: a or b is not a SoftmaxState.
    """
    check_softmax_states(a, b, SoftmaxState)
    m = mx.maximum(a.m, b.m)
    shift = _safe_max(m)
    # Each partial sum was taken relative to its own maximum; rescale both to the common one.
    # A state that has seen only -inf has l = 0 and exp(-inf - shift) = 0: it adds nothing.
    l = a.l * mx.exp(a.m - shift) + b.l * mx.exp(b.m - shift)
    return SoftmaxState(m, l)


def online_softmax_state(x: mx.array, block_size: int, axis: int = -1) -> SoftmaxState:
    """The state (m, l) of a whole row, read block by block in one pass.

    Args:
        x: a floating-point array with at least one element along `axis`.
        block_size: how many values of the row each step reads (>= 1); the last block may be
            shorter.
        axis: the softmax axis.

    Returns:
        The same SoftmaxState as softmax_state(x, axis), up to rounding.

    Raises:
        TypeError: x is not a floating-point mx.array, or axis or block_size is not an int.
        ValueError: axis is out of range, x has no element along it, or block_size < 1.
    """
    axis = check_softmax_args(x, axis)
    check_nonempty_axis(x, axis)
    check_int(block_size, "block_size")
    xt = mx.moveaxis(x, axis, -1)  # the row runs along the last axis
    n = xt.shape[-1]
    shape = xt.shape[:-1]
    state = SoftmaxState(mx.full(shape, -mx.inf, mx.float32), mx.zeros(shape, mx.float32))
    for start in range(0, n, block_size):
        state = merge_softmax_states(state, softmax_state(xt[..., start : start + block_size]))
    return state


def online_softmax(x: mx.array, block_size: int, axis: int = -1) -> mx.array:
    """softmax(x) along `axis`, computed block by block.

    Pass 1 runs online_softmax_state over the blocks; pass 2 writes each block's
    exp(x - m) / l. No pass holds more than one block of exponentials.

    Args:
        x: a floating-point array with at least one element along `axis`.
        block_size: values per block (>= 1).
        axis: the softmax axis.

    Returns:
        x's shape and dtype, equal to a plain softmax up to rounding. A row that is -inf
        everywhere gives NaN, as the plain softmax does (0 / 0: there is nothing to normalise).

    Raises:
        TypeError: x is not a floating-point mx.array, or axis or block_size is not an int.
        ValueError: axis is out of range, x has no element along it, or block_size < 1.
    """
    m, l = online_softmax_state(x, block_size, axis)  # checks x, block_size and axis
    m, l = m[..., None], l[..., None]
    xt = mx.moveaxis(x, axis, -1).astype(mx.float32)
    blocks = [
        mx.exp(xt[..., start : start + block_size] - m) / l
        for start in range(0, xt.shape[-1], block_size)
    ]
    return mx.moveaxis(mx.concatenate(blocks, axis=-1), -1, axis).astype(x.dtype)


def merge_attention_partials(
    o_a: mx.array, lse_a: mx.array, o_b: mx.array, lse_b: mx.array
) -> tuple[mx.array, mx.array]:
    """Merge two attention results computed over two disjoint sets of keys.

    If o_a = softmax(s_A) V_A with lse_a = log sum_{j in A} exp(s_j), and likewise for B, then
    attention over A and B together is

        lse = log(exp(lse_a) + exp(lse_b))
        o   = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b

    (the softmax merge with m = lse and l = 1). This is also how split-K decoding combines
    its chunks.

    Args:
        o_a, o_b: (..., L, Ev) normalised partial outputs.
        lse_a, lse_b: (..., L) their log-sum-exps, float32. A part with lse = -inf saw no key:
            its weight is 0 and its output (NaN, say) is ignored.

    Returns:
        (o, lse): o of shape (..., L, Ev) and o_a's dtype, lse (..., L) float32. If both parts
        are empty the row gives o = NaN and lse = -inf.

    Raises:
        TypeError: an argument is not a floating-point mx.array.
        ValueError: o_b's shape differs from o_a's, or an lse is not o_a's shape without Ev.
    """
    check_partials(o_a, lse_a, o_b, lse_b)
    lse_a, lse_b = lse_a.astype(mx.float32), lse_b.astype(mx.float32)
    lse = mx.logaddexp(lse_a, lse_b)
    shift = _safe_max(lse)
    w_a = mx.exp(lse_a - shift)[..., None]
    w_b = mx.exp(lse_b - shift)[..., None]
    # A part that saw no key has weight 0; where() keeps its NaN output from leaking (0 * NaN).
    zero = mx.array(0.0, mx.float32)
    part_a = mx.where(w_a > 0, w_a * o_a.astype(mx.float32), zero)
    part_b = mx.where(w_b > 0, w_b * o_b.astype(mx.float32), zero)
    o = (part_a + part_b) / (w_a + w_b)
    return o.astype(o_a.dtype), lse
