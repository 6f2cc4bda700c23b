// Week 5, day 4: FlashAttention over packed sequences, with the masks computed in the kernel.
//
// Work items are (sequence, Q tile, query head); threads take them from a shared counter. An
// item walks only the K/V tiles its rows can see: with a sliding window, the tiles before the
// window's start and after its end are never read (tiles_visited() counts what is read).
//
//        keys of one sequence (S)   ->
//   Q    [ skipped | tile | tile | tile | skipped ...]
//   tile          lo_all ^              ^ hi_all      (the union of the rows' visible keys)
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flash_attention.h"
#include "flash_attention_varlen.h"
#include "simd.h"
#include "tasks.h"

namespace tiny_attn {

namespace {

// What a masked score becomes: the lowest float, as MLX's boolean masks. A row that sees no
// key then has equal scores everywhere and averages the values, as MLX does.
constexpr float kMasked = std::numeric_limits<float>::lowest();

// The keys a query row sees: lo..hi of its sequence (empty when lo > hi).
struct KeyRange {
  int lo;
  int hi;
  bool empty() const {
    return lo > hi;
  }
  bool covers(int first, int last) const {
    return lo <= first && last <= hi;
  }
};

// ---------------------------------------------------------------- Task 2: which keys a row sees
// Row `row` of a sequence of L queries and S keys sits at position pos = row + S - L.
KeyRange visible_keys(const VarlenMasks& m, int row, int L, int S) {
  const int pos = row + S - L;
  int lo = m.window_left < 0 ? 0 : pos - m.window_left;
  int hi = m.window_right < 0 ? S - 1 : pos + m.window_right;
  if (m.causal) {
    hi = std::min(hi, pos);
  }
  return {std::max(lo, 0), std::min(hi, S - 1)};
}

// ---------------------------------------------------------------- Task 2: one score
// scale, then soft-capping, then ALiBi's distance penalty; the mask comes last, so a
// masked score is never capped back into range.
float score(float dot, int pos, int col, float slope, const VarlenProblem& p) {
  float s = dot * p.scale;
  if (p.masks.softcap > 0.0f) {
    s = p.masks.softcap * std::tanh(s / p.masks.softcap);
  }
  if (p.alibi_slopes) {
    s -= slope * static_cast<float>(std::abs(pos - col));
  }
  return s;
}

using simd::f32x8;

// The 8 lanes of v added in pairs, then pairs of pairs.
TINY_ATTN_INLINE float lane_sum(f32x8 v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// q . k, 16 columns a step into two vector sums (an FMA waits for the one before it).
TINY_ATTN_INLINE float dot(const float* a, const float* b, int E) {
  f32x8 acc0 = {}, acc1 = {};
  int e = 0;
  for (; e + 16 <= E; e += 16) {
    acc0 += simd::load(a + e) * simd::load(b + e);
    acc1 += simd::load(a + e + 8) * simd::load(b + e + 8);
  }
  for (; e + 8 <= E; e += 8) {
    acc0 += simd::load(a + e) * simd::load(b + e);
  }
  float sum = lane_sum(acc0 + acc1);
  for (; e < E; ++e) {
    sum += a[e] * b[e];
  }
  return sum;
}

// o += p * v over E columns, 8 at a time.
TINY_ATTN_INLINE void add_scaled(float* o, float p, const float* v, int E) {
  const f32x8 pp = simd::broadcast(p);
  int e = 0;
  for (; e + 8 <= E; e += 8) {
    simd::store(o + e, simd::load(o + e) + pp * simd::load(v + e));
  }
  for (; e < E; ++e) {
    o[e] += p * v[e];
  }
}

// ---------------------------------------------------------------- Task 2: one Q tile
// Rows first_row.. of sequence `seq`, query head h_q. `o` holds Br * E floats of scratch.
// Compiled for AVX2 + FMA too, picked when the machine has them (TINY_ATTN_MULTIVERSION).
TINY_ATTN_MULTIVERSION
void varlen_q_tile(const VarlenProblem& p, int seq, int first_row, int h_q, float* o) {
  const int q0 = p.cu_seqlens_q[seq], L = p.cu_seqlens_q[seq + 1] - q0;
  const int k0 = p.cu_seqlens_k[seq], S = p.cu_seqlens_k[seq + 1] - k0;
  const int rows = std::min(kBr, L - first_row);
  const int E = p.E;
  const int h = h_q / (p.H_q / p.H); // the key/value head of this query head (GQA)
  const float slope = p.alibi_slopes ? p.alibi_slopes[h_q] : 0.0f;

  // The K/V tiles to visit: from the first key any row sees to the last. A row that sees no
  // key (only possible when L > S or with a window) averages every value: all tiles.
  KeyRange keys[kBr];
  int lo_all = S, hi_all = -1;
  for (int r = 0; r < rows; ++r) {
    keys[r] = visible_keys(p.masks, first_row + r, L, S);
    const KeyRange reach = keys[r].empty() ? KeyRange{0, S - 1} : keys[r];
    lo_all = std::min(lo_all, reach.lo);
    hi_all = std::max(hi_all, reach.hi);
  }

  float m_i[kBr], l_i[kBr], s_row[kBc + 8];
  std::fill(m_i, m_i + rows, -INFINITY);
  std::fill(l_i, l_i + rows, 0.0f);
  std::fill(o, o + size_t(rows) * E, 0.0f);
  int visited = 0;
  for (int j = lo_all / kBc; j <= hi_all / kBc; ++j) {
    ++visited;
    const int c0 = j * kBc, cols = std::min(kBc, S - c0);
    for (int r = 0; r < rows; ++r) {
      const int row = first_row + r, pos = row + S - L;
      const float* q_row = p.q + (size_t(q0 + row) * p.H_q + h_q) * E;
      // A tile the row sees whole needs no comparison.
      const bool whole = keys[r].covers(c0, c0 + cols - 1);
      float m_new = m_i[r];
      for (int c = 0; c < cols; ++c) {
        const int col = c0 + c;
        const float* k_row = p.k + (size_t(k0 + col) * p.H + h) * E;
        float s = score(dot(q_row, k_row, E), pos, col, slope, p);
        if (!whole && (col < keys[r].lo || col > keys[r].hi)) {
          s = kMasked;
        }
        s_row[c] = s;
        m_new = std::max(m_new, s);
      }
      // Online softmax (Week 2): rescale what the row has summed by exp(m_old - m_new).
      // p = exp(s - m_new) 8 at a time (Week 2's vector exp); past `cols`, -inf gives 0.
      const float alpha = std::exp(m_i[r] - m_new);
      float* o_row = o + size_t(r) * E;
      for (int e = 0; e < E; ++e) {
        o_row[e] *= alpha;
      }
      const int cols8 = (cols + 7) / 8 * 8;
      std::fill(s_row + cols, s_row + cols8, -INFINITY);
      f32x8 l8 = {};
      for (int c = 0; c < cols8; c += 8) {
        const f32x8 pc = simd::exp(simd::load(s_row + c) - simd::broadcast(m_new));
        simd::store(s_row + c, pc);
        l8 += pc;
      }
      for (int c = 0; c < cols; ++c) {
        add_scaled(o_row, s_row[c], p.v + (size_t(k0 + c0 + c) * p.H + h) * E, E);
      }
      l_i[r] = l_i[r] * alpha + lane_sum(l8);
      m_i[r] = m_new;
    }
  }
  tiles_visited() += visited;

  for (int r = 0; r < rows; ++r) {
    float* out_row = p.out + (size_t(q0 + first_row + r) * p.H_q + h_q) * E;
    const float inv = 1.0f / l_i[r];
    for (int e = 0; e < E; ++e) {
      out_row[e] = o[size_t(r) * E + e] * inv;
    }
  }
}

} // namespace

// ---------------------------------------------------------------- Task 2: threads
void flash_attention_varlen_cpu(const VarlenProblem& p) {
  // Every (sequence, Q tile), then times the query heads: the work items.
  std::vector<std::pair<int, int>> tiles;
  for (int seq = 0; seq < p.num_seqs; ++seq) {
    const int L = p.cu_seqlens_q[seq + 1] - p.cu_seqlens_q[seq];
    for (int r = 0; r < L; r += kBr) {
      tiles.emplace_back(seq, r);
    }
  }
  const int64_t n_items = int64_t(tiles.size()) * p.H_q;
  const int threads = task_threads(0, n_items); // one a core
  report_cpu_kernel("varlen", threads);
  auto tile_output = [&] { return std::vector<float>(size_t(kBr) * p.E); };
  run_tasks(n_items, threads, tile_output, [&](std::vector<float>& o, int64_t item) {
    const auto [seq, first_row] = tiles[item / p.H_q];
    varlen_q_tile(p, seq, first_row, int(item % p.H_q), o.data());
  });
}

} // namespace tiny_attn
