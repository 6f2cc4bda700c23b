// Week 3: FlashAttention::eval_gpu, the dispatch of the Metal kernels in flash_attention.metal.
//
//   flash_attention       -> flash_attention_<t>_e128       days 2-3, 1024 threads per group
//   flash_attention_fast  -> flash_attention_simdgroup_<t>  day 4,    128 threads per group
//   <t> = f32, f16, bf16 by the dtype of the inputs (day 5)
//
// The same code drives a real Metal device and metalsim (see metalsim/mlx_extension.h).
#include <stdexcept>
#include <string>

#include "flash_attention.h"
#include "flash_attention_gpu.h"
#include "metalsim/mlx_extension.h"

namespace tiny_attn {

void FlashAttention::eval_gpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  // inputs: query (N, H_q, L, E), key and value (N, H, S, E), all row-contiguous, and, if
  // has_mask_, the mask as a (N, H_q, L, S) view (stride 0 on broadcast axes). outputs[0]:
  // (N, H_q, L, E). kernel_ == Kernel::Fast selects the day 4 kernel.
  //
  // TODO(Task 1): check every limit before encoding anything, throwing std::invalid_argument
  //   with a message that names the argument: E <= kMaxHeadDim; query, key and value float32
  //   (day 5: float16 / bfloat16 too, all the same dtype) and row-contiguous; the mask float32
  //   or bool. Day 4: the fast kernel also needs E % 8 == 0.
  // TODO(Task 1): allocate the outputs: out (out.set_data(mx::allocator::malloc(out.nbytes())))
  //   and the (N, H_q, L) float32 log-sum-exp the kernels write at kLseBuffer (8) for the
  //   backward pass of Week 4: outputs[1] where the op built two outputs (Week 4, Day 3), else a
  //   scratch array (mx::array({N, H_q, L}, mx::float32, nullptr, {}), enc.add_temporary).
  // TODO(Task 1): fill an AttentionParams (flash_attention_gpu.h), mask strides included.
  // TODO(Task 1): get the kernel (d.get_kernel(name, metalsim::extension_library(d)) with
  //   auto& d = gpu::device(stream().device)) and the encoder (gpu::get_command_encoder(stream()));
  //   bind buffers 0..5 as the kernel declares them (a placeholder array where there is no
  //   mask), set_bytes the params at 6, gpu_tile_counts() at kTileCountsBuffer (7), the lse
  //   at kLseBuffer (8), and
  //   dispatch (N * H_q, Tr) threadgroups of
  //   kSimpleKernelThreads (or kSimdgroupKernelThreads for the fast kernel).
  throw std::runtime_error(
      "FlashAttention::eval_gpu is not implemented yet: see "
      "book/src/week3-02-flash-attention-metal.md, Task 1");
}

} // namespace tiny_attn
