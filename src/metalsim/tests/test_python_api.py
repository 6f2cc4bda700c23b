"""metalsim's Python API: a wrong argument to dispatch is an error that names it.

(Grids past Metal's limits are the sanitizer's LimitError: test_sanitizer.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

import metalsim

SOURCE = """
#include <metal_stdlib>
using namespace metal;
kernel void add_one(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
    x[i] += 1.0f;
}
"""


@pytest.fixture(scope="module")
def lib() -> metalsim.Library:
    return metalsim.Library.from_source(SOURCE, "add_one.metal")


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"buffers": [np.zeros(4, np.float32)]}, TypeError, "buffers"),
        ({"threadgroup_memory": [16]}, TypeError, "threadgroup_memory"),
        ({"workers": -1}, ValueError, "workers"),
        ({"workers": 2**40}, ValueError, "workers"),
        ({"workers": 1.5}, ValueError, "workers"),
    ],
    ids=[
        "buffers list",
        "tg list",
        "workers -1",
        "workers 2^40",
        "workers float",
    ],
)
def test_bad_dispatch_arguments_are_named(lib, kwargs, error, argument) -> None:
    call = {"grid": 1, "threadgroup": 4, "buffers": {0: np.zeros(4, np.float32)}, **kwargs}
    with pytest.raises(error, match=rf"^{argument}\b"):
        lib.dispatch("add_one", **call)


def test_a_good_dispatch_still_runs(lib) -> None:
    x = np.zeros(8, np.float32)
    lib.dispatch("add_one", 2, 4, buffers={0: x}, workers=2)
    np.testing.assert_array_equal(x, np.ones(8, np.float32))
