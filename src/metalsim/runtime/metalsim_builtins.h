// The Metal compiler's own intrinsics (__metal_*), which the headers of real Metal libraries
// (MLX's bf16_math.h, ...) call directly, mapped onto metalsim's standard library. The fast-math
// flag they pass is ignored: the simulator computes in float either way.
#pragma once

#define __METAL_MAYBE_FAST_MATH__ 0
#define __METAL_FAST_MATH__ 1
#define __METAL_PRECISE_MATH__ 0

namespace metal {
#define METALSIM_INTRINSIC1(name)                                                                  \
  template <class T> inline T __metal_##name(T x, int = 0) {                                       \
    return T(::metal::name(x));                                                                    \
  }
#define METALSIM_INTRINSIC2(name, fn)                                                              \
  template <class T> inline T __metal_##name(T x, T y, int = 0) {                                  \
    return T(::metal::fn(x, y));                                                                   \
  }
METALSIM_INTRINSIC1(fabs)
METALSIM_INTRINSIC1(acos)
METALSIM_INTRINSIC1(asin)
METALSIM_INTRINSIC1(atan)
METALSIM_INTRINSIC1(ceil)
METALSIM_INTRINSIC1(cos)
METALSIM_INTRINSIC1(cosh)
METALSIM_INTRINSIC1(exp)
METALSIM_INTRINSIC1(exp2)
METALSIM_INTRINSIC1(exp10)
METALSIM_INTRINSIC1(floor)
METALSIM_INTRINSIC1(fract)
METALSIM_INTRINSIC1(log)
METALSIM_INTRINSIC1(log2)
METALSIM_INTRINSIC1(log10)
METALSIM_INTRINSIC1(rint)
METALSIM_INTRINSIC1(round)
METALSIM_INTRINSIC1(rsqrt)
METALSIM_INTRINSIC1(sin)
METALSIM_INTRINSIC1(sinh)
METALSIM_INTRINSIC1(sqrt)
METALSIM_INTRINSIC1(tan)
METALSIM_INTRINSIC1(tanh)
METALSIM_INTRINSIC1(trunc)
METALSIM_INTRINSIC2(atan2, atan2)
METALSIM_INTRINSIC2(divide, divide)
METALSIM_INTRINSIC2(fmax, fmax)
METALSIM_INTRINSIC2(fmin, fmin)
METALSIM_INTRINSIC2(fmod, fmod)
METALSIM_INTRINSIC2(pow, pow)
METALSIM_INTRINSIC2(powr, powr)
#undef METALSIM_INTRINSIC1
#undef METALSIM_INTRINSIC2
template <class T> inline T __metal_acosh(T x, int = 0) {
  return T(std::acosh(float(x)));
}
template <class T> inline T __metal_asinh(T x, int = 0) {
  return T(std::asinh(float(x)));
}
template <class T> inline T __metal_atanh(T x, int = 0) {
  return T(std::atanh(float(x)));
}
template <class T> inline T __metal_cospi(T x, int = 0) {
  return T(std::cos(float(M_PI_F) * float(x)));
}
template <class T> inline T __metal_sinpi(T x, int = 0) {
  return T(std::sin(float(M_PI_F) * float(x)));
}
template <class T> inline T __metal_tanpi(T x, int = 0) {
  return T(std::tan(float(M_PI_F) * float(x)));
}
template <class T> inline T __metal_fma(T a, T b, T c, int = 0) {
  return T(std::fma(float(a), float(b), float(c)));
}
template <class T> inline T __metal_fmedian(T a, T b, T c, int = 0) {
  return median3(a, b, c);
}
template <class T> inline T __metal_fmedian3(T a, T b, T c, int = 0) {
  return median3(a, b, c);
}
template <class T> inline T __metal_fmax3(T a, T b, T c, int = 0) {
  return T(fmax(fmax(a, b), c));
}
template <class T> inline T __metal_fmin3(T a, T b, T c, int = 0) {
  return T(fmin(fmin(a, b), c));
}
template <class T> inline T __metal_ldexp(T x, int e, int = 0) {
  return T(std::ldexp(float(x), e));
}
template <class T, class E> inline T __metal_frexp(T x, E* e, int = 0) {
  int ei = 0;
  T r = T(std::frexp(float(x), &ei));
  *e = E(ei);
  return r;
}
template <class T> inline T __metal_nextafter(T x, T y) {
  return T(std::nextafter(float(x), float(y)));
}
template <class T> inline T __metal_simd_sum(T v) {
  return simd_sum(v);
}
template <class T> inline T __metal_simd_product(T v) {
  return simd_product(v);
}
template <class T> inline T __metal_simd_max(T v) {
  return simd_max(v);
}
template <class T> inline T __metal_simd_min(T v) {
  return simd_min(v);
}
template <class T> inline T __metal_simd_xor(T v) {
  if constexpr (std::is_integral_v<T>) {
    return simd_xor(v);
  } else { // a float's bits
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;
    return as_type<T>(simd_xor(as_type<U>(v)));
  }
}
template <class T> inline T __metal_simd_prefix_inclusive_sum(T v) {
  return simd_prefix_inclusive_sum(v);
}
template <class T> inline T __metal_simd_prefix_exclusive_sum(T v) {
  return simd_prefix_exclusive_sum(v);
}
template <class T> inline T __metal_simd_prefix_inclusive_product(T v) {
  return simd_prefix_inclusive_product(v);
}
template <class T> inline T __metal_simd_prefix_exclusive_product(T v) {
  return simd_prefix_exclusive_product(v);
}
template <class T, class L> inline T __metal_simd_broadcast(T v, L lane) {
  return simd_broadcast(v, ushort(lane));
}
template <class T, class L> inline T __metal_simd_shuffle(T v, L lane) {
  return simd_shuffle(v, ushort(lane));
}
template <class T, class L> inline T __metal_simd_shuffle_xor(T v, L mask) {
  return simd_shuffle_xor(v, ushort(mask));
}
template <class T, class L> inline T __metal_simd_shuffle_up(T v, L d) {
  return simd_shuffle_up(v, ushort(d));
}
template <class T, class L> inline T __metal_simd_shuffle_down(T v, L d) {
  return simd_shuffle_down(v, ushort(d));
}
template <class T, class L> inline T __metal_simd_shuffle_rotate_up(T v, L d) {
  return simd_shuffle_rotate_up(v, ushort(d));
}
template <class T, class L> inline T __metal_simd_shuffle_rotate_down(T v, L d) {
  return simd_shuffle_rotate_down(v, ushort(d));
}
template <class T, class L, class M>
inline T __metal_simd_shuffle_and_fill_up(T data, T filling, L delta, M modulo) {
  return simd_shuffle_and_fill_up(data, filling, ushort(delta), ushort(modulo));
}
template <class T, class L, class M>
inline T __metal_simd_shuffle_and_fill_down(T data, T filling, L delta, M modulo) {
  return simd_shuffle_and_fill_down(data, filling, ushort(delta), ushort(modulo));
}
template <class T> inline T __metal_get_simdgroup_size(T) {
  return T(32);
}
} // namespace metal
