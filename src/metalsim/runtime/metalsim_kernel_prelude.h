// Included first by every translation unit that metalsim generates from .metal sources.
// It brings in the simulated Metal standard library (all of it, so that none of it is compiled
// under the rules at the end), then turns the MSL keywords that C++ lacks into nothing: address
// spaces are a property the simulator does not need (all memory is host memory), and `kernel`
// only marks an entry point, which the generator found already. `constant` is read-only: the
// generator has already written `const` for it everywhere but next to an explicit
// `const`/`constexpr`; the macro removes the rest.
#pragma once

#include <cstdio>

#include <metal_logging>
#include <metal_stdlib>

#define device
#define constant
#define thread
#define threadgroup
#define kernel
#define METAL_FUNC inline
#define __METAL_VERSION__ 320
#define METALSIM 1

// Strict MSL: what Apple's Metal compiler refuses is refused here too. From this line on (the
// kernel source and the code generated around it), these words are errors; metalsim's compile
// stage replaces GCC's "attempt to use poisoned" message by what MSL offers instead.
// (`#pragma metalsim allow_cxx` in a source lifts them: for metalsim's own tests of the
// runtime, which are C++ and not MSL.)
#ifndef METALSIM_ALLOW_CXX
#pragma GCC poison double std new delete throw try catch virtual thread_local goto typeid
#pragma GCC poison dynamic_cast malloc calloc realloc
#endif
