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

// Task 3: the rule of the CPU kernel's visible_keys (src/flash_attention_varlen.cpp), under the
// same name. Row `row` of L queries against S keys sits at position row + S - L.
inline KeyRange visible_keys(int row, int L, int S, constant VarlenParams& p) {
  const int pos = row + S - L;
  int lo = p.window_left < 0 ? 0 : pos - p.window_left;
  int hi = p.window_right < 0 ? S - 1 : pos + p.window_right;
  if (p.causal != 0) {
    hi = min(hi, pos);
  }
  KeyRange keys;
  keys.lo = max(lo, 0);
  keys.hi = min(hi, S - 1);
  return keys;
}

// Task 3: one score, as the CPU kernel's score(): scale, soft-capping, ALiBi.
inline float varlen_score(float dot, int pos, int col, float slope, constant VarlenParams& p) {
  float s = dot * p.scale;
  if (p.softcap > 0.0f) {
    s = p.softcap * precise::tanh(s / p.softcap);
  }
  if (p.has_alibi != 0) {
    s -= slope * float(abs(pos - col));
  }
  return s;
}

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
  threadgroup float Q_tile[VARLEN_BR][VARLEN_E_MAX]; // 16 KiB
  threadgroup float O_acc[VARLEN_BR][VARLEN_E_MAX]; // 16 KiB
  const uint a = simd_gid; // this SIMD group computes row a of the Q tile
  const uint b = simd_lid; // this lane, key b of the K tile
  const int seq = group.x / p.H_q;
  const int h_q = group.x % p.H_q;
  const int h = h_q / (p.H_q / p.H); // GQA: the key/value head of this query head
  const int q0 = cu_seqlens_q[seq];
  const int L = cu_seqlens_q[seq + 1] - q0;
  const int k0 = cu_seqlens_k[seq];
  const int S = cu_seqlens_k[seq + 1] - k0;
  const int row = group.y * VARLEN_BR + a;
  const bool row_valid = row < L; // the sequence may end inside (or before) this Q tile
  const int E = p.E;
  const float slope = p.has_alibi != 0 ? alibi_slopes[h_q] : 0.0f;

  // Packed rows: query row r of the sequence is q[(q0 + r) * H_q + h_q, :].
  device const float* q_row = q + (size_t(q0 + row) * p.H_q + h_q) * E;
  for (int e = b; e < E; e += 32) {
    Q_tile[a][e] = row_valid ? q_row[e] : 0.0f;
    O_acc[a][e] = 0.0f;
  }
  // Barrier 1: lane b reads all of Q_tile[a], written by the other lanes of its SIMD group.
  threadgroup_barrier(mem_flags::mem_threadgroup);

  // The tiles this row visits. A row that sees no key averages every value (as MLX): all.
  const KeyRange keys = visible_keys(row, L, S, p);
  const bool sees_none = keys.lo > keys.hi;
  const int first_tile = sees_none ? 0 : keys.lo / VARLEN_BC;
  const int last_tile = !row_valid ? -1 : (sees_none ? (S - 1) / VARLEN_BC : keys.hi / VARLEN_BC);
  const int pos = row + S - L;

  float m_i = -INFINITY;
  float l_i = 0.0f;
  int masked_tiles = 0;
  // No barrier inside: SIMD groups may run different numbers of tiles.
  for (int j = first_tile; j <= last_tile; ++j) {
    const int col = j * VARLEN_BC + b;
    const bool col_valid = col < S;
    // A tile the row sees whole (up to the sequence's last key) needs no comparison.
    const int tile_last = min((j + 1) * VARLEN_BC, S) - 1;
    const bool masked = !(keys.lo <= j * VARLEN_BC && tile_last <= keys.hi);
    masked_tiles += masked;

    float s = -INFINITY; // keys past S take no part in the max and get p = 0
    if (col_valid) {
      device const float* k_row = k + (size_t(k0 + col) * p.H + h) * E;
      float dot = 0.0f;
      for (int e = 0; e < E; ++e) {
        dot += Q_tile[a][e] * k_row[e];
      }
      s = varlen_score(dot, pos, col, slope, p);
      if (masked && (col < keys.lo || col > keys.hi)) {
        s = VARLEN_MASKED;
      }
    }

    // Online softmax over the 32 lanes; every valid score is finite, so m_new is too.
    const float m_new = max(m_i, simd_max(s));
    const float p_ab = exp(s - m_new);
    const float alpha = exp(m_i - m_new);
    l_i = l_i * alpha + simd_sum(p_ab);
    m_i = m_new;

    // O[a, :] = alpha * O[a, :] + sum over b of p_ab * V[b, :]; only lane 0 writes O_acc[a].
    device const float* v_row = v + (size_t(k0 + col) * p.H + h) * E;
    for (int e = 0; e < E; ++e) {
      const float pv = simd_sum(col_valid ? p_ab * v_row[e] : 0.0f);
      if (b == 0) {
        O_acc[a][e] = O_acc[a][e] * alpha + pv;
      }
    }
  }

  if (b == 0 && row_valid) {
    atomic_fetch_add_explicit(&tile_counts[0], last_tile - first_tile + 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&tile_counts[1], masked_tiles, memory_order_relaxed);
  }

  // Barrier 2: lane b is about to read O_acc[a], which lane 0 wrote.
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (row_valid) {
    device float* out_row = out + (size_t(q0 + row) * p.H_q + h_q) * E;
    for (int e = b; e < E; e += 32) {
      out_row[e] = O_acc[a][e] / l_i;
    }
  }
}
