// Week 5, day 3: reading keys and values through a block table (PagedAttention). The decode
// kernels of days 1 and 2 find every key row with kv_row; for a paged batch kv_row asks here.
#include <stdexcept>

#include "decode_attention.h"

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

} // namespace tiny_attn
