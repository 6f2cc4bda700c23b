// Week 5, day 1: decoding on the CPU. One task per (batch, key/value head): the task computes
// every query row of the group (G = H_q / H heads, L rows each) in one sweep over the keys, so
// each key and value row is read from memory once per group, not once per query head.
//
//   key/value head h:   K[b, h]  = k_0 k_1 k_2 ... k_{S-1}      (read once)
//   its query rows:     q[b, h*G + 0, 0..L-1]    |
//                       q[b, h*G + 1, 0..L-1]    |  G * L rows, all against each key block
//                       ...                      |
//                       q[b, h*G + G-1, 0..L-1]  |
//
// See book/src/week5-01-decoding-kv-cache.md for the tasks.
#include <stdexcept>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel
#include "simd.h"
#include "tasks.h" // task_threads, run_tasks

namespace tiny_attn {

// ---------------------------------------------------------------- Task 2: one group's rows
const float* kv_row(const DecodeProblem& p, const float* base, int b, int h, int j) {
  // TODO(Task 2): with p.block_table set, ask paged_kv_row (day 3); else the row starts at
  //   base + b * p.kv_strides[0] + h * p.kv_strides[1] + j * p.kv_strides[2].
  throw std::runtime_error(
      "kv_row is not implemented yet: see book/src/week5-01-decoding-kv-cache.md, Task 2");
}

void decode_group(
    const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st) {
  // TODO(Task 2): add keys j0 .. j1 - 1 to st (the caller has reset it). Row r0 + r of the
  //   group is query head h * G + (r0 + r) / L, row (r0 + r) % L, and sees keys up to
  //   i + S_b - L with p.causal. Go over the keys by blocks: each key and value row read once
  //   (kv_row) for all the rows, each row's online softmax updated (m, l, o). Add j1 - j0 to
  //   decode_cpu_rows_read().
  throw std::runtime_error(
      "decode_group is not implemented yet: see book/src/week5-01-decoding-kv-cache.md, Task 2");
}

// ---------------------------------------------------------------- Task 3: the tasks, threads
void decode_attention_cpu(const DecodeProblem& p, int num_threads) {
  // TODO(Task 3): a paged batch (p.block_table set) goes to paged_decode_cpu (day 3). Else
  //   report_cpu_kernel("decode", threads); one task per (b, h): st.reset, decode_group over
  //   all G * L rows and keys 0 .. p.seq_len(b) - 1, then write_group_rows (out = o / l);
  //   the tasks run by run_tasks on task_threads(num_threads, tasks) threads (tasks.h).
  throw std::runtime_error(
      "decode_attention_cpu is not implemented yet: see "
      "book/src/week5-01-decoding-kv-cache.md, Task 3");
}

} // namespace tiny_attn
