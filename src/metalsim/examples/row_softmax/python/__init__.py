"""metalsim example extension: `row_softmax(x, stream=mx.gpu)`."""

import mlx.core  # noqa: F401  (the extension's types live in MLX's nanobind domain)

from ._ext import row_softmax

__all__ = ["row_softmax"]
