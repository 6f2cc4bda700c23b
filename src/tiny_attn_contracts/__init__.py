"""The contracts of the course's Python functions, checked once for both trees.

The student's package (tiny_attn) and the reference (tiny_attn_ref) call these checks at the
top of every public function, before the algorithm: a wrong argument gets a clear exception
that names the argument and says what was expected, never a crash deep inside MLX. The
checking lives here, once, so that each course file is the algorithm its day teaches.

Conventions: TypeError for the wrong kind of thing (not an mx.array, an int where a float is
expected, a dtype the function does not take), ValueError for the right kind with a wrong
value (a shape, a size, a range). Every message starts with the argument's name.

Writing such checks is itself the lesson of one day: the C++ op of Week 2, Day 4 (Task 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx

# The dtypes the course's attention takes (those of mx.fast.scaled_dot_product_attention).
FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
# MLX indexes arrays with 32-bit ints: a mask or a score matrix larger than this cannot be built.
MAX_ELEMENTS = 2**31 - 1


def dtype_name(dtype: Any) -> str:
    """'float16' rather than 'mlx.core.float16', for messages."""
    return str(dtype).removeprefix("mlx.core.")


def _type_name(x: Any) -> str:
    return type(x).__name__


def check_int(n: Any, name: str, minimum: int = 1) -> None:
    """`n` is an int (not a bool) of at least `minimum`."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {_type_name(n)}")
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {n}")


