// Week 5, day 4: masks computed in the kernel, over variable-length packed batches.
//
// flash_attention_varlen takes a batch of sequences of different lengths packed one after the
// other (no padding): query (total_q, H_q, E), key and value (total_k, H, E), and where each
// sequence starts, cu_seqlens_q / cu_seqlens_k (num_seqs + 1 int32, from 0 to the total).
// Sequence s owns query rows cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 and the keys
// cu_seqlens_k[s] .. cu_seqlens_k[s + 1] - 1, and attends within itself only.
//
// No mask array exists: the kernels compute, for each query row, the keys it sees. Row i of a
// sequence with L queries and S keys sits at key position pos = i + S - L (bottom-right, as the
// course's causal mask) and sees the keys j with
//     pos - window_left <= j <= pos + window_right   (a side of -1: unbounded on that side)
// and j <= pos if causal. On the scores, in this order: scale, soft-capping
// (softcap * tanh(s / softcap)), ALiBi (- slope[h] * |pos - j|), then the mask.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "flash_attention.h" // fail_op
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace tiny_attn {

[[noreturn]] inline void fail_varlen(const std::string& message) {
  fail_op("flash_attention_varlen", message);
}

// The masks and biases of a call, as the kernels take them.
struct VarlenMasks {
  bool causal = false;
  int window_left = -1;  // keys before the row's position it sees; -1: all of them
  int window_right = -1; // keys after it; -1: all (causal caps it at 0)
  float softcap = 0.0f;  // 0: no soft-capping
};

// Builds the lazy result, after checking every argument (a ValueError naming it otherwise).
// cu_seqlens_q and cu_seqlens_k are evaluated here: the kernels' grid depends on the longest
// sequence. alibi_slopes, if given, is float32 (H_q,).
mx::array flash_attention_varlen(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    const mx::array& cu_seqlens_q,
    const mx::array& cu_seqlens_k,
    float scale,
    const VarlenMasks& masks,
    const std::optional<mx::array>& alibi_slopes,
    mx::StreamOrDevice s = {});

// What the CPU kernel needs, as raw pointers and sizes: eval_cpu fills it in.
struct VarlenProblem {
  const float* q;                      // (total_q, H_q, E), row-contiguous
  const float* k;                      // (total_k, H, E)
  const float* v;                      // (total_k, H, E)
  float* out;                          // (total_q, H_q, E)
  const int32_t* cu_seqlens_q;         // (num_seqs + 1,)
  const int32_t* cu_seqlens_k;         // (num_seqs + 1,)
  const float* alibi_slopes = nullptr; // (H_q,) or none
  int num_seqs, H_q, H, E;
  float scale;
  VarlenMasks masks;
};

// Day 4 (src/flash_attention_varlen.cpp): the CPU kernel, on threads. It adds one to
// tiles_visited() for every (Q tile, K/V tile) pair it computes, and reports itself as
// report_cpu_kernel("varlen", threads).
void flash_attention_varlen_cpu(const VarlenProblem& p);

// The scalars of a GPU dispatch, bound with set_bytes at [[buffer(6)]]. flash_attention_varlen
// .metal declares the same struct, field for field; both sides check the size.
struct VarlenParams {
  int32_t num_seqs;
  int32_t H_q;
  int32_t H;
  int32_t E;
  float scale;
  int32_t causal;
  int32_t window_left;
  int32_t window_right;
  float softcap;
  int32_t has_alibi;
};
static_assert(sizeof(VarlenParams) == 40, "VarlenParams must match the .metal side");

class FlashAttentionVarlen : public mx::UnaryPrimitive {
 public:
  FlashAttentionVarlen(
      mx::Stream stream,
      float scale,
      const VarlenMasks& masks,
      bool has_alibi,
      int num_seqs,
      int max_seqlen_q,
      bool simulated)
      : mx::UnaryPrimitive(stream), scale_(scale), masks_(masks), has_alibi_(has_alibi),
        num_seqs_(num_seqs), max_seqlen_q_(max_seqlen_q), simulated_(simulated) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  const char* name() const override {
    return "FlashAttentionVarlen";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  float scale_;
  VarlenMasks masks_;
  bool has_alibi_;
  int num_seqs_;
  int max_seqlen_q_; // the longest sequence's query rows: the GPU grid's second extent
  bool simulated_;   // a GPU call without Metal: eval_cpu hands over to eval_gpu (metalsim)
};

} // namespace tiny_attn
