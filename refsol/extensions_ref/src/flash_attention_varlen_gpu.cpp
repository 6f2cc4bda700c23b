// Week 5, day 4: FlashAttentionVarlen::eval_gpu, the dispatch of flash_attention_varlen_f32
// (src/flash_attention_varlen.metal). The same code drives a real Metal device and metalsim.
#include <stdexcept>
#include <string>

#include "flash_attention.h"
#include "flash_attention_gpu.h"
#include "flash_attention_varlen.h"
#include "metalsim/mlx_extension.h"

namespace tiny_attn {

// Grid: (num_seqs * H_q, ceil(max_seqlen_q / Br)) threadgroups of 1024 threads; a threadgroup
// whose Q tile starts past its sequence's end has nothing to do.
void FlashAttentionVarlen::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  VarlenParams p{};
  p.num_seqs = num_seqs_;
  p.H_q = inputs[0].shape(1);
  p.H = inputs[1].shape(1);
  p.E = inputs[0].shape(2);
  p.scale = scale_;
  p.causal = masks_.causal;
  p.window_left = masks_.window_left;
  p.window_right = masks_.window_right;
  p.softcap = masks_.softcap;
  p.has_alibi = has_alibi_;

  const std::string name = "flash_attention_varlen_f32";
  auto& d = gpu::device(stream().device);
  auto* kernel = d.get_kernel(name, metalsim::extension_library(d));
  if (kernel->maxTotalThreadsPerThreadgroup() < static_cast<size_t>(kSimpleKernelThreads)) {
    throw std::runtime_error(
        "[flash_attention_varlen on the GPU] " + name + " allows only " +
        std::to_string(kernel->maxTotalThreadsPerThreadgroup()) +
        " threads per threadgroup on this device; it needs " +
        std::to_string(kSimpleKernelThreads));
  }
  auto& enc = gpu::get_command_encoder(stream());
  enc.set_compute_pipeline_state(kernel);
  for (int i = 0; i < 3; ++i) {
    enc.set_input_array(inputs[i], i);
  }
  enc.set_output_array(out, 3);
  enc.set_input_array(inputs[3], 4);
  enc.set_input_array(inputs[4], 5);
  enc.set_bytes(p, 6);
  enc.set_output_array(gpu_tile_counts(), kTileCountsBuffer); // the kernel adds to it
  // Buffer 8 is declared by the kernel and so must be bound even without ALiBi.
  const mx::array no_slopes(0.0f);
  enc.set_input_array(has_alibi_ ? inputs[5] : no_slopes, 8);
  enc.add_temporaries({no_slopes});
  const int Tr = (max_seqlen_q_ + kBr - 1) / kBr;
  enc.dispatch_threadgroups(
      MTL::Size(num_seqs_ * p.H_q, Tr, 1), MTL::Size(kSimpleKernelThreads, 1, 1));
}

} // namespace tiny_attn
