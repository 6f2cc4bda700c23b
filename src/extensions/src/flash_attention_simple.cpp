// Week 2, day 4: FlashAttention-2 on the CPU, one thread, plain loops.
//
// For each (batch n, query head h) and each Q tile of Br rows:
//
//            keys j ->   j0        j0+Bc
//          +-----------+---------+-----------+
//   i0     |  visited  |  S_ij   | skipped   |   S_ij = scale * Q_i K_j^T  (Br x Bc)
//   i0+Br  |           |  tile   | (causal)  |   m, l: running row max and row sum
//          +-----------+---------+-----------+   O_i  = sum over tiles of P_ij V_j,
//                                                rescaled whenever the max grows
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "flash_attention.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 3
int kv_tiles_to_visit(const AttentionProblem& p, int first_row, int last_row) {
  // TODO(Task 3): with p.causal, only the tiles up to the one holding key last_row + S - L,
  // unless first_row sees no key at all (first_row + S - L < 0). Every tile until then:
  return (p.S + kBc - 1) / kBc;
}

// ---------------------------------------------------------------- Tasks 2 and 3
void flash_attention_simple_cpu(const AttentionProblem& p) {
  // TODO(Task 2): the tile loops and the online softmax (m, l, O per row of a Q tile);
  // query head h reads key/value head h / (H_q / H). Add the number of K/V tiles you
  // computed to tiles_visited().
  // TODO(Task 3): the masks (additive, boolean, causal) and causal block skipping.
  // Week 4, Day 3, Task 1: where p.lse is set, write each row's m + log(l) there.
  throw std::runtime_error(
      "flash_attention_simple_cpu is not implemented yet: see "
      "book/src/week2-04-flash-attention-cpp.md, Task 2");
}

} // namespace tiny_attn
