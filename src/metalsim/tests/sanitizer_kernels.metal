// Kernels for test_sanitizer.py: each breaks one rule that metalsim checks (and a few keep to
// it). A comment `// @name` marks a line that a test expects an error message to name.
#include <metal_stdlib>
using namespace metal;

// ---------------------------------------------------------------- races

// SIMD group 1 reads what SIMD group 0 writes (and the other way round), with no barrier.
kernel void race_read_after_write(device float* out [[buffer(0)]],
                                  uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  t[lid] = float(lid); // @race-write
  out[lid] = t[(lid + 32) % 64]; // @race-read
}

// The same exchange with the barrier: no race.
kernel void exchange_with_barrier(device float* out [[buffer(0)]],
                                  uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  t[lid] = float(lid);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[lid] = t[(lid + 32) % 64];
}

// Every thread writes t[0]: threads of different SIMD groups write the same byte.
kernel void race_write_write(device float* out [[buffer(0)]],
                             uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[1];
  t[0] = float(lid); // @ww
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[lid] = t[0];
}

// A second round through the same memory needs a barrier between the reads of round 1 and the
// writes of round 2 (the "forgotten" barrier of a tile loop).
kernel void race_write_after_read(device float* out [[buffer(0)]],
                                  uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  float acc = 0.0f;
  for (int round = 0; round < 2; ++round) {
    t[lid] = float(lid + round); // @war-write
    threadgroup_barrier(mem_flags::mem_threadgroup);
    acc += t[63 - lid]; // @war-read
  }
  out[lid] = acc;
}

// Lane 0 of each SIMD group stages a value; the other lanes of the SIMD group read it with no
// barrier. Correct on a GPU (lockstep), and here.
kernel void lane0_stages_for_its_simdgroup(device float* out [[buffer(0)]],
                                           uint sg [[simdgroup_index_in_threadgroup]],
                                           uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float row[2];
  if (lane == 0)
    row[sg] = 10.0f + float(sg);
  out[sg * 32 + lane] = row[sg];
}

// Lane 5 stages the value: lanes 0 to 4, which metalsim runs first, would read poison.
kernel void lane5_stages_for_its_simdgroup(device float* out [[buffer(0)]],
                                           uint sg [[simdgroup_index_in_threadgroup]],
                                           uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float row[2];
  if (lane == 5)
    row[sg] = 10.0f + float(sg); // @lane5-write
  out[sg * 32 + lane] = row[sg]; // @lane5-read
}

// The same with a simdgroup_barrier between the write and the read: correct everywhere.
kernel void lane5_stages_then_simdgroup_barrier(device float* out [[buffer(0)]],
                                                uint sg [[simdgroup_index_in_threadgroup]],
                                                uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float row[2];
  if (lane == 5)
    row[sg] = 10.0f + float(sg);
  simdgroup_barrier(mem_flags::mem_threadgroup);
  out[sg * 32 + lane] = row[sg];
}

// Each lane reads its right neighbour's old value, then overwrites its own: in lockstep every
// lane reads before any lane writes, and metalsim gives the same result.
kernel void shift_left_in_lockstep(device float* out [[buffer(0)]],
                                   uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float b[33];
  b[lane] = float(lane);
  if (lane == 0)
    b[32] = 32.0f;
  simdgroup_barrier(mem_flags::mem_threadgroup);
  float right = b[lane + 1];
  b[lane] = right * 2.0f;
  out[lane] = right;
}

// ---------------------------------------------------------------- barriers

// The last barrier moved inside `if (row_valid)`: threads without a row skip it.
kernel void barrier_in_if(device float* out [[buffer(0)]],
                          uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  t[lid] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const bool row_valid = lid < 40;
  if (row_valid) {
    threadgroup_barrier(mem_flags::mem_threadgroup); // @barrier-in-if
    out[lid] = t[63 - lid];
  }
}

