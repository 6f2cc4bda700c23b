// Week 5: decoding on the GPU.
//
//   day 1: decode_attention_<t>_e128        one pass over the keys, K/V read once per group
//   day 2: decode_attention_split_<t>_e128  the keys cut into splits, a partial (o, lse) each
//          decode_merge_<t>                 the partials merged with Week 2's rule
//   day 3: paged_row_offset                 keys and values found through a block table
//   <t> = f32, f16, bf16 by the dtype of the inputs; every sum is accumulated in float
//
// SIMD indices, as in every kernel of the course: simd_gid [[simdgroup_index_in_threadgroup]]
// and simd_lid [[thread_index_in_simdgroup]].
#include <metal_stdlib>

using namespace metal;

// At most 32 SIMD groups (1024 threads) per threadgroup; a device that allows fewer threads for
// this kernel gets as many SIMD groups as it allows (eval_gpu asks the pipeline).
constant constexpr int SIMD_GROUPS = 32;
constant constexpr int E_MAX = 128;
constant constexpr int E_PER_LANE = E_MAX / 32; // lane owns e = lane, lane + 32, lane + 64, ...
// Query rows per threadgroup (kDecodeRows): each lane keeps 2 x 4 floats of registers per row.
constant constexpr int ROWS_MAX = 8;

// The scalars of a dispatch at [[buffer(8)]]; mirrors DecodeParams in decode_attention.h.
struct DecodeParams {
  long kv_strides[3]; // k and v, in elements, over their first three axes
  int B; // sequences
  int H_q; // query heads
  int H; // key/value heads; H_q is a multiple of H
  int L; // query rows per sequence (new tokens)
  int S; // keys per sequence (contiguous cache)
  int E; // head dimension
  float scale;
  int causal; // query row i sees keys j <= i + S_b - L
  int num_splits;
  int paged; // day 3: k and v are page pools read through block_table
  int max_blocks;
  int page_size;
  int rows_per_block; // query rows per threadgroup
  int pad_;
};
static_assert(sizeof(DecodeParams) == 80, "DecodeParams must match the C++ side");

// ============================================================================================
// Day 3: where row j of sequence b, head h lives in a pool of pages (num_pages, H, page_size,
// E): page block_table[b, j / page_size], slot j % page_size.
// ============================================================================================
inline long paged_row_offset(int b, int h, int j, constant DecodeParams& p,
                             device const int* block_table) {
  const int page = block_table[b * p.max_blocks + j / p.page_size];
  return page * p.kv_strides[0] + h * p.kv_strides[1] + (j % p.page_size) * p.kv_strides[2];
}

// ============================================================================================
// Day 1: decode_attention_<t>_e128
//
// Grid: (B * H, ceil(G * L / rows_per_block), splits) threadgroups of 1024 threads (32 SIMD
// groups; fewer where the device allows fewer for this kernel). A threadgroup owns up to 8
// query rows of one key/value group (G = H_q / H query heads, L rows
// each) and sweeps the keys once for all of them. The 32 SIMD groups share out the keys, the
// 32 lanes of a SIMD group share out the E columns:
//
//                 keys j = 0    1    2   ...  31   32   33  ...
//   SIMD group:          0    1    2   ...  31    0    1  ...    (n_simd = 32 of them)
//
//   lane:          e = 0..31 | 32..63 | 64..95 | 96..127  (lane l holds e = l, l+32, l+64, l+96)
//
// Per key, SIMD group g forms each row's score with one simd_sum over the lanes and updates
// its own online-softmax state of each row (m, l in every lane; o: 4 columns per lane). At
// the end the 32 states of a row are merged in threadgroup memory with Week 2's rule.
// ============================================================================================

// Keys of sequence b: S, or its own length in a paged batch.
inline int seq_len(int b, constant DecodeParams& p, device const int* seq_lens) {
  return p.paged ? seq_lens[b] : p.S;
}

