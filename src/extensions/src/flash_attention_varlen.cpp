// Week 5, day 4: FlashAttention over packed sequences, with the masks computed in the kernel.
//
// Work items are (sequence, Q tile, query head); threads take them from a shared counter. An
// item walks only the K/V tiles its rows can see: with a sliding window, the tiles before the
// window's start and after its end are never read (tiles_visited() counts what is read).
//
//        keys of one sequence (S)   ->
//   Q    [ skipped | tile | tile | tile | skipped ...]
//   tile          lo_all ^              ^ hi_all      (the union of the rows' visible keys)
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "flash_attention.h"
#include "flash_attention_varlen.h"
#include "tasks.h" // task_threads, run_tasks

namespace tiny_attn {

void flash_attention_varlen_cpu(const VarlenProblem& p) {
  // TODO(Task 2): visible_keys(masks, row, L, S): the keys lo..hi a row sees (pos = row + S - L).
  // TODO(Task 2): score(dot, pos, col, slope, p): scale, soft-capping, ALiBi, in that order.
  // TODO(Task 2): one Q tile of one sequence and query head: the K/V tiles from the first key
  //   any of its rows sees to the last (a row that sees none: every tile), tiles_visited() += 1
  //   per tile, the mask compared only on tiles a row does not see whole, Week 2's online
  //   softmax, out = o / l.
  // TODO(Task 2): report_cpu_kernel("varlen", threads); the (sequence, Q tile, head) items
  //   run by run_tasks on task_threads(0, items) threads (tasks.h: Week 2's thread pool).
  throw std::runtime_error(
      "flash_attention_varlen_cpu is not implemented yet: see "
      "book/src/week5-04-computed-masks.md, Task 2");
}

} // namespace tiny_attn
