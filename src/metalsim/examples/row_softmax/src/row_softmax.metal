// SPOILER for Week 3, Day 1 of the course (book/src/week3-01-gpu-model.md): this example
// solves that day in another form. Open it only after your own kernel passes the day's tests.
// Row softmax: one threadgroup per row, SIMD-group reductions for the row max and sum.
//
//   row r  ──►  threadgroup r (n_threads threads, n_threads / 32 SIMD groups)
//   thread t reads columns t, t + n_threads, ...; simd_max / simd_sum combine a SIMD group,
//   threadgroup memory (one slot per SIMD group) combines the SIMD groups.
#include <metal_stdlib>
using namespace metal;

// The max (or sum) over the whole threadgroup, returned to every thread.
template <bool IsMax>
float threadgroup_reduce(float v, threadgroup float* partial, uint simd_gid, uint simd_lid,
                         uint n_simd) {
    v = IsMax ? simd_max(v) : simd_sum(v);
    if (simd_lid == 0) partial[simd_gid] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float all = simd_lid < n_simd ? partial[simd_lid] : (IsMax ? -INFINITY : 0.0f);
    all = IsMax ? simd_max(all) : simd_sum(all);
    threadgroup_barrier(mem_flags::mem_threadgroup);  // partial is reused by the next reduction
    return all;
}

kernel void row_softmax_f32(device const float* x [[buffer(0)]],
                            device float* out [[buffer(1)]],
                            constant int& n_cols [[buffer(2)]],
                            threadgroup float* partial [[threadgroup(0)]],
                            uint row [[threadgroup_position_in_grid]],
                            uint tid [[thread_index_in_threadgroup]],
                            uint n_threads [[threads_per_threadgroup]],
                            uint simd_gid [[simdgroup_index_in_threadgroup]],
                            uint simd_lid [[thread_index_in_simdgroup]]) {
    device const float* xr = x + size_t(row) * n_cols;
    device float* outr = out + size_t(row) * n_cols;
    uint n_simd = (n_threads + 31) / 32;

    float m = -INFINITY;
    if (n_cols % 4 == 0) {
        // Rows of whole float4s: 16-byte loads (a Metal buffer is 16-byte aligned, and so is
        // every row when n_cols is a multiple of 4).
        device const float4* xr4 = reinterpret_cast<device const float4*>(xr);
        for (int j = tid; j < n_cols / 4; j += n_threads) {
            float4 v = xr4[j];
            m = max(m, max(max(v.x, v.y), max(v.z, v.w)));
        }
    } else {
        for (int j = tid; j < n_cols; j += n_threads) m = max(m, xr[j]);
    }
    m = threadgroup_reduce<true>(m, partial, simd_gid, simd_lid, n_simd);

    float l = 0.0f;
    for (int j = tid; j < n_cols; j += n_threads) l += exp(xr[j] - m);
    l = threadgroup_reduce<false>(l, partial, simd_gid, simd_lid, n_simd);

    for (int j = tid; j < n_cols; j += n_threads) outr[j] = exp(xr[j] - m) / l;
}