// Where key (or value) row j of sequence b, head h starts, in elements.
inline long kv_row_offset(int b, int h, int j, constant DecodeParams& p,
                          device const int* block_table) {
  if (p.paged) {
    return paged_row_offset(b, h, j, p, block_table);
  }
  return b * p.kv_strides[0] + h * p.kv_strides[1] + j * p.kv_strides[2];
}

// The threadgroup's rows over keys [j0, j1), merged over the SIMD groups and written as
// out[row] = o / l (row n of (B * H_q * L) at out + (n * out_splits + split) * E) and, with
// lse, lse[n * out_splits + split] = m + log(l). A row that sees no key there gets o = 0 and
// lse = -inf (day 2: an empty split).
template <typename T, typename OutT>
void decode_rows_impl(
    device const T* q,
    device const T* k,
    device const T* v,
    device const int* block_table,
    device const int* seq_lens,
    constant DecodeParams& p,
    device atomic_int* rows_read,
    device OutT* out,
    device float* lse,
    bool write_lse,
    int out_splits,
    int split,
    int j0,
    int j1,
    threadgroup float (*merge_o)[E_MAX],
    threadgroup float* merge_m,
    threadgroup float* merge_l,
    uint3 group,
    uint simd_gid,
    uint simd_lid,
    uint tid,
    uint n_simd) {
  const int G = p.H_q / p.H;
  const int b = group.x / p.H, h = group.x % p.H;
  const int r0 = group.y * p.rows_per_block; // first row of the group this threadgroup owns
  const int R = min(p.rows_per_block, G * p.L - r0);
  const int E = p.E;
  const int L = p.L;
  const int S_b = seq_len(b, p, seq_lens);

  // Each lane's columns of the query rows, and the row states, in registers.
  float q_reg[ROWS_MAX][E_PER_LANE];
  float o[ROWS_MAX][E_PER_LANE];
  float m[ROWS_MAX];
  float l[ROWS_MAX];
  int last_key[ROWS_MAX];
  for (int r = 0; r < R; ++r) {
    const int h_q = h * G + (r0 + r) / L, i = (r0 + r) % L;
    device const T* q_row = q + ((long(b) * p.H_q + h_q) * L + i) * E;
    for (int c = 0; c < E_PER_LANE; ++c) {
      const int e = simd_lid + 32 * c;
      q_reg[r][c] = e < E ? float(q_row[e]) * p.scale : 0.0f;
      o[r][c] = 0.0f;
    }
    m[r] = -INFINITY;
    l[r] = 0.0f;
    last_key[r] = p.causal ? i + S_b - L : S_b - 1;
  }
  int keys_read = 0;
  for (int j = j0 + simd_gid; j < j1; j += n_simd) {
    device const T* k_row = k + kv_row_offset(b, h, j, p, block_table);
    device const T* v_row = v + kv_row_offset(b, h, j, p, block_table);
    float k_c[E_PER_LANE], v_c[E_PER_LANE];
    for (int c = 0; c < E_PER_LANE; ++c) {
      const int e = simd_lid + 32 * c;
      k_c[c] = e < E ? float(k_row[e]) : 0.0f;
      v_c[c] = e < E ? float(v_row[e]) : 0.0f;
    }
    keys_read += 1;
    for (int r = 0; r < R; ++r) {
      if (j > last_key[r]) { // the same for every lane: no divergence around simd_sum
        continue;
      }
      float partial = 0.0f;
      for (int c = 0; c < E_PER_LANE; ++c) {
        partial += q_reg[r][c] * k_c[c];
      }
      const float s = simd_sum(partial);
      // Online softmax, one key at a time.
      const float m_new = max(m[r], s);
      const float alpha = exp(m[r] - m_new); // 0 on the row's first key
      const float p_j = exp(s - m_new);
      l[r] = l[r] * alpha + p_j;
      for (int c = 0; c < E_PER_LANE; ++c) {
        o[r][c] = o[r][c] * alpha + p_j * v_c[c];
      }
      m[r] = m_new;
    }
  }
  if (simd_lid == 0 && keys_read > 0) {
    atomic_fetch_add_explicit(rows_read, keys_read, memory_order_relaxed);
  }

  // Merge the 32 SIMD groups' states, row by row, through threadgroup memory.
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < E_PER_LANE; ++c) {
      const int e = simd_lid + 32 * c;
      if (e < E) {
        merge_o[simd_gid][e] = o[r][c];
      }
    }
    if (simd_lid == 0) {
      merge_m[simd_gid] = m[r];
      merge_l[simd_gid] = l[r];
    }
    // Barrier 1: every SIMD group's state of row r is in place before any thread merges.
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (int(tid) < E) { // thread e merges column e (each thread works out M and l itself)
      const int e = tid;
      float M = -INFINITY;
      for (int g = 0; g < int(n_simd); ++g) {
        M = max(M, merge_m[g]);
      }
      float l_sum = 0.0f, o_sum = 0.0f;
      if (M != -INFINITY) { // else the row saw no key in [j0, j1)
        for (int g = 0; g < int(n_simd); ++g) {
          const float w = exp(merge_m[g] - M); // 0 for a SIMD group that saw no key
          l_sum += w * merge_l[g];
          o_sum += w * merge_o[g][e];
        }
      }
      const int h_q = h * G + (r0 + r) / L, i = (r0 + r) % L;
      const long n = (long(b) * p.H_q + h_q) * L + i;
      out[(n * out_splits + split) * E + e] = OutT(l_sum > 0.0f ? o_sum / l_sum : 0.0f);
      if (write_lse && e == 0) {
        lse[n * out_splits + split] = l_sum > 0.0f ? M + log(l_sum) : -INFINITY;
      }
    }
    // Barrier 2: the merge has read row r's states before the next row overwrites them.
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
}

