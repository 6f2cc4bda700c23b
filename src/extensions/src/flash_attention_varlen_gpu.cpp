// Week 5, day 4: FlashAttentionVarlen::eval_gpu, the dispatch of flash_attention_varlen_f32
// (src/flash_attention_varlen.metal). The same code drives a real Metal device and metalsim.
#include <stdexcept>
#include <string>

#include "flash_attention.h"
#include "flash_attention_gpu.h"
#include "flash_attention_varlen.h"
#include "metalsim/mlx_extension.h"

namespace tiny_attn {

void FlashAttentionVarlen::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  // inputs: query, key, value, cu_seqlens_q, cu_seqlens_k [, alibi_slopes], row-contiguous.
  // TODO(Task 3): allocate out; fill a VarlenParams from the primitive's fields; get the kernel
  //   "flash_attention_varlen_f32" as Week 3's eval_gpu does; bind q, k, v at 0-2, out at 3,
  //   cu_seqlens_q / _k at 4 / 5, the params (set_bytes) at 6, gpu_tile_counts() at 7 and the
  //   slopes at 8 (a one-float placeholder without ALiBi: a declared buffer must be bound);
  //   dispatch (num_seqs * H_q, ceil(max_seqlen_q / Br)) threadgroups of 1024 threads.
  throw std::runtime_error(
      "FlashAttentionVarlen::eval_gpu is not implemented yet: see "
      "book/src/week5-04-computed-masks.md, Task 3");
}

} // namespace tiny_attn
