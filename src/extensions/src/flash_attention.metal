// Week 3: FlashAttention on the GPU.
//
//   days 2-3: flash_attention_<t>_e128      one score per thread, simd_max / simd_sum
//   day 4:    flash_attention_simdgroup_<t> 8x8 simdgroup_matrix products, float4 loads
//   day 5:    <t> = f32, f16, bf16: the inputs' type; every sum is accumulated in float
//
// Both kernels compute, for each (batch, query head) n and each query row i,
//   out[n, i, :] = softmax(scale * q[n, i, :] . k[n', j, :] + mask[n, i, j] over j) @ v[n', :, :]
// where n' is the key/value head of query head n (grouped-query attention), with the online
// softmax of Week 2: a running row max m_i, a running row sum l_i and an unnormalised output
// row o_i, rescaled by exp(m_old - m_new) whenever the max grows.
//
// SIMD indices, as in every kernel of the course: simd_gid [[simdgroup_index_in_threadgroup]]
// and simd_lid [[thread_index_in_simdgroup]]; each kernel says once what they mean to it.
#include <metal_stdlib>

using namespace metal;

// The tile sizes of the course: Br query rows against Bc key columns.
constant constexpr int Br = 32;
constant constexpr int Bc = 32;
// The largest head dimension the kernels hold in threadgroup memory.
constant constexpr int E_MAX = 128;

// How the scores are masked. Matches kMask* in flash_attention_gpu.h.
constant constexpr int MASK_NONE = 0;
constant constexpr int MASK_CAUSAL = 1; // query i sees keys j <= i + S - L
constant constexpr int MASK_ADD = 2; // float32 mask added to the scaled scores
constant constexpr int MASK_KEEP = 3; // bool mask: false replaces the score by -FLT_MAX

// The scalars of a dispatch, bound with set_bytes. Mirrors AttentionParams in
// flash_attention_gpu.h, field for field (64 bytes).
struct AttentionParams {
  // Strides of the mask in elements over (N, H_q, L, S); 0 on a broadcast axis.
  long mask_strides[4];
  int N; // batch size
  int H_q; // query heads
  int H; // key/value heads; H_q is a multiple of H
  int L; // query rows
  int S; // key rows
  int E; // head dimension
  float scale;
  int mask_kind;
};
static_assert(sizeof(AttentionParams) == 64, "AttentionParams must match the C++ side");

// The lowest float: what MLX puts in place of a masked-out score. A row whose every score
// is masked this way gets uniform weights, exactly as mx.fast.scaled_dot_product_attention.
constant constexpr float MASKED = -3.40282346638528859812e+38f;

// One score through the mask. `mask_add_row` / `mask_keep_row` point at mask[n, h_q, i, 0]
// (unused for MASK_NONE and MASK_CAUSAL). `last_key` = i + S - L, the last key query row i sees.
inline float mask_score(
    float s,
    int col,
    int last_key,
    device const float* mask_add_row,
    device const bool* mask_keep_row,
    constant AttentionParams& p) {
  // TODO(day 3, Tasks 2 and 3): MASK_CAUSAL keeps s for col <= last_key, else MASKED;
  //   MASK_ADD adds mask_add_row[col * p.mask_strides[3]]; MASK_KEEP keeps s where
  //   mask_keep_row[col * p.mask_strides[3]] is true, else MASKED.
  return s;
}

// The key/value head that query head h_q reads: H_q / H query heads share each one (GQA).
inline int kv_head(int h_q, constant AttentionParams& p) {
  // TODO(day 3, Task 1): the group of h_q. Until then, a placeholder that is right without
  //   GQA (H == H_q) and stays within the H heads of K and V with it.
  return min(h_q, p.H - 1);
}

// How many K/V tiles query rows first_row..last_row must visit: the rule of Week 2, Day 4's
// kv_tiles_to_visit (src/extensions/src/flash_attention_simple.cpp), under the same name.
inline int kv_tiles_to_visit(int first_row, int last_row, constant AttentionParams& p) {
  const int Tc = (p.S + Bc - 1) / Bc;
  // TODO(day 3, Task 2): with a causal mask, skip the tiles past the last key of last_row,
  //   except when a row sees no key at all (first_row + S - L < 0): see the chapter.
  return Tc;
}

// Whether a row's scores of K/V tile j go through mask_score (`last_key` = the row's last key).
inline bool tile_needs_mask(int j, int last_key, constant AttentionParams& p) {
  // TODO(day 3, Task 2): under a causal mask, a tile the row sees whole needs no mask. Until
  //   then, every tile of a masked call goes through mask_score.
  return p.mask_kind != MASK_NONE;
}

