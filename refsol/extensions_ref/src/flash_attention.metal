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
  switch (p.mask_kind) {
    case MASK_CAUSAL:
      return col <= last_key ? s : MASKED;
    case MASK_ADD:
      return s + mask_add_row[col * p.mask_strides[3]];
    case MASK_KEEP:
      return mask_keep_row[col * p.mask_strides[3]] ? s : MASKED;
    default:
      return s;
  }
}

// The key/value head that query head h_q reads: H_q / H query heads share each one (GQA).
inline int kv_head(int h_q, constant AttentionParams& p) {
  return h_q / (p.H_q / p.H);
}

// How many K/V tiles query rows up to `last_row` must visit: the rule of Week 2, Day 4's
// kv_tiles_to_visit (src/flash_attention_simple.cpp), under the same name. With a causal mask, a tile
// whose first key lies beyond the last key of `last_row` is fully masked and skipped. One
// exception: a row that sees no key at all (only when L > S) gets uniform weights over
// every key, as in MLX, so a block holding such a row visits every tile.
inline int kv_tiles_to_visit(int first_row, int last_row, constant AttentionParams& p) {
  const int Tc = (p.S + Bc - 1) / Bc;
  if (p.mask_kind != MASK_CAUSAL || first_row + p.S - p.L < 0) {
    return Tc;
  }
  return min(Tc, (last_row + p.S - p.L) / Bc + 1);
}

// Whether a row's scores of K/V tile j go through mask_score: on every tile of a mask array,
// and under a causal mask only on a tile the row does not see whole (`last_key` = its last key).
inline bool tile_needs_mask(int j, int last_key, constant AttentionParams& p) {
  const bool seen_whole = p.mask_kind == MASK_CAUSAL && (j + 1) * Bc - 1 <= last_key;
  return p.mask_kind != MASK_NONE && !seen_whole;
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
//
//                      K tile (Bc = 32 keys), one key per lane b
//                      b=0   b=1   ...   b=31
//   SIMD group a=0  [ s00   s01   ...   s0,31 ]   <- row t*Br + 0 of the Q tile
//   SIMD group a=1  [ s10   s11   ...   s1,31 ]
//      ...
//   SIMD group a=31 [ s31,0 ...         s31,31]
//
// Thread (a, b) computes the single score s_ab = scale * Q[a, :] . K[b, :]; simd_max and
// simd_sum over the 32 lanes give row a's max and sum. Then for each column e of E,
// simd_sum over b of p_ab * V[b, e] is row a's contribution to O[a, e]; lane 0 adds it.
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

  // SIMD group a stages its Q row (lane b takes columns b, b + 32, ...) and zeroes its O row.
  for (int e = b; e < E; e += 32) {
    Q_tile[a][e] = row_valid ? float(q_row[e]) : 0.0f;
    O_acc[a][e] = 0.0f;
  }
  // Barrier 1: lane b reads all of Q_tile[a], written by the other lanes of its SIMD group.
  threadgroup_barrier(mem_flags::mem_threadgroup);

  float m_i = -INFINITY; // running max of row a (the same in every lane: simd_max)
  float l_i = 0.0f; // running sum of row a
  // Tiles are skipped per row: no barrier sits inside this loop, so SIMD groups may run
  // different numbers of iterations.
  const int last_key = row + p.S - p.L;
  const int tiles = row_valid ? kv_tiles_to_visit(row, row, p) : 0;
  int masked_tiles = 0; // tiles whose scores went through mask_score
  for (int j = 0; j < tiles; ++j) {
    const int col = j * Bc + b; // the key of lane b
    const bool col_valid = col < p.S;
    // A causal tile that row a sees whole needs no comparison (nor a mask read).
    const bool masked = tile_needs_mask(j, last_key, p);
    masked_tiles += masked;

    // S = Q K^T: one score per thread.
    float s = -INFINITY; // keys past S take no part in the max and get p = 0
    if (col_valid) {
      device const T* k_row = k_head + size_t(col) * E;
      float dot = 0.0f;
      for (int e = 0; e < E; ++e) {
        dot += Q_tile[a][e] * float(k_row[e]);
      }
      s = masked ? mask_score(dot * p.scale, col, last_key, mask_add_row, mask_keep_row, p)
                 : dot * p.scale;
    }

    // Online softmax: row max and row sum over the 32 lanes.
    const float m_new = max(m_i, simd_max(s));
    // While every score so far is -inf (an additive mask of -inf), subtract 0 instead of
    // -inf: exp(-inf - (-inf)) would be NaN.
    const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
    const float p_ab = exp(s - m_sub);
    const float alpha = exp(m_i - m_sub); // rescales what row a has summed so far
    l_i = l_i * alpha + simd_sum(p_ab);
    m_i = m_new;

    // O[a, :] = alpha * O[a, :] + sum over b of p_ab * V[b, :]. Only lane 0 of SIMD group a
    // touches O_acc[a]: no other thread reads it until the end, so no barrier is needed.
    device const T* v_row = v_head + size_t(col) * E;
    for (int e = 0; e < E; ++e) {
      const float pv = simd_sum(col_valid ? p_ab * float(v_row[e]) : 0.0f);
      if (b == 0) {
        O_acc[a][e] = O_acc[a][e] * alpha + pv;
      }
    }
  }

  if (b == 0 && row_valid) {
    count_tiles(tile_counts, tiles, masked_tiles);
    // Week 4, Day 4: the row's log-sum-exp, which the backward pass recomputes P from. A row
    // that sees no key has m_i = MASKED and l_i = S: MASKED + log(S) is MASKED in float32.
    lse[size_t(n) * p.L + row] = m_i + log(l_i);
  }

  // Barrier 2: lane b is about to read O_acc[a], which lane 0 wrote.
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (row_valid) {
    // l_i = 0 only for a row whose every score is -inf: 0 / 0 = NaN, as in MLX.
    device T* out_row = out + (size_t(n) * p.L + row) * E;
    for (int e = b; e < E; e += 32) {
      out_row[e] = T(O_acc[a][e] / l_i);
    }
  }
}