// The kernel: the threadgroup's rows over all the keys of its sequence.
template <typename T>
[[kernel]] void decode_attention_e128(
    device const T* q [[buffer(0)]],
    device const T* k [[buffer(1)]],
    device const T* v [[buffer(2)]],
    device T* out [[buffer(3)]],
    device const int* block_table [[buffer(4)]],
    device const int* seq_lens [[buffer(5)]],
    constant DecodeParams& p [[buffer(8)]],
    device atomic_int* rows_read [[buffer(9)]],
    uint3 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]],
    uint tid [[thread_index_in_threadgroup]],
    uint threads [[threads_per_threadgroup]]) {
  threadgroup float merge_o[SIMD_GROUPS][E_MAX]; // 16 KiB
  threadgroup float merge_m[SIMD_GROUPS];
  threadgroup float merge_l[SIMD_GROUPS];
  const int S_b = seq_len(group.x / p.H, p, seq_lens);
  decode_rows_impl<T, T>(
      q, k, v, block_table, seq_lens, p, rows_read, out, (device float*)nullptr, false, 1, 0, 0,
      S_b, merge_o, merge_m, merge_l, group, simd_gid, simd_lid, tid,
      threads / 32);
}

template [[host_name("decode_attention_f32_e128")]] [[kernel]] decltype(decode_attention_e128<float>) decode_attention_e128<float>;
template [[host_name("decode_attention_f16_e128")]] [[kernel]] decltype(decode_attention_e128<half>) decode_attention_e128<half>;
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template [[host_name("decode_attention_bf16_e128")]] [[kernel]] decltype(decode_attention_e128<bfloat>) decode_attention_e128<bfloat>;
#endif

// ============================================================================================
// Day 2: decode_attention_split_<t>_e128 and decode_merge_<t>
//
// Pass 1, grid (B * H, ceil(G * L / rows_per_block), num_splits): threadgroup z takes the keys
// of split z (split_range) and writes, for each of its rows n, the normalised partial output
// o_part[n, z, :] and its log-sum-exp lse_part[n, z] (float32, whatever T is).
// Pass 2, grid (B * H_q * L) threadgroups of 128 threads: thread e of row n merges column e,
//   out[n, e] = sum_z exp(lse_z - M) o_part[n, z, e] / sum_z exp(lse_z - M),  M = max_z lse_z
// (Week 2's merge rule; an empty split has lse = -inf and weight 0).
// ============================================================================================

