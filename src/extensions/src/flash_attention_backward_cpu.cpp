// Week 4, day 3: FlashAttention-2's backward pass on the CPU, threads over K/V tiles.
//
// One work item is (batch n, key/value head hk, a set of K/V tiles). For each of its K/V tiles j
// it keeps dK_j and dV_j (Bc x E each) in a private buffer, visits every Q tile i of the G query
// heads that read head hk, and writes dK_j and dV_j once at the end: no other thread ever
// touches them. dQ_i collects a term from every K/V tile:
//
//            K/V tile j (outer loop, one work item)
//          +-------+
//   Q  i=0 | S, P  |  P_ij  = exp(S_ij - lse_i)           dV_j += P_ij^T dO_i
//   tiles  +-------+  dP_ij = dO_i V_j^T                   dK_j += scale dS_ij^T Q_i
//   (inner)|       |  dS_ij = P_ij (dP_ij - D_i)           dQ_i += scale dS_ij K_j
//          +-------+
#include <stdexcept>

#include "flash_attention_backward.h"
#include "tasks.h" // task_threads, run_tasks

namespace tiny_attn {

std::atomic<int64_t>& backward_tiles_visited() {
  static std::atomic<int64_t> count{0};
  return count;
}

std::atomic<int>& backward_threads() {
  static std::atomic<int> count{0};
  return count;
}

// ---------------------------------------------------------------- Task 2: the kernel
void flash_attention_backward_cpu(const BackwardProblem& p, int num_threads) {
  // TODO(Task 2): D = rowsum(dO * O); for each (n, key/value head, K/V tile j), on threads:
  // dK_j = dV_j = 0, then for every Q tile of the group's query heads that the causal mask
  // does not hide entirely: S, P = exp(S - lse) (1/S for a row whose lse is the lowest
  // float), dP, dS (0 where a mask hides the score), dV_j, dK_j, dQ_i. Write dK_j and dV_j
  // once; keep dQ free of races. Add the tiles you compute to backward_tiles_visited(), and
  // set backward_threads() to the number of threads the call ran on. run_tasks (tasks.h, Week
  // 2's thread pool) runs numbered work items on threads, each thread with its own workspace.
  throw std::runtime_error(
      "flash_attention_backward_cpu is not implemented yet: see "
      "book/src/week4-03-backward-cpp.md, Task 2");
}

} // namespace tiny_attn
