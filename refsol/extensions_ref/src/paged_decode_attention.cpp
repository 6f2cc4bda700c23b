// Week 5, day 3: reading keys and values through a block table (PagedAttention). The decode
// kernels of days 1 and 2 find every key row with kv_row; for a paged batch kv_row asks here.
#include "decode_attention.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 2: a row of a page
//   pool (num_pages, H, page_size, E):  row j of sequence b lives in page
//   block_table[b, j / page_size], at slot j % page_size.
const float* paged_kv_row(const DecodeProblem& p, const float* pool, int b, int h, int j) {
  const int page = p.block_table[int64_t(b) * p.max_blocks + j / p.page_size];
  return pool + page * p.kv_strides[0] + h * p.kv_strides[1] + (j % p.page_size) * p.kv_strides[2];
}

} // namespace tiny_attn