// The kernel: one template, instantiated per input type under the name eval_gpu asks for.
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
template [[host_name("flash_attention_f16_e128")]] [[kernel]] decltype(flash_attention_e128<half>) flash_attention_e128<half>;
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template [[host_name("flash_attention_bf16_e128")]] [[kernel]] decltype(flash_attention_e128<bfloat>) flash_attention_e128<bfloat>;
#endif

// ============================================================================================
// Day 4: flash_attention_simdgroup_<t>
//
// Grid: (N * H_q, Tr) threadgroups of 128 threads = 4 SIMD groups. SIMD group g owns the 8
// query rows g*8 .. g*8 + 7 of the block's Br = 32 and computes with 8x8 matrices:
//
//   S_g (8 x 32) = Q_g (8 x E) . K^T (E x 32)   as 4 blocks of 8x8, each a sum of E/8 products
//   O_g (8 x E)  += P_g (8 x 32) . V (32 x E)   as E/8 blocks of 8x8, each a sum of 4 products
//
// Threadgroup memory (E = 128, float):
//   tile      32 x 128 floats = 16 KiB  Q, then each K tile, then each V tile
//   scores     4 x 8 x 32     =  4 KiB  S_g, then P_g, of each SIMD group
//   spill      4 x 8 x 8      =  1 KiB  one 8x8 block of O_g while it is rescaled
//   row_alpha  4 x 8          = 128 B   the rescale factor of each row
//                                ------
//                               21.1 KiB of the 32 KiB a threadgroup may use
// ============================================================================================
constant constexpr int SG_ROWS = 8; // query rows per SIMD group
constant constexpr int SG_COUNT = Br / SG_ROWS; // 4 SIMD groups, 128 threads
constant constexpr int TILE_SIZE = Br * E_MAX; // floats of `tile`: Q, then K, then V
constant constexpr int SCORES_SIZE = SG_ROWS * Bc; // floats of one SIMD group's S_g / P_g
constant constexpr int BLOCK_SIZE = SG_ROWS * SG_ROWS; // floats of one 8x8 block

// The 4-wide vector of T as stored in device memory. packed_ vectors only need the alignment of
// their scalar: an MLX array may start at any multiple of its itemsize into its buffer (the CPU
// allocator, which metalsim uses, returns 8-byte aligned memory), while a float4 is 16-byte
// aligned. The load is still one 16-byte (8-byte for 16-bit types) access. MSL converts a
// packed vector only to the aligned vector of its own element type (`aligned`), which then
// converts to float4.
template <typename T>
struct packed4;
template <>
struct packed4<float> {
  using type = packed_float4;
  using aligned = float4;
};
template <>
struct packed4<half> {
  using type = packed_half4;
  using aligned = half4;
};
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template <>
struct packed4<bfloat> {
  using type = packed_bfloat4;
  using aligned = bfloat4;
};
#endif

