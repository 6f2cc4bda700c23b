// Week 5, day 4: the flash_attention_varlen op, given and shared by both extensions: its checks,
// the lazy array and eval_cpu (fills a VarlenProblem and queues the CPU kernel). The kernels
// and the GPU dispatch are the course's: src/flash_attention_varlen.cpp,
// src/flash_attention_varlen_gpu.cpp and src/flash_attention_varlen.metal.
#include "flash_attention_varlen.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "flash_attention.h"
#include "flash_attention_gpu.h" // kMaxHeadDim
#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/transforms.h"

namespace tiny_attn {

namespace {

// 3 axes, float32 (the varlen kernels have no 16-bit versions).
void check_operand(const mx::array& x, const char* name, const char* layout) {
  check_operand_of("flash_attention_varlen", x, name, 3, layout, false, false);
}

// cu_seqlens_*: int32 (num_seqs + 1,), from 0 to `total`, never decreasing. Evaluated here (a
// few bytes): the checks and the GPU grid need its values.
std::vector<int32_t> check_cu_seqlens(const mx::array& cu, const char* name, int total) {
  if (cu.ndim() != 1 || cu.size() < 2) {
    fail_varlen(
        std::string(name) + " must be 1-D with num_seqs + 1 >= 2 entries, got shape " +
        shape_str(cu.shape()));
  }
  if (cu.dtype() != mx::int32) {
    std::ostringstream os;
    os << name << " must be int32, got " << cu.dtype() << " (use .astype(mx.int32))";
    fail_varlen(os.str());
  }
  mx::array c = mx::contiguous(cu, false, mx::Device::cpu);
  mx::eval(c);
  std::vector<int32_t> v(c.data<int32_t>(), c.data<int32_t>() + c.size());
  if (v.front() != 0) {
    fail_varlen(std::string(name) + " must start at 0, got " + std::to_string(v.front()));
  }
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] < v[i - 1]) {
      fail_varlen(
          std::string(name) + " must never decrease, got " + std::to_string(v[i - 1]) + " then " +
          std::to_string(v[i]) + " at index " + std::to_string(i));
    }
  }
  if (v.back() != total) {
    fail_varlen(
        std::string(name) + " must end at the number of packed rows, " + std::to_string(total) +
        ", got " + std::to_string(v.back()));
  }
  return v;
}

} // namespace

