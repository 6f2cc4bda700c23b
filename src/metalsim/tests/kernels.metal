// Kernels for metalsim's own tests (src/metalsim/tests). Each one exercises one feature.
#include <metal_stdlib>
using namespace metal;

// Every SIMD collective over the lanes whose `alive` flag is set (the others return first).
// out is (N_OPS, n_threads): row k holds op k's result per thread.
kernel void collectives(device const float* x [[buffer(0)]],
                        device const int* alive [[buffer(1)]],
                        device float* out [[buffer(2)]],
                        uint tid [[thread_position_in_grid]],
                        uint lane [[thread_index_in_simdgroup]],
                        uint n [[threads_per_grid]]) {
    if (!alive[tid]) return;
    float v = x[tid];
    out[0 * n + tid] = simd_sum(v);
    out[1 * n + tid] = simd_max(v);
    out[2 * n + tid] = simd_min(v);
    out[3 * n + tid] = simd_product(v);
    out[4 * n + tid] = simd_prefix_inclusive_sum(v);
    out[5 * n + tid] = simd_prefix_exclusive_sum(v);
    out[6 * n + tid] = simd_shuffle(v, (lane * 7 + 3) % 32);
    out[7 * n + tid] = simd_shuffle_xor(v, 5);
    out[8 * n + tid] = simd_shuffle_down(v, 3);
    out[9 * n + tid] = simd_shuffle_up(v, 2);
    out[10 * n + tid] = simd_broadcast(v, 6);
    out[11 * n + tid] = simd_broadcast_first(v);
    out[12 * n + tid] = float(uint64_t(simd_ballot(v > 0.0f)) & 0xffffu);
    out[13 * n + tid] = simd_any(v > 3.0f) ? 1.0f : 0.0f;
    out[14 * n + tid] = simd_all(v > -4.0f) ? 1.0f : 0.0f;
    out[15 * n + tid] = simd_is_first() ? 1.0f : 0.0f;
    out[16 * n + tid] = float(simd_sum(int(v)));
    float4 f4 = float4(v, 2.0f * v, 1.0f, 0.0f);
    out[17 * n + tid] = simd_sum(f4).y;
}

// Lanes 0-15 and 16-31 call simd_sum at different call sites: two separate active sets.
kernel void divergent_sums(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           uint tid [[thread_position_in_grid]],
                           uint lane [[thread_index_in_simdgroup]]) {
    float r;
    if (lane < 16) {
        r = simd_sum(x[tid]);
    } else {
        r = simd_sum(x[tid] * 10.0f);
    }
    out[tid] = r;
}

// Every thread writes its slot, then reads its mirror: needs the barrier.
kernel void reverse_in_group(device const float* x [[buffer(0)]],
                             device float* out [[buffer(1)]],
                             uint tid [[thread_index_in_threadgroup]],
                             uint gid [[threadgroup_position_in_grid]],
                             uint n [[threads_per_threadgroup]]) {
    threadgroup float tile[1024];
    tile[tid] = x[gid * n + tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid * n + tid] = tile[n - 1 - tid];
}

