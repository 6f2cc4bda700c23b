// Week 5, day 1: decoding on the CPU. One task per (batch, key/value head): the task computes
// every query row of the group (G = H_q / H heads, L rows each) in one sweep over the keys, so
// each key and value row is read from memory once per group, not once per query head.
//
//   key/value head h:   K[b, h]  = k_0 k_1 k_2 ... k_{S-1}      (read once)
//   its query rows:     q[b, h*G + 0, 0..L-1]    |
//                       q[b, h*G + 1, 0..L-1]    |  G * L rows, all against each key block
//                       ...                      |
//                       q[b, h*G + G-1, 0..L-1]  |
//
// The keys go by blocks of Bc = 32: the scores of a block for every row, then Week 2's online
// softmax update of each row (m, l, o).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel, kBc
#include "simd.h"

namespace tiny_attn {

namespace {

using simd::f32x8;

// Rows are computed kRowBlock at a time: each 8 columns of a key (or value) row are loaded
// into a register once and used by all the block's rows.
constexpr int kRowBlock = 4;

TINY_ATTN_INLINE float hsum(f32x8 v) {
  float s = 0.0f;
  for (int i = 0; i < 8; ++i) {
    s += v[i];
  }
  return s;
}

// The sums of the 8 lanes of a, b, c, d: {sum a, sum b, sum c, sum d}, the dot products of a
// key with the block's 4 rows. Each add_neighbours adds neighbouring lanes of two vectors into
// one (the first step of a horizontal sum, for both at once): 3 of them and one add of the
// halves instead of 4 horizontal sums of 7 adds each, per key. (__builtin_shufflevector picks
// lanes of two vectors by index: GCC 12 or later, Clang.)
typedef float f32x4 __attribute__((vector_size(16)));
TINY_ATTN_INLINE f32x8 add_neighbours(f32x8 x, f32x8 y) {
  return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
}
TINY_ATTN_INLINE f32x4 hsum4(f32x8 a, f32x8 b, f32x8 c, f32x8 d) {
  const f32x8 t = add_neighbours(add_neighbours(a, b), add_neighbours(c, d));
  return __builtin_shufflevector(t, t, 0, 1, 2, 3) + __builtin_shufflevector(t, t, 4, 5, 6, 7);
}

// s[i][c] = scale * q_i . k_c for the block's NR rows and keys c < n.
static_assert(kRowBlock == 4, "scores sums the dot products of 4 rows at once (hsum4)");
template <int NR>
TINY_ATTN_INLINE void scores(
    const float* const* q, const float* const* k_rows, int n, int E, float scale, float (*s)[kBc]) {
  for (int c = 0; c < n; ++c) {
    f32x8 acc[kRowBlock] = {}; // rows past NR stay 0: hsum4 takes 4
    int e = 0;
    for (; e + 8 <= E; e += 8) {
      const f32x8 kk = simd::load(k_rows[c] + e);
      for (int i = 0; i < NR; ++i) {
        acc[i] += simd::load(q[i] + e) * kk;
      }
    }
    const f32x4 dots = hsum4(acc[0], acc[1], acc[2], acc[3]);
    for (int i = 0; i < NR; ++i) {
      float dot = dots[i];
      for (int t = e; t < E; ++t) {
        dot += q[i][t] * k_rows[c][t];
      }
      s[i][c] = scale * dot;
    }
  }
}

// o_i = alpha_i * o_i + sum over c < n of p[i][c] * v_c, for the block's NR rows. Value row
// by value row, each read front to back: the addresses every load walks go up in steps of 8
// floats from one row into the next, a stream the hardware prefetcher sees and fetches ahead.
// (Walking down the block's columns instead, 8 columns of all n rows at a time, keeps o_i in
// registers but jumps a whole row per load: on a 2-core x86-64 machine the decode took twice
// as long.) The NR rows' o_i, NR * E floats, stay in the L1 cache.
template <int NR>
TINY_ATTN_INLINE void accumulate(
    float* const* o,
    const float* alpha,
    const float (*p)[kBc],
    const float* const* v_rows,
    int n,
    int E) {
  for (int i = 0; i < NR; ++i) {
    for (int e = 0; e < E; ++e) {
      o[i][e] *= alpha[i];
    }
  }
  for (int c = 0; c < n; ++c) {
    const float* v = v_rows[c];
    f32x8 pc[NR];
    for (int i = 0; i < NR; ++i) {
      pc[i] = simd::broadcast(p[i][c]);
    }
    int e = 0;
    for (; e + 8 <= E; e += 8) {
      const f32x8 vv = simd::load(v + e);
      for (int i = 0; i < NR; ++i) {
        simd::store(o[i] + e, simd::load(o[i] + e) + pc[i] * vv);
      }
    }
    for (; e < E; ++e) {
      for (int i = 0; i < NR; ++i) {
        o[i][e] += p[i][c] * v[e];
      }
    }
  }
}

// The block's nr = 1 .. kRowBlock rows, with the loops above unrolled for that many.
TINY_ATTN_INLINE void block_scores(
    int nr,
    const float* const* q,
    const float* const* k_rows,
    int n,
    int E,
    float scale,
    float (*s)[kBc]) {
  switch (nr) {
  case 1:
    return scores<1>(q, k_rows, n, E, scale, s);
  case 2:
    return scores<2>(q, k_rows, n, E, scale, s);
  case 3:
    return scores<3>(q, k_rows, n, E, scale, s);
  default:
    return scores<kRowBlock>(q, k_rows, n, E, scale, s);
  }
}

TINY_ATTN_INLINE void block_accumulate(
    int nr,
    float* const* o,
    const float* alpha,
    const float (*p)[kBc],
    const float* const* v_rows,
    int n,
    int E) {
  switch (nr) {
  case 1:
    return accumulate<1>(o, alpha, p, v_rows, n, E);
  case 2:
    return accumulate<2>(o, alpha, p, v_rows, n, E);
  case 3:
    return accumulate<3>(o, alpha, p, v_rows, n, E);
  default:
    return accumulate<kRowBlock>(o, alpha, p, v_rows, n, E);
  }
}

} // namespace

// ---------------------------------------------------------------- Task 2: one group's rows
const float* kv_row(const DecodeProblem& p, const float* base, int b, int h, int j) {
  if (p.block_table) {
    return paged_kv_row(p, base, b, h, j); // day 3
  }
  return base + b * p.kv_strides[0] + h * p.kv_strides[1] + j * p.kv_strides[2];
}

TINY_ATTN_MULTIVERSION
void decode_group(
    const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st) {
  const int G = p.group(), E = p.E, R = r1 - r0;
  const int S_b = p.seq_len(b);
  st.reset(R, E);
  // Row r0 + r of the group is query head h * G + (r0 + r) / L, row i = (r0 + r) % L; it sees
  // keys up to last_key: i + S_b - L under the bottom-right causal mask, else every key.
  std::vector<const float*> q_rows(R);
  std::vector<int> last_key(R);
  for (int r = 0; r < R; ++r) {
    const int h_q = h * G + (r0 + r) / p.L, i = (r0 + r) % p.L;
    q_rows[r] = p.q + ((int64_t(b) * p.H_q + h_q) * p.L + i) * E;
    last_key[r] = p.causal ? i + S_b - p.L : S_b - 1;
  }
  float s[kRowBlock][kBc];
  const float* k_rows[kBc];
  const float* v_rows[kBc];
  for (int c0 = j0; c0 < j1; c0 += kBc) {
    const int n = std::min(kBc, j1 - c0);
    for (int c = 0; c < n; ++c) { // each key and value row of the block, once for all R rows
      k_rows[c] = kv_row(p, p.k, b, h, c0 + c);
      v_rows[c] = kv_row(p, p.v, b, h, c0 + c);
    }
    for (int rb = 0; rb < R; rb += kRowBlock) {
      const int nr = std::min(kRowBlock, R - rb);
      const float* q[kRowBlock];
      float* o[kRowBlock];
      int visible[kRowBlock]; // keys of the block row rb + i sees (causal: maybe fewer)
      int n_used = 0;         // keys any row of the block sees
      for (int i = 0; i < nr; ++i) {
        q[i] = q_rows[rb + i];
        o[i] = st.o.data() + size_t(rb + i) * E;
        visible[i] = std::clamp(last_key[rb + i] - c0 + 1, 0, n);
        n_used = std::max(n_used, visible[i]);
      }
      if (n_used == 0) {
        continue;
      }
      block_scores(nr, q, k_rows, n_used, E, p.scale, s);
      // Online softmax (Week 2), row by row: p = exp(s - m_new), 8 at a time, and what the
      // row has so far rescaled by alpha = exp(m_old - m_new) (0 on the row's first block).
      float alpha[kRowBlock];
      for (int i = 0; i < nr; ++i) {
        const int n8 = (n_used + 7) / 8 * 8;
        for (int c = visible[i]; c < n8; ++c) {
          s[i][c] = -INFINITY; // keys the row does not see: exp gives 0
        }
        if (visible[i] == 0) { // nothing new for this row
          alpha[i] = 1.0f;
          std::fill(s[i], s[i] + n8, 0.0f);
          continue;
        }
        const int r = rb + i;
        float m_block = -INFINITY;
        for (int c = 0; c < visible[i]; ++c) {
          m_block = std::max(m_block, s[i][c]);
        }
        const float m_new = std::max(st.m[r], m_block);
        alpha[i] = std::exp(st.m[r] - m_new);
        float l = 0.0f;
        for (int c = 0; c < n8; c += 8) {
          const f32x8 pc = simd::exp(simd::load(s[i] + c) - simd::broadcast(m_new));
          simd::store(s[i] + c, pc);
          l += hsum(pc);
        }
        st.m[r] = m_new;
        st.l[r] = st.l[r] * alpha[i] + l;
      }
      block_accumulate(nr, o, alpha, s, v_rows, n_used, E);
    }
  }
  decode_cpu_rows_read() += std::max(0, j1 - j0);
}

// ---------------------------------------------------------------- Task 3: the tasks, threads
void decode_attention_cpu(const DecodeProblem& p, int num_threads) {
  const int rows = p.group() * p.L;
  const int rows_per_task = rows; // the whole group in one task: K/V read once per group
  const int parts = rows / rows_per_task;
  const int64_t n_tasks = int64_t(p.B) * p.H * parts;
  int threads = num_threads > 0 ? num_threads : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<int>(std::min<int64_t>(threads, n_tasks));
  report_cpu_kernel("decode", threads);

  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    GroupState st;
    for (int64_t task; (task = next.fetch_add(1)) < n_tasks;) {
      const int b = static_cast<int>(task / (int64_t(p.H) * parts));
      const int h = static_cast<int>(task / parts % p.H);
      const int r0 = static_cast<int>(task % parts) * rows_per_task;
      decode_group(p, b, h, r0, r0 + rows_per_task, 0, p.seq_len(b), st);
      // out = o / l, row by row (every row has seen at least one key: l > 0).
      for (int r = 0; r < st.rows; ++r) {
        const int h_q = h * p.group() + (r0 + r) / p.L, i = (r0 + r) % p.L;
        float* out = p.out + ((int64_t(b) * p.H_q + h_q) * p.L + i) * p.E;
        for (int e = 0; e < p.E; ++e) {
          out[e] = st.o[size_t(r) * p.E + e] / st.l[r];
        }
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back(worker);
  }
  worker(); // the calling thread works too
  for (auto& t : pool) {
    t.join();
  }
}

} // namespace tiny_attn
