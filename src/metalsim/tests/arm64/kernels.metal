// Kernels for the arm64 run of metalsim's runtime (run.py): the fiber switch, barriers,
// SIMD-group collectives, and the sanitizer's checks, compiled for AArch64.
#include <metal_stdlib>
using namespace metal;

// Each SIMD group sums its lanes (simd_sum), shuffles, stages the sums in threadgroup memory
// across a barrier, and thread 0 adds them up: barriers and collectives in one dispatch.
kernel void block_sum(device const float* x [[buffer(0)]],
                      device float* out [[buffer(1)]],
                      device float* shuffled [[buffer(2)]],
                      uint gid [[threadgroup_position_in_grid]],
                      uint lid [[thread_index_in_threadgroup]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint lane [[thread_index_in_simdgroup]],
                      uint nsg [[simdgroups_per_threadgroup]],
                      uint n [[threads_per_threadgroup]]) {
  threadgroup float part[32];
  const float v = x[gid * n + lid];
  const float s = simd_sum(v);
  shuffled[gid * n + lid] = simd_shuffle_xor(v, 1u);
  if (lane == 0)
    part[sg] = s;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (lid == 0) {
    float t = 0.0f;
    for (uint i = 0; i < nsg; ++i)
      t += part[i];
    out[gid] = t;
  }
}

// SIMD group 1 reads what SIMD group 0 wrote, with no barrier between: a RaceError.
kernel void racy(device float* out [[buffer(0)]], uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  t[lid] = float(lid);
  out[lid] = t[63 - lid];
}

// One thread past the end of the buffer: a MemoryAccessError.
kernel void past_end(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i + 1] = 1.0f;
}

// Never ends: stopped at the deadline with a TimeoutError.
kernel void forever(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  float v = x[i];
  while (v >= 0.0f)
    v = v * 0.5f + 1.0f;
  x[i] = v;
}
