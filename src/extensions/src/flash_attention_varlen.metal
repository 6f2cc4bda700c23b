// Week 5, day 4: flash_attention_varlen_f32, masks computed in the kernel over packed sequences.
//
// The Week 3 kernel's thread map (flash_attention_<t>_e128), one threadgroup per (sequence,
// query head, Q tile):
//
//   Grid: (num_seqs * H_q, ceil(max_seqlen_q / Br)) threadgroups of 1024 threads.
//
//                      K tile (Bc = 32 keys of the sequence), one key per lane b
//                      b=0   b=1   ...   b=31
//   SIMD group a=0  [ s00   s01   ...   s0,31 ]   <- row t*Br + 0 of the sequence's queries
//      ...
//   SIMD group a=31 [ s31,0 ...         s31,31]
//
// Each SIMD group walks only the K/V tiles its row sees (visible_keys): a sliding window skips
// the tiles before and after it, and only the tiles at the window's edges go through the mask.
// The scores: scale, soft-capping, ALiBi, then the mask, as the CPU kernel.
#include <metal_stdlib>

using namespace metal;

// Named VARLEN_*: on a Mac every .metal file of the extension is linked into one library, next
// to flash_attention.metal's Br, Bc and E_MAX.
constant constexpr int VARLEN_BR = 32; // query rows of a threadgroup, one per SIMD group
constant constexpr int VARLEN_BC = 32; // keys of a tile, one per lane
constant constexpr int VARLEN_E_MAX = 128;
// The lowest float, what a masked score becomes (as MLX's boolean masks).
constant constexpr float VARLEN_MASKED = -3.40282346638528859812e+38f;

// Mirrors VarlenParams in flash_attention_varlen.h, field for field (40 bytes).
struct VarlenParams {
  int num_seqs;
  int H_q; // query heads
  int H; // key/value heads; H_q is a multiple of H
  int E; // head dimension
  float scale;
  int causal;
  int window_left; // -1: unbounded
  int window_right; // -1: unbounded
  float softcap; // 0: none
  int has_alibi;
};
static_assert(sizeof(VarlenParams) == 40, "VarlenParams must match the C++ side");

// The keys lo..hi of its sequence that a row sees; empty when lo > hi.
struct KeyRange {
  int lo;
  int hi;
};

[[kernel]] void flash_attention_varlen_f32(
    device const float* q [[buffer(0)]],
    device const float* k [[buffer(1)]],
    device const float* v [[buffer(2)]],
    device float* out [[buffer(3)]],
    device const int* cu_seqlens_q [[buffer(4)]],
    device const int* cu_seqlens_k [[buffer(5)]],
    constant VarlenParams& p [[buffer(6)]],
    device atomic_int* tile_counts [[buffer(7)]],
    device const float* alibi_slopes [[buffer(8)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  // Task 3 (book/src/week5-04-computed-masks.md): the Week 3 kernel's rows and lanes, over the
  // packed rows of sequence group.x / H_q.
  // TODO(Task 3): visible_keys(row, L, S, p) and varlen_score(dot, pos, col, slope, p), the
  //   rules of the CPU kernel, under the same names.
  // TODO(Task 3): stage the row's Q, then walk only the tiles the row sees (every tile for a
  //   row that sees none), the mask compared only on tiles it does not see whole; Week 3's
  //   online softmax with simd_max / simd_sum; add the (row, tile) pairs visited and masked to
  //   tile_counts[0] and [1].
  const int seq = group.x / p.H_q;
  const int h_q = group.x % p.H_q;
  const int q0 = cu_seqlens_q[seq];
  const int L = cu_seqlens_q[seq + 1] - q0;
  const int row = group.y * VARLEN_BR + simd_gid;
  if (row < L) {
    for (int e = simd_lid; e < p.E; e += 32) {
      out[(size_t(q0 + row) * p.H_q + h_q) * p.E + e] = NAN; // placeholder: the attention
    }
  }
}
