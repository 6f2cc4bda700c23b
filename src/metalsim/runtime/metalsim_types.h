// metalsim: the Metal Shading Language types and math, as plain C++17.
//
// Scalars (half, bfloat, uint, ushort, uchar, ...), vectors (float2/3/4, packed_float4, ...),
// conversions, as_type, numeric_limits and the math library (exp, max, fma, rsqrt, select, ...,
// with fast:: and precise:: variants). Included by <metal_stdlib> in a kernel translation unit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace metal {

// ---------------------------------------------------------------- scalars

using uint = unsigned int;
using ushort = unsigned short;
using uchar = unsigned char;
// MSL's long and ulong are 64-bit, like C++'s long on LP64. ulong is the same type as glibc's
// ::ulong, so `ulong` stays unambiguous under `using namespace metal;`.
using ulong = unsigned long;

// A 16-bit float stored as bits; arithmetic happens in float and rounds back, as on hardware.
template <class Traits> struct soft_float16 {
  uint16_t bits;
  soft_float16() = default;
  template <class U, std::enable_if_t<std::is_arithmetic_v<U>, int> = 0>
  constexpr soft_float16(U v) : bits(Traits::from_float(static_cast<float>(v))) {}
  constexpr operator float() const {
    return Traits::to_float(bits);
  }
  static constexpr soft_float16 from_bits(uint16_t b) {
    soft_float16 r{};
    r.bits = b;
    return r;
  }
  template <class U> soft_float16& operator+=(U o) {
    return *this = soft_float16(float(*this) + float(o));
  }
  template <class U> soft_float16& operator-=(U o) {
    return *this = soft_float16(float(*this) - float(o));
  }
  template <class U> soft_float16& operator*=(U o) {
    return *this = soft_float16(float(*this) * float(o));
  }
  template <class U> soft_float16& operator/=(U o) {
    return *this = soft_float16(float(*this) / float(o));
  }
  constexpr soft_float16 operator-() const {
    return from_bits(uint16_t(bits ^ 0x8000u));
  }
};

// Only soft16 (op) soft16 stays 16-bit; mixing with float promotes to float (the conversion
// operator), which keeps overload resolution unambiguous.
#define METALSIM_SOFT16_BINOP(op)                                                                  \
  template <class Tr>                                                                              \
  constexpr soft_float16<Tr> operator op(soft_float16<Tr> a, soft_float16<Tr> b) {                 \
    return soft_float16<Tr>(float(a) op float(b));                                                 \
  }
METALSIM_SOFT16_BINOP(+)
METALSIM_SOFT16_BINOP(-)
METALSIM_SOFT16_BINOP(*)
METALSIM_SOFT16_BINOP(/)
#undef METALSIM_SOFT16_BINOP
#define METALSIM_SOFT16_CMP(op)                                                                    \
  template <class Tr> constexpr bool operator op(soft_float16<Tr> a, soft_float16<Tr> b) {         \
    return float(a) op float(b);                                                                   \
  }
METALSIM_SOFT16_CMP(<)
METALSIM_SOFT16_CMP(>)
METALSIM_SOFT16_CMP(<=)
METALSIM_SOFT16_CMP(>=)
METALSIM_SOFT16_CMP(==)
METALSIM_SOFT16_CMP(!=)
#undef METALSIM_SOFT16_CMP

// constexpr: MSL evaluates half/bfloat arithmetic in constant expressions (static_assert).
constexpr uint32_t float_bits(float f) {
  return __builtin_bit_cast(uint32_t, f);
}
constexpr float bits_float(uint32_t u) {
  return __builtin_bit_cast(float, u);
}

struct bfloat_traits {
  static constexpr uint16_t from_float(float f) {
    uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
      return uint16_t((u >> 16) | 0x40u); // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);      // round to nearest even
    return uint16_t(u >> 16);
  }
  static constexpr float to_float(uint16_t b) {
    return bits_float(uint32_t(b) << 16);
  }
};

struct ieee_half_traits {
  static constexpr uint16_t from_float(float f) {
    uint32_t x = float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
      return uint16_t(sign | 0x7e00u);
    if (ax >= 0x477ff000u)
      return uint16_t(sign | 0x7c00u); // overflow (after rounding) -> inf
    if (ax < 0x38800000u) {            // subnormal half or zero
      float a = bits_float(ax);
      uint32_t m = uint32_t(std::nearbyint(a * 16777216.0f)); // a / 2^-24
      return uint16_t(sign | m);
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u) - 0x38000000u;
    return uint16_t(sign | (r >> 13));
  }
  static constexpr float to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0)
      return bits_float(sign) + (sign ? -1.f : 1.f) * float(m) * 5.9604644775390625e-8f;
    if (e == 31)
      return bits_float(sign | 0x7f800000u | (m << 13));
    return bits_float(sign | ((e + 112) << 23) | (m << 13));
  }
};

