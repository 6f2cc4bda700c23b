"""metalsim's example extension: `axpby(x, y, alpha, beta, stream=mx.gpu)`.

Its GPU path is the Metal kernel axpby_f32 (src/axpby.metal): on the GPU of a Mac, on metalsim
everywhere else, with the same source and the same eval_gpu.
"""

import mlx.core  # noqa: F401  (loads libmlx before the extension that links to it)

from ._core import axpby

__all__ = ["axpby"]
