// Week 5, day 3: reading keys and values through a block table (PagedAttention). The decode
// kernels of days 1 and 2 find every key row with kv_row; for a paged batch kv_row asks here.
// On the CPU a paged batch gets its own tasks, which walk each sequence's pages in address
// order (Task 3).
//
// See book/src/week5-03-paged-kv-cache.md for the tasks.
#include <stdexcept>

#include "decode_attention.h"
#include "tasks.h" // task_threads, run_tasks

namespace tiny_attn {

// ---------------------------------------------------------------- Task 2: a row of a page
//   pool (num_pages, H, page_size, E):  row j of sequence b lives in page
//   block_table[b, j / page_size], at slot j % page_size.
const float* paged_kv_row(const DecodeProblem& p, const float* pool, int b, int h, int j) {
  // TODO(Task 2): the page from p.block_table (row b has p.max_blocks entries), then the row
  //   through p.kv_strides (page, head, slot).
  throw std::runtime_error(
      "paged_kv_row is not implemented yet: see book/src/week5-03-paged-kv-cache.md, Task 2");
}

// ---------------------------------------------------------------- Task 3: pages in order
void paged_decode_cpu(const DecodeProblem& p, int num_threads) {
  // TODO(Task 3): report_cpu_kernel("paged_decode", threads); one task per (sequence, range
  //   of its heads): all H heads in one task when B >= 2 * threads, else H cut into `parts`
  //   ranges (the smallest divisor of H with B * parts >= 2 * threads, or H). A task resets a
  //   GroupState per head, then page by page: the page's rows of its heads read front to back
  //   (read_row(kv_row(...)), all K rows, then all V rows), then decode_group of each head
  //   over the page's keys; at the end write_group_rows for each head. run_tasks (tasks.h)
  //   runs the tasks.
  throw std::runtime_error(
      "paged_decode_cpu is not implemented yet: see book/src/week5-03-paged-kv-cache.md, "
      "Task 3");
}

} // namespace tiny_attn