using bfloat = soft_float16<bfloat_traits>;
using bfloat16_t = bfloat;

// _Float16 in C++: GCC 12 has it on x86-64 only (AArch64 from GCC 13), clang on both.
#if defined(__FLT16_MAX__) && !defined(METALSIM_SOFT_HALF) &&                                      \
    !(defined(__aarch64__) && !defined(__clang__) && defined(__GNUC__) && __GNUC__ < 13)
using half = _Float16;
#define METALSIM_NATIVE_HALF 1
#else
using half = soft_float16<ieee_half_traits>;
#define METALSIM_NATIVE_HALF 0
#endif
using float16_t = half;

template <class T> struct is_soft16 : std::false_type {};
template <class Tr> struct is_soft16<soft_float16<Tr>> : std::true_type {};

// Scalar types the math library accepts.
template <class T>
inline constexpr bool is_float_scalar_v = std::is_same_v<T, float> || std::is_same_v<T, half> ||
                                          std::is_same_v<T, bfloat> || std::is_same_v<T, double>;
template <class T>
inline constexpr bool is_scalar_v = is_float_scalar_v<T> || std::is_integral_v<T>;

// ---------------------------------------------------------------- vectors

template <class T, int N, bool Packed> struct vec_storage;

// Metal aligns an n-vector to its size rounded up to a power of two (float3: 16 bytes);
// packed_ vectors align to the scalar.
template <int N> constexpr int vec_slots() {
  return N == 3 ? 4 : N;
}

#define METALSIM_VEC_ALIGN(T, N, P) alignas((P) ? alignof(T) : sizeof(T) * vec_slots<N>())

template <class T, bool P> struct METALSIM_VEC_ALIGN(T, 2, P) vec_storage<T, 2, P> {
  union {
    struct {
      T x, y;
    };
    struct {
      T r, g;
    };
    T elems[2];
  };
};
template <class T, bool P> struct METALSIM_VEC_ALIGN(T, 3, P) vec_storage<T, 3, P> {
  union {
    struct {
      T x, y, z;
    };
    struct {
      T r, g, b;
    };
    T elems[3];
  };
};
template <class T, bool P> struct METALSIM_VEC_ALIGN(T, 4, P) vec_storage<T, 4, P> {
  union {
    struct {
      T x, y, z, w;
    };
    struct {
      T r, g, b, a;
    };
    T elems[4];
  };
};
#undef METALSIM_VEC_ALIGN

template <class T, int N, bool Packed> struct vec;

// A swizzle that is written to (`v.xy = ...`, `v.zyx += ...`): the generator turns `.xy` on the
// left of an assignment into `.template swz_ref<0, 1>()`. Metal refuses a written swizzle that
// names a component twice (`v.xx = ...`).
template <class T, int... I> struct swizzle_ref {
  static constexpr int M = sizeof...(I);
  T* e;
  using value_type = vec<T, M, false>;
  operator value_type() const {
    return value_type(e[I]...);
  }
  template <class V> swizzle_ref& operator=(const V& v) {
    value_type t(v);
    int k = 0;
    ((e[I] = t.elems[k++]), ...);
    return *this;
  }
  swizzle_ref& operator=(const swizzle_ref& o) {
    return *this = value_type(o);
  }
#define METALSIM_SWIZZLE_COMPOUND(op)                                                              \
  template <class V> swizzle_ref& operator op## = (const V& v) {                                   \
    return *this = value_type(value_type(*this) op value_type(v));                                 \
  }
  METALSIM_SWIZZLE_COMPOUND(+)
  METALSIM_SWIZZLE_COMPOUND(-)
  METALSIM_SWIZZLE_COMPOUND(*)
  METALSIM_SWIZZLE_COMPOUND(/)
#undef METALSIM_SWIZZLE_COMPOUND
};

template <int... I> constexpr bool swizzle_components_distinct() {
  int idx[] = {I...};
  for (int a = 0; a < int(sizeof...(I)); ++a)
    for (int b = a + 1; b < int(sizeof...(I)); ++b)
      if (idx[a] == idx[b])
        return false;
  return true;
}