def check_array(x: Any, name: str, min_ndim: int = 0, layout: str = "") -> None:
    """`x` is an mx.array (of any dtype) with at least `min_ndim` dimensions."""
    if not isinstance(x, mx.array):
        raise TypeError(f"{name} must be an mx.array, got {_type_name(x)}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape {layout} with at least {min_ndim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def check_float_array(x: Any, name: str, min_ndim: int = 0, layout: str = "") -> None:
    """`x` is an mx.array of a course dtype with at least `min_ndim` dimensions."""
    check_array(x, name)
    if x.dtype not in FLOAT_DTYPES:
        hint = " (convert it with .astype(mx.float32))" if x.dtype == mx.float64 else ""
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16, got {dtype_name(x.dtype)}{hint}"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape {layout} with at least {min_ndim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )


def check_same_dtype(x: mx.array, name: str, like: mx.array, like_name: str) -> None:
    if x.dtype != like.dtype:
        want, got = dtype_name(like.dtype), dtype_name(x.dtype)
        raise TypeError(f"{name} must have the dtype of {like_name} ({want}), got {got}")


def check_axis(x: mx.array, axis: Any) -> int:
    """`axis` is an int that indexes a dimension of `x`; returns it as a non-negative int."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {_type_name(axis)}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [{-x.ndim}, {x.ndim}) for x of shape {x.shape}")
    return axis % x.ndim


def check_softmax_args(x: Any, axis: Any) -> int:
    """A softmax's arguments: a floating mx.array and an axis of it (returned non-negative)."""
    check_float_array(x, "x")
    return check_axis(x, axis)


def check_nonempty_axis(x: mx.array, axis: int) -> None:
    """A softmax state needs at least one value along the axis to have a maximum."""
    if x.shape[axis] == 0:
        raise ValueError(f"x must have at least one element along axis {axis}, got {x.shape}")


def check_scale(scale: Any) -> None:
    """None, or a finite number that float32 can hold (the kernels compute in float32)."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be None or a float, got {_type_name(scale)}")
    if not math.isfinite(scale) or abs(scale) > float(mx.finfo(mx.float32).max):
        raise ValueError(f"scale must be a finite float32 value, got {scale}")


def check_head_dim(E: int, name: str = "query") -> None:
    """E = 0 has no default scale (1 / sqrt(0)) and nothing to attend with."""
    if E < 1:
        raise ValueError(f"{name}'s head dimension E must be at least 1, got E={E}")


def check_mask_dtype(mask: mx.array, dtype: mx.Dtype, allow_bool: bool) -> None:
    """An additive mask must not widen the scores' dtype (a float32 mask would turn float16
    attention into float32 attention); integer masks are ambiguous (keep-flag or bias?)."""
    if mask.dtype == mx.bool_:
        if allow_bool:
            return
        raise TypeError(
            "mask must be an additive floating-point mx.array here, got bool "
            "(boolean masks are handled by masks.scaled_dot_product_attention)"
        )
    if mask.dtype == mx.float64:
        raise TypeError("mask must not be float64: convert it with .astype(mx.float32)")
    if mask.dtype not in FLOAT_DTYPES:
        expected = "bool or a floating dtype" if allow_bool else "a floating dtype"
        raise TypeError(f"mask must have {expected}, got {dtype_name(mask.dtype)}")
    if dtype != mx.float32 and mask.dtype != dtype:
        want, got = dtype_name(dtype), dtype_name(mask.dtype)
        raise TypeError(f"mask must have dtype {want} like query (or bool), got {got}")


def check_mask_shape(mask: mx.array, target: tuple[int, ...], layout: str) -> None:
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


def check_key_value_shapes(query: mx.array, key: mx.array, value: mx.array) -> None:
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


def check_lengths_nonzero(L: int, S: int) -> None:
    if L == 0 or S == 0:
        raise ValueError(f"L and S must be at least 1, got query L={L} and key S={S}")


def check_attention_simple_inputs(
    query: Any, key: Any, value: Any, scale: Any, mask: Any
) -> tuple[int, ...]:
    """Week 1, Day 1's attention: (..., L, E) inputs with leading dimensions that broadcast,
    an additive floating mask. Returns the broadcast leading dimensions."""
    check_float_array(query, "query", 2, "(..., L, E)")
    check_float_array(key, "key", 2, "(..., S, E)")
    check_float_array(value, "value", 2, "(..., S, Ev)")
    check_same_dtype(key, "key", query, "query")
    check_same_dtype(value, "value", query, "query")
    check_scale(scale)
    check_key_value_shapes(query, key, value)
    L, S = query.shape[-2], key.shape[-2]
    check_head_dim(query.shape[-1])
    check_lengths_nonzero(L, S)
    try:
        batch = tuple(mx.broadcast_shapes(query.shape[:-2], key.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"the leading dimensions of query {tuple(query.shape[:-2])} and key "
            f"{tuple(key.shape[:-2])} do not broadcast"
        ) from None
    if mask is not None:
        if not isinstance(mask, mx.array):
            raise TypeError(f"mask must be None or an mx.array, got {_type_name(mask)}")
        check_mask_dtype(mask, query.dtype, allow_bool=False)
        check_mask_shape(mask, (*batch, L, S), "(..., L, S)")
    return batch


def check_attention_inputs(query: Any, key: Any, value: Any, scale: Any, mask: Any) -> None:
    """The contract of mx.fast.scaled_dot_product_attention: query (B..., H_q, L, E), key and
    value (B..., H, S, E|Ev) with the same batch dimensions, H_q a multiple of H, and a mask
    that is None, "causal" or a bool / additive array broadcastable to (B..., H_q, L, S)."""
    check_float_array(query, "query", 3, "(B..., H_q, L, E)")
    check_float_array(key, "key", 3, "(B..., H, S, E)")
    check_float_array(value, "value", 3, "(B..., H, S, Ev)")
    for name, x in (("key", key), ("value", value)):
        if x.ndim != query.ndim:
            raise ValueError(
                f"{name} must have the rank of query ({query.ndim}), got shape {tuple(x.shape)}"
            )
        check_same_dtype(x, name, query, "query")
    check_scale(scale)
    *batch, H_q, L, E = query.shape
    H, S = key.shape[-3], key.shape[-2]
    if tuple(key.shape[:-3]) != tuple(batch):
        raise ValueError(
            f"key's batch dimensions must equal query's {tuple(batch)}, got shape "
            f"{tuple(key.shape)}"
        )
    check_key_value_shapes(query, key, value)
    if H == 0:
        raise ValueError(f"key must have at least one head (H >= 1), got shape {key.shape}")
    if H_q % H != 0:
        raise ValueError(f"query's heads H_q={H_q} must be a multiple of key/value heads H={H}")
    check_head_dim(E)
    check_lengths_nonzero(L, S)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask must be None, 'causal' or an mx.array, got {mask!r}")
    elif mask is not None:
        if not isinstance(mask, mx.array):
            raise TypeError(f"mask must be None, 'causal' or an mx.array, got {_type_name(mask)}")
        check_mask_dtype(mask, query.dtype, allow_bool=True)
        check_mask_shape(mask, (*batch, H_q, L, S), "(B..., H_q, L, S)")


def check_wrapper_inputs(
    query: Any,
    key: Any,
    value: Any,
    scale: Any,
    mask: Any,
    kernels: Sequence[str],
    kernel: Any,
    num_threads: Any,
) -> None:
    """What the Python face of a C++ op checks before flattening the batch dimensions; the op
    itself checks the rest (dtypes, heads, sizes) on the 4-D arrays it receives."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_array(x, name, 3, "(B..., H, L, E)")
    batch = tuple(query.shape[:-3])
    for name, x in (("key", key), ("value", value)):
        if tuple(x.shape[:-3]) != batch:
            raise ValueError(
                f"{name} must have the batch dimensions {batch} of query, got {tuple(x.shape[:-3])}"
            )
    if math.prod(batch) > MAX_ELEMENTS:
        raise ValueError(
            f"query's batch dimensions {batch} flatten to N = {math.prod(batch)}, more than "
            "the 2^31 - 1 an MLX dimension holds"
        )
    check_kernel(kernel, kernels, num_threads)
    check_scale(scale)
    check_head_dim(query.shape[-1])
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f'mask must be None, "causal" or an mx.array, got {mask!r}')
    elif isinstance(mask, mx.array):
        h_q, L = query.shape[-3:-1]
        check_mask_shape(mask, (*batch, h_q, L, key.shape[-2]), "(B..., H_q, L, S)")
    elif mask is not None:
        raise TypeError(f'mask must be None, "causal" or an mx.array, got {_type_name(mask)}')


