// Included first by every translation unit that metalsim generates from .metal sources.
// It brings in the simulated Metal standard library, then turns the MSL keywords that C++
// lacks into nothing: address spaces are a property the simulator does not need (all memory
// is host memory), and `kernel` only marks an entry point, which the generator found already.
// `constant` is read-only: the generator has already written `const` for it everywhere but in
// kernel parameters and next to an explicit `const`/`constexpr`; the macro removes the rest.
#pragma once

#include <cstdio>

#include <metal_stdlib>

#define device
#define constant
#define thread
#define threadgroup
#define kernel
#define METAL_FUNC inline
#define __METAL_VERSION__ 310
#define METALSIM 1
