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

namespace {

[[noreturn]] void fail_gpu(const std::string& message) {
  throw std::invalid_argument("[flash_attention on the GPU] " + message);
}

const char* type_suffix(mx::Dtype dtype) {
  if (dtype == mx::float32) {
    return "f32";
  }
  if (dtype == mx::float16) {
    return "f16";
  }
  if (dtype == mx::bfloat16) {
    return "bf16";
  }
  fail_gpu("query, key and value must be float32, float16 or bfloat16");
}

} // namespace

void FlashAttention::eval_gpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  const mx::array& v = inputs[2];
  mx::array& out = outputs[0];
  const bool fast = kernel_ == Kernel::Fast;
  const int N = q.shape(0), H_q = q.shape(1), L = q.shape(2), E = q.shape(3);
  const int H = k.shape(1), S = k.shape(2);

  // ---- every limit of the kernels, before anything is encoded
  if (E > kMaxHeadDim) {
    fail_gpu(
        "the head dimension E must be at most " + std::to_string(kMaxHeadDim) +
        " (the kernels keep E floats per row in threadgroup memory), got E = " + std::to_string(E));
  }
  if (fast && E % 8 != 0) {
    fail_gpu(
        "flash_attention_fast needs the head dimension E to be a multiple of 8 (it works on "
        "8x8 matrix blocks), got E = " +
        std::to_string(E));
  }
  const char* suffix = type_suffix(q.dtype());
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype()) {
    fail_gpu("query, key and value must have the same dtype");
  }
  for (const auto* x : {&q, &k, &v}) {
    if (!x->flags().row_contiguous) {
      fail_gpu("query, key and value must be row-contiguous (the op makes them so)");
    }
  }
  const mx::array* mask = has_mask_ ? &inputs[3] : nullptr;
  if (mask && mask->dtype() != mx::float32 && mask->dtype() != mx::bool_) {
    fail_gpu("the mask must be float32 or bool (the op converts floating masks to float32)");
  }

  out.set_data(mx::allocator::malloc(out.nbytes()));
  // Week 4, Day 4: the (N, H_q, L) float32 log-sum-exp, the primitive's second output. An op
  // built with one output (before Week 4, Day 3) gets a scratch array for the kernels to fill.
  mx::array lse =
      outputs.size() > 1 ? outputs[1] : mx::array({N, H_q, L}, mx::float32, nullptr, {});
  lse.set_data(mx::allocator::malloc(lse.nbytes()));

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

  const std::string name = fast ? std::string("flash_attention_simdgroup_") + suffix
                                : std::string("flash_attention_") + suffix + "_e128";
  auto& d = gpu::device(stream().device);
  auto* kernel = d.get_kernel(name, metalsim::extension_library(d));
  const int threads = fast ? kSimdgroupKernelThreads : kSimpleKernelThreads;
  // A pipeline may allow fewer threads per threadgroup than 1024 (if it needs many registers):
  // the kernel's mapping assumes all of them, so refuse rather than compute half the rows.
  if (kernel->maxTotalThreadsPerThreadgroup() < static_cast<size_t>(threads)) {
    throw std::runtime_error(
        "[flash_attention on the GPU] " + name + " allows only " +
        std::to_string(kernel->maxTotalThreadsPerThreadgroup()) +
        " threads per threadgroup on this device; it needs " + std::to_string(threads));
  }
  auto& enc = gpu::get_command_encoder(stream());
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(q, 0);
  enc.set_input_array(k, 1);
  enc.set_input_array(v, 2);
  enc.set_output_array(out, 3);
  // Buffers 4 (float mask) and 5 (bool mask) are declared by the kernel and so must be bound
  // even when unused: a one-element placeholder of the right type stands in.
  const mx::array no_add(0.0f);
  const mx::array no_keep(false);
  enc.set_input_array(p.mask_kind == kMaskAdd ? *mask : no_add, 4);
  enc.set_input_array(p.mask_kind == kMaskKeep ? *mask : no_keep, 5);
  enc.add_temporaries({no_add, no_keep});
  if (outputs.size() == 1) {
    enc.add_temporary(lse);
  }
  enc.set_bytes(p, 6);
  enc.set_output_array(gpu_tile_counts(), kTileCountsBuffer); // the kernels add to it
  enc.set_output_array(lse, kLseBuffer);

  const int Tr = (L + kBr - 1) / kBr;
  enc.dispatch_threadgroups(MTL::Size(N * H_q, Tr, 1), MTL::Size(threads, 1, 1));
}

} // namespace tiny_attn
