"""Your MLX C++ extension (build: `pdm run build-ext`)."""

import mlx.core  # noqa: F401  (loads libmlx before the extension that links to it)

try:
    from ._core import (
        flash_attention,
        flash_attention_fast,
        reset_tiles_visited,
        softmax_rows,
        tiles_visited,
    )
except ImportError as e:
    raise ImportError(
        f"tiny_attn_ext is not built or does not load: run `pdm run build-ext` ({e})"
    ) from e

__all__ = [
    "flash_attention",
    "flash_attention_fast",
    "reset_tiles_visited",
    "softmax_rows",
    "tiles_visited",
]
