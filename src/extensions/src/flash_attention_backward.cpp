// Week 4, day 3: the forward's log-sum-exp, the backward op, and FlashAttention::vjp, which
// makes mx.grad, mx.value_and_grad and mx.vjp work through flash_attention.
#include "flash_attention_backward.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: the lse
std::vector<mx::array> flash_attention_with_lse(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask,
    bool causal,
    Kernel kernel,
    int num_threads,
    mx::StreamOrDevice s) {
  // TODO(Task 1): call flash_attention and return the two outputs of its primitive,
  // out.outputs() = {out, lse}; throw std::invalid_argument if there is no lse (one output).
  throw std::runtime_error(
      "flash_attention_with_lse is not implemented yet: see "
      "book/src/week4-03-backward-cpp.md, Task 1");
}

// ---------------------------------------------------------------- Task 2: the backward op
std::vector<mx::array> flash_attention_backward(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    const mx::array& out,
    const mx::array& lse,
    const mx::array& d_out,
    float scale,
    const std::optional<mx::array>& mask,
    bool causal,
    int num_threads,
    DqMode dq,
    mx::StreamOrDevice s) {
  // TODO(Task 2): place the op with metalsim::place_op(s); check every argument (fail_backward(...)
  // names it); make the inputs row-contiguous, cast a floating mask to float32 and broadcast it to
  // (N, H_q, L, S); return the three outputs of one FlashAttentionBackward primitive
  // (mx::array::make_arrays), built with place.simulated and dq (Day 4 runs it on the GPU).
  throw std::runtime_error(
      "flash_attention_backward is not implemented yet: see "
      "book/src/week4-03-backward-cpp.md, Task 2");
}

void FlashAttentionBackward::eval_cpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  // A simulated GPU call (simulated_) hands over to eval_gpu (Day 4), as the forward's does.
  // TODO(Task 2): allocate the outputs, fill a BackwardProblem, register the arrays with the
  // CPU encoder and dispatch flash_attention_backward_cpu, as FlashAttention::eval_cpu does.
  throw std::runtime_error(
      "FlashAttentionBackward::eval_cpu is not implemented yet: see "
      "book/src/week4-03-backward-cpp.md, Task 2");
}

bool FlashAttentionBackward::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const FlashAttentionBackward&>(other);
  return scale_ == o.scale_ && causal_ == o.causal_ && has_mask_ == o.has_mask_ &&
         num_threads_ == o.num_threads_ && simulated_ == o.simulated_ && dq_ == o.dq_;
}

// ---------------------------------------------------------------- Task 3: the vjp
std::vector<mx::array> FlashAttention::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>& outputs) {
  // TODO(Task 3): refuse a gradient for the mask (argnum 3) and a primitive without the lse
  // output with std::invalid_argument; call flash_attention_backward with the primals, the
  // outputs {out, lse} and cotangents[0], on the forward's device (a simulated GPU call sits on
  // a CPU stream: pass mx::Device::gpu then); return the gradients that argnums asks for.
  throw std::runtime_error(
      "FlashAttention::vjp is not implemented yet: see book/src/week4-03-backward-cpp.md, Task 3");
}

} // namespace tiny_attn