// The keys [first, last) of split z of n over S keys: the first S % n splits get one more.
inline int2 split_range(int S, int n, int z) {
  const int base = S / n, extra = S % n;
  const int first = z * base + min(z, extra);
  return int2(first, first + base + (z < extra ? 1 : 0));
}

template <typename T>
[[kernel]] void decode_attention_split_e128(
    device const T* q [[buffer(0)]],
    device const T* k [[buffer(1)]],
    device const T* v [[buffer(2)]],
    device const int* block_table [[buffer(4)]],
    device const int* seq_lens [[buffer(5)]],
    device float* o_part [[buffer(6)]],
    device float* lse_part [[buffer(7)]],
    constant DecodeParams& p [[buffer(8)]],
    device atomic_int* rows_read [[buffer(9)]],
    uint3 group [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]],
    uint tid [[thread_index_in_threadgroup]],
    uint threads [[threads_per_threadgroup]]) {
  threadgroup float merge_o[SIMD_GROUPS][E_MAX]; // 16 KiB
  threadgroup float merge_m[SIMD_GROUPS];
  threadgroup float merge_l[SIMD_GROUPS];
  const int S_b = seq_len(group.x / p.H, p, seq_lens);
  const int2 keys = split_range(S_b, p.num_splits, group.z);
  decode_rows_impl<T, float>(
      q, k, v, block_table, seq_lens, p, rows_read, o_part, lse_part, true, p.num_splits,
      group.z, keys.x, keys.y, merge_o, merge_m, merge_l, group, simd_gid, simd_lid, tid,
      threads / 32);
}

template [[host_name("decode_attention_split_f32_e128")]] [[kernel]] decltype(decode_attention_split_e128<float>) decode_attention_split_e128<float>;
template [[host_name("decode_attention_split_f16_e128")]] [[kernel]] decltype(decode_attention_split_e128<half>) decode_attention_split_e128<half>;
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template [[host_name("decode_attention_split_bf16_e128")]] [[kernel]] decltype(decode_attention_split_e128<bfloat>) decode_attention_split_e128<bfloat>;
#endif

template <typename T>
[[kernel]] void decode_merge(
    device T* out [[buffer(3)]],
    device const float* o_part [[buffer(6)]],
    device const float* lse_part [[buffer(7)]],
    constant DecodeParams& p [[buffer(8)]],
    uint n [[threadgroup_position_in_grid]],
    uint e [[thread_index_in_threadgroup]]) {
  if (int(e) >= p.E) {
    return;
  }
  device const float* lse = lse_part + long(n) * p.num_splits;
  float M = -INFINITY;
  for (int z = 0; z < p.num_splits; ++z) {
    M = max(M, lse[z]);
  }
  float w_sum = 0.0f, o_sum = 0.0f;
  for (int z = 0; z < p.num_splits; ++z) {
    const float w = exp(lse[z] - M); // 0 for an empty split
    w_sum += w;
    o_sum += w * o_part[(long(n) * p.num_splits + z) * p.E + e];
  }
  out[long(n) * p.E + e] = T(o_sum / w_sum);
}

template [[host_name("decode_merge_f32")]] [[kernel]] decltype(decode_merge<float>) decode_merge<float>;
template [[host_name("decode_merge_f16")]] [[kernel]] decltype(decode_merge<half>) decode_merge<half>;
#if __METAL_VERSION__ >= 310 // bfloat needs Metal 3.1 (macOS 14)
template [[host_name("decode_merge_bf16")]] [[kernel]] decltype(decode_merge<bfloat>) decode_merge<bfloat>;
#endif
