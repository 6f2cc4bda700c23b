"""The end-to-end example: an MLX extension whose eval_gpu runs on metalsim (examples/row_softmax).

The first run builds the example extension with CMake (about a minute on 2 cores); later runs
reuse the build in src/metalsim/examples/row_softmax/build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import mlx.core as mx
import numpy as np
import pytest

import metalsim

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "row_softmax"


@pytest.fixture(scope="module")
def ext() -> ModuleType:
    metalsim.cmake_build(EXAMPLE, EXAMPLE / "build", what="the row_softmax example")
    sys.path.insert(0, str(EXAMPLE / "build" / "pkg"))
    import metalsim_row_softmax

    return metalsim_row_softmax


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(3, 5), (7, 100), (16, 1000), (2, 3000)])
def test_gpu_path_runs_the_metal_kernel_and_matches_numpy(
    ext: ModuleType, shape: tuple[int, int]
) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4
    y = ext.row_softmax(mx.array(x), stream=mx.gpu)
    np.testing.assert_allclose(
        np.array(y), numpy_softmax(x.astype(np.float64)), rtol=1e-5, atol=1e-7
    )
    y_cpu = ext.row_softmax(mx.array(x))
    np.testing.assert_allclose(
        np.array(y_cpu), numpy_softmax(x.astype(np.float64)), rtol=1e-5, atol=1e-7
    )


def test_gpu_path_is_lazy_and_ordered_after_its_inputs(ext: ModuleType) -> None:
    a = mx.array(np.arange(64, dtype=np.float32).reshape(2, 32))
    y = ext.row_softmax(a * 2.0 - 1.0, stream=mx.gpu) * 3.0  # input computed by MLX first
    expected = 3.0 * numpy_softmax(np.arange(64, dtype=np.float64).reshape(2, 32) * 2 - 1)
    np.testing.assert_allclose(np.array(y), expected, rtol=1e-5, atol=1e-7)


def test_simulator_errors_reach_python(ext: ModuleType) -> None:
    x = mx.array(np.ones((2, 8), np.float32))
    with pytest.raises(RuntimeError, match=r"row_softmax_f32.*2048 threads.*1024"):
        mx.eval(ext.row_softmax(x, threads=2048, stream=mx.gpu))
    # The stream keeps working after an error.
    y = ext.row_softmax(x, threads=64, stream=mx.gpu)
    np.testing.assert_allclose(np.array(y), np.full((2, 8), 1 / 8), rtol=1e-6)


@pytest.mark.parametrize(
    ("defines", "fails"),
    [
        ([], False),
        (["METALSIM_USE_METAL=1"], True),
        (["METALSIM_USE_METAL=1", "METALSIM_FORCE=1"], False),
    ],
)
def test_glue_header_without_metal_cpp(tmp_path: Path, defines: list[str], fails: bool) -> None:
    # A build for MLX's Metal backend (METALSIM_USE_METAL, set by the build that links it)
    # that cannot find <Metal/Metal.hpp> stops with an #error saying what to do, instead of
    # falling back to the simulator and failing at link time; without it (Linux), or with
    # METALSIM_FORCE, the header selects the simulator.
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "clang++"
    tu = tmp_path / "tu.cpp"
    tu.write_text(
        '#include "metalsim/mlx_extension.h"\n'
        'static_assert(METALSIM_GPU_IS_SIMULATED == 1, "the simulator is selected");\n'
    )
    mlx_include = Path(mx.__file__).resolve().parent / "include"  # mlx/core.*.so -> mlx/include
    cmd = [cxx, "-std=c++20", "-fsyntax-only", f"-I{mlx_include}"]
    cmd += [f"-I{EXAMPLE.parent.parent / 'include'}", *(f"-D{d}" for d in defines), str(tu)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if fails:
        assert result.returncode != 0
        assert "<Metal/Metal.hpp> (metal-cpp) is not on the include path" in result.stderr
        assert "-DMETALSIM_FORCE=ON" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