template <class T, int N, bool Packed = false> struct vec : vec_storage<T, N, Packed> {
  using value_type = T;
  static constexpr int size = N;
  using vec_storage<T, N, Packed>::elems;

  vec() = default;
  // A scalar broadcasts (float4 v = 0.0f;).
  template <class U, std::enable_if_t<is_scalar_v<U> || is_soft16<U>::value, int> = 0> vec(U s) {
    for (int i = 0; i < N; ++i)
      elems[i] = T(s);
  }
  template <class A, class B, int M = N, std::enable_if_t<M == 2, int> = 0> vec(A a, B b) {
    elems[0] = T(a);
    elems[1] = T(b);
  }
  template <
      class A,
      class B,
      class C,
      int M = N,
      std::enable_if_t<M == 3, int> = 0,
      std::enable_if_t<is_scalar_v<A> || is_soft16<A>::value, int> = 0>
  vec(A a, B b, C c) {
    elems[0] = T(a);
    elems[1] = T(b);
    elems[2] = T(c);
  }
  template <class A, class B, class C, class D, int M = N, std::enable_if_t<M == 4, int> = 0>
  vec(A a, B b, C c, D d) {
    elems[0] = T(a);
    elems[1] = T(b);
    elems[2] = T(c);
    elems[3] = T(d);
  }
  // Concatenations: float4(float2, float2), float4(float3, w), float3(float2, z), ...
  template <class U, bool P1, class V, bool P2, int M = N, std::enable_if_t<M == 4, int> = 0>
  vec(vec<U, 2, P1> a, vec<V, 2, P2> b) {
    elems[0] = T(a.elems[0]);
    elems[1] = T(a.elems[1]);
    elems[2] = T(b.elems[0]);
    elems[3] = T(b.elems[1]);
  }
  template <
      class U,
      bool P1,
      class S,
      int M = N,
      std::enable_if_t<M == 4 && is_scalar_v<S>, int> = 0>
  vec(vec<U, 3, P1> a, S s) {
    for (int i = 0; i < 3; ++i)
      elems[i] = T(a.elems[i]);
    elems[3] = T(s);
  }
  template <
      class U,
      bool P1,
      class S,
      int M = N,
      std::enable_if_t<M == 3 && is_scalar_v<S>, int> = 0>
  vec(vec<U, 2, P1> a, S s) {
    elems[0] = T(a.elems[0]);
    elems[1] = T(a.elems[1]);
    elems[2] = T(s);
  }
  // Same length, another scalar type or packing: float4(half4), float4(packed_float4).
  // MSL promises a packed vector converts only to the aligned vector of its own element type
  // (and back); another element type goes through the aligned vector first.
  template <class U, bool P2, std::enable_if_t<!(std::is_same_v<U, T> && P2 == Packed), int> = 0>
  vec(const vec<U, N, P2>& o) {
    static_assert(
        std::is_same_v<U, T> || (!P2 && !Packed),
        "MSL converts a packed vector only to the vector of the same element type "
        "(float4(packed_float4)): for another element type convert in two steps, e.g. "
        "float4(bfloat4(packed))");
    for (int i = 0; i < N; ++i)
      elems[i] = T(o.elems[i]);
  }

  // Swizzles: the generator turns `.zyx` into `.template swz<2, 1, 0>()` (a copy) and a written
  // swizzle into `.template swz_ref<...>()`.
  template <int... I> vec<T, int(sizeof...(I)), false> swz() const {
    static_assert(((I < N) && ...), "swizzle: the vector has no such component");
    return vec<T, int(sizeof...(I)), false>(elems[I]...);
  }
  template <int... I> swizzle_ref<T, I...> swz_ref() {
    static_assert(((I < N) && ...), "swizzle: the vector has no such component");
    static_assert(
        swizzle_components_distinct<I...>(),
        "MSL refuses a swizzle that is assigned to and names a component twice (v.xx = ...)");
    return swizzle_ref<T, I...>{elems};
  }

  T& operator[](int i) {
    return elems[i];
  }
  const T& operator[](int i) const {
    return elems[i];
  }

#define METALSIM_VEC_COMPOUND(op)                                                                  \
  vec& operator op## = (const vec& o) {                                                            \
    for (int i = 0; i < N; ++i)                                                                    \
      elems[i] = T(elems[i] op o.elems[i]);                                                        \
    return *this;                                                                                  \
  }                                                                                                \
  template <class U, std::enable_if_t<is_scalar_v<U>, int> = 0> vec& operator op## = (U s) {       \
    for (int i = 0; i < N; ++i)                                                                    \
      elems[i] = T(elems[i] op T(s));                                                              \
    return *this;                                                                                  \
  }
  METALSIM_VEC_COMPOUND(+)
  METALSIM_VEC_COMPOUND(-)
  METALSIM_VEC_COMPOUND(*)
  METALSIM_VEC_COMPOUND(/)
