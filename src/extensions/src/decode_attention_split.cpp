// Week 5, day 2: split-K (flash-decoding). A decode has B * H tasks, one per key/value group:
// at B = 1, H = 8 that is 8 tasks for a machine that runs many more at once. Cutting each
// sequence's keys into num_splits ranges gives B * H * num_splits tasks; each writes a partial
// (o, lse), and a second pass merges them with Week 2's rule.
#include <stdexcept>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel
#include "metalsim/mlx_extension.h"
#include "tasks.h" // task_threads, run_tasks

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: how many splits
int choose_num_splits(int S, int tasks, int workers) {
  // TODO(Task 1): enough splits that tasks * splits covers the workers, none shorter than
  //   kMinKeysPerSplit keys, between 1 and kMaxSplits.
  throw std::runtime_error(
      "choose_num_splits is not implemented yet: see book/src/week5-02-split-k.md, Task 1");
}

std::pair<int, int> split_range(int S, int num_splits, int split) {
  // TODO(Task 1): the keys [first, last) of split `split`; the first S % num_splits splits
  //   get one key more; with more splits than keys the last ones are empty.
  throw std::runtime_error(
      "split_range is not implemented yet: see book/src/week5-02-split-k.md, Task 1");
}

// ---------------------------------------------------------------- Task 2: the CPU passes
void decode_attention_split_cpu(const DecodeProblem& p, int num_threads) {
  // TODO(Task 2): report_cpu_kernel("decode_split", p.num_splits); pass 1: one task per
  //   (b, h, split) running decode_group over the split's keys (st reset first) and writing
  //   each row's o / l and lse = m + log(l) (an empty split: o = 0, lse = -inf), the tasks
  //   run by run_tasks (tasks.h); pass 2: merge.
  throw std::runtime_error(
      "decode_attention_split_cpu is not implemented yet: see book/src/week5-02-split-k.md, "
      "Task 2");
}

// ---------------------------------------------------------------- Task 3: the GPU passes
void dispatch_decode_split(mx::Stream s, const DecodeParams& p_in, const DecodeBuffers& bufs) {
  // TODO(Task 3): float32 temporaries o_part (B * H_q * L, num_splits, E) and lse_part
  //   (B * H_q * L, num_splits); "decode_attention_split_<t>_e128" over (B * H, row blocks,
  //   num_splits) threadgroups of decode_threads(kernel, name) threads, then "decode_merge_<t>"
  //   over B * H_q * L threadgroups of kMaxDecodeHeadDim threads.
  throw std::runtime_error(
      "dispatch_decode_split is not implemented yet: see book/src/week5-02-split-k.md, Task 3");
}

} // namespace tiny_attn
