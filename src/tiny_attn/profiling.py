"""Week 1, Day 4: the memory wall, measured.

Book: book/src/week1-04-memory-wall.md

Naive attention builds the whole (B..., H_q, L, S) score matrix: its memory grows as L * S,
so doubling the sequence length quadruples it. This module predicts that size, measures the
time and peak memory of any attention implementation, and keeps the textbook softmax that
overflows in float16 for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from tiny_attn_contracts import (
    check_profile_args,
    check_returns_arrays,  # noqa: F401  (you will need it)
    check_scores_shapes,
    check_softmax_args,
)

_CHAPTER = "book/src/week1-04-memory-wall.md"


@dataclass(frozen=True)
class Profile:
    """What `profile` measured for one callable on one input.

    Attributes:
        median_s: median wall time of one call, in seconds (evaluation included).
        times_s: every timed call, in seconds, in the order they ran.
        peak_bytes: the highest memory MLX had allocated during one call, minus what was
            allocated before it (the inputs): the call's own working memory and its output.
        output_bytes: the size of what the call returned.
    """

    median_s: float
    times_s: tuple[float, ...]
    peak_bytes: int
    output_bytes: int


def scores_nbytes(query_shape: Sequence[int], key_shape: Sequence[int], dtype: mx.Dtype) -> int:
    """Bytes of the score matrix that naive attention materialises.

    Args:
        query_shape: (B..., H_q, L, E).
        key_shape: (B..., H, S, E), the same rank as query_shape.
        dtype: the scores' dtype (that of the query).

    Returns:
        prod(B...) * H_q * L * S * dtype.size.

    Raises:
        ValueError: a shape has fewer than 3 entries, or a negative / non-int entry, or the
            two ranks differ.
        TypeError: dtype is not an mx.Dtype.
    """
    check_scores_shapes(query_shape, key_shape, dtype)
    # TODO(Task 1): arithmetic only; no arrays needed.
    raise NotImplementedError(f"scores_nbytes is not implemented yet: see {_CHAPTER}, Task 1")


def profile(
    fn: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 5, **kwargs: Any
) -> Profile:
    """Time `fn(*args, **kwargs)` and measure its peak memory.

    The array arguments are evaluated first, so the measurement sees only the call. Then
    `warmup` untimed calls, one call for peak memory (mx.reset_peak_memory before it,
    mx.get_peak_memory after), and `repeats` timed calls. Every call's result is evaluated
    with mx.eval: MLX is lazy, and an unevaluated result costs nothing to build.

    Args:
        fn: a callable returning an mx.array or a tuple / list of mx.arrays.
        *args, **kwargs: what fn is called with.
        warmup: untimed calls first (>= 0).
        repeats: timed calls (>= 1).

    Returns:
        A Profile.

    Raises:
        TypeError: fn is not callable, or returns something other than mx.arrays; warmup or
            repeats is not an int.
        ValueError: warmup < 0 or repeats < 1.
    """
    check_profile_args(fn, warmup, repeats)
    # TODO(Task 2): evaluate inputs, warm up, measure peak memory, time the repeats.
    raise NotImplementedError(f"profile is not implemented yet: see {_CHAPTER}, Task 2")


def softmax_naive(x: mx.array, axis: int = -1) -> mx.array:
    """The textbook softmax exp(x) / sum(exp(x)), in x's own dtype, with no max subtraction.

    Kept to see it fail: in float16, exp(x) overflows to inf as soon as x > 11.09, and then
    inf / inf = NaN.

    Args:
        x: a floating-point array.
        axis: the axis to normalise over.

    Returns:
        An array of the shape and dtype of x.

    Raises:
        TypeError: x is not a floating-point mx.array, or axis is not an int.
        ValueError: axis is out of range for x.
    """
    check_softmax_args(x, axis)
    # TODO(Task 3): the formula as written, no max subtraction, no float32 upcast.
    raise NotImplementedError(f"softmax_naive is not implemented yet: see {_CHAPTER}, Task 3")
