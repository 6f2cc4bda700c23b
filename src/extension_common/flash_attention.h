// Week 2, days 4 and 5: FlashAttention on the CPU as an MLX primitive.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace tiny_attn {

// The tile sizes of every kernel of the course: Br query rows by Bc key columns.
constexpr int kBr = 32;
constexpr int kBc = 32;

// Which CPU kernel evaluates the attention: day 4's readable one or day 5's fast one.
enum class CpuKernel { Simple, Fast };

// softmax(scale * Q K^T + mask) V for query (N, H_q, L, E), key and value (N, H, S, E), all
// float32; query head h reads key/value head h / (H_q / H) (grouped-query attention).
// `mask`: bool (true = keep) or floating (added to the scores), any shape that broadcasts to
// (N, H_q, L, S). `causal`: query i sees keys j <= i + S - L (bottom-right aligned).
// Every check happens here, before the lazy array exists; bad input throws
// std::invalid_argument, which Python sees as ValueError.
mx::array flash_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask = std::nullopt,
    bool causal = false,
    CpuKernel kernel = CpuKernel::Simple,
    int num_threads = 0,
    mx::StreamOrDevice s = {});

// What a CPU kernel needs, as raw pointers and sizes: eval_cpu fills it in.
struct AttentionProblem {
  const float* q; // (N, H_q, L, E), row-contiguous
  const float* k; // (N, H, S, E), row-contiguous
  const float* v; // (N, H, S, E), row-contiguous
  float* out;     // (N, H_q, L, E), row-contiguous
  int N, H_q, H, L, S, E;
  float scale;
  bool causal;
  // At most one of these is set. The mask is read through its strides, in elements, over
  // (N, H_q, L, S): a broadcast axis has stride 0, so a (L, S) mask is never copied.
  const float* mask_add = nullptr; // added to the scaled scores
  const bool* mask_keep = nullptr; // false: the score is replaced by the lowest float
  int64_t mask_strides[4] = {0, 0, 0, 0};

  float mask_at(int n, int h, int i, int j) const {
    return mask_add
        [n * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3]];
  }
  bool keep_at(int n, int h, int i, int j) const {
    return mask_keep
        [n * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3]];
  }
};

// Day 4: one thread, plain loops (src/flash_attention_cpu.cpp).
void flash_attention_simple_cpu(const AttentionProblem& p);
// Day 5: packed tiles, 8-wide micro-kernels, threads (src/flash_attention_fast.cpp).
// num_threads = 0 means one per hardware thread.
void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads);

// Counts the (Q tile, K/V tile) pairs the kernels compute: a kernel adds one for every tile
// of scores it evaluates. Tests read it to check causal block skipping without timing.
std::atomic<int64_t>& tiles_visited();

class FlashAttention : public mx::Primitive {
 public:
  FlashAttention(
      mx::Stream stream,
      float scale,
      bool causal,
      bool has_mask,
      CpuKernel kernel,
      int num_threads,
      bool simulated = false)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_mask_(has_mask), kernel_(kernel),
        num_threads_(num_threads), simulated_(simulated) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  const char* name() const override {
    return "FlashAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  float scale_;
  bool causal_;
  bool has_mask_;
  CpuKernel kernel_;
  int num_threads_;
  // Week 3: a GPU call on a machine without Metal. The primitive sits on a CPU stream and
  // eval_cpu hands over to eval_gpu, which runs the Metal kernels on metalsim
  // (metalsim::place_op, src/metalsim/include/metalsim/mlx_extension.h).
  bool simulated_;
};

} // namespace tiny_attn
