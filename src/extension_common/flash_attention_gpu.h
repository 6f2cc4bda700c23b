// Week 3: what eval_gpu and the Metal kernels of flash_attention.metal agree on.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "mlx/array.h"

// Whether this build's Metal kernels include the bfloat16 ones: they need Metal 3.1 (macOS 14),
// so a build for an older macOS (cmake -DTINY_ATTN_MACOS_DEPLOYMENT_TARGET=13.0) has none.
// cmake/tiny_attn_extension.cmake sets it from that target.
#ifndef TINY_ATTN_METAL_BFLOAT16
#define TINY_ATTN_METAL_BFLOAT16 1
#endif

#include "mlx/array.h"

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

// Day 3: what the kernels count, bound at [[buffer(7)]] as two int32 (atomic_int in the .metal):
//   [0] (query row, K/V tile) pairs whose scores a kernel computed,
//   [1] of those, the pairs whose scores went through the mask (mask_score).
// One buffer for the whole process, added to by every dispatch; tests zero it and read it
// through ext.gpu_tile_counts() to see the tiles a causal mask skips, without timing anything.
constexpr int kTileCountsBuffer = 7;
inline mlx::core::array& gpu_tile_counts() {
  // Never freed: it must outlive every dispatch, up to the end of the process.
  static auto* counts = new mlx::core::array({0, 0}, mlx::core::int32);
  return *counts;
}

// Week 4, Day 4: where the kernels write each row's log-sum-exp, m + log(l): the primitive's
// second output, (N, H_q, L) float32, which the backward pass recomputes P from.
constexpr int kLseBuffer = 8;

// A GPU call with bfloat16 `query` in a build without bfloat16 kernels: a ValueError now, at the
// call, rather than Metal's "Unable to load function" when the result is evaluated.
inline void check_gpu_has_bfloat16(const mlx::core::array& query, bool on_gpu) {
  if (on_gpu && !TINY_ATTN_METAL_BFLOAT16 && query.dtype() == mlx::core::bfloat16) {
    throw std::invalid_argument(
        "[flash_attention on the GPU] query is bfloat16, but this build of the extension has no "
        "bfloat16 kernels: they need Metal 3.1 (macOS 14) and it was configured for an older "
        "macOS (TINY_ATTN_MACOS_DEPLOYMENT_TARGET). Use float16 or float32, or rebuild for "
        "macOS 14 or later.");
  }
}

} // namespace tiny_attn
