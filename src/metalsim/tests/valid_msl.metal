// Valid MSL that real kernels use, one kernel per construct (see test_msl.py).
#include <metal_stdlib>
#include <metal_logging>
using namespace metal;

// [[maybe_unused]] and other standard attributes on kernel parameters.
kernel void attributes([[maybe_unused]] device float* unused [[buffer(0)]],
                       device float* out [[buffer(1)]],
                       uint i [[thread_position_in_grid]]) {
  [[maybe_unused]] int spare = 0;
  if (i < 4) [[likely]] {
    out[i] = float(i);
  }
}

// Template kernels, instantiated by name.
template <typename T, int N>
[[kernel]] void scale_by(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  threadgroup T staged[N];
  staged[i % N] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  x[i] = staged[i % N] * T(N);
}
template [[host_name("scale_by_float_4")]] [[kernel]] decltype(scale_by<float, 4>) scale_by<float, 4>;
template [[host_name("scale_by_int_3")]] [[kernel]] decltype(scale_by<int, 3>) scale_by<int, 3>;

// Function constants, set when the pipeline is created.
constant bool add_bias [[function_constant(0)]];
constant int repeats [[function_constant(1)]];
constant float bias [[function_constant(2)]];
constant bool doubled = repeats > 0 && add_bias; // computed from the pipeline's values
kernel void specialised(device float* x [[buffer(0)]],
                        device const float* extra [[buffer(1), function_constant(add_bias)]],
                        uint i [[thread_position_in_grid]]) {
  float v = x[i];
  for (int r = 0; r < repeats; ++r)
    v *= 2.0f;
  if (add_bias)
    v += bias + extra[i];
  x[i] = doubled ? -v : v;
}

// Swizzles, read and write.
kernel void swizzles(device float4* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  float4 v = x[i];
  float3 r = v.zyx;        // read
  v.xy = v.wz;             // write from a swizzle
  v.zw += float2(r.xy);    // compound write
  float4 c = v.rgba + v.abgr.wzyx;
  x[i] = c * 0.5f;
}

// Quad-groups: 4 consecutive threads of a SIMD group.
kernel void quads(device float* x [[buffer(0)]],
                  device float* out [[buffer(1)]],
                  uint i [[thread_position_in_grid]],
                  ushort q [[thread_index_in_quadgroup]],
                  uint quad [[quadgroup_index_in_threadgroup]]) {
  float v = x[i];
  out[4 * i + 0] = quad_sum(v);
  out[4 * i + 1] = quad_max(v);
  out[4 * i + 2] = quad_shuffle(v, 3);
  out[4 * i + 3] = quad_shuffle_xor(v, 1) + 1000.0f * q + 100000.0f * quad;
}

// min3/max3/median3, bit fields, MSL's constants, ulong.
kernel void scalars(device float* f [[buffer(0)]],
                    device uint* u [[buffer(1)]],
                    device ulong* big [[buffer(2)]]) {
  f[0] = min3(3.0f, -1.0f, 2.0f);
  f[1] = max3(3.0f, -1.0f, 2.0f);
  f[2] = median3(3.0f, -1.0f, 2.0f);
  f[3] = FLT_MAX;
  f[4] = HUGE_VALF;
  f[5] = M_PI_F;
  f[6] = M_SQRT1_2_F;
  f[7] = FLT_EPSILON;
  u[0] = extract_bits(0xabcd1234u, 8, 12);
  u[1] = insert_bits(0xffffffffu, 0u, 4, 8);
  u[2] = reverse_bits(1u);
  u[3] = uint(extract_bits(int(0xf0), 4, 4)); // signed: the field's top bit extends
  ulong one = 1;
  big[0] = one << 40;
}

// os_log, Metal's logging from shaders.
kernel void logging(device const float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if (i == 0)
    os_log_default.log("x[0] = %f", x[0]);
}

// simd_shuffle_and_fill_up / down.
kernel void fill(device float* data [[buffer(0)]],
                 device float* out [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
  out[2 * i] = simd_shuffle_and_fill_up(data[i], -data[i], ushort(2));
  out[2 * i + 1] = simd_shuffle_and_fill_down(data[i], -data[i], ushort(3), ushort(8));
}