#undef METALSIM_VEC_COMPOUND
};

template <class T> struct is_vec : std::false_type {};
template <class T, int N, bool P> struct is_vec<vec<T, N, P>> : std::true_type {};

#define METALSIM_VEC_BINOP(op)                                                                     \
  template <class T, int N, bool P>                                                                \
  inline vec<T, N, P> operator op(const vec<T, N, P>& a, const vec<T, N, P>& b) {                  \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = T(a.elems[i] op b.elems[i]);                                                    \
    return r;                                                                                      \
  }                                                                                                \
  template <class T, int N, bool P, class U, std::enable_if_t<is_scalar_v<U>, int> = 0>            \
  inline vec<T, N, P> operator op(const vec<T, N, P>& a, U s) {                                    \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = T(a.elems[i] op T(s));                                                          \
    return r;                                                                                      \
  }                                                                                                \
  template <class T, int N, bool P, class U, std::enable_if_t<is_scalar_v<U>, int> = 0>            \
  inline vec<T, N, P> operator op(U s, const vec<T, N, P>& a) {                                    \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = T(T(s) op a.elems[i]);                                                          \
    return r;                                                                                      \
  }
METALSIM_VEC_BINOP(+)
METALSIM_VEC_BINOP(-)
METALSIM_VEC_BINOP(*)
METALSIM_VEC_BINOP(/)
METALSIM_VEC_BINOP(%)
METALSIM_VEC_BINOP(&)
METALSIM_VEC_BINOP(|)
METALSIM_VEC_BINOP(^)
METALSIM_VEC_BINOP(<<)
METALSIM_VEC_BINOP(>>)
#undef METALSIM_VEC_BINOP

#define METALSIM_VEC_CMP(op)                                                                       \
  template <class T, int N, bool P>                                                                \
  inline vec<bool, N> operator op(const vec<T, N, P>& a, const vec<T, N, P>& b) {                  \
    vec<bool, N> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = a.elems[i] op b.elems[i];                                                       \
    return r;                                                                                      \
  }                                                                                                \
  template <class T, int N, bool P, class U, std::enable_if_t<is_scalar_v<U>, int> = 0>            \
  inline vec<bool, N> operator op(const vec<T, N, P>& a, U s) {                                    \
    vec<bool, N> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = a.elems[i] op T(s);                                                             \
    return r;                                                                                      \
  }
METALSIM_VEC_CMP(<)
METALSIM_VEC_CMP(>)
METALSIM_VEC_CMP(<=)
METALSIM_VEC_CMP(>=)
METALSIM_VEC_CMP(==)
METALSIM_VEC_CMP(!=)
#undef METALSIM_VEC_CMP

template <class T, int N, bool P> inline vec<T, N, P> operator-(const vec<T, N, P>& a) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = T(-a.elems[i]);
  return r;
}
template <int N> inline vec<bool, N> operator!(const vec<bool, N>& a) {
  vec<bool, N> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = !a.elems[i];
  return r;
}

#define METALSIM_VEC_ALIASES(T, name)                                                              \
  using name##2 = vec<T, 2>;                                                                       \
  using name##3 = vec<T, 3>;                                                                       \
  using name##4 = vec<T, 4>;                                                                       \
  using packed_##name##2 = vec<T, 2, true>;                                                        \
  using packed_##name##3 = vec<T, 3, true>;                                                        \
  using packed_##name##4 = vec<T, 4, true>;
METALSIM_VEC_ALIASES(float, float)
METALSIM_VEC_ALIASES(half, half)
METALSIM_VEC_ALIASES(bfloat, bfloat)
METALSIM_VEC_ALIASES(int, int)
METALSIM_VEC_ALIASES(uint, uint)
METALSIM_VEC_ALIASES(short, short)
METALSIM_VEC_ALIASES(ushort, ushort)
METALSIM_VEC_ALIASES(char, char)
METALSIM_VEC_ALIASES(uchar, uchar)
METALSIM_VEC_ALIASES(bool, bool)
METALSIM_VEC_ALIASES(long, long)
METALSIM_VEC_ALIASES(ulong, ulong)
#undef METALSIM_VEC_ALIASES

// ---------------------------------------------------------------- conversions, limits

// as_type<T>(x): reinterpret the bits (sizes must match, as in MSL).
template <class T, class U> inline T as_type(const U& u) {
  static_assert(sizeof(T) == sizeof(U), "as_type: source and destination sizes differ");
  T t;
  std::memcpy(&t, &u, sizeof(T));
  return t;
}