// Shared 2-D array and a scalar, with several barriers in a loop.
kernel void tg_2d(device float* out [[buffer(0)]],
                  uint2 t [[thread_position_in_threadgroup]],
                  uint2 size [[threads_per_threadgroup]]) {
    threadgroup float grid[8][9], total;
    if (t.x == 0 && t.y == 0) total = 0.0f;
    for (int round = 0; round < 3; ++round) {
        grid[t.y][t.x] = float(round * 100 + t.y * 8 + t.x);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (t.x == 0 && t.y == 0) {
            float s = 0.0f;
            for (uint i = 0; i < size.y; ++i)
                for (uint j = 0; j < size.x; ++j) s += grid[i][j];
            total += s;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[t.y * size.x + t.x] = total;
}

// Half the threads wait at one barrier, half at another: a deadlock.
kernel void split_barrier(device float* out [[buffer(0)]],
                          uint tid [[thread_index_in_threadgroup]]) {
    if (tid < 40) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[tid] = 1.0f;
}

// Threads that returned early do not hold a barrier up.
kernel void early_return_barrier(device float* out [[buffer(0)]],
                                 uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float s[64];
    if (tid >= 48) return;
    s[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = s[47 - tid];
}

// Reads threadgroup memory before anything writes it, then writes it.
kernel void read_uninitialized(device float* out_arr [[buffer(0)]],
                               device float* out_buf [[buffer(1)]],
                               device int* out_int [[buffer(2)]],
                               threadgroup float* scratch [[threadgroup(0)]],
                               uint tid [[thread_index_in_threadgroup]],
                               uint gid [[threadgroup_position_in_grid]]) {
    threadgroup float arr[32];
    threadgroup int ints[32];
    out_arr[gid * 32 + tid] = arr[tid];
    out_buf[gid * 32 + tid] = scratch[tid];
    out_int[gid * 32 + tid] = ints[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    arr[tid] = 1.0f;
    scratch[tid] = 2.0f;
    ints[tid] = 3;
}

// 8192 floats = 32 KiB of threadgroup memory, plus whatever [[threadgroup(0)]] adds.
kernel void big_threadgroup(device float* out [[buffer(0)]],
                            threadgroup float* extra [[threadgroup(0)]],
                            uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float big[8192];
    big[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = big[tid];
}

[[max_total_threads_per_threadgroup(256)]]
kernel void capped(device float* out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
    out[tid] = 1.0f;
}

// C = A B + C0 and D = A^T B with simdgroup matrices; E = 2 A via thread_elements.
kernel void matmul8(device const float* a [[buffer(0)]],
                    device const float* b [[buffer(1)]],
                    device const float* c0 [[buffer(2)]],
                    device float* c [[buffer(3)]],
                    device float* d [[buffer(4)]],
                    device float* e [[buffer(5)]],
                    threadgroup float* tile [[threadgroup(0)]],
                    uint lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 A, At, B, C0, C, D;
    simdgroup_load(A, a, 8);
    simdgroup_load(At, a, 8, ulong2(0, 0), true);
    // B comes from threadgroup memory with a row stride of 16, at column 4.
    for (uint i = lane; i < 8 * 16; i += 32) tile[i] = 0.0f;
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = lane; i < 64; i += 32) tile[(i / 8) * 16 + 4 + i % 8] = b[i];
    simdgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_load(B, tile, 16, ulong2(4, 0));
    simdgroup_load(C0, c0, 8);
    simdgroup_multiply_accumulate(C, A, B, C0);
    simdgroup_store(C, c, 8);
    simdgroup_multiply(D, At, B);
    simdgroup_store(D, d, 8);
    simdgroup_float8x8 E = A;
    E.thread_elements() *= 2.0f;
    simdgroup_float8x8 I = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_float8x8 Id(1.0f);
    simdgroup_multiply_accumulate(E, E, Id, I);
    simdgroup_store(E, e, 8);
}

// Every thread of every threadgroup adds to the same counters.
kernel void atomics(device atomic_int* count [[buffer(0)]],
                    device atomic_float* total [[buffer(1)]],
                    device atomic_uint* maxid [[buffer(2)]],
                    uint tid [[thread_position_in_grid]]) {
    atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(total, 0.5f, memory_order_relaxed);
    atomic_fetch_max_explicit(maxid, tid, memory_order_relaxed);
}

// Records which group and size each thread saw.
kernel void positions(device uint* out [[buffer(0)]],
                      uint3 tpig [[thread_position_in_grid]],
                      uint3 tgpig [[threadgroup_position_in_grid]],
                      uint3 tptg [[threads_per_threadgroup]],
                      uint3 tgpg [[threadgroups_per_grid]],
                      uint3 grid [[threads_per_grid]]) {
    uint i = (tpig.z * grid.y + tpig.y) * grid.x + tpig.x;
    out[4 * i + 0] = tgpig.x + 100 * tgpig.y + 10000 * tgpig.z;
    out[4 * i + 1] = tptg.x * tptg.y * tptg.z;
    out[4 * i + 2] = tgpg.x * tgpg.y * tgpg.z;
    out[4 * i + 3] = 1;
}

kernel void say_hello(constant int& who [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
    if (tid == 3) printf("hello from thread %u, who=%d\n", tid, who);
}

// half and bfloat inputs, float output; half literals.
kernel void low_precision(device const half* h [[buffer(0)]],
                          device const bfloat* bf [[buffer(1)]],
                          device float* out [[buffer(2)]],
                          device half* hout [[buffer(3)]],
                          uint i [[thread_position_in_grid]]) {
    half2 hv = half2(h[i], 1.5h);
    out[i] = float(hv.x) * 2.0f + float(bf[i]) + float(hv.y);
    hout[i] = h[i] * h[i] + 0.25h;
}

// A constant struct argument and a float4 load.
struct Params {
    uint n;
    float scale;
};
kernel void scale4(device const float4* x [[buffer(0)]],
                   device float4* out [[buffer(1)]],
                   constant Params& p [[buffer(2)]],
                   uint i [[thread_position_in_grid]]) {
    if (i >= p.n) return;
    out[i] = x[i] * p.scale + float4(0.0f, 1.0f, 2.0f, 3.0f);
}

// Threadgroup arrays whose sizes are expressions with `*`, several per statement, 2-D, and a
// pointer into one: all shared by the group. Each thread writes its slots, then reads another
// thread's. out is (5, n).
constant constexpr uint A = 4;
constant constexpr uint B = 16;
kernel void tg_sizes(device float* out [[buffer(0)]],
                     uint tid [[thread_index_in_threadgroup]],
                     uint n [[threads_per_threadgroup]]) {
    threadgroup float t[A * B];
    threadgroup float x[2 * 32];
    threadgroup float m[2 * 4][A * 2];
    threadgroup float p[B * 4], q[(A + 4) * 8];
    threadgroup float *tail = &q[2 * 16];
    t[tid] = float(tid);
    x[tid] = float(2 * tid);
    m[tid / 8][tid % 8] = float(3 * tid);
    p[tid] = float(4 * tid);
    q[tid] = float(5 * tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint j = n - 1 - tid;
    out[0 * n + tid] = t[j];
    out[1 * n + tid] = x[j];
    out[2 * n + tid] = m[j / 8][j % 8];
    out[3 * n + tid] = p[j];
    out[4 * n + tid] = tail[j % 32];
}

// Lanes 0-15 and 16-31 wait at different simdgroup_barrier calls: a deadlock.
kernel void split_simd_barrier(device float* out [[buffer(0)]],
                               uint lane [[thread_index_in_simdgroup]]) {
    if (lane < 16) {
        simdgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[lane] = 1.0f;
}

// Lanes 0-7 of SIMD group 1 wait at a simdgroup_barrier, the other threads at a
// threadgroup_barrier: a deadlock.
kernel void simd_barrier_vs_threadgroup_barrier(device float* out [[buffer(0)]],
                                                uint tid [[thread_index_in_threadgroup]]) {
    if (tid >= 32 && tid < 40) {
        simdgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[tid] = 1.0f;
}

// Lanes that returned do not hold a simdgroup_barrier up; the others exchange values through
// threadgroup memory across it (each SIMD group its own part), twice.
kernel void simd_barrier_exchange(device float* out [[buffer(0)]],
                                  uint tid [[thread_index_in_threadgroup]],
                                  uint lane [[thread_index_in_simdgroup]],
                                  uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float s[64];
    if (lane >= 24) return;
    for (int round = 0; round < 2; ++round) {
        s[sg * 32 + lane] = float(round * 1000 + tid);
        simdgroup_barrier(mem_flags::mem_threadgroup);
        out[round * 64 + tid] = s[sg * 32 + 23 - lane];
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
}

// Thread-private memory far larger than a simulated thread's stack (400 KB).
kernel void big_private_array(device const uint* idx [[buffer(0)]],
                              device float* out [[buffer(1)]],
                              uint tid [[thread_position_in_grid]]) {
    float big[100000];
    for (uint i = 0; i < 100000; i += 1000) big[(i + idx[tid]) % 100000] = float(i);
    out[tid] = big[idx[tid] % 100000];
}
