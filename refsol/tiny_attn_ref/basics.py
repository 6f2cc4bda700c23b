"""Week 1, Day 1: a numerically stable softmax and scaled dot-product attention.

Book: book/src/week1-01-softmax-attention.md

    softmax(x)_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))
    attention(Q, K, V) = softmax(scale * Q K^T + mask) V,   scale = 1 / sqrt(E)
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx

# Dtypes the course's attention accepts (the same as mx.fast.scaled_dot_product_attention).
_FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def _dtype_name(dtype: mx.Dtype) -> str:
    """'float16' rather than 'mlx.core.float16', for error messages."""
    return str(dtype).removeprefix("mlx.core.")


def _check_array(x: Any, name: str, min_ndim: int, layout: str) -> None:
    """Raise a clear error unless `x` is a floating mx.array of at least `min_ndim` dimensions."""
    if not isinstance(x, mx.array):
        raise TypeError(f"{name} must be an mx.array, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        got = _dtype_name(x.dtype)
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {got}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape {layout} with at least {min_ndim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def _check_scale(scale: Any) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be None or a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale}")


def _check_mask_dtype(mask: mx.array, dtype: mx.Dtype, allow_bool: bool) -> None:
    """An additive mask must not widen the scores' dtype (a float32 mask would turn float16
    attention into float32 attention); integer masks are ambiguous (keep-flag or bias?)."""
    if mask.dtype == mx.bool_:
        if allow_bool:
            return
        raise TypeError(
            "mask must be an additive floating-point mx.array here, got bool "
            "(boolean masks are handled by masks.scaled_dot_product_attention)"
        )
    if mask.dtype not in _FLOAT_DTYPES:
        expected = "bool or a floating dtype" if allow_bool else "a floating dtype"
        raise TypeError(f"mask must have {expected}, got {_dtype_name(mask.dtype)}")
    if dtype != mx.float32 and mask.dtype != dtype:
        want, got = _dtype_name(dtype), _dtype_name(mask.dtype)
        raise TypeError(f"mask must have dtype {want} like query (or bool), got {got}")


def _check_mask_shape(mask: mx.array, target: tuple[int, ...], layout: str) -> None:
    """The mask must broadcast to the scores' shape without making it any larger."""
    try:
        ok = len(mask.shape) <= len(target) and mx.broadcast_shapes(mask.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask with shape {tuple(mask.shape)} is not broadcastable to the scores' "
            f"shape {layout} = {target}"
        )


def _check_softmax_args(x: Any, axis: Any) -> None:
    """The checks every softmax of the course makes: a floating mx.array and a valid axis."""
    if not isinstance(x, mx.array):
        raise TypeError(f"x must be an mx.array, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        got = _dtype_name(x.dtype)
        raise TypeError(f"x must be float32, float16 or bfloat16, got {got}")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [{-x.ndim}, {x.ndim}) for x of shape {x.shape}")


def _check_key_value_shapes(query: mx.array, key: mx.array, value: mx.array) -> None:
    """key's E matches query's, and value is key's shape but for its last dimension."""
    E = query.shape[-1]
    if key.shape[-1] != E:
        raise ValueError(
            f"key's last dimension must equal query's E={E}, got key shape {tuple(key.shape)}"
        )
    if value.shape[:-1] != key.shape[:-1]:
        raise ValueError(
            f"value must have shape {tuple(key.shape[:-1])} + (Ev,) to match key, "
            f"got {tuple(value.shape)}"
        )


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
    _check_softmax_args(x, axis)
    # Half precision has 10 (or 7) mantissa bits: sum the exponentials in float32.
    xf = x.astype(mx.float32)
    # Subtracting the row maximum changes nothing mathematically (it cancels between the
    # numerator and the denominator) but keeps every exponent <= 0, so exp() cannot overflow.
    shifted = xf - mx.max(xf, axis=axis, keepdims=True)
    e = mx.exp(shifted)
    return (e / mx.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


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
    _check_array(query, "query", 2, "(..., L, E)")
    _check_array(key, "key", 2, "(..., S, E)")
    _check_array(value, "value", 2, "(..., S, Ev)")
    for name, x in (("key", key), ("value", value)):
        if x.dtype != query.dtype:
            want, got = _dtype_name(query.dtype), _dtype_name(x.dtype)
            raise TypeError(f"{name} must have the dtype of query ({want}), got {got}")
    _check_scale(scale)
    L, E = query.shape[-2:]
    S = key.shape[-2]
    _check_key_value_shapes(query, key, value)
    if L == 0 or S == 0:
        raise ValueError(f"L and S must be at least 1, got query L={L} and key S={S}")
    try:
        batch = mx.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the leading dimensions of query {tuple(query.shape[:-2])} and key "
            f"{tuple(key.shape[:-2])} do not broadcast"
        ) from None
    if mask is not None:
        if not isinstance(mask, mx.array):
            raise TypeError(f"mask must be None or an mx.array, got {type(mask).__name__}")
        _check_mask_dtype(mask, query.dtype, allow_bool=False)
        _check_mask_shape(mask, (*batch, L, S), "(..., L, S)")

    scale = 1.0 / math.sqrt(E) if scale is None else scale
    # Scale the (L, E) query rather than the (L, S) scores: fewer multiplies, same result.
    scores = (query * scale) @ mx.swapaxes(key, -1, -2)  # (..., L, S)
    if mask is not None:
        scores = scores + mask
    return softmax(scores, axis=-1) @ value  # (..., L, Ev)