// Copies rows [first, first + 32) of a (rows, E) array into `tile` as float, 4 values per load
// (E is a multiple of 8); rows past `rows` become zeros. `scale` multiplies on the way.
template <typename T>
inline void load_tile(
    threadgroup float* tile,
    device const T* src,
    int first,
    int rows,
    int E,
    float scale,
    uint tid) {
  const int vecs_per_row = E / 4;
  for (int idx = tid; idx < Br * vecs_per_row; idx += Br * SG_COUNT) {
    const int r = idx / vecs_per_row;
    const int c = (idx % vecs_per_row) * 4;
    float4 x = 0.0f;
    if (first + r < rows) {
      using T4 = typename packed4<T>::type;
      using A4 = typename packed4<T>::aligned;
      x = float4(A4(*reinterpret_cast<device const T4*>(src + size_t(first + r) * E + c)));
    }
    // tile rows are E floats, E a multiple of 8: this store is 16-byte aligned.
    *reinterpret_cast<threadgroup float4*>(tile + r * E + c) = x * scale;
  }
}

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
  const int h_q = n % p.H_q;
  const int batch = n / p.H_q;
  const int h = kv_head(h_q, p);
  const int first_row = group.y * Br; // of the threadgroup
  const int my_first_row = first_row + g * SG_ROWS; // of this SIMD group
  const int E = p.E;
  const int blocks_e = E / 8;

  device const T* q_head = q + size_t(n) * p.L * E;
  device const T* k_head = k + (size_t(batch) * p.H + h) * p.S * E;
  device const T* v_head = v + (size_t(batch) * p.H + h) * p.S * E;
  const long mask_offset = batch * p.mask_strides[0] + h_q * p.mask_strides[1];

  // Q (scaled once here instead of every score) goes through `tile` into registers.
  load_tile(tile, q_head, first_row, p.L, E, p.scale, tid);
  threadgroup_barrier(mem_flags::mem_threadgroup); // the Q tile is complete
  simdgroup_float8x8 Q_g[E_MAX / 8];
  simdgroup_float8x8 O_g[E_MAX / 8];
  for (int d = 0; d < blocks_e; ++d) {
    simdgroup_load(Q_g[d], tile + g * SG_ROWS * E + d * 8, E);
    O_g[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  }
  float m_i[SG_ROWS];
  float l_i[SG_ROWS];
  for (int r = 0; r < SG_ROWS; ++r) {
    m_i[r] = -INFINITY;
    l_i[r] = 0.0f;
  }

  // Every SIMD group of the block runs the same tiles: the barriers below need all of them.
  const int last_row = min(first_row + Br, p.L) - 1;
  const int tiles = kv_tiles_to_visit(first_row, last_row, p);
  threadgroup float* S_g = scores[g];
  for (int j = 0; j < tiles; ++j) {
    const int first_col = j * Bc;
    // Barrier: everyone is done with the previous tile (Q on the first pass, V after).
    threadgroup_barrier(mem_flags::mem_threadgroup);
    load_tile(tile, k_head, first_col, p.S, E, 1.0f, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup); // the K tile is complete

    // S_g = Q_g K^T, 4 blocks of 8 keys. K^T's block is K's block loaded transposed.
    for (int c = 0; c < Bc / 8; ++c) {
      simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
      for (int d = 0; d < blocks_e; ++d) {
        simdgroup_float8x8 K_t;
        simdgroup_load(K_t, tile + c * 8 * E + d * 8, E, ulong2(0, 0), true);
        simdgroup_multiply_accumulate(acc, Q_g[d], K_t, acc);
      }
      simdgroup_store(acc, S_g + c * 8, Bc);
    }
    // Barrier: every SIMD group has read K before V overwrites it; S_g is visible to all
    // lanes of its SIMD group.
    threadgroup_barrier(mem_flags::mem_threadgroup);
    load_tile(tile, v_head, first_col, p.S, E, 1.0f, tid);

    // Online softmax of the 8 rows, one row at a time, lane = key column.
    const int col = first_col + lane;
    for (int r = 0; r < SG_ROWS; ++r) {
      const int row = my_first_row + r;
      const int last_key = row + p.S - p.L;
      float s = -INFINITY; // keys past S, and rows past L (never written out, no mask row)
      if (col < p.S && row < p.L) {
        const long off = mask_offset + row * p.mask_strides[2];
        s = mask_score(S_g[r * Bc + lane], col, last_key, mask_add + off, mask_keep + off, p);
      }
      const float m_new = max(m_i[r], simd_max(s));
      const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
      const float p_rc = exp(s - m_sub);
      const float alpha = exp(m_i[r] - m_sub);
      l_i[r] = l_i[r] * alpha + simd_sum(p_rc);
      m_i[r] = m_new;
      S_g[r * Bc + lane] = p_rc; // S_g becomes P_g
      if (lane == 0) {
        row_alpha[g][r] = alpha;
      }
    }
    simdgroup_barrier(mem_flags::mem_threadgroup); // row_alpha[g] is visible to every lane

    // Rescale O_g row by row. Which lane holds which element of a simdgroup_matrix is not
    // specified, so each 8x8 block goes through threadgroup memory: store, scale, reload.
    for (int d = 0; d < blocks_e; ++d) {
      simdgroup_store(O_g[d], spill[g], 8);
      simdgroup_barrier(mem_flags::mem_threadgroup);
      spill[g][lane] *= row_alpha[g][lane / 8];
      spill[g][lane + 32] *= row_alpha[g][lane / 8 + 4];
      simdgroup_barrier(mem_flags::mem_threadgroup);
      simdgroup_load(O_g[d], spill[g], 8);
    }
    // Barrier: the V tile is complete, and P_g, written by lanes, is visible to the loads.
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // O_g += P_g V.
    simdgroup_float8x8 P_g[Bc / 8];
    for (int c = 0; c < Bc / 8; ++c) {
      simdgroup_load(P_g[c], S_g + c * 8, Bc);
    }
    for (int d = 0; d < blocks_e; ++d) {
      for (int c = 0; c < Bc / 8; ++c) {
        simdgroup_float8x8 V_b;
        simdgroup_load(V_b, tile + c * 8 * E + d * 8, E);
        simdgroup_multiply_accumulate(O_g[d], P_g[c], V_b, O_g[d]);
      }
    }
  }

  // Every tile went through mask_score (unless there is no mask), for each row that exists.
  const int my_rows = clamp(p.L - my_first_row, 0, SG_ROWS);
  if (lane == 0) {
    count_tiles(tile_counts, tiles * my_rows, p.mask_kind == MASK_NONE ? 0 : tiles * my_rows);
  }

  // Write O_g / l_i, block by block through `spill`, for the rows that exist; and (Week 4,
  // Day 4) each row's log-sum-exp, which the backward pass recomputes P from.
  for (int r = 0; r < SG_ROWS; ++r) {
    if (lane == 0) {
      row_alpha[g][r] = 1.0f / l_i[r]; // l_i = 0 (every score -inf) gives NaN, as MLX
      if (r < my_rows) {
        lse[size_t(n) * p.L + my_first_row + r] = m_i[r] + log(l_i[r]);
      }
    }
  }
  for (int d = 0; d < blocks_e; ++d) {
    simdgroup_store(O_g[d], spill[g], 8);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (int idx = lane; idx < SG_ROWS * 8; idx += 32) {
      const int r = idx / 8;
      const int row = my_first_row + r;
      if (row < p.L) {
        out[(size_t(n) * p.L + row) * E + d * 8 + idx % 8] = T(spill[g][idx] * row_alpha[g][r]);
      }
    }
    simdgroup_barrier(mem_flags::mem_threadgroup); // read before the next block overwrites
  }
}

