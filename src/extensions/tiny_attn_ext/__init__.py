"""Your MLX C++ extension (build: `pdm run build-ext`)."""

import mlx.core  # noqa: F401  (loads libmlx before the extension that links to it)

try:
    from ._core import (
        cpu_kernel_runs,
        flash_attention,
        flash_attention_fast,
        gpu_dispatches,
        gpu_tile_counts,
        reset_cpu_kernel_runs,
        reset_gpu_dispatches,
        reset_gpu_tile_counts,
        reset_tiles_visited,
        softmax_rows,
        tiles_visited,
    )
except ImportError as e:
    raise ImportError(
        f"tiny_attn_ext is not built or does not load: run `pdm run build-ext` ({e})"
    ) from e

__all__ = [
    "cpu_kernel_runs",
    "gpu_dispatches",
    "gpu_tile_counts",
    "reset_cpu_kernel_runs",
    "reset_gpu_dispatches",
    "reset_gpu_tile_counts",
    "flash_attention",
    "flash_attention_fast",
    "reset_tiles_visited",
    "softmax_rows",
    "tiles_visited",
]
