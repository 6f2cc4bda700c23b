// Week 3: what eval_gpu and the Metal kernels of flash_attention.metal agree on.
#pragma once

#include <cstdint>

namespace tiny_attn {

// The largest head dimension the kernels hold in threadgroup memory (E_MAX in the .metal).
constexpr int kMaxHeadDim = 128;
// Threads per threadgroup: the day 2 kernel (32 SIMD groups, one per query row of the tile)
// and the day 4 kernel (4 SIMD groups of 8 query rows each).
constexpr int kSimpleKernelThreads = 1024;
constexpr int kSimdgroupKernelThreads = 128;

// How the scores are masked (MASK_* in the .metal).
enum MaskKind : int32_t {
  kMaskNone = 0,
  kMaskCausal = 1, // query i sees keys j <= i + S - L
  kMaskAdd = 2,    // float32 mask added to the scaled scores
  kMaskKeep = 3,   // bool mask: false replaces the score by the lowest float
};

// The scalars of a dispatch, bound with set_bytes at [[buffer(6)]]. The .metal declares the
// same struct, field for field; both sides check the size.
struct AttentionParams {
  int64_t mask_strides[4]; // in elements over (N, H_q, L, S); 0 on a broadcast axis
  int32_t N;
  int32_t H_q;
  int32_t H;
  int32_t L;
  int32_t S;
  int32_t E;
  float scale;
  int32_t mask_kind;
};
static_assert(sizeof(AttentionParams) == 64, "AttentionParams must match the .metal side");

} // namespace tiny_attn