// The kernel: one template, instantiated per input type under the name eval_gpu asks for.
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
template [[host_name("flash_attention_simdgroup_f16")]] [[kernel]] decltype(flash_attention_simdgroup<half>) flash_attention_simdgroup<half>;
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template [[host_name("flash_attention_simdgroup_bf16")]] [[kernel]] decltype(flash_attention_simdgroup<bfloat>) flash_attention_simdgroup<bfloat>;
#endif


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
// Float32 only: the gradients of a training step are summed over many tiles.
// ============================================================================================

// One entry of P and dS, from the scaled score s = scale * q_i . k_j, dp = dO_i . v_j, the
// row's lse and D. `masked`: whether the score goes through mask_score (tile_needs_mask).
struct BackwardEntry {
  float p;
  float ds;
};

inline BackwardEntry backward_entry(
    float s,
    float dp,
    float lse_row,
    float D_row,
    int col,
    int last_key,
    bool masked,
    device const float* mask_add_row,
    device const bool* mask_keep_row,
    constant AttentionParams& p) {
  const float sm = masked ? mask_score(s, col, last_key, mask_add_row, mask_keep_row, p) : s;
  // A causal or boolean mask replaces a hidden score by the constant MASKED: no gradient
  // flows through it, and its P is 0.
  const bool hidden =
      masked && (p.mask_kind == MASK_CAUSAL || p.mask_kind == MASK_KEEP) && sm == MASKED;
  // A row that sees no key has lse = MASKED (see the forward): it gave every key 1/S.
  const bool blind = lse_row == MASKED;
  BackwardEntry r;
  r.p = blind ? 1.0f / float(p.S) : (hidden ? 0.0f : exp(sm - lse_row));
  r.ds = hidden ? 0.0f : r.p * (dp - D_row);
  return r;
}