// Day 3: the work counters bound at [[buffer(7)]] (tile_counts in flash_attention_gpu.h). A
// thread adds, for its query rows, the (row, K/V tile) pairs computed and how many of those went
// through mask_score; the tests read them to see that a causal mask skips what it hides.
inline void count_tiles(device atomic_int* tile_counts, int visited, int masked) {
  atomic_fetch_add_explicit(&tile_counts[0], visited, memory_order_relaxed);
  atomic_fetch_add_explicit(&tile_counts[1], masked, memory_order_relaxed);
}

// ============================================================================================
// Days 2-3: flash_attention_<t>_e128
//
// Grid: (N * H_q, Tr) threadgroups of 1024 threads = 32 SIMD groups of 32 lanes.
// Threadgroup (n, t) owns query rows t*Br .. t*Br + 31 of (batch, head) n.
// SIMD group a <-> query row t*Br + a;  lane b <-> key j*Bc + b of K tile j.
// See book/src/week3-02-flash-attention-metal.md.
// ============================================================================================
template <typename T>
void flash_attention_e128_impl(
    device const T* q,
    device const T* k,
    device const T* v,
    device T* out,
    device const float* mask_add,
    device const bool* mask_keep,
    constant AttentionParams& p,
    device atomic_int* tile_counts,
    device float* lse,
    threadgroup float (*Q_tile)[E_MAX],
    threadgroup float (*O_acc)[E_MAX],
    uint2 group,
    uint simd_gid,
    uint simd_lid) {
  const uint a = simd_gid; // this SIMD group computes row a of the Q tile
  const uint b = simd_lid; // this lane, key b of the K tile
  const int n = group.x; // (batch, query head), flattened
  const int h_q = n % p.H_q;
  const int batch = n / p.H_q;
  const int h = kv_head(h_q, p);
  const int row = group.y * Br + a; // the query row of SIMD group a
  const bool row_valid = row < p.L; // the last Q tile may hang over the end
  const int E = p.E;

  device const T* q_row = q + (size_t(n) * p.L + row) * E;
  device const T* k_head = k + (size_t(batch) * p.H + h) * p.S * E;
  device const T* v_head = v + (size_t(batch) * p.H + h) * p.S * E;
  const long mask_offset = batch * p.mask_strides[0] + h_q * p.mask_strides[1] +
      row * p.mask_strides[2];
  device const float* mask_add_row = mask_add + mask_offset;
  device const bool* mask_keep_row = mask_keep + mask_offset;

  // TODO(Task 2): SIMD group a stages Q row `row` into Q_tile[a] (zeros if !row_valid) and
  //   zeroes O_acc[a]; then the barrier the chapter explains.
  // TODO(Task 2): m_i = -inf, l_i = 0; for each of the kv_tiles_to_visit(row, row, p) K tiles:
  //   - lane b: score s of key j * Bc + b (-inf past S), through mask_score on the tiles
  //     where tile_needs_mask(j, row + S - L, p);
  //   - m_new = max(m_i, simd_max(s)); m_sub = m_new, or 0 while m_new is -inf (see the
  //     chapter); p_ab = exp(s - m_sub); alpha = exp(m_i - m_sub);
  //     l_i = l_i * alpha + simd_sum(p_ab);
  //   - for each column e: pv = simd_sum(p_ab * V[b, e]); lane 0: O_acc[a][e] = ... .
  // TODO(Task 2): lane 0 of a valid row: count_tiles(tile_counts, the tiles it visited, how
  //   many of them went through mask_score).
  // TODO(Task 2): a barrier, then the lanes write out[row, :] = O_acc[a][:] / l_i.
  // Week 4, Day 4, Task 1: lane 0 of a valid row also writes its log-sum-exp,
  //   lse[n * L + row] = m_i + log(l_i), which the backward pass recomputes P from.
  if (row_valid) {
    for (int e = b; e < E; e += 32) {
      out[(size_t(n) * p.L + row) * E + e] = T(NAN); // placeholder: replace with the above
    }
  }
}

