// Week 2, day 4: the flash_attention op (validation, the lazy array) and its eval_cpu.
#include "src/flash_attention.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"

namespace tiny_attn {

namespace {

[[maybe_unused]] std::string shape_str(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "") << shape[i];
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

[[noreturn, maybe_unused]] void fail(const std::string& message) {
  throw std::invalid_argument("[flash_attention] " + message);
}

} // namespace

std::atomic<int64_t>& tiles_visited() {
  static std::atomic<int64_t> count{0};
  return count;
}

// ---------------------------------------------------------------- Task 1: the op
mx::array flash_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask,
    bool causal,
    CpuKernel kernel,
    int num_threads,
    mx::StreamOrDevice s) {
  // TODO(Task 1): check every argument (ranks, dtypes, shapes, H_q % H, sizes of 0, the
  // mask's dtype and shape, scale, num_threads, mask together with causal) and throw
  // std::invalid_argument (use fail) with a message naming the argument and what was
  // expected. Then make query, key and value row-contiguous, cast a floating mask to
  // float32 and broadcast it to (N, H_q, L, S), and return the lazy array built around a
  // FlashAttention primitive (inputs: query, key, value[, mask]).
  // Place it with `const metalsim::OpPlacement place = metalsim::place_op(s);`, not
  // mx::to_stream: use place.stream, pass place.simulated to FlashAttention. Week 3 runs GPU
  // calls through it (and, on its day 5, lets float16 / bfloat16 in when place.on_gpu()).
  // Week 4, Day 3, Task 1: on the CPU (primitive->returns_lse()) the primitive has two
  // outputs, out and the (N, H_q, L) float32 lse: build them with mx::array::make_arrays.
  throw std::runtime_error(
      "flash_attention is not implemented yet: see "
      "book/src/week2-04-flash-attention-cpp.md, Task 1");
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

  if (kernel_ == CpuKernel::Simple) {
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

// eval_gpu (Week 3) is in src/flash_attention_gpu.cpp.

} // namespace tiny_attn