def check_mask_size(L: Any, S: Any) -> None:
    """L and S of a mask: ints >= 1 whose L x S matrix MLX can index."""
    check_int(L, "L")
    check_int(S, "S")
    if L * S > MAX_ELEMENTS:
        raise ValueError(f"L x S must be at most 2^31 - 1 elements, got L={L}, S={S}")


def check_mask_dtype_arg(dtype: Any) -> None:
    """The dtype of a mask to build: mx.bool_ or a floating mx.Dtype."""
    if not isinstance(dtype, mx.Dtype):
        raise TypeError(f"dtype must be an mx.Dtype such as mx.bool_, got {dtype!r}")
    if dtype != mx.bool_ and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be mx.bool_ or a floating dtype, got {dtype_name(dtype)}")


def check_lengths(lengths: Any, S: Any) -> list[int]:
    """Padding lengths: B ints in [0, S], as a list or a 1-D integer array; returns the list."""
    check_int(S, "S")
    if isinstance(lengths, mx.array):
        if lengths.ndim != 1 or not mx.issubdtype(lengths.dtype, mx.integer):
            raise TypeError(
                f"lengths must be a 1-D integer array, got shape {tuple(lengths.shape)} "
                f"and dtype {dtype_name(lengths.dtype)}"
            )
        values = lengths.tolist()
    else:
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence):
            raise TypeError(f"lengths must be a sequence of ints, got {_type_name(lengths)}")
        values = list(lengths)
        for n in values:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"lengths must hold ints, got {_type_name(n)}")
    if len(values) == 0:
        raise ValueError("lengths must hold at least one length")
    for n in values:
        if not 0 <= n <= S:
            raise ValueError(f"lengths: every length must be in [0, S={S}], got {n}")
    return values


