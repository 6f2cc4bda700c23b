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

namespace {

// Threads per threadgroup of the three kernels: 32 SIMD groups of 32.
constexpr int kBackwardThreads = 1024;

MTL::ComputePipelineState* backward_kernel(gpu::Device& d, const std::string& name) {
  auto* kernel = d.get_kernel(name, metalsim::extension_library(d));
  // A pipeline may allow fewer threads per threadgroup than 1024 (if it needs many registers):
  // the kernels' mapping assumes all of them.
  if (kernel->maxTotalThreadsPerThreadgroup() < static_cast<size_t>(kBackwardThreads)) {
    throw std::runtime_error(
        "[flash_attention_backward on the GPU] " + name + " allows only " +
        std::to_string(kernel->maxTotalThreadsPerThreadgroup()) +
        " threads per threadgroup on this device; it needs " + std::to_string(kBackwardThreads));
  }
  return kernel;
}

} // namespace

void FlashAttentionBackward::eval_gpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  const mx::array& v = inputs[2];
  const mx::array& out = inputs[3];
  const mx::array& lse = inputs[4];
  const mx::array& d_out = inputs[5];
  const mx::array* mask = has_mask_ ? &inputs[6] : nullptr;
  const int N = q.shape(0), H_q = q.shape(1), L = q.shape(2), E = q.shape(3);
  const int H = k.shape(1), S = k.shape(2);

  // ---- the kernels' limits, before anything is encoded (the op checked shapes and dtypes)
  if (E > kMaxHeadDim) {
    fail_backward(
        "on the GPU, the head dimension E of query must be at most " + std::to_string(kMaxHeadDim) +
        " (a K/V tile's keys stay in threadgroup memory), got E = " + std::to_string(E));
  }
  for (const mx::array& x : inputs) {
    if (!x.flags().row_contiguous && &x != mask) {
      fail_backward("on the GPU, query, key, value, out, lse and d_out must be row-contiguous");
    }
  }

  for (auto& o : outputs) {
    o.set_data(mx::allocator::malloc(o.nbytes()));
  }
  mx::array& dq = outputs[0];
  mx::array& dk = outputs[1];
  mx::array& dv = outputs[2];
  // D = rowsum(dO * O), one float per query row: the only scratch memory of the backward.
  mx::array D({N, H_q, L}, mx::float32, nullptr, {});
  D.set_data(mx::allocator::malloc(D.nbytes()));

  AttentionParams p{};
  p.N = N;
  p.H_q = H_q;
  p.H = H;
  p.L = L;
  p.S = S;
  p.E = E;
  p.scale = scale_;
  p.mask_kind = causal_ ? kMaskCausal : kMaskNone;
  if (mask) {
    p.mask_kind = mask->dtype() == mx::bool_ ? kMaskKeep : kMaskAdd;
    for (int d = 0; d < 4; ++d) {
      p.mask_strides[d] = mask->strides(d); // 0 on the axes broadcast_to added
    }
  }

  auto& d = gpu::device(stream().device);
  const bool atomic_dq = dq_ == DqMode::Atomic;
  auto* preprocess = backward_kernel(d, "flash_attention_backward_preprocess");
  auto* dkdv = backward_kernel(
      d, atomic_dq ? "flash_attention_backward_dkdv_atomic_dq" : "flash_attention_backward_dkdv");
  auto* dq_kernel = atomic_dq ? nullptr : backward_kernel(d, "flash_attention_backward_dq");

  auto& enc = gpu::get_command_encoder(stream());
  const int Tr = (L + kBr - 1) / kBr;
  const int Tc = (S + kBc - 1) / kBc;
  const MTL::Size group_size(kBackwardThreads, 1, 1);

  // 1. D, and dQ zeroed for the atomic adds.
  enc.set_compute_pipeline_state(preprocess);
  enc.set_input_array(out, 0);
  enc.set_input_array(d_out, 1);
  enc.set_output_array(D, 2);
  enc.set_output_array(dq, 3);
  enc.set_bytes(p, 6);
  enc.dispatch_threadgroups(MTL::Size(N * H_q, Tr, 1), group_size);

  // Buffers 0-9 are the same for both kernels that follow. The masks' buffers are declared by
  // the kernels and so must be bound even when unused: one-element placeholders stand in.
  const mx::array no_add(0.0f);
  const mx::array no_keep(false);
  auto bind_common = [&]() {
    enc.set_input_array(q, 0);
    enc.set_input_array(k, 1);
    enc.set_input_array(v, 2);
    enc.set_input_array(d_out, 3);
    enc.set_input_array(lse, 4);
    enc.set_input_array(D, 5); // written by the preprocessing kernel: the encoder orders them
    enc.set_bytes(p, 6);
    enc.set_output_array(gpu_tile_counts(), kTileCountsBuffer);
    enc.set_input_array(p.mask_kind == kMaskAdd ? *mask : no_add, kBwdMaskAddBuffer);
    enc.set_input_array(p.mask_kind == kMaskKeep ? *mask : no_keep, kBwdMaskKeepBuffer);
  };

  // 2. dK and dV, one threadgroup per K/V tile of each key/value head (and dQ, atomically).
  enc.set_compute_pipeline_state(dkdv);
  bind_common();
  enc.set_output_array(dk, 10);
  enc.set_output_array(dv, 11);
  enc.set_output_array(dq, 12);
  enc.dispatch_threadgroups(MTL::Size(N * H, Tc, 1), group_size);

  // 3. dQ, one threadgroup per Q tile of each query head.
  if (!atomic_dq) {
    enc.set_compute_pipeline_state(dq_kernel);
    bind_common();
    enc.set_output_array(dq, 10);
    enc.dispatch_threadgroups(MTL::Size(N * H_q, Tr, 1), group_size);
  }
  enc.add_temporaries({D, no_add, no_keep});
}

} // namespace tiny_attn
