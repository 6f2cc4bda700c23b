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
// The keys go by blocks of kDecodeBlock = 256: the scores of a block for every row, then
// Week 2's online softmax update of each row (m, l, o). A block's keys (128 KiB of K at
// E = 128) are read front to back, then its values: each a stream the hardware prefetcher
// follows.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel
#include "simd.h"
#include "tasks.h"

namespace tiny_attn {

namespace {

using simd::f32x8;

constexpr int kDecodeBlock = 256; // keys a block

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

TINY_ATTN_INLINE float hmax(f32x8 v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) {
    m = std::max(m, v[i]);
  }
  return m;
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

// s[i][c] = scale * q_i . k_c for the block's NR rows and keys c < n. Each key row is read
// front to back, 16 columns a step into two sums a row: an FMA waits 4 cycles for the one
// before it, and two independent chains a row keep both FMA units busy even for one row.
static_assert(kRowBlock == 4, "scores sums the dot products of 4 rows at once (hsum4)");
template <int NR>
TINY_ATTN_INLINE void scores(
    const float* const* q,
    const float* const* k_rows,
    int n,
    int E,
    float scale,
    float (*s)[kDecodeBlock]) {
  for (int c = 0; c < n; ++c) {
    const float* k = k_rows[c];
    f32x8 acc[kRowBlock][2] = {}; // rows past NR stay 0: hsum4 takes 4
    int e = 0;
    for (; e + 16 <= E; e += 16) {
      const f32x8 k0 = simd::load(k + e), k1 = simd::load(k + e + 8);
      for (int i = 0; i < NR; ++i) {
        acc[i][0] += simd::load(q[i] + e) * k0;
        acc[i][1] += simd::load(q[i] + e + 8) * k1;
      }
    }
    for (; e + 8 <= E; e += 8) {
      const f32x8 k0 = simd::load(k + e);
      for (int i = 0; i < NR; ++i) {
        acc[i][0] += simd::load(q[i] + e) * k0;
      }
    }
    const f32x4 dots = hsum4(
        acc[0][0] + acc[0][1], acc[1][0] + acc[1][1], acc[2][0] + acc[2][1], acc[3][0] + acc[3][1]);
    for (int i = 0; i < NR; ++i) {
      float dot = dots[i];
      for (int t = e; t < E; ++t) {
        dot += q[i][t] * k[t];
      }
      s[i][c] = scale * dot;
    }
  }
}

// o_i = alpha_i * o_i + sum over c < n of p[i][c] * v_c, for the block's NR rows.
//
// One row (NR = 1): value row by value row, each read front to back, o loaded and stored
// 8 columns at a time (it stays in the L1 cache).
//
// Several rows: loading and storing every row's o for every key would cost more than the
// multiply-adds. So the sum goes W columns at a time, down the block: the NR * W / 8 vectors
// of o stay in registers while the n value rows go by, and each key costs W / 8 loads and
// NR * W / 8 FMAs. Walking down the columns straight from memory would jump a row per load,
// which the hardware prefetcher does not follow; so the block's value rows are first read
// front to back (read_row), into the cache, where the walk finds them.
template <int NR>
TINY_ATTN_INLINE void accumulate(
    float* const* o,
    const float* alpha,
    const float (*p)[kDecodeBlock],
    const float* const* v_rows,
    int n,
    int E) {
  if constexpr (NR == 1) {
    float* o0 = o[0];
    const f32x8 a = simd::broadcast(alpha[0]);
    int e = 0;
    for (; e + 8 <= E; e += 8) {
      simd::store(o0 + e, simd::load(o0 + e) * a);
    }
    for (; e < E; ++e) {
      o0[e] *= alpha[0];
    }
    for (int c = 0; c < n; ++c) {
      const f32x8 pc = simd::broadcast(p[0][c]);
      e = 0;
      for (; e + 8 <= E; e += 8) {
        simd::store(o0 + e, simd::load(o0 + e) + pc * simd::load(v_rows[c] + e));
      }
      for (; e < E; ++e) {
        o0[e] += p[0][c] * v_rows[c][e];
      }
    }
    return;
  }
  for (int c = 0; c < n; ++c) {
    read_row(v_rows[c], E);
  }
  constexpr int W = NR >= 3 ? 16 : 64 / NR; // columns a step: NR * W / 8 <= 8 registers
  auto columns = [&](int e0, auto width) {  // columns e0 .. e0 + width - 1
    constexpr int w8 = decltype(width)::value / 8;
    f32x8 acc[NR][w8];
    for (int i = 0; i < NR; ++i) {
      const f32x8 a = simd::broadcast(alpha[i]);
      for (int w = 0; w < w8; ++w) {
        acc[i][w] = simd::load(o[i] + e0 + 8 * w) * a;
      }
    }
    for (int c = 0; c < n; ++c) {
      f32x8 vv[w8];
      for (int w = 0; w < w8; ++w) {
        vv[w] = simd::load(v_rows[c] + e0 + 8 * w);
      }
      for (int i = 0; i < NR; ++i) {
        const f32x8 pc = simd::broadcast(p[i][c]);
        for (int w = 0; w < w8; ++w) {
          acc[i][w] += pc * vv[w];
        }
      }
    }
    for (int i = 0; i < NR; ++i) {
      for (int w = 0; w < w8; ++w) {
        simd::store(o[i] + e0 + 8 * w, acc[i][w]);
      }
    }
  };
  int e = 0;
  for (; e + W <= E; e += W) {
    columns(e, std::integral_constant<int, W>{});
  }
  for (; e + 8 <= E; e += 8) {
    columns(e, std::integral_constant<int, 8>{});
  }
  for (; e < E; ++e) { // the last E % 8 columns
    for (int i = 0; i < NR; ++i) {
      float acc = o[i][e] * alpha[i];
      for (int c = 0; c < n; ++c) {
        acc += p[i][c] * v_rows[c][e];
      }
      o[i][e] = acc;
    }
  }
}

// The same two steps for a block of 4 rows, 16 floats a register, for the machines that have
// them (TINY_ATTN_WIDE, E = 128): half the instructions for the same multiply-adds, and
// registers enough (32) to change how the sum walks.
using simd::f32x16;

TINY_ATTN_INLINE void scores_wide(
    const float* const* q,
    const float* const* k_rows,
    int n,
    float scale,
    float (*s)[kDecodeBlock]) {
  constexpr int E = 128;
  for (int c = 0; c < n; ++c) {
    const float* k = k_rows[c];
    f32x16 acc[kRowBlock][2] = {};
    for (int e = 0; e < E; e += 32) {
      const f32x16 k0 = simd::load16(k + e), k1 = simd::load16(k + e + 16);
      for (int i = 0; i < kRowBlock; ++i) {
        acc[i][0] += simd::load16(q[i] + e) * k0;
        acc[i][1] += simd::load16(q[i] + e + 16) * k1;
      }
    }
    const f32x4 dots = hsum4(
        simd::fold(acc[0][0] + acc[0][1]),
        simd::fold(acc[1][0] + acc[1][1]),
        simd::fold(acc[2][0] + acc[2][1]),
        simd::fold(acc[3][0] + acc[3][1]));
    for (int i = 0; i < kRowBlock; ++i) {
      s[i][c] = scale * dots[i];
    }
  }
}

// With 32 registers the sum goes value row by value row, as scores goes key by key, so each
// value row is used as it arrives from memory and the multiply-adds overlap the stream (the
// column walk above leaves memory idle while it sums a block already read). o takes 24 of the
// registers: all 128 columns of rows 0 and 1, the first 64 of rows 2 and 3. The last 64
// columns of rows 2 and 3 are loaded and stored for every key; they stay in the L1 cache.
// (At S = 32K, H_q = 32, H = 8 this brings a step from about 1.3x the time of H_q = 8 to
// about 1.1x.)
TINY_ATTN_INLINE void accumulate_wide(
    float* const* o,
    const float* alpha,
    const float (*p)[kDecodeBlock],
    const float* const* v_rows,
    int n) {
  constexpr int E = 128, W = E / 16, H = W / 2; // W registers a row, H of them half a row
  f32x16 o01[2][W], o23[2][H];                  // in registers: rows 0, 1 and half of 2, 3
  for (int w = 0; w < W; ++w) {
    for (int i = 0; i < kRowBlock; ++i) {
      const f32x16 x = simd::load16(o[i] + 16 * w) * (f32x16{} + alpha[i]);
      if (i < 2) {
        o01[i][w] = x;
      } else if (w < H) {
        o23[i - 2][w] = x;
      } else {
        simd::store16(o[i] + 16 * w, x);
      }
    }
  }
  for (int c = 0; c < n; ++c) {
    const f32x16 p0 = f32x16{} + p[0][c], p1 = f32x16{} + p[1][c];
    const f32x16 p2 = f32x16{} + p[2][c], p3 = f32x16{} + p[3][c];
    for (int w = 0; w < W; ++w) {
      const f32x16 v = simd::load16(v_rows[c] + 16 * w);
      o01[0][w] += p0 * v;
      o01[1][w] += p1 * v;
      if (w < H) {
        o23[0][w] += p2 * v;
        o23[1][w] += p3 * v;
      } else {
        simd::store16(o[2] + 16 * w, simd::load16(o[2] + 16 * w) + p2 * v);
        simd::store16(o[3] + 16 * w, simd::load16(o[3] + 16 * w) + p3 * v);
      }
    }
  }
  for (int w = 0; w < W; ++w) {
    simd::store16(o[0] + 16 * w, o01[0][w]);
    simd::store16(o[1] + 16 * w, o01[1][w]);
    if (w < H) {
      simd::store16(o[2] + 16 * w, o23[0][w]);
      simd::store16(o[3] + 16 * w, o23[1][w]);
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
    float (*s)[kDecodeBlock]) {
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
    const float (*p)[kDecodeBlock],
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

// decode_group with the head dimension E = kE known to the compiler (kE = 0: p.E at run
// time). With E = 128 every loop over the columns has a known count: the compiler unrolls it
// and leaves out the code for the last E % 16 columns.
template <int kE, bool kWide = false>
TINY_ATTN_INLINE void
add_keys(const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st) {
  const int G = p.group(), E = kE > 0 ? kE : p.E, R = r1 - r0;
  const int S_b = p.seq_len(b);
  float s[kRowBlock][kDecodeBlock];
  const float* k_rows[kDecodeBlock];
  const float* v_rows[kDecodeBlock];
  for (int c0 = j0; c0 < j1; c0 += kDecodeBlock) {
    const int n = std::min(kDecodeBlock, j1 - c0);
    // Each key and value row of the block, once for all R rows. Rows follow each other in
    // memory, kv_strides[2] apart, up to the end of a page (day 3): kv_row is asked for the
    // block's first row and for the first row of each page.
    for (int c = 0, next = c0; c < n; ++c) {
      const int j = c0 + c;
      if (j == next) {
        k_rows[c] = kv_row(p, p.k, b, h, j);
        v_rows[c] = kv_row(p, p.v, b, h, j);
        next = p.block_table ? (j / p.page_size + 1) * p.page_size : j1;
      } else {
        k_rows[c] = k_rows[c - 1] + p.kv_strides[2];
        v_rows[c] = v_rows[c - 1] + p.kv_strides[2];
      }
    }
    for (int rb = 0; rb < R; rb += kRowBlock) {
      const int nr = std::min(kRowBlock, R - rb);
      const float* q[kRowBlock];
      float* o[kRowBlock];
      int visible[kRowBlock]; // keys of the block row rb + i sees (causal: maybe fewer)
      int n_used = 0;         // keys any row of the block sees
      for (int i = 0; i < nr; ++i) {
        // Row r0 + rb + i of the group is query head h * G + (r0 + rb + i) / L, row
        // l = (r0 + rb + i) % L; it sees keys up to last_key: l + S_b - L under the
        // bottom-right causal mask, else every key.
        const int h_q = h * G + (r0 + rb + i) / p.L, l = (r0 + rb + i) % p.L;
        const int last_key = p.causal ? l + S_b - p.L : S_b - 1;
        q[i] = p.q + ((int64_t(b) * p.H_q + h_q) * p.L + l) * E;
        o[i] = st.o.data() + size_t(rb + i) * E;
        visible[i] = std::clamp(last_key - c0 + 1, 0, n);
        n_used = std::max(n_used, visible[i]);
      }
      if (n_used == 0) {
        continue;
      }
      const bool wide = kWide && nr == kRowBlock; // kWide: kE == 128
      if (wide) {
        scores_wide(q, k_rows, n_used, p.scale, s);
      } else {
        block_scores(nr, q, k_rows, n_used, E, p.scale, s);
      }
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
        f32x8 m8 = simd::broadcast(-INFINITY);
        for (int c = 0; c < n8; c += 8) {
          m8 = simd::max(m8, simd::load(s[i] + c));
        }
        const float m_new = std::max(st.m[r], hmax(m8));
        alpha[i] = std::exp(st.m[r] - m_new);
        f32x8 l8 = {};
        for (int c = 0; c < n8; c += 8) {
          const f32x8 pc = simd::exp(simd::load(s[i] + c) - simd::broadcast(m_new));
          simd::store(s[i] + c, pc);
          l8 += pc;
        }
        st.m[r] = m_new;
        st.l[r] = st.l[r] * alpha[i] + hsum(l8);
      }
      if (wide) {
        accumulate_wide(o, alpha, s, v_rows, n_used);
      } else {
        block_accumulate(nr, o, alpha, s, v_rows, n_used, E);
      }
    }
  }
  decode_cpu_rows_read() += std::max(0, j1 - j0);
}

} // namespace

// ---------------------------------------------------------------- Task 2: one group's rows
const float* kv_row(const DecodeProblem& p, const float* base, int b, int h, int j) {
  if (p.block_table) {
    return paged_kv_row(p, base, b, h, j); // day 3
  }
  return base + b * p.kv_strides[0] + h * p.kv_strides[1] + j * p.kv_strides[2];
}

#if TINY_ATTN_WIDE
namespace {
TINY_ATTN_TARGET_WIDE void add_keys_wide(
    const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st) {
  add_keys<128, true>(p, b, h, r0, r1, j0, j1, st);
}
} // namespace
#endif

TINY_ATTN_MULTIVERSION
void decode_group(
    const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st) {
  if (p.E == 128) {
#if TINY_ATTN_WIDE
    static const bool wide = simd::wide_vectors();
    if (wide && r1 - r0 >= kRowBlock) { // 16 floats a register pay off from 4 rows on
      return add_keys_wide(p, b, h, r0, r1, j0, j1, st);
    }
#endif
    add_keys<128>(p, b, h, r0, r1, j0, j1, st);
  } else {
    add_keys<0>(p, b, h, r0, r1, j0, j1, st);
  }
}

// ---------------------------------------------------------------- Task 3: the tasks, threads
void decode_attention_cpu(const DecodeProblem& p, int num_threads) {
  if (p.block_table) {
    return paged_decode_cpu(p, num_threads); // day 3: a sequence's pages in address order
  }
  const int rows = p.group() * p.L;
  const int rows_per_task = rows; // the whole group in one task: K/V read once per group
  const int parts = rows / rows_per_task;
  const int64_t n_tasks = int64_t(p.B) * p.H * parts;
  const int threads = task_threads(num_threads, n_tasks);
  report_cpu_kernel("decode", threads);
  run_tasks(
      n_tasks,
      threads,
      [] { return GroupState(); },
      [&](GroupState& st, int64_t task) {
        const int b = static_cast<int>(task / (int64_t(p.H) * parts));
        const int h = static_cast<int>(task / parts % p.H);
        const int r0 = static_cast<int>(task % parts) * rows_per_task;
        st.reset(rows_per_task, p.E);
        decode_group(p, b, h, r0, r0 + rows_per_task, 0, p.seq_len(b), st);
        write_group_rows(p, b, h, r0, st);
      });
}

} // namespace tiny_attn