def check_split_heads(x: Any, num_heads: Any) -> None:
    check_float_array(x, "x", 2, "(B..., L, H * E)")
    check_int(num_heads, "num_heads")
    D = x.shape[-1]
    if D % num_heads != 0:
        raise ValueError(f"x's last dimension ({D}) must be a multiple of num_heads ({num_heads})")


def check_projection_weights(num_heads: Any, wq: Any, wk: Any, wv: Any, wo: Any) -> None:
    """Multi-head attention's weights, (in_features, out_features) each, fitting together."""
    check_int(num_heads, "num_heads")
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        check_float_array(w, name)
        if w.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D (in_features, out_features), got shape {tuple(w.shape)}"
            )
    if wk.shape[1] != wq.shape[1]:
        raise ValueError(
            f"wk must have {wq.shape[1]} output columns like wq, got shape {tuple(wk.shape)}"
        )
    for name, w in (("wq", wq), ("wv", wv)):
        if w.shape[1] % num_heads != 0:
            raise ValueError(
                f"{name}'s output columns ({w.shape[1]}) must be a multiple of "
                f"num_heads ({num_heads})"
            )
    if wo.shape[0] != wv.shape[1]:
        raise ValueError(
            f"wo must have {wv.shape[1]} input rows (wv's output columns), "
            f"got shape {tuple(wo.shape)}"
        )


def check_projection_inputs(
    query: Any, key: Any, value: Any, wq: mx.array, wk: mx.array, wv: mx.array
) -> None:
    """Multi-head attention's inputs: last dimensions that fit the weights, key and value alike."""
    for name, x, w in (("query", query, wq), ("key", key, wk), ("value", value, wv)):
        check_float_array(x, name, 2, f"(B..., {'L' if name == 'query' else 'S'}, {w.shape[0]})")
        if x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{name}'s last dimension must be {w.shape[0]} to match the projection "
                f"weights, got shape {tuple(x.shape)}"
            )
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            f"value must agree with key in batch and S: key {tuple(key.shape)}, "
            f"value {tuple(value.shape)}"
        )


def check_softmax_states(a: Any, b: Any, state_type: type) -> None:
    """Two softmax states (of `state_type`) whose shapes broadcast together, to be merged."""
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, state_type):
            raise TypeError(f"{name} must be a {state_type.__name__}, got {_type_name(s)}")
    try:
        mx.broadcast_shapes(a.m.shape, b.m.shape)
    except ValueError:
        raise ValueError(
            f"b must have a shape that broadcasts with a's: a.m {tuple(a.m.shape)}, "
            f"b.m {tuple(b.m.shape)}"
        ) from None


def check_partials(o_a: Any, lse_a: Any, o_b: Any, lse_b: Any) -> None:
    """Two partial attention results over disjoint keys: (..., L, Ev) outputs, (..., L) lses."""
    for name, x in (("o_a", o_a), ("o_b", o_b)):
        check_float_array(x, name, 1, "(..., L, Ev)")
    for name, x in (("lse_a", lse_a), ("lse_b", lse_b)):
        check_float_array(x, name, 0, "(..., L)")
    if o_b.shape != o_a.shape:
        raise ValueError(f"o_b must have o_a's shape {o_a.shape}, got {o_b.shape}")
    for name, x in (("lse_a", lse_a), ("lse_b", lse_b)):
        if x.shape != o_a.shape[:-1]:
            raise ValueError(
                f"{name} must have shape {o_a.shape[:-1]} (o_a's shape without Ev), got {x.shape}"
            )


