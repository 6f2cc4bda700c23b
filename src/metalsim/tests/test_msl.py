"""The Metal Shading Language that metalsim accepts: the valid MSL real kernels use compiles and
runs as on a Mac (valid_msl.metal, one kernel per construct).

Run: pdm run pytest src/metalsim/tests/test_msl.py -q
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import metalsim

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def lib() -> metalsim.Library:
    return metalsim.Library.from_files([HERE / "valid_msl.metal"])


def test_standard_attributes_on_kernel_parameters(lib: metalsim.Library) -> None:
    out = np.zeros(4, np.float32)
    lib.dispatch("attributes", 1, 4, {0: np.zeros(1, np.float32), 1: out})
    np.testing.assert_array_equal(out, [0, 1, 2, 3])


def test_template_kernels_instantiated_with_host_name(lib: metalsim.Library) -> None:
    assert {"scale_by_float_4", "scale_by_int_3"} <= set(lib.kernel_names)
    assert "scale_by" not in lib.kernel_names  # a template is not a kernel until instantiated
    x = np.arange(4, dtype=np.float32)
    lib.dispatch("scale_by_float_4", 1, 4, {0: x})
    np.testing.assert_array_equal(x, np.arange(4) * 4)
    y = np.arange(3, dtype=np.int32)
    lib.dispatch("scale_by_int_3", 1, 3, {0: y})
    np.testing.assert_array_equal(y, np.arange(3) * 3)


def test_function_constants_set_at_pipeline_creation(lib: metalsim.Library) -> None:
    assert lib.function_constants == {0: "add_bias", 1: "repeats", 2: "bias"}
    x = np.arange(8, dtype=np.float32)
    extra = np.full(8, 10, np.float32)
    lib.pipeline("specialised", {0: True, 1: 2, 2: 0.5}).dispatch(1, 8, {0: x, 1: extra})
    np.testing.assert_array_equal(x, -(np.arange(8) * 4 + 10.5))  # `doubled` is true
    # add_bias false: [[buffer(1), function_constant(add_bias)]] is not bound at all.
    y = np.arange(8, dtype=np.float32)
    lib.pipeline("specialised", {0: False, 1: 0}).dispatch(1, 8, {0: y})
    np.testing.assert_array_equal(y, np.arange(8))
    with pytest.raises(metalsim.BindingError, match=r"\[\[buffer\(1\)\]\] 'extra'"):
        lib.pipeline("specialised", {0: True, 1: 0, 2: 0.0}).dispatch(1, 8, {0: y})
    with pytest.raises(metalsim.DispatchError, match="'repeats' .* has no value"):
        lib.pipeline("specialised", {0: False}).dispatch(1, 8, {0: y})


def test_kernels_in_headers_included_twice(tmp_path: Path) -> None:
    """Kernels may live in headers (MLX's do); include guards and #pragma once hold."""
    (tmp_path / "guarded.h").write_text(
        "#ifndef GUARDED_H\n#define GUARDED_H\n#include <metal_stdlib>\nusing namespace metal;\n"
        "kernel void from_guarded(device float* x [[buffer(0)]]) { x[0] = 7.0f; }\n#endif\n"
    )
    (tmp_path / "once.h").write_text(
        '#pragma once\n#include "guarded.h"\n'
        "kernel void from_once(device float* x [[buffer(0)]]) { x[0] = 8.0f; }\n"
    )
    (tmp_path / "main.metal").write_text(
        '#include "once.h"\n#include "guarded.h"\n#include "once.h"\n'
        "kernel void from_main(device float* x [[buffer(0)]]) { x[0] = 9.0f; }\n"
    )
    lib = metalsim.Library.from_files([tmp_path / "main.metal"])
    assert sorted(lib.kernel_names) == ["from_guarded", "from_main", "from_once"]
    x = np.zeros(1, np.float32)
    lib.dispatch("from_once", 1, 1, {0: x})
    assert x[0] == 8.0


def test_function_constants_from_the_cpp_host_api(tmp_path: Path) -> None:
    metalsim.ensure_built()
    static_lib = metalsim.HOME / "build" / "libmetalsim_host.a"
    exe = tmp_path / "host_api_constants"
    subprocess.run(
        [
            metalsim._core.compiler(),
            "-std=c++17",
            f"-I{metalsim.HOME / 'include'}",
            str(HERE / "host_api_constants.cpp"),
            str(static_lib),
            "-ldl",
            "-pthread",
            "-o",
            str(exe),
        ],
        check=True,
    )
    run = subprocess.run(
        [str(exe), str(HERE / "valid_msl.metal")],
        capture_output=True,
        text=True,
        env={**os.environ, "METALSIM_HOME": str(metalsim.HOME)},
        check=True,
    )
    # repeats = 1 doubles, add_bias adds 0.25 + 10, and `doubled` negates.
    assert run.stdout.split() == [str(-(2 * v + 10.25)) for v in range(4)]


def test_constants_derived_from_function_constants() -> None:
    src = (
        "#include <metal_stdlib>\nusing namespace metal;\n"
        "namespace cfg {\nconstant bool flip [[function_constant(5)]];\n"
        "constant bool not_flip = !flip;\n}\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = cfg::not_flip ? 1.0f : 2.0f; }\n"
    )
    lib = metalsim.Library.from_source(src, name="derived.metal")
    x = np.zeros(1, np.float32)
    lib.pipeline("k", {5: True}).dispatch(1, 1, {0: x})
    assert x[0] == 2.0
    lib.pipeline("k", {5: False}).dispatch(1, 1, {0: x})
    assert x[0] == 1.0
    # Read when the library loads (a static member's initializer): refused, not a crash.
    bad = (
        "#include <metal_stdlib>\nusing namespace metal;\n"
        "constant bool flip [[function_constant(5)]];\n"
        "struct Cfg { static constant bool value; };\nconstant bool Cfg::value = flip;\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = Cfg::value ? 1.0f : 2.0f; }\n"
    )
    with pytest.raises(metalsim.CompileError, match="'flip' is read by an initializer outside"):
        metalsim.Library.from_source(bad, name="read_at_load.metal")


def test_swizzles_read_and_write(lib: metalsim.Library) -> None:
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    a, b, c, d = x.T.copy()
    lib.dispatch("swizzles", 1, 2, {0: x})
    np.testing.assert_array_equal(x, np.stack([d, c, 2 * c, d + b], axis=1))


def test_quad_group_functions(lib: metalsim.Library) -> None:
    x = np.arange(32, dtype=np.float32) ** 1.5
    out = np.zeros((32, 4), np.float32)
    lib.dispatch("quads", 1, 32, {0: x, 1: out})
    lane = np.arange(32)
    quads = x.reshape(8, 4)
    np.testing.assert_allclose(out[:, 0], np.repeat(quads.sum(1), 4), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], np.repeat(quads.max(1), 4))
    np.testing.assert_array_equal(out[:, 2], np.repeat(quads[:, 3], 4))
    np.testing.assert_allclose(
        out[:, 3], x[lane ^ 1] + 1000 * (lane % 4) + 100000 * (lane // 4), rtol=1e-6
    )


def test_min3_bits_constants_and_ulong(lib: metalsim.Library) -> None:
    f = np.zeros(8, np.float32)
    u = np.zeros(4, np.uint32)
    big = np.zeros(1, np.uint64)
    lib.dispatch("scalars", 1, 1, {0: f, 1: u, 2: big})
    fmax = np.finfo(np.float32)
    np.testing.assert_array_equal(
        f,
        np.array([-1, 3, 2, fmax.max, np.inf, np.pi, np.sqrt(0.5), fmax.eps], dtype=np.float32),
    )
    np.testing.assert_array_equal(u, [0xD12, 0xFFFFF00F, 0x80000000, 0xFFFFFFFF])
    assert big[0] == 1 << 40


def test_os_log_prints(lib: metalsim.Library, capfd: pytest.CaptureFixture[str]) -> None:
    lib.dispatch("logging", 1, 4, {0: np.array([1.5], np.float32)})
    assert capfd.readouterr().out.splitlines() == ["x[0] = 1.500000"]


def test_simd_shuffle_and_fill(lib: metalsim.Library) -> None:
    data = np.arange(32, dtype=np.float32) + 1
    out = np.zeros((32, 2), np.float32)
    lib.dispatch("fill", 1, 32, {0: data, 1: out})
    lane = np.arange(32)
    up = np.where(lane >= 2, data[lane - 2], -data[(lane + 30) % 32])
    j, base = lane % 8, lane - lane % 8
    down = np.where(j + 3 < 8, data[np.minimum(lane + 3, 31)], -data[base + (j + 3) % 8])
    np.testing.assert_array_equal(out[:, 0], up)
    np.testing.assert_array_equal(out[:, 1], down)
