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
  mx::array out = flash_attention(query, key, value, scale, mask, causal, kernel, num_threads, s);
  const auto siblings = out.outputs(); // {out, lse} from one FlashAttention primitive
  if (siblings.size() != 2) {
    throw std::invalid_argument(
        "[flash_attention] this primitive has no log-sum-exp output: build the op with two "
        "outputs (Week 4, Day 3, Task 1)");
  }
  return siblings;
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
  // A GPU call runs Day 4's kernels (FlashAttentionBackward::eval_gpu); on metalsim where there
  // is no Metal device, as the forward does.
  const metalsim::OpPlacement place = metalsim::place_op(s);
  for (auto [x, name] : {std::pair{&query, "query"}, {&key, "key"}, {&value, "value"}}) {
    if (x->ndim() != 4 || x->dtype() != mx::float32) {
      std::ostringstream os;
      os << name << " must be a float32 array of 4 dimensions, got shape " << shape_str(x->shape())
         << " and dtype " << x->dtype();
      fail_backward(os.str());
    }
  }
  const int N = query.shape(0), H_q = query.shape(1), L = query.shape(2), E = query.shape(3);
  const int H = key.shape(1), S = key.shape(2);
  if (N == 0 || H_q == 0 || H == 0 || L == 0 || S == 0 || E == 0) {
    fail_backward(
        "every dimension must be at least 1, got query " + shape_str(query.shape()) + " and key " +
        shape_str(key.shape()));
  }
  check_shape(key, "key", {N, H, S, E}, "(N, H, S, E)");
  check_shape(value, "value", {N, H, S, E}, "(N, H, S, E)");
  if (H_q % H != 0) {
    fail_backward(
        "the query heads H_q = " + std::to_string(H_q) +
        " must be a multiple of the key/value heads H = " + std::to_string(H));
  }
  check_shape(out, "out", query.shape(), "(N, H_q, L, E)");
  check_shape(d_out, "d_out", query.shape(), "(N, H_q, L, E)");
  check_shape(lse, "lse", {N, H_q, L}, "(N, H_q, L)");
  if (!std::isfinite(scale)) {
    fail_backward("scale must be a finite float, got " + std::to_string(scale));
  }
  if (num_threads < 0) {
    fail_backward("num_threads must be >= 0 (0: one per core), got " + std::to_string(num_threads));
  }
  if (causal && mask.has_value()) {
    fail_backward("pass either a mask array or causal=True, not both");
  }

  auto stream = place.stream;
  std::vector<mx::array> inputs;
  for (const mx::array* x : {&query, &key, &value, &out, &lse, &d_out}) {
    inputs.push_back(mx::contiguous(*x, false, stream));
  }
  if (mask.has_value()) {
    const mx::array& m = *mask;
    const mx::Shape target = {N, H_q, L, S};
    bool fits = m.ndim() <= 4;
    for (int i = 1; fits && i <= static_cast<int>(m.ndim()); ++i) {
      fits = m.shape(-i) == 1 || m.shape(-i) == target[4 - i];
    }
    if (!fits) {
      fail_backward(
          "mask must broadcast to (N, H_q, L, S) = " + shape_str(target) + ", got shape " +
          shape_str(m.shape()));
    }
    if (m.dtype() != mx::bool_ && !mx::issubdtype(m.dtype(), mx::floating)) {
      std::ostringstream os;
      os << "mask must be bool (true = keep) or floating (added to the scores), got " << m.dtype();
      fail_backward(os.str());
    }
    auto m32 = m.dtype() == mx::bool_ ? m : mx::astype(m, mx::float32, stream);
    inputs.push_back(mx::broadcast_to(m32, target, stream));
  }
  return mx::array::make_arrays(
      {query.shape(), key.shape(), value.shape()},
      {mx::float32, mx::float32, mx::float32},
      std::make_shared<FlashAttentionBackward>(
          stream, scale, causal, mask.has_value(), num_threads, place.simulated, dq),
      inputs);
}

void FlashAttentionBackward::eval_cpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  if (simulated_) {
    return eval_gpu(inputs, outputs); // Day 4: a GPU call, run on metalsim
  }
  BackwardProblem p;
  p.q = inputs[0].data<float>();
  p.k = inputs[1].data<float>();
  p.v = inputs[2].data<float>();
  p.out = inputs[3].data<float>();
  p.lse = inputs[4].data<float>();
  p.d_out = inputs[5].data<float>();
  for (auto& o : outputs) {
    o.set_data(mx::allocator::malloc(o.nbytes()));
  }
  p.dq = outputs[0].data<float>();
  p.dk = outputs[1].data<float>();
  p.dv = outputs[2].data<float>();
  p.N = inputs[0].shape(0);
  p.H_q = inputs[0].shape(1);
  p.L = inputs[0].shape(2);
  p.E = inputs[0].shape(3);
  p.H = inputs[1].shape(1);
  p.S = inputs[1].shape(2);
  p.scale = scale_;
  p.causal = causal_;

  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& x : inputs) {
    encoder.set_input_array(x);
  }
  if (has_mask_) {
    const mx::array& mask = inputs[6];
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
  encoder.dispatch([p, n = num_threads_]() { flash_attention_backward_cpu(p, n); });
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
  for (int a : argnums) {
    if (a > 2) {
      throw std::invalid_argument(
          "[flash_attention] the mask gets no gradient: differentiate with respect to query, "
          "key and value only");
    }
  }
  if (outputs.size() < 2) {
    throw std::invalid_argument(
        "[flash_attention] the backward pass needs the log-sum-exp that the forward outputs: "
        "build the op with two outputs (Week 4, Day 3, Task 1)");
  }
  std::optional<mx::array> mask;
  if (has_mask_) {
    mask = primals[3];
  }
  auto grads = flash_attention_backward(
      primals[0],
      primals[1],
      primals[2],
      outputs[0],
      outputs[1],
      cotangents[0],
      scale_,
      mask,
      causal_,
      num_threads_,
      DqMode::Separate, // the GPU's deterministic dQ (Day 4); the CPU has one way
      // The device the forward ran on: a simulated GPU call sits on a CPU stream.
      simulated_ ? mx::StreamOrDevice(std::in_place_type<mx::Device>, mx::Device::gpu)
                 : mx::StreamOrDevice(stream()));
  std::vector<mx::array> result;
  for (int a : argnums) {
    result.push_back(grads[a]);
  }
  return result;
}

} // namespace tiny_attn