// Task 2: D_i = sum_e dO[i, e] * O[i, e], one row per SIMD group, and dQ = 0 (the atomic dQ
// adds into it; the separate dQ kernel overwrites it).
[[kernel]] void flash_attention_backward_preprocess(
    device const float* out [[buffer(0)]],
    device const float* d_out [[buffer(1)]],
    device float* D [[buffer(2)]],
    device float* dq [[buffer(3)]],
    constant AttentionParams& p [[buffer(6)]],
    uint2 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  const int n = group.x; // (batch, query head), flattened
  const int row = group.y * Br + simd_gid;
  if (row >= p.L) {
    return; // the whole SIMD group: no barrier or collective is left waiting
  }
  const size_t offset = (size_t(n) * p.L + row) * p.E;
  float partial = 0.0f;
  for (int e = simd_lid; e < p.E; e += 32) {
    partial += d_out[offset + e] * out[offset + e];
    dq[offset + e] = 0.0f;
  }
  const float d = simd_sum(partial);
  if (simd_lid == 0) {
    D[size_t(n) * p.L + row] = d;
  }
}

// Tasks 2-4: dK and dV of one K/V tile.
//
// Grid: (N * H, Tc) threadgroups of 1024 threads. Threadgroup (nk, j) owns keys j*Bc .. j*Bc + 31
// of (batch, key/value head) nk, and loops over the Q tiles of the G query heads that read it:
//
//                      Q tile i (Br = 32 query rows), one row per lane b
//                      b=0    b=1   ...   b=31
//   SIMD group a=0  [ P,dS   P,dS  ...   P,dS ]   <- key j*Bc + 0 of the K/V tile
//      ...
//   SIMD group a=31 [ P,dS   ...          P,dS ]
//
// Thread (a, b) recomputes P_ba and dS_ba; for each column e, simd_sum over the lanes gives
// sum_b P_ba dO[b, e] and sum_b dS_ba Q[b, e], which lane e % 32 adds to its registers
// dv_acc / dk_acc. dK and dV are written once, at the end: no other threadgroup touches them.
// ATOMIC_DQ: the tile's dQ terms, dQ[b, :] += scale * sum_a dS_ba K[a, :], go through dS_tile
// (threadgroup memory) and are added to dQ with atomic_fetch_add_explicit.
//
// Threadgroup memory: K_tile 32 x 128 floats = 16 KiB, dS_tile 32 x 32 = 4 KiB.
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
  threadgroup float K_tile[Bc][E_MAX];
  threadgroup float dS_tile[Bc][Br];
  const uint a = simd_gid; // this SIMD group: key a of the K/V tile
  const uint b = simd_lid; // this lane: query row b of the Q tile
  const int nk = group.x; // (batch, key/value head), flattened
  const int batch = nk / p.H;
  const int h = nk % p.H;
  const int G = p.H_q / p.H; // the query heads h * G .. h * G + G - 1 read this head
  const int j = group.y;
  const int col = j * Bc + a; // the key of SIMD group a
  const bool col_valid = col < p.S; // the last K/V tile may hang over the end
  const int E = p.E;
  device const float* k_row = k + (size_t(nk) * p.S + col) * E;
  device const float* v_row = v + (size_t(nk) * p.S + col) * E;

  for (int e = b; e < E; e += 32) {
    K_tile[a][e] = col_valid ? k_row[e] : 0.0f;
  }
  // Barrier 1: the atomic dQ reads every row of K_tile, written by the other SIMD groups.
  threadgroup_barrier(mem_flags::mem_threadgroup);

  float dk_acc[E_MAX / 32]; // lane b: columns b, b + 32, b + 64, b + 96 of dK[a, :]
  float dv_acc[E_MAX / 32]; // and of dV[a, :]
  for (int t = 0; t < E_MAX / 32; ++t) {
    dk_acc[t] = 0.0f;
    dv_acc[t] = 0.0f;
  }
  int visited = 0; // (query row, K/V tile) pairs of lane b's rows, counted by SIMD group 0
  int masked_rows = 0; // of those, the ones whose scores went through mask_score
  const int Tr = (p.L + Br - 1) / Br;
  for (int g = 0; g < G; ++g) {
    const int h_q = h * G + g;
    const int n = batch * p.H_q + h_q; // (batch, query head), flattened
    for (int i = 0; i < Tr; ++i) {
      const int first_row = i * Br;
      // Causal tile skipping, the forward's rule for the whole Q tile: every SIMD group
      // takes the same decision, so the barriers below are reached by all or by none.
      if (j >= kv_tiles_to_visit(first_row, min(first_row + Br, p.L) - 1, p)) {
        continue;
      }
      const int row = first_row + b;
      const bool row_valid = row < p.L;
      const int last_key = row + p.S - p.L;
      const bool masked = tile_needs_mask(j, last_key, p);
      if (a == 0 && row_valid) {
        visited += 1;
        masked_rows += masked;
      }
      device const float* q_row = q + (size_t(n) * p.L + row) * E;
      device const float* do_row = d_out + (size_t(n) * p.L + row) * E;
      float P = 0.0f; // P_ba and dS_ba; 0 for a row past L or a key past S
      float dS = 0.0f;
      if (row_valid && col_valid) {
        float s = 0.0f;
        float dp = 0.0f;
        for (int e = 0; e < E; ++e) {
          s += q_row[e] * K_tile[a][e];
          dp += do_row[e] * v_row[e];
        }
        const long off =
            batch * p.mask_strides[0] + h_q * p.mask_strides[1] + row * p.mask_strides[2];
        const size_t r = size_t(n) * p.L + row;
        const BackwardEntry entry = backward_entry(
            s * p.scale, dp, lse[r], D[r], col, last_key, masked, mask_add + off,
            mask_keep + off, p);
        P = entry.p;
        dS = entry.ds;
      }

      // dV[a, :] += sum_b P_ba dO[b, :] and dK[a, :] += sum_b dS_ba Q[b, :] (scale at the end).
      for (int e0 = 0; e0 < E; e0 += 32) {
        for (int t = 0; t < 32 && e0 + t < E; ++t) {
          const float x_dv = simd_sum(row_valid ? P * do_row[e0 + t] : 0.0f);
          const float x_dk = simd_sum(row_valid ? dS * q_row[e0 + t] : 0.0f);
          if (b == uint(t)) {
            dv_acc[e0 / 32] += x_dv;
            dk_acc[e0 / 32] += x_dk;
          }
        }
      }

      if (ATOMIC_DQ) {
        dS_tile[a][b] = dS;
        // Barrier 2: thread (a, b) reads the column dS_tile[:][a], written by every SIMD group.
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // Thread (a, b) now sums for query row a of the Q tile, columns b, b + 32, ...
        const int dq_row = first_row + a;
        if (dq_row < p.L) {
          for (int e = b; e < E; e += 32) {
            float sum = 0.0f;
            for (int c = 0; c < Bc; ++c) {
              sum += dS_tile[c][a] * K_tile[c][e];
            }
            atomic_fetch_add_explicit(
                &dq[(size_t(n) * p.L + dq_row) * E + e], p.scale * sum, memory_order_relaxed);
          }
        }
        // Barrier 3: every thread has read dS_tile before the next Q tile overwrites it.
        threadgroup_barrier(mem_flags::mem_threadgroup);
      }
    }
  }

  if (a == 0) {
    count_tiles(tile_counts, visited, masked_rows);
  }
  if (col_valid) {
    device float* dk_row = dk + (size_t(nk) * p.S + col) * E;
    device float* dv_row = dv + (size_t(nk) * p.S + col) * E;
    for (int e0 = 0; e0 < E; e0 += 32) {
      if (e0 + int(b) < E) {
        dk_row[e0 + b] = p.scale * dk_acc[e0 / 32];
        dv_row[e0 + b] = dv_acc[e0 / 32];
      }
    }
  }
}

