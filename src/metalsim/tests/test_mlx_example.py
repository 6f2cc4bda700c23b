"""The end-to-end example: an MLX extension whose eval_gpu runs on metalsim (examples/axpby).

The first run builds the example extension with CMake (about a minute on 2 cores); later runs
reuse the build in src/metalsim/examples/axpby/build.
"""

from __future__ import annotations

import importlib.util
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

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "axpby"


@pytest.fixture(scope="module")
def ext() -> ModuleType:
    metalsim.cmake_build(EXAMPLE, EXAMPLE / "build", name="the axpby example", verbose=False)
    # The example's package is not installed: load it from its folder.
    init = EXAMPLE / "metalsim_axpby" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "metalsim_axpby", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["metalsim_axpby"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", [(3, 5), (7, 100), (16, 1000), (1, 0)])
def test_gpu_path_runs_the_metal_kernel_and_matches_numpy(
    ext: ModuleType, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(shape).astype(np.float32)
    expected = 2.0 * x.astype(np.float64) - 0.5 * y
    for stream in (mx.gpu, None):
        out = ext.axpby(mx.array(x), mx.array(y), 2.0, -0.5, stream=stream)
        np.testing.assert_allclose(np.array(out), expected, rtol=1e-6, atol=1e-6)


def test_gpu_path_is_lazy_and_ordered_after_its_inputs(ext: ModuleType) -> None:
    a = mx.arange(64, dtype=mx.float32)
    out = ext.axpby(a * 2.0 - 1.0, a, 1.0, 1.0, stream=mx.gpu) * 3.0  # inputs computed first
    expected = 3.0 * (np.arange(64) * 3.0 - 1.0)
    np.testing.assert_allclose(np.array(out), expected, rtol=1e-6)


def test_simulator_errors_reach_python(ext: ModuleType) -> None:
    x = mx.ones((2, 8))
    with pytest.raises(RuntimeError, match=r"axpby_f32.*2048 threads.*1024"):
        mx.eval(ext.axpby(x, x, 1.0, 1.0, threads=2048, stream=mx.gpu))
    # The stream keeps working after an error.
    out = ext.axpby(x, x, 1.0, 1.0, threads=64, stream=mx.gpu)
    np.testing.assert_allclose(np.array(out), np.full((2, 8), 2.0))


def test_op_checks_name_the_argument(ext: ModuleType) -> None:
    x = mx.ones((2, 8))
    with pytest.raises(ValueError, match=r"\by\b.*shape"):
        ext.axpby(x, mx.ones((8, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\bx\b.*float32"):
        ext.axpby(x.astype(mx.float16), x, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\bthreads\b"):
        ext.axpby(x, x, 1.0, 1.0, threads=-1)


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
