// Week 4, day 3: the backward pass of FlashAttention on the CPU, and MLX autodiff through it.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "flash_attention.h"

namespace tiny_attn {

// For the backward's checks: the error to throw (a ValueError in Python whose message starts
// with "[flash_attention_backward]"), and a float32 array of exactly the shape `want`.
[[noreturn]] inline void fail_backward(const std::string& message) {
  throw std::invalid_argument("[flash_attention_backward] " + message);
}

inline void
check_shape(const mx::array& x, const char* name, const mx::Shape& want, const char* layout) {
  if (x.dtype() != mx::float32) {
    std::ostringstream os;
    os << name << " must be float32, got " << x.dtype();
    fail_backward(os.str());
  }
  if (x.shape() != want) {
    fail_backward(
        std::string(name) + " must have shape " + layout + " = " + shape_str(want) + ", got " +
        shape_str(x.shape()));
  }
}


// The forward with its log-sum-exp: {out (N, H_q, L, E), lse (N, H_q, L) float32}, both lazy.
// The arguments are flash_attention's; on the CPU only.
std::vector<mx::array> flash_attention_with_lse(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask = std::nullopt,
    bool causal = false,
    Kernel kernel = Kernel::Fast,
    int num_threads = 0,
    mx::StreamOrDevice s = {});

// {d_query, d_key, d_value} of attention, from the forward's out and lse and the gradient
// d_out of the loss with respect to out. query, key, value, scale, mask and causal are what the
// forward got (float32, (N, H_q, L, E) and (N, H, S, E)); out and d_out are (N, H_q, L, E),
// lse (N, H_q, L) float32. Bad input throws std::invalid_argument (Python: ValueError).
std::vector<mx::array> flash_attention_backward(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    const mx::array& out,
    const mx::array& lse,
    const mx::array& d_out,
    float scale,
    const std::optional<mx::array>& mask = std::nullopt,
    bool causal = false,
    int num_threads = 0,
    mx::StreamOrDevice s = {});

// What the backward kernel needs, as raw pointers and sizes: eval_cpu fills it in.
struct BackwardProblem {
  const float* q;     // (N, H_q, L, E)
  const float* k;     // (N, H, S, E)
  const float* v;     // (N, H, S, E)
  const float* out;   // (N, H_q, L, E)
  const float* lse;   // (N, H_q, L)
  const float* d_out; // (N, H_q, L, E)
  float* dq;          // (N, H_q, L, E)
  float* dk;          // (N, H, S, E)
  float* dv;          // (N, H, S, E)
  int N, H_q, H, L, S, E;
  float scale;
  bool causal;
  // The forward's mask, read through its strides over (N, H_q, L, S), as AttentionProblem.
  const float* mask_add = nullptr;
  const bool* mask_keep = nullptr;
  int64_t mask_strides[4] = {0, 0, 0, 0};

  int64_t mask_offset(int n, int h, int i, int j) const {
    return n * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3];
  }
};

// The kernel (src/flash_attention_backward_cpu.cpp): threads over K/V tiles, each K/V tile's
// dK and dV written by one thread only. num_threads = 0 means one per hardware thread.
void flash_attention_backward_cpu(const BackwardProblem& p, int num_threads);

// Counts the (K/V tile, Q tile) pairs the backward kernel computes: causal tile skipping
// makes it about half of the unmasked count.
std::atomic<int64_t>& backward_tiles_visited();

// How many threads the last call of the backward kernel ran on (the calling one included).
std::atomic<int>& backward_threads();

class FlashAttentionBackward : public mx::Primitive {
 public:
  FlashAttentionBackward(mx::Stream stream, float scale, bool causal, bool has_mask, int num_threads)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_mask_(has_mask),
        num_threads_(num_threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  const char* name() const override {
    return "FlashAttentionBackward";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[1].shape(), inputs[2].shape()};
  }

 private:
  float scale_;
  bool causal_;
  bool has_mask_;
  int num_threads_;
};

} // namespace tiny_attn