def check_kernel(kernel: Any, kernels: Sequence[str], num_threads: Any) -> None:
    """The C++ kernel to run and its thread count (0: one per hardware thread)."""
    if kernel not in kernels:
        raise ValueError(f"kernel must be one of {tuple(kernels)}, got {kernel!r}")
    check_int(num_threads, "num_threads", minimum=0)
    if kernel != "fast" and num_threads != 0:
        raise ValueError(
            f"num_threads is for kernel='fast' only (the simple kernel runs on one thread), "
            f"got num_threads={num_threads} with kernel={kernel!r}"
        )


def check_scores_shapes(query_shape: Any, key_shape: Any, dtype: Any) -> None:
    """Shapes given as sequences of non-negative ints, (B..., heads, length, E), one rank."""
    shapes = {}
    for name, shape in (("query_shape", query_shape), ("key_shape", key_shape)):
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise TypeError(f"{name} must be a sequence of ints, got {_type_name(shape)}")
        shape = tuple(shape)
        if len(shape) < 3 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(
                f"{name} must be (B..., heads, length, E) with at least 3 non-negative "
                f"ints, got {shape}"
            )
        shapes[name] = shape
    if len(shapes["key_shape"]) != len(shapes["query_shape"]):
        raise ValueError(
            f"key_shape must have the rank of query_shape ({len(shapes['query_shape'])}), "
            f"got {shapes['key_shape']}"
        )
    if not isinstance(dtype, mx.Dtype):
        raise TypeError(f"dtype must be an mx.Dtype, got {_type_name(dtype)}")


def check_profile_args(fn: Any, warmup: Any, repeats: Any) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {_type_name(fn)}")
    check_int(warmup, "warmup", minimum=0)
    check_int(repeats, "repeats", minimum=1)


def check_returns_arrays(out: Any) -> list[mx.array]:
    """What a profiled fn returned, as a list of arrays: an mx.array or a tuple / list of them."""
    if isinstance(out, mx.array):
        return [out]
    if isinstance(out, (tuple, list)) and out and all(isinstance(a, mx.array) for a in out):
        return list(out)
    raise TypeError(f"fn must return an mx.array or a tuple / list of them, got {_type_name(out)}")


# --- Week 5: KV caches ------------------------------------------------------------------------


def check_cache_dtype(dtype: Any) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")


def check_cache_append(
    keys: Any, values: Any, shape: tuple[int, ...], layout: str, dtype: mx.Dtype
) -> int:
    """keys and values are arrays of `shape` except the tokens axis (-2, any length >= 1), of
    the cache's dtype; returns the number of tokens T."""
    for x, name in ((keys, "keys"), (values, "values")):
        check_array(x, name)
        want = (*shape[:-1], "T", shape[-1])
        lead, last = tuple(x.shape[:-2]), x.shape[-1] if x.ndim else None
        if x.ndim != len(shape) + 1 or lead != shape[:-1] or last != shape[-1]:
            raise ValueError(
                f"{name} must have shape {layout} = {tuple(want)}, got {tuple(x.shape)}"
            )
        if x.dtype != dtype:
            raise TypeError(
                f"{name} must have the cache's dtype {dtype_name(dtype)}, got {dtype_name(x.dtype)}"
            )
    if keys.shape != values.shape:
        raise ValueError(
            f"keys and values must have the same shape, got {tuple(keys.shape)} "
            f"and {tuple(values.shape)}"
        )
    if keys.shape[-2] < 1:
        raise ValueError("keys must hold at least one token (T >= 1), got T = 0")
    return keys.shape[-2]


def check_capacity(length: int, tokens: int, capacity: int, what: str) -> None:
    """Appending `tokens` to `length` stays within `capacity`."""
    if length + tokens > capacity:
        raise ValueError(
            f"keys of {tokens} tokens do not fit: {what} holds {length} of {capacity} "
            f"(capacity), {capacity - length} free"
        )


def check_sequence(seq: Any, known: Any) -> None:
    """`seq` is the id of a live sequence of a paged cache (one of `known`)."""
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError(f"seq must be an int (from new_sequence()), got {_type_name(seq)}")
    if seq not in known:
        raise ValueError(f"seq {seq} is not a live sequence of this cache (new_sequence() first)")


