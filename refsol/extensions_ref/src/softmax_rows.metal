// Week 3, day 1: a row softmax on the GPU, the course's first Metal kernel.
//
// One threadgroup per row, `threads_per_threadgroup` threads (a multiple of 32, at most 1024)
// striding over the row's n columns. Thread t of the group handles columns t, t + T, t + 2T...
//
//   row r of x:  | c0 c1 ... c31 | c32 ... c63 | ... | cT ... |
//   thread:        t0 t1 ... t31   t32 ... t63   ...   t0 ...
//   SIMD group:    <---- sg 0 ---> <--- sg 1 -->
//
// Each reduction (max, then sum) runs in three steps:
//   1. every thread reduces its own columns in a register;
//   2. simd_max / simd_sum combine the 32 lanes of each SIMD group; lane 0 writes the SIMD
//      group's result to partial[simd_gid] in threadgroup memory;
//   3. after a barrier, every SIMD group reads all of partial[] and reduces it again with one
//      more simd_max / simd_sum, so every thread ends up with the row's value.
#include <metal_stdlib>

using namespace metal;

[[kernel]] void softmax_rows_f32(
    device const float* x [[buffer(0)]],
    device float* out [[buffer(1)]],
    constant int& n [[buffer(2)]],
    uint row [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint threads [[threads_per_threadgroup]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  // One float per SIMD group: at most 1024 / 32 = 32 of them.
  threadgroup float partial[32];
  const uint num_sg = (threads + 31) / 32;
  device const float* x_row = x + size_t(row) * n;
  device float* out_row = out + size_t(row) * n;

  // ---- the row maximum
  float m = -INFINITY;
  for (int j = tid; j < n; j += threads) {
    m = max(m, x_row[j]);
  }
  m = simd_max(m);
  if (simd_lid == 0) {
    partial[simd_gid] = m;
  }
  // Barrier 1: partial[] is complete before any SIMD group reads it.
  threadgroup_barrier(mem_flags::mem_threadgroup);
  m = simd_max(simd_lid < num_sg ? partial[simd_lid] : -INFINITY);
  // Barrier 2: every SIMD group has read partial[] before lane 0s overwrite it with sums.
  threadgroup_barrier(mem_flags::mem_threadgroup);

  // ---- the row sum of exp(x - max)
  float l = 0.0f;
  for (int j = tid; j < n; j += threads) {
    l += exp(x_row[j] - m);
  }
  l = simd_sum(l);
  if (simd_lid == 0) {
    partial[simd_gid] = l;
  }
  // Barrier 3: the partial sums are complete before they are read.
  threadgroup_barrier(mem_flags::mem_threadgroup);
  l = simd_sum(simd_lid < num_sg ? partial[simd_lid] : 0.0f);

  // ---- normalise: each thread writes the columns it read
  const float inv_l = 1.0f / l;
  for (int j = tid; j < n; j += threads) {
    out_row[j] = exp(x_row[j] - m) * inv_l;
  }
}