template [[host_name("flash_attention_backward_dkdv")]] [[kernel]] decltype(flash_attention_backward_dkdv<false>) flash_attention_backward_dkdv<false>;
template [[host_name("flash_attention_backward_dkdv_atomic_dq")]] [[kernel]] decltype(flash_attention_backward_dkdv<true>) flash_attention_backward_dkdv<true>;

// Task 4: dQ of one Q tile, with no atomics.
//
// Grid: (N * H_q, Tr) threadgroups of 1024 threads, the forward's map: SIMD group a <-> query
// row a of the Q tile, lane b <-> key b of K/V tile j. For each K/V tile the row sees (the
// forward's kv_tiles_to_visit), thread (a, b) recomputes dS_ab, and for each column e
// simd_sum over the lanes gives sum_b dS_ab K[b, e], which lane e % 32 adds to its register.
// Every dQ element is summed by one thread, over the K/V tiles in order: the same bits on
// every run. No threadgroup memory, no barrier.
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
  const uint a = simd_gid; // this SIMD group: query row a of the Q tile
  const uint b = simd_lid; // this lane: key b of the K/V tile
  const int n = group.x;
  const int h_q = n % p.H_q;
  const int batch = n / p.H_q;
  const int h = kv_head(h_q, p);
  const int row = group.y * Br + a;
  if (row >= p.L) {
    return; // the whole SIMD group, and there is no barrier
  }
  const int E = p.E;
  device const float* q_row = q + (size_t(n) * p.L + row) * E;
  device const float* do_row = d_out + (size_t(n) * p.L + row) * E;
  device const float* k_head = k + (size_t(batch) * p.H + h) * p.S * E;
  device const float* v_head = v + (size_t(batch) * p.H + h) * p.S * E;
  const long off = batch * p.mask_strides[0] + h_q * p.mask_strides[1] + row * p.mask_strides[2];
  const float lse_row = lse[size_t(n) * p.L + row];
  const float D_row = D[size_t(n) * p.L + row];
  const int last_key = row + p.S - p.L;

  float dq_acc[E_MAX / 32]; // lane b: columns b, b + 32, ... of dQ[row, :]
  for (int t = 0; t < E_MAX / 32; ++t) {
    dq_acc[t] = 0.0f;
  }
  const int tiles = kv_tiles_to_visit(row, row, p);
  int masked_tiles = 0;
  for (int j = 0; j < tiles; ++j) {
    const int col = j * Bc + b;
    const bool col_valid = col < p.S;
    const bool masked = tile_needs_mask(j, last_key, p);
    masked_tiles += masked;
    device const float* k_row = k_head + size_t(col) * E;
    float dS = 0.0f;
    if (col_valid) {
      device const float* v_row = v_head + size_t(col) * E;
      float s = 0.0f;
      float dp = 0.0f;
      for (int e = 0; e < E; ++e) {
        s += q_row[e] * k_row[e];
        dp += do_row[e] * v_row[e];
      }
      dS = backward_entry(
               s * p.scale, dp, lse_row, D_row, col, last_key, masked, mask_add + off,
               mask_keep + off, p)
               .ds;
    }
    for (int e0 = 0; e0 < E; e0 += 32) {
      for (int t = 0; t < 32 && e0 + t < E; ++t) {
        const float x = simd_sum(col_valid ? dS * k_row[e0 + t] : 0.0f);
        if (b == uint(t)) {
          dq_acc[e0 / 32] += x;
        }
      }
    }
  }
  if (b == 0) {
    count_tiles(tile_counts, tiles, masked_tiles);
  }
  device float* dq_row = dq + (size_t(n) * p.L + row) * E;
  for (int e0 = 0; e0 < E; e0 += 32) {
    if (e0 + int(b) < E) {
      dq_row[e0 + b] = p.scale * dq_acc[e0 / 32];
    }
  }
}
