// Week 2, day 5: an 8-wide float vector the compiler can see, and the few operations the
// fast kernel needs on it (loads, stores, max, select, exp).
//
// f32x8 uses the GCC/Clang vector extension: `a + b`, `a * b` on it are element-wise, and the
// compiler turns them into one AVX instruction (x86-64) or two NEON instructions (arm64).
// Nothing here depends on the machine the extension is built on.
#pragma once

#include <cstdint>
#include <cstring>

namespace tiny_attn::simd {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

#define TINY_ATTN_INLINE inline __attribute__((always_inline))

// x86-64 machines differ (AVX2 + FMA or not). TINY_ATTN_MULTIVERSION compiles a function twice,
// for x86-64-v3 (AVX2, FMA) and for the baseline, and picks one when the library loads: the
// build runs everywhere and is fast where it can be. arm64 always has NEON: one version.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define TINY_ATTN_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TINY_ATTN_MULTIVERSION
#endif

// Some x86-64 machines (x86-64-v4: AVX-512) hold 16 floats a register, in 32 registers. A
// kernel may keep a version for them: TINY_ATTN_WIDE says the build can make one, compiled
// with TINY_ATTN_TARGET_WIDE, and wide_vectors() says at run time whether this machine runs it.
// (An f32x16 outside such a function is split into narrower pieces, and slowly.)
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define TINY_ATTN_WIDE 1
#define TINY_ATTN_TARGET_WIDE __attribute__((target("arch=x86-64-v4")))
inline bool wide_vectors() {
  return __builtin_cpu_supports("x86-64-v4");
}
#else
#define TINY_ATTN_WIDE 0
#endif

TINY_ATTN_INLINE f32x8 load(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v)); // an unaligned load: no alignment is assumed anywhere
  return v;
}

TINY_ATTN_INLINE void store(float* p, f32x8 v) {
  std::memcpy(p, &v, sizeof(v));
}

typedef float f32x16 __attribute__((vector_size(64)));

TINY_ATTN_INLINE f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

TINY_ATTN_INLINE void store16(float* p, f32x16 v) {
  std::memcpy(p, &v, sizeof(v));
}

// The 16 lanes added in halves: 8 floats whose sum is the sum of v.
TINY_ATTN_INLINE f32x8 fold(f32x16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

TINY_ATTN_INLINE f32x8 broadcast(float x) {
  // (vector op scalar) broadcasts the scalar; written this way GCC emits one vbroadcastss.
  return f32x8{} + x;
}

// mask ? a : b, element-wise; `mask` is the all-ones / all-zeros result of a comparison.
TINY_ATTN_INLINE f32x8 select(i32x8 mask, f32x8 a, f32x8 b) {
  return (f32x8)((mask & (i32x8)a) | (~mask & (i32x8)b));
}

TINY_ATTN_INLINE f32x8 max(f32x8 a, f32x8 b) {
  return select(a > b, a, b);
}

// e^x for x <= 0 (all the online softmax needs), to about 2 ulp, 0 below -87.3 and for -inf.
// e^x = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2, where a degree-6
// polynomial is accurate to float precision.
TINY_ATTN_INLINE f32x8 exp(f32x8 x) {
  const f32x8 lo = broadcast(-87.3f);
  const i32x8 underflow = x < lo;
  x = select(x > broadcast(88.0f), broadcast(88.0f), x);
  x = select(underflow, lo, x);
  // Rounding by adding 1.5 * 2^23: the sum's last mantissa bits hold round(x / ln 2).
  const f32x8 shifter = broadcast(12582912.0f);
  const f32x8 t = x * broadcast(1.44269504f) + shifter;
  const f32x8 n = t - shifter;
  const i32x8 n_int = (i32x8)t - (i32x8)shifter;
  // r = x - n ln 2, with ln 2 split in two so that the product stays exact.
  f32x8 r = x - n * broadcast(0.693359375f);
  r = r + n * broadcast(2.12194440e-4f);
  f32x8 p = broadcast(1.9875691500e-4f);
  p = p * r + broadcast(1.3981999507e-3f);
  p = p * r + broadcast(8.3334519073e-3f);
  p = p * r + broadcast(4.1665795894e-2f);
  p = p * r + broadcast(1.6666665459e-1f);
  p = p * r + broadcast(5.0000001201e-1f);
  p = p * r * r + r + broadcast(1.0f);
  // 2^n: put n + 127 into the exponent bits of a float.
  const f32x8 two_n = (f32x8)((n_int + 127) << 23);
  return select(underflow, broadcast(0.0f), p * two_n);
}

} // namespace tiny_attn::simd
