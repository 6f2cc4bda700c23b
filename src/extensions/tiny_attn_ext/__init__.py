"""Your MLX C++ extension (build: `pdm run build-ext`): the ops of bindings.cpp."""

import mlx.core  # noqa: F401  (loads libmlx before the extension that links to it)

try:
    from ._core import *  # noqa: F403  (the ops of src/extension_common/bindings.cpp)
except ImportError as e:
    raise ImportError(f"tiny_attn_ext is not built: run `pdm run build-ext` ({e})") from e
