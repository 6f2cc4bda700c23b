"""Week 2, Days 4-5: the Python face of the C++ FlashAttention kernels.

Book: book/src/week2-04-flash-attention-cpp.md (Task 4) and book/src/week2-05-fast-cpu.md

The C++ op takes 4-D arrays (N, H_q, L, E); this wrapper gives it the contract of
mx.fast.scaled_dot_product_attention: any number of batch dimensions, scale=None, and a mask
that is None, "causal" or an array. Everything else is checked in C++.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import mlx.core as mx

from tiny_attn_contracts import check_wrapper_inputs

KERNELS = ("simple", "fast")


def _extension() -> ModuleType:
    """This package's compiled extension: tiny_attn_ext for tiny_attn, tiny_attn_ext_ref for
    tiny_attn_ref (`pdm run build-ext` builds it; the tests build it when a source changed)."""
    return importlib.import_module(__package__.replace("tiny_attn", "tiny_attn_ext", 1))


def flash_attention(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    scale: float | None = None,
    mask: str | mx.array | None = None,
    *,
    kernel: str = "fast",
    num_threads: int = 0,
    stream: Any = None,
) -> mx.array:
    """softmax(scale * Q K^T + mask) V with the extension's C++ FlashAttention kernel.

    Args:
        query: float32 (B..., H_q, L, E).
        key, value: float32 (B..., H, S, E), the same batch dimensions; H_q % H == 0.
        scale: multiplies Q K^T; None means 1 / sqrt(E).
        mask: None, "causal" (bottom-right aligned when L != S), or a bool (True = keep) or
            floating (additive) array broadcastable to (B..., H_q, L, S).
        kernel: "simple" (day 4, one thread) or "fast" (day 5). On the GPU (Week 3):
            "simple" runs the Metal kernel flash_attention_<t>_e128, "fast" the
            simdgroup_matrix kernel flash_attention_simdgroup_<t>.
        num_threads: threads of the fast kernel; 0 means one per hardware thread.
        stream: the stream or device to evaluate on (None: the CPU, on a Mac too). mx.gpu runs the
            Metal kernels: on the Metal device, or on metalsim where there is none. On the
            GPU, query, key and value may also be float16 or bfloat16 (all the same dtype).

    Returns:
        (B..., H_q, L, E) in the dtype of query, lazy like every MLX result.
    """
    check_wrapper_inputs(query, key, value, scale, mask, KERNELS, kernel, num_threads)
    # TODO(Task 4): flatten the batch dimensions, turn mask into (mask array, causal),
    # default the scale, call _extension().flash_attention or .flash_attention_fast, and
    # restore the batch dimensions of the result.
    raise NotImplementedError(
        "flash_attention is not implemented yet: see book/src/week2-04-flash-attention-cpp.md, "
        "Task 4"
    )
