// Week 2, day 4: the flash_attention op (validation, the lazy array).
#include "flash_attention.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"

namespace tiny_attn {

namespace {

// float32 everywhere; float16 and bfloat16 too on the GPU (Week 3, day 5), whose kernels read
// 16-bit values and compute in float32.
void check_operand(const mx::array& x, const char* name, const char* layout, bool on_gpu) {
  if (x.ndim() != 4) {
    fail(
        std::string(name) + " must have 4 dimensions " + layout + ", got shape " +
        shape_str(x.shape()));
  }
  const bool half = x.dtype() == mx::float16 || x.dtype() == mx::bfloat16;
  if (x.dtype() != mx::float32 && !(on_gpu && half)) {
    std::ostringstream os;
    os << name << " must be float32" << (on_gpu ? ", float16 or bfloat16" : "") << ", got "
       << x.dtype()
       << (half ? " (16-bit inputs run on the GPU only: pass stream=mx.gpu)"
                : " (use .astype(mx.float32))");
    fail(os.str());
  }
}

} // namespace

// ---------------------------------------------------------------- Task 1: the op
mx::array flash_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask,
    bool causal,
    Kernel kernel,
    int num_threads,
    mx::StreamOrDevice s) {
  // Where the op runs: mx::to_stream(s), or, for a GPU call without Metal, a CPU stream whose
  // primitive runs the Metal kernels on metalsim (Week 3).
  const metalsim::OpPlacement place = metalsim::place_op(s);
  check_operand(query, "query", "(N, H_q, L, E)", place.on_gpu());
  check_operand(key, "key", "(N, H, S, E)", place.on_gpu());
  check_operand(value, "value", "(N, H, S, E)", place.on_gpu());
  if (key.dtype() != query.dtype() || value.dtype() != query.dtype()) {
    std::ostringstream os;
    os << "query, key and value must have the same dtype, got " << query.dtype() << ", "
       << key.dtype() << " and " << value.dtype();
    fail(os.str());
  }
  const int N = query.shape(0), H_q = query.shape(1), L = query.shape(2), E = query.shape(3);
  const int H = key.shape(1), S = key.shape(2);
  if (key.shape() != value.shape()) {
    fail(
        "key and value must have the same shape (N, H, S, E), got " + shape_str(key.shape()) +
        " and " + shape_str(value.shape()));
  }
  if (key.shape(0) != N) {
    fail(
        "key must have the batch size N = " + std::to_string(N) + " of query, got " +
        std::to_string(key.shape(0)));
  }
  if (key.shape(3) != E) {
    fail(
        "key must have the head dimension E = " + std::to_string(E) + " of query, got " +
        std::to_string(key.shape(3)));
  }
  if (N == 0 || H_q == 0 || H == 0 || L == 0 || S == 0 || E == 0) {
    fail(
        "every dimension must be at least 1, got query " + shape_str(query.shape()) + " and key " +
        shape_str(key.shape()));
  }
  if (H_q % H != 0) {
    fail(
        "the query heads H_q = " + std::to_string(H_q) +
        " must be a multiple of the key/value heads H = " + std::to_string(H));
  }
  if (!std::isfinite(scale)) {
    fail("scale must be a finite float, got " + std::to_string(scale));
  }
  if (num_threads < 0) {
    fail("num_threads must be >= 0 (0: one per core), got " + std::to_string(num_threads));
  }
  if (causal && mask.has_value()) {
    fail("pass either a mask array or causal=True, not both");
  }

  auto stream = place.stream;
  // The kernels index q, k, v as dense row-major arrays. mx::contiguous costs nothing for
  // an input that already is, and copies a transposed or sliced one at evaluation time.
  std::vector<mx::array> inputs = {
      mx::contiguous(query, false, stream),
      mx::contiguous(key, false, stream),
      mx::contiguous(value, false, stream)};

  if (mask.has_value()) {
    const mx::array& m = *mask;
    const mx::Shape target = {N, H_q, L, S};
    bool fits = m.ndim() <= 4;
    for (int i = 1; fits && i <= static_cast<int>(m.ndim()); ++i) {
      const int d = m.shape(-i);
      fits = d == 1 || d == target[4 - i];
    }
    if (!fits) {
      fail(
          "mask must broadcast to (N, H_q, L, S) = " + shape_str(target) + ", got shape " +
          shape_str(m.shape()));
    }
    if (m.dtype() != mx::bool_ && !mx::issubdtype(m.dtype(), mx::floating)) {
      std::ostringstream os;
      os << "mask must be bool (true = keep) or floating (added to the scores), got " << m.dtype();
      fail(os.str());
    }
    // Floating masks are read as float32. broadcast_to only sets strides (0 on the broadcast
    // axes): an (L, S) mask stays (L, S) in memory.
    auto m32 = m.dtype() == mx::bool_ ? m : mx::astype(m, mx::float32, stream);
    inputs.push_back(mx::broadcast_to(m32, target, stream));
  }

  auto primitive = std::make_shared<FlashAttention>(
      stream, scale, causal, mask.has_value(), kernel, num_threads, place.simulated);
  if (!primitive->returns_lse()) {
    return mx::array(query.shape(), query.dtype(), primitive, std::move(inputs));
  }
  // Week 4: on the CPU the primitive has a second output, the (N, H_q, L) log-sum-exp, kept
  // for the backward pass (FlashAttention::vjp). The op returns the first.
  return mx::array::make_arrays(
      {query.shape(), {N, H_q, L}}, {query.dtype(), mx::float32}, primitive, inputs)[0];
}

// eval_cpu, given: src/extension_common/flash_attention_eval.cpp. eval_gpu (Week 3) is in
// src/flash_attention_gpu.cpp.

} // namespace tiny_attn
