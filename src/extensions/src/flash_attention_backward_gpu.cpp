// Week 4, day 4: FlashAttentionBackward::eval_gpu, the dispatch of the backward's Metal kernels
// (flash_attention.metal, after Week 3's):
//
//   1. flash_attention_backward_preprocess   (N * H_q, Tr) threadgroups   D, and dQ = 0
//   2. flash_attention_backward_dkdv         (N * H, Tc)                  dK, dV
//        or flash_attention_backward_dkdv_atomic_dq                       dK, dV and dQ
//   3. flash_attention_backward_dq           (N * H_q, Tr)                dQ (dq="separate")
//
// each of 1024 threads. The same code drives a real Metal device and metalsim.
#include <stdexcept>
#include <string>

#include "flash_attention_backward.h"
#include "flash_attention_gpu.h"
#include "metalsim/mlx_extension.h"

namespace tiny_attn {

void FlashAttentionBackward::eval_gpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  // inputs: query, key, value, out, lse, d_out (row-contiguous, float32) and, if has_mask_,
  // the mask as a (N, H_q, L, S) view. outputs: dQ, dK, dV.
  //
  // TODO(Task 2): check E <= kMaxHeadDim (fail_backward names E); allocate the outputs and a
  //   scratch D of (N, H_q, L) float32 (enc.add_temporary); fill an AttentionParams as the
  //   forward's eval_gpu does; dispatch flash_attention_backward_preprocess, then
  //   flash_attention_backward_dkdv_atomic_dq (buffers: flash_attention_backward.h), each
  //   (grid) x 1024 threads.
  // TODO(Task 3): the mask and causal kinds in the params, the masks at kBwdMaskAddBuffer and
  //   kBwdMaskKeepBuffer (placeholders where there is none).
  // TODO(Task 4): with dq_ == DqMode::Separate, flash_attention_backward_dkdv and then
  //   flash_attention_backward_dq.
  throw std::runtime_error(
      "FlashAttentionBackward::eval_gpu is not implemented yet: see "
      "book/src/week4-04-backward-metal.md, Task 2");
}

} // namespace tiny_attn