def check_sequences(seqs: Any, known: Any) -> list[int]:
    """`seqs` is a non-empty list or tuple of live sequence ids."""
    if not isinstance(seqs, (list, tuple)) or len(seqs) == 0:
        raise TypeError(f"seqs must be a non-empty list of sequence ids, got {seqs!r}")
    for s in seqs:
        check_sequence(s, known)
    return list(seqs)


def check_free_pages(needed: int, free: int, num_pages: int) -> None:
    if needed > free:
        raise ValueError(
            f"keys need {needed} more pages but the pool has {free} free of {num_pages} "
            "(free() finished sequences, or make the pool larger)"
        )


# --- Week 5, Day 4: masks computed from positions, packed sequences -------------------------


def check_window(window: Any) -> tuple[int, int]:
    """None, an int w >= 0 (the w keys before, none after) or a pair (left, right) of ints >= 0.

    Returns (left, right), -1 for an unbounded side.
    """
    if window is None:
        return (-1, -1)
    sides = (window, 0) if not isinstance(window, (tuple, list)) else tuple(window)
    if len(sides) != 2:
        raise ValueError(f"window must be an int or a pair (left, right), got {window!r}")
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int):
            raise TypeError(f"window must be None, an int or a pair of ints, got {window!r}")
        if side < 0:
            raise ValueError(f"window sizes must be >= 0, got {window!r} (None means no window)")
    return (int(sides[0]), int(sides[1]))


def check_softcap(softcap: Any) -> None:
    """None, or a positive finite number."""
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be None or a float, got {_type_name(softcap)}")
    if not math.isfinite(softcap) or softcap <= 0:
        raise ValueError(f"softcap must be None or a positive finite float, got {softcap}")


def check_cu_seqlens(cu: Any, name: str, total: int) -> list[int]:
    """Cumulative sequence lengths: a 1-D int32 mx.array from 0 to `total`, never decreasing.

    Returns its values as a list.
    """
    check_array(cu, name)
    if cu.ndim != 1 or cu.size < 2:
        raise ValueError(
            f"{name} must be 1-D with num_seqs + 1 >= 2 entries, got shape {tuple(cu.shape)}"
        )
    if cu.dtype != mx.int32:
        raise TypeError(f"{name} must be int32, got {dtype_name(cu.dtype)}")
    values = [int(x) for x in cu.tolist()]
    if values[0] != 0 or values[-1] != total:
        raise ValueError(f"{name} must run from 0 to {total}, got {values[0]} .. {values[-1]}")
    if any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name} must never decrease, got {values}")
    return values


def check_varlen_inputs(
    query: Any,
    key: Any,
    value: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    scale: Any,
    alibi_slopes: Any,
    softcap: Any,
) -> tuple[list[int], list[int]]:
    """Packed query (total_q, H_q, E), key and value (total_k, H, E), their cu_seqlens; returns
    the two lists of offsets."""
    check_float_array(query, "query")
    check_float_array(key, "key")
    check_float_array(value, "value")
    for x, name, layout in (
        (query, "query", "(total_q, H_q, E)"),
        (key, "key", "(total_k, H, E)"),
        (value, "value", "(total_k, H, E)"),
    ):
        if x.ndim != 3 or 0 in x.shape:
            raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")
    if key.shape != value.shape:
        raise ValueError(
            f"value must have the shape of key {tuple(key.shape)}, got {tuple(value.shape)}"
        )
    if key.shape[2] != query.shape[2]:
        raise ValueError(f"key must have E = {query.shape[2]} of query, got {key.shape[2]}")
    if query.shape[1] % key.shape[1] != 0:
        raise ValueError(
            f"key's H = {key.shape[1]} must divide query's H_q = {query.shape[1]} (GQA)"
        )
    check_scale(scale)
    check_softcap(softcap)
    if alibi_slopes is not None:
        check_float_array(alibi_slopes, "alibi_slopes")
        if tuple(alibi_slopes.shape) != (query.shape[1],):
            raise ValueError(
                f"alibi_slopes must have shape (H_q,) = ({query.shape[1]},), "
                f"got {tuple(alibi_slopes.shape)}"
            )
    cu_q = check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", query.shape[0])
    cu_k = check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", key.shape[0])
    if len(cu_q) != len(cu_k):
        raise ValueError(
            f"cu_seqlens_k must describe as many sequences as cu_seqlens_q ({len(cu_q) - 1}), "
            f"got {len(cu_k) - 1}"
        )
    for s in range(len(cu_q) - 1):
        if cu_q[s + 1] > cu_q[s] and cu_k[s + 1] == cu_k[s]:
            raise ValueError(f"cu_seqlens_k: sequence {s} has query rows but no key")
    return cu_q, cu_k


