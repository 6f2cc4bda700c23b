// Week 5, day 3: reading keys and values through a block table (PagedAttention). The decode
// kernels of days 1 and 2 find every key row with kv_row; for a paged batch kv_row asks here.
// On the CPU a paged batch gets its own tasks, which walk each sequence's pages in address
// order (Task 3).
#include <algorithm>
#include <vector>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel
#include "tasks.h"

namespace tiny_attn {

constexpr int kPagedChunk = 128; // keys a task reads ahead, then adds (Task 3)

// ---------------------------------------------------------------- Task 2: a row of a page
//   pool (num_pages, H, page_size, E):  row j of sequence b lives in page
//   block_table[b, j / page_size], at slot j % page_size.
const float* paged_kv_row(const DecodeProblem& p, const float* pool, int b, int h, int j) {
  const int page = p.block_table[int64_t(b) * p.max_blocks + j / p.page_size];
  return pool + page * p.kv_strides[0] + h * p.kv_strides[1] + (j % p.page_size) * p.kv_strides[2];
}

// ---------------------------------------------------------------- Task 3: pages in order
// Day 1's tasks take one (sequence, head) each: in a page of the pool a head's rows are one
// run of page_size * E floats (8 KiB at 16 tokens), and the head's next page starts H runs
// further on. Every jump restarts the hardware prefetcher. Here a task takes a sequence and a
// range of its heads, and walks the sequence's pages in order:
//
//   page of sequence b:   | head 0 rows | head 1 rows | ... | head H-1 rows |   (K, then V)
//                          `--------------- read front to back ------------'
//                          then each head's group adds the page's keys (decode_group)
//
// The page's rows are read front to back first (read_row), K then V: one stream each, that
// the prefetcher follows, and the group's work then finds them in the cache. The pages go by
// chunks of kPagedChunk keys (several small pages), read, then added head by head.
void paged_decode_cpu(const DecodeProblem& p, int num_threads) {
  const int rows = p.group() * p.L;
  // All H heads in one task when there are sequences enough to keep the threads busy; with
  // few sequences the heads are cut into `parts` ranges (a divisor of H), each its own task.
  const int cores = task_threads(num_threads, int64_t(p.B) * p.H);
  int parts = 1;
  while (int64_t(p.B) * parts < 2 * cores && parts < p.H) {
    do {
      ++parts;
    } while (p.H % parts != 0);
  }
  const int heads = p.H / parts; // heads a task
  const int64_t n_tasks = int64_t(p.B) * parts;
  const int threads = task_threads(num_threads, n_tasks);
  report_cpu_kernel("paged_decode", threads);

  // The longest sequences first: a long one taken last would leave the other threads idle.
  std::vector<int> order(p.B);
  for (int b = 0; b < p.B; ++b) {
    order[b] = b;
  }
  std::stable_sort(
      order.begin(), order.end(), [&](int x, int y) { return p.seq_len(x) > p.seq_len(y); });
  // Pages go kPagedChunk keys at a time (8 pages of 16 tokens): decode_group's blocks are then
  // that long, and its per-block work (the softmax's max, exp and rescale) is spread over more
  // keys than one small page has.
  const int chunk = std::max(1, kPagedChunk / p.page_size) * p.page_size;

  auto heads_states = [&] { return std::vector<GroupState>(heads); };
  run_tasks(n_tasks, threads, heads_states, [&](std::vector<GroupState>& st, int64_t task) {
    const int b = order[task / parts];
    const int h0 = static_cast<int>(task % parts) * heads;
    const int S_b = p.seq_len(b);
    for (auto& s : st) {
      s.reset(rows, p.E);
    }
    for (int c0 = 0; c0 < S_b; c0 += chunk) {
      const int c1 = std::min(c0 + chunk, S_b);
      for (const float* base : {p.k, p.v}) { // the chunk's pages, front to back
        for (int j0 = c0; j0 < c1; j0 += p.page_size) {
          for (int h = h0; h < h0 + heads; ++h) { // a page's rows of a head: kv_strides[2] apart
            const float* row = kv_row(p, base, b, h, j0);
            for (int j = j0; j < std::min(j0 + p.page_size, c1); ++j, row += p.kv_strides[2]) {
              read_row(row, p.E);
            }
          }
        }
      }
      for (int h = h0; h < h0 + heads; ++h) {
        decode_group(p, b, h, 0, rows, c0, c1, st[h - h0]);
      }
    }
    for (int h = h0; h < h0 + heads; ++h) {
      write_group_rows(p, b, h, 0, st[h - h0]);
    }
  });
}

} // namespace tiny_attn