template <class T> struct numeric_limits : std::numeric_limits<T> {};

// constexpr, as in MSL (`constant T x = numeric_limits<T>::max();` is a constant expression).
template <class Tr> struct numeric_limits<soft_float16<Tr>> {
  using T = soft_float16<Tr>;
  static constexpr bool bf = std::is_same_v<Tr, bfloat_traits>;
  static constexpr bool is_specialized = true;
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr bool has_infinity = true;
  static constexpr bool has_quiet_NaN = true;
  static constexpr int digits = bf ? 8 : 11;
  static constexpr T infinity() {
    return T::from_bits(bf ? 0x7f80 : 0x7c00);
  }
  static constexpr T quiet_NaN() {
    return T::from_bits(bf ? 0x7fc0 : 0x7e00);
  }
  static constexpr T max() {
    return T::from_bits(bf ? 0x7f7f : 0x7bff);
  }
  static constexpr T lowest() {
    return T::from_bits(bf ? 0xff7f : 0xfbff);
  }
  static constexpr T min() {
    return T::from_bits(bf ? 0x0080 : 0x0400);
  }
  static constexpr T epsilon() {
    return T::from_bits(bf ? 0x3c00 : 0x1400);
  }
};

#if METALSIM_NATIVE_HALF
template <> struct numeric_limits<_Float16> {
  static constexpr bool is_specialized = true;
  static constexpr _Float16 infinity() {
    return _Float16(__builtin_huge_valf());
  }
  static constexpr _Float16 quiet_NaN() {
    return _Float16(__builtin_nanf(""));
  }
  static constexpr _Float16 max() {
    return _Float16(65504.0f);
  }
  static constexpr _Float16 lowest() {
    return _Float16(-65504.0f);
  }
  static constexpr _Float16 min() {
    return _Float16(6.103515625e-05f);
  }
  static constexpr _Float16 epsilon() {
    return _Float16(0.0009765625f);
  }
};
#endif

// The constants of MSL's <metal_math> (float _F, half _H variants) and <metal_limits>.
#undef FLT_MAX
#undef FLT_MIN
#undef FLT_EPSILON
#undef HUGE_VALF
#undef INFINITY
#undef NAN
#undef M_PI
#undef MAXFLOAT
#define MAXFLOAT __FLT_MAX__
#define FLT_MAX __FLT_MAX__
#define FLT_MIN __FLT_MIN__
#define FLT_EPSILON __FLT_EPSILON__
#define FLT_MANT_DIG 24
#define FLT_MAX_EXP 128
#define FLT_MIN_EXP (-125)
#define HUGE_VALF __builtin_huge_valf()
#define INFINITY __builtin_huge_valf()
#define NAN __builtin_nanf("")
#define MAXHALF 65504.0f
#define HALF_MAX 65504.0f
#define HALF_MIN 6.103515625e-05f
#define HALF_EPSILON 0.0009765625f
#define HUGE_VALH ::metal::numeric_limits<::metal::half>::infinity()
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.4426950408889634f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.6931471805599453f
#define M_LN10_F 2.30258509299404568402f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_2_SQRTPI_F 1.12837916709551257390f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
#define M_E_H ::metal::half(M_E_F)
#define M_LOG2E_H ::metal::half(M_LOG2E_F)
#define M_LOG10E_H ::metal::half(M_LOG10E_F)
#define M_LN2_H ::metal::half(M_LN2_F)
#define M_LN10_H ::metal::half(M_LN10_F)
#define M_PI_H ::metal::half(M_PI_F)
#define M_PI_2_H ::metal::half(M_PI_2_F)
#define M_PI_4_H ::metal::half(M_PI_4_F)
#define M_1_PI_H ::metal::half(M_1_PI_F)
#define M_2_PI_H ::metal::half(M_2_PI_F)
#define M_2_SQRTPI_H ::metal::half(M_2_SQRTPI_F)
#define M_SQRT2_H ::metal::half(M_SQRT2_F)
#define M_SQRT1_2_H ::metal::half(M_SQRT1_2_F)
#ifndef CHAR_BIT
#define CHAR_BIT 8
#endif
#ifndef SCHAR_MAX
#define SCHAR_MAX 127
#endif
#ifndef SCHAR_MIN
#define SCHAR_MIN (-128)
#endif
#ifndef UCHAR_MAX
#define UCHAR_MAX 255
#endif
#ifndef CHAR_MAX
#define CHAR_MAX SCHAR_MAX
#endif
#ifndef CHAR_MIN
#define CHAR_MIN SCHAR_MIN
#endif
#ifndef USHRT_MAX
#define USHRT_MAX 65535
#endif
#ifndef SHRT_MAX
#define SHRT_MAX 32767
#endif
#ifndef SHRT_MIN
#define SHRT_MIN (-32768)
#endif
#ifndef UINT_MAX
#define UINT_MAX 0xffffffffu
#endif
#ifndef INT_MAX
#define INT_MAX 2147483647
#endif
#ifndef INT_MIN
#define INT_MIN (-2147483647 - 1)
#endif
#ifndef ULONG_MAX
#define ULONG_MAX 0xffffffffffffffffUL
#endif
#ifndef LONG_MAX
#define LONG_MAX 0x7fffffffffffffffL
#endif
#ifndef LONG_MIN
#define LONG_MIN (-0x7fffffffffffffffL - 1)
#endif