# --- Week 5, Day 5: serving ------------------------------------------------------------------


def check_generator_model(model: Any, transformer_type: type) -> None:
    """A Week 4 Transformer (of the same package)."""
    if not isinstance(model, transformer_type):
        raise TypeError(f"model must be a Transformer (Week 4), got {_type_name(model)}")


def check_generate_args(prompts: Any, max_new_tokens: Any, max_len: int, vocab_size: int) -> None:
    """A non-empty list of non-empty lists of token ids (0 <= id < vocab_size: a larger one
    would index past the embedding table), and how many tokens to add (>= 0), so that no
    sequence grows past the model's max_len positions."""
    if not isinstance(prompts, list) or not prompts:
        raise TypeError(f"prompts must be a non-empty list of lists of token ids, got {prompts!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, list) or not p:
            raise ValueError(f"prompts[{i}] must be a non-empty list of token ids, got {p!r}")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size for t in p):
            raise ValueError(
                f"prompts[{i}] must hold token ids (ints in [0, vocab_size={vocab_size})), "
                f"got {p!r}"
            )
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_len:
        raise ValueError(
            f"max_new_tokens must keep every sequence within the model's max_len={max_len}: "
            f"the longest prompt has {longest} tokens, max_new_tokens is {max_new_tokens}"
        )


def _check_token_ids(tokens: Any, name: str, vocab_size: int) -> None:
    """A non-empty list of ints in [0, vocab_size): a larger id would index past the model's
    embedding table."""
    if not isinstance(tokens, list) or not tokens:
        raise TypeError(f"{name} must be a non-empty list of token ids, got {tokens!r}")
    if any(
        isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size for t in tokens
    ):
        raise ValueError(
            f"{name} must hold token ids (ints in [0, vocab_size={vocab_size})), got {tokens!r}"
        )


def check_prefill_prompt(prompt: Any, vocab_size: int, max_len: int) -> None:
    """One prompt of token ids that fits the model's max_len positions."""
    _check_token_ids(prompt, "prompt", vocab_size)
    if len(prompt) > max_len:
        raise ValueError(
            f"prompt must fit the model's max_len={max_len} positions, got {len(prompt)} tokens"
        )


def check_decode_step(
    seqs: Any, tokens: Any, length: Callable[[int], int], vocab_size: int, max_len: int
) -> None:
    """One new token per sequence: as many tokens as seqs, each a token id, and every
    sequence (length(seq) tokens so far) still short of the model's max_len positions."""
    if not isinstance(seqs, list) or not seqs:
        raise TypeError(f"seqs must be a non-empty list of sequence ids, got {seqs!r}")
    _check_token_ids(tokens, "tokens", vocab_size)
    if len(tokens) != len(seqs):
        raise ValueError(
            f"tokens must hold one token per sequence of seqs ({len(seqs)}), got {len(tokens)}"
        )
    for s in seqs:
        if length(s) >= max_len:
            raise ValueError(
                f"seqs: sequence {s} holds {length(s)} tokens, the model's max_len={max_len} "
                "positions: it cannot take another"
            )