mx::array flash_attention_varlen(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    const mx::array& cu_seqlens_q,
    const mx::array& cu_seqlens_k,
    float scale,
    const VarlenMasks& masks,
    const std::optional<mx::array>& alibi_slopes,
    mx::StreamOrDevice s) {
  const metalsim::OpPlacement place = metalsim::place_op(s);
  check_operand(query, "query", "(total_q, H_q, E)");
  check_operand(key, "key", "(total_k, H, E)");
  check_operand(value, "value", "(total_k, H, E)");
  if (key.shape() != value.shape()) {
    fail_varlen(
        "key and value must have the same shape (total_k, H, E), got " + shape_str(key.shape()) +
        " and " + shape_str(value.shape()));
  }
  const int total_q = query.shape(0), H_q = query.shape(1), E = query.shape(2);
  const int total_k = key.shape(0), H = key.shape(1);
  if (key.shape(2) != E) {
    fail_varlen(
        "key must have the head dimension E = " + std::to_string(E) + " of query, got " +
        std::to_string(key.shape(2)));
  }
  if (total_q == 0 || H_q == 0 || E == 0 || total_k == 0 || H == 0) {
    fail_varlen(
        "every dimension must be at least 1, got query " + shape_str(query.shape()) + " and key " +
        shape_str(key.shape()));
  }
  if (H_q % H != 0) {
    fail_varlen(
        "the query heads H_q = " + std::to_string(H_q) +
        " must be a multiple of the key/value heads H = " + std::to_string(H));
  }
  if (place.on_gpu() && E > kMaxHeadDim) {
    fail_varlen(
        "on the GPU the head dimension E of query must be at most " + std::to_string(kMaxHeadDim) +
        ", got E = " + std::to_string(E));
  }
  if (!std::isfinite(scale)) {
    fail_varlen("scale must be finite, got " + std::to_string(scale));
  }
  if (masks.softcap < 0.0f || !std::isfinite(masks.softcap)) {
    fail_varlen("softcap must be a positive finite number, got " + std::to_string(masks.softcap));
  }
  if (masks.window_left < -1 || masks.window_right < -1) {
    fail_varlen("window sides must be >= 0 (or unbounded), got a negative one");
  }

  const std::vector<int32_t> cu_q = check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", total_q);
  const std::vector<int32_t> cu_k = check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", total_k);
  if (cu_q.size() != cu_k.size()) {
    fail_varlen(
        "cu_seqlens_q and cu_seqlens_k must describe as many sequences, got " +
        std::to_string(cu_q.size() - 1) + " and " + std::to_string(cu_k.size() - 1));
  }
  const int num_seqs = static_cast<int>(cu_q.size()) - 1;
  int max_seqlen_q = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int L = cu_q[i + 1] - cu_q[i], S = cu_k[i + 1] - cu_k[i];
    if (L > 0 && S == 0) {
      fail_varlen(
          "cu_seqlens_k: sequence " + std::to_string(i) + " has " + std::to_string(L) +
          " query rows but no key");
    }
    max_seqlen_q = std::max(max_seqlen_q, L);
  }

  std::vector<mx::array> inputs = {
      mx::contiguous(query, false, place.stream),
      mx::contiguous(key, false, place.stream),
      mx::contiguous(value, false, place.stream),
      mx::contiguous(cu_seqlens_q, false, place.stream),
      mx::contiguous(cu_seqlens_k, false, place.stream)};
  if (alibi_slopes) {
    const mx::array& a = *alibi_slopes;
    if (a.dtype() != mx::float32 || a.shape() != mx::Shape{H_q}) {
      std::ostringstream os;
      os << "alibi_slopes must be float32 of shape (H_q,) = (" << H_q << ",), got " << a.dtype()
         << " of shape " << shape_str(a.shape());
      fail_varlen(os.str());
    }
    inputs.push_back(mx::contiguous(a, false, place.stream));
  }
  // A window wider than every key is no window: capping it keeps the kernels' integer
  // arithmetic (position - window_left) far from overflow.
  VarlenMasks m = masks;
  if (m.window_left > total_k) {
    m.window_left = total_k;
  }
  if (m.window_right > total_k) {
    m.window_right = total_k;
  }
  return mx::array(
      query.shape(),
      mx::float32,
      std::make_shared<FlashAttentionVarlen>(
          place.stream,
          scale,
          m,
          alibi_slopes.has_value(),
          num_seqs,
          max_seqlen_q,
          place.simulated),
      std::move(inputs));
}

// ---------------------------------------------------------------- eval_cpu
void FlashAttentionVarlen::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  if (simulated_) {
    return eval_gpu(inputs, out); // a GPU call, run on metalsim
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));
  VarlenProblem p;
  p.q = inputs[0].data<float>();
  p.k = inputs[1].data<float>();
  p.v = inputs[2].data<float>();
  p.out = out.data<float>();
  p.cu_seqlens_q = inputs[3].data<int32_t>();
  p.cu_seqlens_k = inputs[4].data<int32_t>();
  p.alibi_slopes = has_alibi_ ? inputs[5].data<float>() : nullptr;
  p.num_seqs = num_seqs_;
  p.H_q = inputs[0].shape(1);
  p.H = inputs[1].shape(1);
  p.E = inputs[0].shape(2);
  p.scale = scale_;
  p.masks = masks_;

  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& x : inputs) {
    encoder.set_input_array(x);
  }
  encoder.set_output_array(out);
  encoder.dispatch([p]() { flash_attention_varlen_cpu(p); });
}

// eval_gpu (Task 3) is in src/flash_attention_varlen_gpu.cpp.

bool FlashAttentionVarlen::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const FlashAttentionVarlen&>(other);
  return scale_ == o.scale_ && masks_.causal == o.masks_.causal &&
         masks_.window_left == o.masks_.window_left &&
         masks_.window_right == o.masks_.window_right && masks_.softcap == o.masks_.softcap &&
         has_alibi_ == o.has_alibi_ && num_seqs_ == o.num_seqs_ && max_seqlen_q_ == o.max_seqlen_q_;
}

} // namespace tiny_attn
