// FlashAttention's eval_cpu, given and shared by both extensions: it fills an AttentionProblem
// (raw pointers, sizes, the mask's pointer and strides) and queues the CPU kernel the op chose
// on the stream's command encoder. The kernels themselves are the course's: src/*.cpp.
#include "flash_attention.h"

#include "mlx/backend/cpu/encoder.h"

namespace tiny_attn {

std::atomic<int64_t>& tiles_visited() {
  static std::atomic<int64_t> count{0};
  return count;
}

// ---------------------------------------------------------------- eval_cpu
void FlashAttention::eval_cpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  if (simulated_) {
    return eval_gpu(inputs, outputs); // Week 3: a GPU call, run on metalsim
  }
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  const mx::array& v = inputs[2];
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));

  AttentionProblem p;
  p.q = q.data<float>();
  p.k = k.data<float>();
  p.v = v.data<float>();
  p.out = out.data<float>();
  p.N = q.shape(0);
  p.H_q = q.shape(1);
  p.L = q.shape(2);
  p.E = q.shape(3);
  p.H = k.shape(1);
  p.S = k.shape(2);
  p.scale = scale_;
  p.causal = causal_;
  if (outputs.size() > 1) { // Week 4: the log-sum-exp of every row, for the backward pass
    outputs[1].set_data(mx::allocator::malloc(outputs[1].nbytes()));
    p.lse = outputs[1].data<float>();
  }

  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(q);
  encoder.set_input_array(k);
  encoder.set_input_array(v);
  if (has_mask_) {
    const mx::array& mask = inputs[3];
    encoder.set_input_array(mask);
    for (int d = 0; d < 4; ++d) {
      p.mask_strides[d] = mask.strides(d);
    }
    if (mask.dtype() == mx::bool_) {
      p.mask_keep = mask.data<bool>();
    } else {
      p.mask_add = mask.data<float>();
    }
  }
  for (auto& o : outputs) {
    encoder.set_output_array(o);
  }

  if (kernel_ == Kernel::Simple) {
    encoder.dispatch([p]() { flash_attention_simple_cpu(p); });
  } else {
    encoder.dispatch([p, n = num_threads_]() { flash_attention_fast_cpu(p, n); });
  }
}

bool FlashAttention::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const FlashAttention&>(other);
  return scale_ == o.scale_ && causal_ == o.causal_ && has_mask_ == o.has_mask_ &&
         kernel_ == o.kernel_ && num_threads_ == o.num_threads_;
}

} // namespace tiny_attn
