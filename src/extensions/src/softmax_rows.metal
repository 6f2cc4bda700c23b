// Week 3, day 1: a row softmax on the GPU, the course's first Metal kernel.
//
// One threadgroup per row, `threads` threads per threadgroup (a multiple of 32, at most 1024).
// See book/src/week3-01-gpu-model.md for the mapping and the three-step reduction.
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
  device const float* x_row = x + size_t(row) * n;
  device float* out_row = out + size_t(row) * n;

  // Task 1 (book/src/week3-01-gpu-model.md): thread tid handles column tid of its row, as the
  // placeholder below does; eval_gpu gives rows of up to 1024 columns that many threads.
  // TODO(Task 1): the row max m: each thread from its column, then simd_max, then lane 0
  //   writes partial[simd_gid]; a barrier; every SIMD group reduces partial[] with simd_max.
  // TODO(Task 1): a barrier before partial[] is reused (why? see the chapter).
  // TODO(Task 1): the row sum l of exp(x - m), the same way with simd_sum.
  // TODO(Task 1): each thread writes exp(x - m) / l for its column.
  // TODO(Task 2): rows longer than the threadgroup (n > threads): see
  //   book/src/week3-01-gpu-model.md, Task 2.
  const int j = int(tid);
  if (j < n) {
    out_row[j] = NAN; // placeholder: replace with the softmax
  }
}