template <typename T>
[[kernel]] void flash_attention_e128(
    device const T* q [[buffer(0)]],
    device const T* k [[buffer(1)]],
    device const T* v [[buffer(2)]],
    device T* out [[buffer(3)]],
    device const float* mask_add [[buffer(4)]],
    device const bool* mask_keep [[buffer(5)]],
    constant AttentionParams& p [[buffer(6)]],
    device atomic_int* tile_counts [[buffer(7)]],
    device float* lse [[buffer(8)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  threadgroup float Q_tile[Br][E_MAX]; // 16 KiB
  threadgroup float O_acc[Br][E_MAX]; // 16 KiB: with Q_tile, the whole 32 KiB
  flash_attention_e128_impl<T>(
      q, k, v, out, mask_add, mask_keep, p, tile_counts, lse, Q_tile, O_acc, group, simd_gid, simd_lid);
}

template [[host_name("flash_attention_f32_e128")]] [[kernel]] decltype(flash_attention_e128<float>) flash_attention_e128<float>;

// TODO(day 5, Task 1): instantiate it for half as flash_attention_f16_e128 and for bfloat as
//   flash_attention_bf16_e128 (inside `#if __METAL_VERSION__ >= 310`: bfloat needs Metal 3.1).

// ============================================================================================
// Day 4: flash_attention_simdgroup_<t>
//
// Grid: (N * H_q, Tr) threadgroups of 128 threads = 4 SIMD groups; SIMD group g owns query
// rows g*8 .. g*8 + 7 of the block and computes S = Q K^T and O += P V with 8x8
// simdgroup_matrix products. See book/src/week3-04-simdgroup-matrix.md for the threadgroup
// memory budget and the barriers.
// ============================================================================================
constant constexpr int SG_ROWS = 8; // query rows per SIMD group
constant constexpr int SG_COUNT = Br / SG_ROWS; // 4 SIMD groups, 128 threads
constant constexpr int TILE_SIZE = Br * E_MAX; // floats of `tile`: Q, then K, then V
constant constexpr int SCORES_SIZE = SG_ROWS * Bc; // floats of one SIMD group's S_g / P_g
constant constexpr int BLOCK_SIZE = SG_ROWS * SG_ROWS; // floats of one 8x8 block

template <typename T>
void flash_attention_simdgroup_impl(
    device const T* q,
    device const T* k,
    device const T* v,
    device T* out,
    device const float* mask_add,
    device const bool* mask_keep,
    constant AttentionParams& p,
    device atomic_int* tile_counts,
    device float* lse,
    threadgroup float* tile,
    threadgroup float (*scores)[SCORES_SIZE],
    threadgroup float (*spill)[BLOCK_SIZE],
    threadgroup float (*row_alpha)[SG_ROWS],
    uint2 group,
    uint simd_gid,
    uint simd_lid,
    uint tid) {
  const uint g = simd_gid; // this SIMD group owns rows g * SG_ROWS .. of the Q tile
  const uint lane = simd_lid; // this lane, a key column of a score tile
  const int n = group.x;
  const int first_row = group.y * Br; // of the threadgroup
  const int my_first_row = first_row + g * SG_ROWS; // of this SIMD group
  const int E = p.E;
  // TODO(Task 1): stage Q (scaled) through `tile` into E/8 simdgroup_float8x8 Q_g[d]; zero
  //   O_g[d]; m_i[8] = -inf, l_i[8] = 0.
  // TODO(Task 1): for each K/V tile: load K into `tile` (float4 loads), S_g = Q_g K^T into
  //   scores[g], load V into `tile`, online softmax of the 8 rows (S_g becomes P_g), rescale
  //   O_g through spill[g], O_g += P_g V; with the four barriers of the chapter.
  // TODO(Task 2): mask_score on every score, the GQA head (kv_head), kv_tiles_to_visit for
  //   the block; lane 0: count_tiles(tile_counts, tiles * rows, tiles * rows if there is a
  //   mask, else 0) for the rows < L of the SIMD group.
  // TODO(Task 1): write O_g / l_i for the rows < L.
  // Week 4, Day 4, Task 1: and each row's log-sum-exp, lse[n * L + row] = m_i + log(l_i).
  for (int idx = lane; idx < SG_ROWS * E; idx += 32) {
    const int row = my_first_row + idx / E;
    if (row < p.L) {
      out[(size_t(n) * p.L + row) * E + idx % E] = T(NAN); // placeholder
    }
  }
}

template <typename T>
[[kernel]] void flash_attention_simdgroup(
    device const T* q [[buffer(0)]],
    device const T* k [[buffer(1)]],
    device const T* v [[buffer(2)]],
    device T* out [[buffer(3)]],
    device const float* mask_add [[buffer(4)]],
    device const bool* mask_keep [[buffer(5)]],
    constant AttentionParams& p [[buffer(6)]],
    device atomic_int* tile_counts [[buffer(7)]],
    device float* lse [[buffer(8)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]],
    uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float tile[TILE_SIZE];
  threadgroup float scores[SG_COUNT][SCORES_SIZE];
  threadgroup float spill[SG_COUNT][BLOCK_SIZE];
  threadgroup float row_alpha[SG_COUNT][SG_ROWS];
  flash_attention_simdgroup_impl<T>(
      q, k, v, out, mask_add, mask_keep, p, tile_counts, lse, tile, scores, spill, row_alpha, group, simd_gid, simd_lid, tid);
}

template [[host_name("flash_attention_simdgroup_f32")]] [[kernel]] decltype(flash_attention_simdgroup<float>) flash_attention_simdgroup<float>;

// TODO(day 5, Task 2): instantiate it as flash_attention_simdgroup_f16 and _bf16.

// ============================================================================================
// Week 4, Day 4: the backward pass on the GPU. See book/src/week4-04-backward-metal.md.
//
// FlashAttentionBackward::eval_gpu (src/flash_attention_backward_gpu.cpp) dispatches, in order:
//
//   flash_attention_backward_preprocess  (N*H_q, Tr) x 1024  D = rowsum(dO * O), dQ = 0
//   flash_attention_backward_dkdv        (N*H, Tc)   x 1024  dK, dV of one K/V tile
//     or ..._dkdv_atomic_dq                                   and its dQ terms, atomically
//   flash_attention_backward_dq          (N*H_q, Tr) x 1024  dQ of one Q tile (dq="separate")
//
// Every kernel recomputes, for the (query row i, key j) pairs it needs,
//   P_ij = exp(scale * q_i . k_j (+ mask) - lse_i)     from the forward's log-sum-exp
//   dS_ij = P_ij * (dO_i . v_j - D_i)
// and sums  dV_j = sum_i P_ij dO_i,  dK_j = scale sum_i dS_ij q_i,  dQ_i = scale sum_j dS_ij k_j.
// ============================================================================================

[[kernel]] void flash_attention_backward_preprocess(
    device const float* out [[buffer(0)]],
    device const float* d_out [[buffer(1)]],
    device float* D [[buffer(2)]],
    device float* dq [[buffer(3)]],
    constant AttentionParams& p [[buffer(6)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  // TODO(Task 2): SIMD group a <-> query row group.y * Br + a of (batch, head) group.x; the
  //   lanes sum dO * O over the columns, simd_sum, lane 0 writes D; zero the row of dQ.
}

template <bool ATOMIC_DQ>
[[kernel]] void flash_attention_backward_dkdv(
    device const float* q [[buffer(0)]],
    device const float* k [[buffer(1)]],
    device const float* v [[buffer(2)]],
    device const float* d_out [[buffer(3)]],
    device const float* lse [[buffer(4)]],
    device const float* D [[buffer(5)]],
    constant AttentionParams& p [[buffer(6)]],
    device atomic_int* tile_counts [[buffer(7)]],
    device const float* mask_add [[buffer(8)]],
    device const bool* mask_keep [[buffer(9)]],
    device float* dk [[buffer(10)]],
    device float* dv [[buffer(11)]],
    device atomic_float* dq [[buffer(12)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  // TODO(Task 2): threadgroup (nk, j) owns keys j*Bc .. of key/value head nk; SIMD group a
  //   <-> key a, lane b <-> query row b of a Q tile. Stage the K tile in threadgroup memory;
  //   for each query head of the group and each Q tile: recompute P_ba and dS_ba from the lse
  //   and D, add simd_sum over b of P_ba dO[b, :] and dS_ba Q[b, :] to registers (lane e % 32
  //   keeps column e); with ATOMIC_DQ, dS through threadgroup memory and
  //   atomic_fetch_add_explicit of scale * sum_a dS_ba K[a, :] into dQ. Write scale * dK, dV.
  // TODO(Task 3): masks through mask_score (a hidden score gets P = 0, dS = 0; a row whose lse
  //   is MASKED gets P = 1/S), causal tile skipping with kv_tiles_to_visit for the Q tile, and
  //   count_tiles(tile_counts, rows visited, rows masked) from SIMD group 0.
}

template [[host_name("flash_attention_backward_dkdv")]] [[kernel]] decltype(flash_attention_backward_dkdv<false>) flash_attention_backward_dkdv<false>;
template [[host_name("flash_attention_backward_dkdv_atomic_dq")]] [[kernel]] decltype(flash_attention_backward_dkdv<true>) flash_attention_backward_dkdv<true>;

[[kernel]] void flash_attention_backward_dq(
    device const float* q [[buffer(0)]],
    device const float* k [[buffer(1)]],
    device const float* v [[buffer(2)]],
    device const float* d_out [[buffer(3)]],
    device const float* lse [[buffer(4)]],
    device const float* D [[buffer(5)]],
    constant AttentionParams& p [[buffer(6)]],
    device atomic_int* tile_counts [[buffer(7)]],
    device const float* mask_add [[buffer(8)]],
    device const bool* mask_keep [[buffer(9)]],
    device float* dq [[buffer(10)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  // TODO(Task 4): the forward's map (SIMD group a <-> query row a, lane b <-> key b); for each
  //   K/V tile the row sees, recompute dS_ab and add simd_sum over b of dS_ab K[b, :] to
  //   registers; count_tiles as the forward; write scale * dQ[row, :]. No atomics.
}