// ---------------------------------------------------------------- math

// Scalar float math is computed in float (half/bfloat round on return); vectors elementwise.
#define METALSIM_UNARY(name, expr)                                                                 \
  template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T name(T x_) {        \
    float x = float(x_);                                                                           \
    return T(expr);                                                                                \
  }                                                                                                \
  template <class T, int N, bool P> inline vec<T, N, P> name(const vec<T, N, P>& v) {              \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = name(v.elems[i]);                                                               \
    return r;                                                                                      \
  }
METALSIM_UNARY(exp, std::exp(x))
METALSIM_UNARY(exp2, std::exp2(x))
METALSIM_UNARY(exp10, std::pow(10.0f, x))
METALSIM_UNARY(log, std::log(x))
METALSIM_UNARY(log2, std::log2(x))
METALSIM_UNARY(log10, std::log10(x))
METALSIM_UNARY(sqrt, std::sqrt(x))
METALSIM_UNARY(rsqrt, 1.0f / std::sqrt(x))
METALSIM_UNARY(sin, std::sin(x))
METALSIM_UNARY(cos, std::cos(x))
METALSIM_UNARY(tan, std::tan(x))
METALSIM_UNARY(asin, std::asin(x))
METALSIM_UNARY(acos, std::acos(x))
METALSIM_UNARY(atan, std::atan(x))
METALSIM_UNARY(sinh, std::sinh(x))
METALSIM_UNARY(cosh, std::cosh(x))
METALSIM_UNARY(tanh, std::tanh(x))
METALSIM_UNARY(floor, std::floor(x))
METALSIM_UNARY(ceil, std::ceil(x))
METALSIM_UNARY(round, std::round(x))
METALSIM_UNARY(rint, std::nearbyint(x))
METALSIM_UNARY(trunc, std::trunc(x))
METALSIM_UNARY(fract, std::fmin(x - std::floor(x), 0x1.fffffep-1f))
METALSIM_UNARY(fabs, std::fabs(x))
METALSIM_UNARY(sign, (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x)))
METALSIM_UNARY(recip, 1.0f / x)
METALSIM_UNARY(erf, std::erf(x))
#undef METALSIM_UNARY

template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T abs(T x) {
  return T(std::fabs(float(x)));
}
template <class T, std::enable_if_t<std::is_integral_v<T> && std::is_signed_v<T>, int> = 0>
inline T abs(T x) {
  return x < 0 ? T(-x) : x;
}
template <class T, std::enable_if_t<std::is_integral_v<T> && std::is_unsigned_v<T>, int> = 0>
inline T abs(T x) {
  return x;
}
template <class T, int N, bool P> inline vec<T, N, P> abs(const vec<T, N, P>& v) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = abs(v.elems[i]);
  return r;
}

