"""Strict MSL: what Apple's Metal compiler refuses, metalsim refuses too, as a CompileError at the
.metal line that says what MSL offers instead. One test per refused construct.

Run: pdm run pytest src/metalsim/tests/test_strict_msl.py -q
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import metalsim

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"  # lines 1-2

# (name, source after HEADER, the line of the error, what the message says)
REFUSED = [
    (
        "pointer_without_address_space",
        "kernel void k(float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  x[i] = 0; }\n",
        3,
        r"'x' \(float\*\) is a pointer with no address space: MSL needs one, "
        r"e\.g\. `device float\* x`",
    ),
    (
        "buffer_in_threadgroup_memory",
        "kernel void k(threadgroup float* x [[buffer(0)]]) { x[0] = 0; }\n",
        3,
        r"must point to `device` or `constant` memory",
    ),
    (
        "write_through_constant",
        "kernel void k(constant float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  x[i] = 1.0f;\n}\n",
        4,
        r"read-only.*`constant` memory is read-only",
    ),
    (
        "threadgroup_in_helper",
        "float helper(uint i) {\n  threadgroup float t[32];\n  t[i] = 1; return t[0]; }\n"
        "kernel void k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  x[i] = helper(i); }\n",
        4,
        r"threadgroup variable in a function that is not a kernel.*`threadgroup T\*`",
    ),
    (
        "threadgroup_at_program_scope",
        "threadgroup float shared_t[32];\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = 0; }\n",
        3,
        r"threadgroup variable outside a kernel",
    ),
    (
        "threadgroup_to_device_pointer",
        "kernel void k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  threadgroup float tile[32];\n"
        "  device float* p = tile;\n"
        "  p[i] = x[i]; }\n",
        5,
        r"'p' is a device pointer and 'tile' is threadgroup memory: MSL address spaces do not "
        r"convert",
    ),
    (
        "device_to_threadgroup_pointer",
        "kernel void k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  threadgroup float* p = x;\n"
        "  p[i] = 1; }\n",
        4,
        r"'p' is a threadgroup pointer and 'x' is device memory",
    ),
    (
        "threadgroup_memory_to_device_parameter",
        "float first(device const float* row) { return row[0]; }\n"
        "kernel void k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "  threadgroup float tile[32];\n"
        "  tile[i] = x[i];\n"
        "  threadgroup_barrier(mem_flags::mem_threadgroup);\n"
        "  if (i == 0) {\n"
        "    x[0] = first(tile + 1);\n"
        "  }\n}\n",
        9,
        r"'first' takes a `device` pointer as its argument 1, but 'tile' is threadgroup memory",
    ),
    (
        "mutable_global",
        "float counter = 0;\nkernel void k(device float* x [[buffer(0)]]) { x[0] = counter; }\n",
        3,
        r"program-scope variable 'counter' is not `constant`.*shared by every thread",
    ),
    (
        "static_local",
        "kernel void k(device float* x [[buffer(0)]]) {\n  static int calls = 0;\n"
        "  x[0] = calls++; }\n",
        4,
        r"static variable 'calls' is not `constant`: MSL has no writable static variables",
    ),
    (
        "function_pointer",
        "float twice(float v) { return 2 * v; }\n"
        "kernel void k(device float* x [[buffer(0)]]) {\n"
        "  float (*f)(float) = twice;\n  x[0] = f(x[0]); }\n",
        5,
        r"MSL has no function pointers \('f'\)",
    ),
    (
        "double",
        "kernel void k(device float* x [[buffer(0)]]) {\n  double acc = x[0];\n"
        "  x[0] = float(acc); }\n",
        4,
        r"MSL has no double: use float",
    ),
    (
        "std_max",
        "kernel void k(device float* x [[buffer(0)]]) {\n  x[0] = std::max(x[0], 1.0f); }\n",
        4,
        r"MSL has no C\+\+ standard library \(std::\): use the metal:: functions",
    ),
    (
        "std_vector",
        "kernel void k(device float* x [[buffer(0)]]) {\n  std::vector<float> v(4);\n"
        "  x[0] = v[0]; }\n",
        4,
        r"MSL has no C\+\+ standard library",
    ),
    (
        "new",
        "kernel void k(device float* x [[buffer(0)]]) {\n  float* p = new float[4];\n"
        "  x[0] = p[0]; }\n",
        4,
        r"MSL has no dynamic memory \(new\)",
    ),
    (
        "malloc",
        "kernel void k(device float* x [[buffer(0)]]) {\n"
        "  float* p = (float*)malloc(16);\n  x[0] = p[0]; }\n",
        4,
        r"MSL has no dynamic memory \(malloc\)",
    ),
    (
        "throw",
        "kernel void k(device float* x [[buffer(0)]]) {\n  if (x[0] < 0) throw 1;\n}\n",
        4,
        r"MSL has no exceptions",
    ),
    (
        "virtual",
        "struct Shape { virtual float area() const { return 0; } };\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = 0; }\n",
        3,
        r"MSL has no virtual functions",
    ),
    (
        "thread_local",
        "kernel void k(device float* x [[buffer(0)]]) {\n  thread_local float t = 0;\n"
        "  x[0] = t; }\n",
        4,
        r"MSL has no thread_local",
    ),
    (
        "goto",
        "kernel void k(device float* x [[buffer(0)]]) {\n  goto done;\n done:\n  x[0] = 0; }\n",
        4,
        r"MSL has no goto",
    ),
    (
        "variable_length_array",
        "kernel void k(device float* x [[buffer(0)]], constant int& n [[buffer(1)]]) {\n"
        "  float a[n];\n  a[0] = 1; x[0] = a[0]; }\n",
        4,
        r"MSL has no variable-length arrays",
    ),
    (
        "recursion",
        "float fact(float n) { return n <= 1 ? 1 : n * fact(n - 1); }\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = fact(x[0]); }\n",
        3,
        r"MSL has no recursion: 'float fact\(float\)' calls 'float fact\(float\)'",
    ),
    (
        "mutual_recursion",
        "float odd(uint n);\n"
        "float even(uint n) { return n == 0 ? 1 : odd(n - 1); }\n"
        "float odd(uint n) { return n == 0 ? 0 : even(n - 1); }\n"
        "kernel void k(device float* x [[buffer(0)]]) { x[0] = even(uint(x[0])); }\n",
        r"[45]",
        r"MSL has no recursion: 'float (even|odd)\(uint\)' calls",
    ),
    (
        "packed_vector_to_other_element_type",
        "kernel void k(device const packed_half4* x [[buffer(0)]],"
        " device float4* y [[buffer(1)]]) {\n  y[0] = float4(x[0]); }\n",
        4,
        r"MSL converts a packed vector only to the vector of the same element type.*"
        r"float4\(bfloat4\(packed\)\)",
    ),
    (
        "swizzle_written_twice",
        "kernel void k(device float4* x [[buffer(0)]]) {\n  float4 v = x[0];\n"
        "  v.xx = float2(1.0f);\n  x[0] = v; }\n",
        5,
        r"MSL refuses a swizzle that is assigned to and names a component twice",
    ),
    (
        "instantiation_without_host_name",
        "template <typename T>\n[[kernel]] void k(device T* x [[buffer(0)]]) { x[0] = 0; }\n"
        "template [[kernel]] decltype(k<float>) k<float>;\n",
        5,
        r"an instantiated kernel needs a name: template \[\[host_name\(",
    ),
]


@pytest.mark.parametrize(("name", "body", "line", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_at_the_metal_line(name: str, body: str, line: int | str, message: str) -> None:
    with pytest.raises(metalsim.CompileError) as info:
        metalsim.Library.from_source(HEADER + body, name=f"{name}.metal")
    text = str(info.value)
    assert re.search(rf"{name}\.metal:{line}(:\d+)?: error: .*{message}", text), text


def test_printf_compiles_with_a_warning(capfd: pytest.CaptureFixture[str]) -> None:
    src = HEADER + (
        'kernel void k(device float* x [[buffer(0)]]) {\n  printf("x = %f\\n", x[0]);\n}\n'
    )
    with pytest.warns(
        metalsim.MetalWarning, match=r"printf_warns\.metal:4: warning: printf is a metalsim aid"
    ):
        lib = metalsim.Library.from_source(src, name="printf_warns.metal")
    lib.dispatch("k", 1, 1, {0: np.array([2.0], np.float32)})
    assert capfd.readouterr().out == "x = 2.000000\n"


def test_valid_neighbours_of_refused_constructs_compile() -> None:
    """What the rules must not catch: constants at program scope, constant statics, function
    declarations, threadgroup pointers passed to helpers, packed -> same-type -> float."""
    src = HEADER + (
        "constant float table[2] = {1.0f, 2.0f};\n"
        "constant constexpr uint N = 4;\n"
        "float helper(threadgroup float* t, uint i);\n"
        "float helper(threadgroup float* t, uint i) { return t[i]; }\n"
        "float value(float v) { return v; }\n"
        "struct Limits { static constexpr constant float big = 1e30f; };\n"
        "kernel void k(device const packed_half4* h [[buffer(0)]],\n"
        "              device float* x [[buffer(1)]],\n"
        "              uint i [[thread_position_in_grid]]) {\n"
        "  threadgroup float tile[N];\n"
        "  threadgroup float* row = tile;\n"
        "  constexpr int M = 2;\n"
        "  float local[M];\n"
        '  static_assert(M == 2, "two");\n'
        "  row[i] = table[i % 2] + Limits::big * 0.0f;\n"
        "  local[0] = float4(half4(h[0])).x;\n"
        "  threadgroup_barrier(mem_flags::mem_threadgroup);\n"
        "  x[i] = helper(tile, i) + local[0] + value(tile[0]) * 0.0f;\n"
        "}\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = metalsim.Library.from_source(src, name="valid_neighbours.metal")
    x = np.zeros(4, np.float32)
    lib.dispatch("k", 1, 4, {0: np.array([3, 0, 0, 0], np.float16), 1: x})
    np.testing.assert_array_equal(x, [4, 5, 4, 5])