// Threads past the end return before their first barrier: allowed.
kernel void return_before_first_barrier(device float* out [[buffer(0)]],
                                        uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  if (lid >= 40)
    return;
  t[lid] = 2.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[lid] = t[39 - lid];
}

// Threads run a loop with a barrier a different number of times.
kernel void barrier_count_differs(device float* out [[buffer(0)]],
                                  uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float t[64];
  const int rounds = lid < 32 ? 2 : 3;
  for (int r = 0; r < rounds; ++r) {
    t[lid] = float(r);
    threadgroup_barrier(mem_flags::mem_threadgroup); // @loop-barrier
  }
  out[lid] = t[lid];
}

// ---------------------------------------------------------------- memory

// out[i + offset] for a chosen offset (in floats, may be negative).
kernel void write_at_offset(device float* out [[buffer(0)]],
                            constant int& offset [[buffer(1)]],
                            uint i [[thread_position_in_grid]]) {
  out[int(i) + offset] = 1.0f; // @write-at-offset
}

kernel void read_at_offset(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           constant long& offset [[buffer(2)]],
                           uint i [[thread_position_in_grid]]) {
  out[i] = x[long(i) + offset]; // @read-at-offset
}

// Uses 64 floats of [[threadgroup(0)]]: needs 256 bytes.
kernel void uses_256_bytes_of_threadgroup_memory(device float* out [[buffer(0)]],
                                                 threadgroup float* scratch [[threadgroup(0)]],
                                                 uint lid [[thread_index_in_threadgroup]]) {
  scratch[lid] = float(lid); // @scratch-write
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[lid] = scratch[63 - lid];
}

// A kernel-body array written one element past its end.
kernel void threadgroup_array_overrun(device float* out [[buffer(0)]],
                                      uint lid [[thread_index_in_threadgroup]]) {
  threadgroup float tile[32];
  tile[lid] = 1.0f; // @tile-write
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[lid] = tile[lid % 32];
}

// ---------------------------------------------------------------- deadlines

kernel void spin_forever(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  float v = x[i];
  while (v >= 0.0f)
    v = v * 0.5f + 1.0f; // @spin
  x[i] = v;
}

kernel void wait_at_barrier_forever(device float* x [[buffer(0)]],
                                    uint lid [[thread_index_in_threadgroup]]) {
  if (lid == 63) {
    float v = x[0];
    while (v >= 0.0f) v = v * 0.5f + 1.0f; // @spin-one (one line: the loop test and its body)
    x[0] = v;
  }
  threadgroup_barrier(mem_flags::mem_none); // @waiting-barrier
}

// ---------------------------------------------------------------- alignment

// A float4 read from a float pointer one float in: 4 bytes past a 16-byte boundary.
kernel void float4_from_float_offset(device const float* x [[buffer(0)]],
                                     device float4* out [[buffer(1)]],
                                     constant int& offset [[buffer(2)]],
                                     uint i [[thread_position_in_grid]]) {
  out[i] = *reinterpret_cast<device const float4*>(x + 4 * i + offset); // @float4-load
}

// The same through packed_float4, which needs only a float's alignment.
kernel void packed_float4_from_float_offset(device const float* x [[buffer(0)]],
                                            device float4* out [[buffer(1)]],
                                            constant int& offset [[buffer(2)]],
                                            uint i [[thread_position_in_grid]]) {
  out[i] = float4(*reinterpret_cast<device const packed_float4*>(x + 4 * i + offset));
}

// ---------------------------------------------------------------- atomics

// Every thread adds 1 to a threadgroup counter with no barrier between the adds: atomics do not
// race. Thread 0 sets it up before a barrier and reads it after another.
kernel void threadgroup_atomic_count(device int* out [[buffer(0)]],
                                     uint lid [[thread_index_in_threadgroup]]) {
  threadgroup atomic_int counter;
  if (lid == 0)
    atomic_store_explicit(&counter, 0, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (lid == 0)
    out[0] = atomic_load_explicit(&counter, memory_order_relaxed);
}