template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline bool isnan(T x) {
  return std::isnan(float(x));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline bool isinf(T x) {
  return std::isinf(float(x));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline bool isfinite(T x) {
  return std::isfinite(float(x));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline bool signbit(T x) {
  return std::signbit(float(x));
}

// max/min follow Metal (fmax/fmin for floats: a NaN argument yields the other one).
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> inline T max(T a, T b) {
  if constexpr (is_float_scalar_v<T>) {
    return T(std::fmax(float(a), float(b)));
  } else {
    return a < b ? b : a;
  }
}
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> inline T min(T a, T b) {
  if constexpr (is_float_scalar_v<T>) {
    return T(std::fmin(float(a), float(b)));
  } else {
    return b < a ? b : a;
  }
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T fmax(T a, T b) {
  return max(a, b);
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T fmin(T a, T b) {
  return min(a, b);
}
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T saturate(T x) {
  return clamp(x, T(0), T(1));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T pow(T a, T b) {
  return T(std::pow(float(a), float(b)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T powr(T a, T b) {
  return T(std::pow(float(a), float(b)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T fmod(T a, T b) {
  return T(std::fmod(float(a), float(b)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T atan2(T a, T b) {
  return T(std::atan2(float(a), float(b)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T copysign(T a, T b) {
  return T(std::copysign(float(a), float(b)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T step(T edge, T x) {
  return T(float(x) < float(edge) ? 0.0f : 1.0f);
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T divide(T a, T b) {
  return T(float(a) / float(b));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T fma(T a, T b, T c) {
  return T(std::fma(float(a), float(b), float(c)));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T mad(T a, T b, T c) {
  return T(float(a) * float(b) + float(c));
}
template <class T, std::enable_if_t<is_float_scalar_v<T>, int> = 0> inline T mix(T x, T y, T a) {
  return T(float(x) + (float(y) - float(x)) * float(a));
}
template <class T, std::enable_if_t<is_scalar_v<T>, int> = 0> inline T select(T a, T b, bool c) {
  return c ? b : a;
}

#define METALSIM_VEC_BINARY(name)                                                                  \
  template <class T, int N, bool P>                                                                \
  inline vec<T, N, P> name(const vec<T, N, P>& a, const vec<T, N, P>& b) {                         \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = name(a.elems[i], b.elems[i]);                                                   \
    return r;                                                                                      \
  }                                                                                                \
  template <class T, int N, bool P, class U, std::enable_if_t<is_scalar_v<U>, int> = 0>            \
  inline vec<T, N, P> name(const vec<T, N, P>& a, U b) {                                           \
    return name(a, vec<T, N, P>(T(b)));                                                            \
  }
METALSIM_VEC_BINARY(max)
METALSIM_VEC_BINARY(min)
METALSIM_VEC_BINARY(fmax)
METALSIM_VEC_BINARY(fmin)
METALSIM_VEC_BINARY(pow)
METALSIM_VEC_BINARY(powr)
METALSIM_VEC_BINARY(fmod)
METALSIM_VEC_BINARY(atan2)
METALSIM_VEC_BINARY(copysign)
METALSIM_VEC_BINARY(step)
METALSIM_VEC_BINARY(divide)
#undef METALSIM_VEC_BINARY

#define METALSIM_VEC_TERNARY(name)                                                                 \
  template <class T, int N, bool P>                                                                \
  inline vec<T, N, P> name(const vec<T, N, P>& a, const vec<T, N, P>& b, const vec<T, N, P>& c) {  \
    vec<T, N, P> r;                                                                                \
    for (int i = 0; i < N; ++i)                                                                    \
      r.elems[i] = name(a.elems[i], b.elems[i], c.elems[i]);                                       \
    return r;                                                                                      \
  }
METALSIM_VEC_TERNARY(fma)
METALSIM_VEC_TERNARY(mad)
METALSIM_VEC_TERNARY(mix)
METALSIM_VEC_TERNARY(clamp)
#undef METALSIM_VEC_TERNARY
template <class T, int N, bool P, class U, std::enable_if_t<is_scalar_v<U>, int> = 0>
inline vec<T, N, P> clamp(const vec<T, N, P>& x, U lo, U hi) {
  return clamp(x, vec<T, N, P>(T(lo)), vec<T, N, P>(T(hi)));
}
template <class T, int N, bool P>
inline vec<T, N, P> select(const vec<T, N, P>& a, const vec<T, N, P>& b, const vec<bool, N>& c) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = c.elems[i] ? b.elems[i] : a.elems[i];
  return r;
}
template <class T, int N, bool P>
inline vec<T, N, P> select(const vec<T, N, P>& a, const vec<T, N, P>& b, bool c) {
  return c ? b : a;
}
template <class T, int N, bool P> inline T dot(const vec<T, N, P>& a, const vec<T, N, P>& b) {
  float s = 0.0f;
  for (int i = 0; i < N; ++i)
    s += float(a.elems[i]) * float(b.elems[i]);
  return T(s);
}
template <class T, int N, bool P> inline T length(const vec<T, N, P>& a) {
  return T(std::sqrt(float(dot(a, a))));
}
template <class T, int N, bool P> inline vec<T, N, P> normalize(const vec<T, N, P>& a) {
  return a * T(1.0f / float(length(a)));
}
template <int N> inline bool all(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i)
    if (!v.elems[i])
      return false;
  return true;
}
template <int N> inline bool any(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i)
    if (v.elems[i])
      return true;
  return false;
}
inline bool all(bool b) {
  return b;
}
inline bool any(bool b) {
  return b;
}

template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0> inline T popcount(T x) {
  return T(__builtin_popcountll((unsigned long long)(std::make_unsigned_t<T>)x));
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0> inline T clz(T x) {
  using U = std::make_unsigned_t<T>;
  U u = U(x);
  if (u == 0)
    return T(sizeof(T) * 8);
  return T(__builtin_clzll((unsigned long long)u) - (64 - int(sizeof(T) * 8)));
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0> inline T ctz(T x) {
  using U = std::make_unsigned_t<T>;
  U u = U(x);
  if (u == 0)
    return T(sizeof(T) * 8);
  return T(__builtin_ctzll((unsigned long long)u));
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0> inline T mulhi(T a, T b) {
  return T((int64_t(a) * int64_t(b)) >> (sizeof(T) * 8));
}

// min3, max3, median3 (scalars and vectors).
template <class T> inline T min3(T a, T b, T c) {
  return min(min(a, b), c);
}
template <class T> inline T max3(T a, T b, T c) {
  return max(max(a, b), c);
}
template <class T> inline T median3(T a, T b, T c) {
  return max(min(a, b), min(max(a, b), c));
}

template <class T> inline T fmax3(T a, T b, T c) {
  return fmax(fmax(a, b), c);
}
template <class T> inline T fmin3(T a, T b, T c) {
  return fmin(fmin(a, b), c);
}
template <class T> inline T fmedian3(T a, T b, T c) {
  return median3(a, b, c);
}

// Bit fields of integers: extract_bits, insert_bits, reverse_bits (scalars and vectors).
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline T extract_bits(T x, uint offset, uint bits) {
  using U = std::make_unsigned_t<T>;
  constexpr uint W = sizeof(T) * 8;
  if (bits == 0)
    return T(0);
  U v = U(U(x) >> offset);
  if (bits < W)
    v &= U((U(1) << bits) - 1);
  if constexpr (std::is_signed_v<T>) { // signed: the field's top bit is extended
    if (bits < W && (v >> (bits - 1)) & 1)
      v |= U(~U(0) << bits);
  }
  return T(v);
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline T insert_bits(T base, T insert, uint offset, uint bits) {
  using U = std::make_unsigned_t<T>;
  constexpr uint W = sizeof(T) * 8;
  if (bits == 0)
    return base;
  U mask = bits < W ? U((U(1) << bits) - 1) : U(~U(0));
  mask = U(mask << offset);
  return T((U(base) & U(~mask)) | (U(U(insert) << offset) & mask));
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0> inline T reverse_bits(T x) {
  using U = std::make_unsigned_t<T>;
  U u = U(x), r = 0;
  for (uint i = 0; i < sizeof(T) * 8; ++i, u >>= 1)
    r = U((r << 1) | (u & 1));
  return T(r);
}
template <class T, int N, bool P>
inline vec<T, N, P> extract_bits(const vec<T, N, P>& x, uint offset, uint bits) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = extract_bits(x.elems[i], offset, bits);
  return r;
}
template <class T, int N, bool P>
inline vec<T, N, P>
insert_bits(const vec<T, N, P>& b, const vec<T, N, P>& x, uint offset, uint bits) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = insert_bits(b.elems[i], x.elems[i], offset, bits);
  return r;
}
template <class T, int N, bool P> inline vec<T, N, P> reverse_bits(const vec<T, N, P>& x) {
  vec<T, N, P> r;
  for (int i = 0; i < N; ++i)
    r.elems[i] = reverse_bits(x.elems[i]);
  return r;
}

// fast:: and precise:: name the same functions (the simulator computes in float either way).
namespace fast {
using metal::abs;
using metal::ceil;
using metal::clamp;
using metal::cos;
using metal::divide;
using metal::exp;
using metal::exp10;
using metal::exp2;
using metal::fabs;
using metal::floor;
using metal::fmax;
using metal::fmax3;
using metal::fmedian3;
using metal::fmin;
using metal::fmin3;
using metal::fract;
using metal::length;
using metal::log;
using metal::log10;
using metal::log2;
using metal::max;
using metal::max3;
using metal::median3;
using metal::min;
using metal::min3;
using metal::normalize;
using metal::pow;
using metal::powr;
using metal::round;
using metal::rsqrt;
using metal::sign;
using metal::sin;
using metal::sqrt;
using metal::tan;
using metal::tanh;
using metal::trunc;
} // namespace fast
namespace precise {
using namespace fast;
using metal::fma;
} // namespace precise

} // namespace metal
