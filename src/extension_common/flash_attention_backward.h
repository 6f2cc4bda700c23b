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
  fail_op("flash_attention_backward", message);
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
// The arguments are flash_attention's; on the CPU (Day 3) and on the GPU (Day 4).
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

// Week 4, Day 4: how the GPU backward computes dQ (the CPU backward has one way).
//   Separate: a kernel of its own, one threadgroup per Q tile looping over the K/V tiles; every
//             dQ element is summed by one thread in a fixed order: the same bits on every run.
//   Atomic:   inside the dK/dV kernel, each K/V tile adding its terms into dQ with
//             atomic_fetch_add_explicit: one kernel fewer, but the order of the additions (and
//             so the float rounding) depends on the order the threadgroups run in.
enum class DqMode { Separate, Atomic };

// {d_query, d_key, d_value} of attention, from the forward's out and lse and the gradient
// d_out of the loss with respect to out. query, key, value, scale, mask and causal are what the
// forward got (float32, (N, H_q, L, E) and (N, H, S, E)); out and d_out are (N, H_q, L, E),
// lse (N, H_q, L) float32. On the GPU (Day 4), `dq` chooses how dQ is computed; the CPU ignores
// it. Bad input throws std::invalid_argument (Python: ValueError).
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
    DqMode dq = DqMode::Separate,
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

// Day 4: the buffers of the backward kernels in flash_attention.metal, bound by eval_gpu in
// src/flash_attention_backward_gpu.cpp. Params and tile counts sit where the forward has them
// (6 and kTileCountsBuffer = 7 in flash_attention_gpu.h).
//   flash_attention_backward_preprocess        out 0, d_out 1, D 2, dQ 3 (zeroed), params 6
//   flash_attention_backward_dkdv[_atomic_dq]  q 0, k 1, v 2, d_out 3, lse 4, D 5, params 6,
//                                              counts 7, masks 8 (float) and 9 (bool), dK 10,
//                                              dV 11, dQ 12 (added to by the atomic one)
//   flash_attention_backward_dq                as dkdv up to 9, dQ 10
constexpr int kBwdMaskAddBuffer = 8;
constexpr int kBwdMaskKeepBuffer = 9;

// Counts the (K/V tile, Q tile) pairs the backward kernel computes: causal tile skipping
// makes it about half of the unmasked count.
std::atomic<int64_t>& backward_tiles_visited();

// How many threads the last call of the backward kernel ran on (the calling one included).
std::atomic<int>& backward_threads();

// The backward primitive: eval_cpu (Day 3, src/flash_attention_backward.cpp) runs the CPU kernel,
// eval_gpu (Day 4, src/flash_attention_backward_gpu.cpp) the Metal kernels.
class FlashAttentionBackward : public mx::Primitive {
 public:
  FlashAttentionBackward(
      mx::Stream stream,
      float scale,
      bool causal,
      bool has_mask,
      int num_threads,
      bool simulated = false,
      DqMode dq = DqMode::Separate)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_mask_(has_mask),
        num_threads_(num_threads), simulated_(simulated), dq_(dq) {}

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
  // Day 4: a GPU call on a machine without Metal (eval_cpu hands it to eval_gpu, as the
  // forward does), and how eval_gpu computes dQ.
  bool simulated_;
  DqMode dq_;
};

} // namespace tiny_attn
