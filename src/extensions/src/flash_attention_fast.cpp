// Week 2, day 5: the fast CPU kernel.
//
// The same algorithm as day 4 (src/flash_attention_simple.cpp), rearranged for the machine:
// packed, transposed tiles so that every inner loop is an 8-wide vector operation over the
// Q tile's rows (src/simd.h), register-blocked micro-kernels for Q K^T and P V, and threads
// that take (batch, query head, Q tile) work items from a shared counter.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include "flash_attention.h"
#include "simd.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Tasks 1 and 2
void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads) {
  // TODO(Task 1): one Q tile at a time: pack qT, the score micro-kernel, the vectorised
  // online softmax, the P V micro-kernel (the masks and causal skipping as on day 4).
  // TODO(Task 2): threads: work items (n, h, Q tile) taken from an atomic counter.
  // Week 4, Day 3, Task 1: where p.lse is set, write each row's m + log(l) there.
  // Add the number of K/V tiles computed to tiles_visited().
  throw std::runtime_error(
      "flash_attention_fast_cpu is not implemented yet: see "
      "book/src/week2-05-fast-cpu.md, Task 1");
}

} // namespace tiny_attn
