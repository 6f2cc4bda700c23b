// Week 2, day 5: the fast CPU kernel.
//
// The same algorithm as day 4 (src/flash_attention_simple.cpp), rearranged for the machine:
//
//  * Everything is vectorised over the Q tile's 32 rows. Q is packed transposed (qT[e][a],
//    scale folded in), the scores are kept transposed (sT[b][a]) and so is the accumulator
//    (oT[e][a]). Then the row max, row sum and rescale of the online softmax are plain
//    element-wise vector operations, and no loop runs over E in vector steps: any E works.
//
//        qT  E x 32          sT  Bc x 32             oT  E x 32
//      e +--------+       b +--------+            e +--------+
//        | a ---> |         | a ---> |  exp, max,   | a ---> |
//        |  (4 x  |   K     |        |  sum along b |        |  += V^T * pT
//        |  f32x8)|  ---->  |        |  ----------> |        |
//        +--------+         +--------+              +--------+
//
//  * Two micro-kernels do the flops, each keeping a 2 x 4 block of f32x8 accumulators in
//    registers: sT[b..b+1][:] += k[b..b+1][e] * qT[e][:]   and
//                oT[e..e+1][:] += v[b][e..e+1] * pT[b][:].
//  * Work items are (batch, query head, Q tile); threads take them from a shared counter,
//    last tiles first (with a causal mask they have the most keys to visit).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#include "flash_attention.h"
#include "simd.h"

namespace tiny_attn {

namespace {

using simd::f32x8;
constexpr int kVecs = kBr / 8; // f32x8 vectors per row of a transposed tile

// The register block of both micro-kernels: 3 rows of the result by its whole width of 32
// (4 f32x8), 12 accumulators. An FMA has a latency of 4 cycles and a core starts 2 per cycle,
// so at least 8 independent sums must be in flight; 12 leave slack. With the 4 loaded vectors
// and a broadcast that is 17 registers, one more than AVX2 has: the compiler reads one of the
// four straight from L1 in each FMA, which costs nothing measurable.
constexpr int kBlockRows = 3;

// A tile of floats that starts on a cache line (64 bytes): then no 32-byte vector load
// straddles two lines, which costs a second access each time.
class AlignedTile {
 public:
  explicit AlignedTile(int n) : storage_(n + 16) {
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + (64 - address % 64) % 64 / sizeof(float);
  }
  float* data() {
    return data_;
  }

 private:
  std::vector<float> storage_;
  float* data_;
};

struct Workspace {
  AlignedTile qT, sT, oT;
  float m[kBr], l[kBr], alpha[kBr];
  explicit Workspace(int E) : qT(E * kBr), sT(kBc * kBr), oT(E * kBr) {}
};

// sT[b][:] = sum_e k[b][e] * qT[e][:] for R rows b of a K tile. The loop over e keeps
// R x 4 accumulators in registers; each qT vector loaded from L1 feeds R FMAs, each k scalar
// (broadcast by `float * f32x8`) feeds 4.
template <int R>
TINY_ATTN_INLINE void scores_block(const float* qT, const float* k, int E, float* sT) {
  f32x8 acc[R][kVecs] = {};
  for (int e = 0; e < E; ++e) {
    f32x8 q[kVecs];
    for (int c = 0; c < kVecs; ++c) {
      q[c] = simd::load(qT + e * kBr + 8 * c);
    }
    for (int r = 0; r < R; ++r) {
      const float x = k[r * E + e];
      for (int c = 0; c < kVecs; ++c) {
        acc[r][c] += x * q[c];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < kVecs; ++c) {
      simd::store(sT + r * kBr + 8 * c, acc[r][c]);
    }
  }
}

// The scores of a K tile of bc rows, sT = K Q^T (Bc x 32): 3 rows b at a time, then the rest.
TINY_ATTN_INLINE void scores_tile(const float* qT, const float* k, int bc, int E, float* sT) {
  int b = 0;
  for (; b + kBlockRows <= bc; b += kBlockRows) {
    scores_block<kBlockRows>(qT, k + b * E, E, sT + b * kBr);
  }
  for (; b < bc; ++b) {
    scores_block<1>(qT, k + b * E, E, sT + b * kBr);
  }
}

// oT[e][:] = alpha[:] * oT[e][:] + sum_b v[b][e] * pT[b][:] for R columns e. The rescale of
// the online softmax rides on the load of the accumulator: no pass of its own over oT.
template <int R>
TINY_ATTN_INLINE void
pv_block(const float* pT, const float* v, const float* alpha, int bc, int E, float* oT) {
  f32x8 acc[R][kVecs];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < kVecs; ++c) {
      acc[r][c] = simd::load(alpha + 8 * c) * simd::load(oT + r * kBr + 8 * c);
    }
  }
  for (int b = 0; b < bc; ++b) {
    f32x8 p[kVecs];
    for (int c = 0; c < kVecs; ++c) {
      p[c] = simd::load(pT + b * kBr + 8 * c);
    }
    for (int r = 0; r < R; ++r) {
      const float x = v[b * E + r];
      for (int c = 0; c < kVecs; ++c) {
        acc[r][c] += x * p[c];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < kVecs; ++c) {
      simd::store(oT + r * kBr + 8 * c, acc[r][c]);
    }
  }
}

// oT = alpha * oT + (P V)^T for a V tile of bc rows: 3 columns e at a time, then the rest.
TINY_ATTN_INLINE void
accumulate_pv(const float* pT, const float* v, const float* alpha, int bc, int E, float* oT) {
  int e = 0;
  for (; e + kBlockRows <= E; e += kBlockRows) {
    pv_block<kBlockRows>(pT, v + e, alpha, bc, E, oT + e * kBr);
  }
  for (; e < E; ++e) {
    pv_block<1>(pT, v + e, alpha, bc, E, oT + e * kBr);
  }
}

// One work item: Q tile `tile` of query head h of batch n, against every K/V tile it needs.
// Returns the number of K/V tiles it computed.
TINY_ATTN_MULTIVERSION
int64_t process_q_tile(const AttentionProblem& p, int n, int h, int tile, Workspace& ws) {
  const int E = p.E, L = p.L, S = p.S;
  const int i0 = tile * kBr;
  const int br = std::min(kBr, L - i0);
  const int kv_head = h / (p.H_q / p.H);
  const float* q = p.q + ((int64_t(n) * p.H_q + h) * L + i0) * E;
  const float* k = p.k + (int64_t(n) * p.H + kv_head) * S * E;
  const float* v = p.v + (int64_t(n) * p.H + kv_head) * S * E;
  const float lowest = std::numeric_limits<float>::lowest();
  float* qT = ws.qT.data();
  float* sT = ws.sT.data();
  float* oT = ws.oT.data();

  // Pack Q transposed and scaled; rows past the end of Q are zeros (computed, never stored).
  for (int e = 0; e < E; ++e) {
    for (int a = 0; a < kBr; ++a) {
      qT[e * kBr + a] = a < br ? p.scale * q[a * E + e] : 0.0f;
    }
  }
  std::fill(oT, oT + E * kBr, 0.0f);
  std::fill(ws.m, ws.m + kBr, -INFINITY);
  std::fill(ws.l, ws.l + kBr, 0.0f);

  // Causal block skipping, day 4's rule: row i sees keys j <= i + S - L.
  const int first_limit = i0 + S - L; // the last key the tile's first row may see
  const int j_end = std::min(S, kv_tiles_to_visit(p, i0, i0 + br - 1) * kBc);

  int64_t tiles = 0;
  for (int j0 = 0; j0 < j_end; j0 += kBc) {
    const int bc = std::min(kBc, S - j0);
    ++tiles;
    scores_tile(qT, k + int64_t(j0) * E, bc, E, sT);

    if (p.causal && j0 + bc - 1 > first_limit) { // a tile on the diagonal
      for (int b = 0; b < bc; ++b) {
        for (int a = 0; a < kBr; ++a) {
          if (j0 + b > i0 + a + S - L) {
            sT[b * kBr + a] = lowest;
          }
        }
      }
    } else if (p.mask_add != nullptr) {
      for (int b = 0; b < bc; ++b) {
        for (int a = 0; a < br; ++a) {
          sT[b * kBr + a] += p.mask_at(n, h, i0 + a, j0 + b);
        }
      }
    } else if (p.mask_keep != nullptr) {
      for (int b = 0; b < bc; ++b) {
        for (int a = 0; a < br; ++a) {
          if (!p.keep_at(n, h, i0 + a, j0 + b)) {
            sT[b * kBr + a] = lowest;
          }
        }
      }
    }

    // The online softmax, 8 rows per vector: new max, rescale factor, p = exp(s - m).
    for (int c = 0; c < kVecs; ++c) {
      const f32x8 m_old = simd::load(ws.m + 8 * c);
      f32x8 m_new = m_old;
      for (int b = 0; b < bc; ++b) {
        m_new = simd::max(m_new, simd::load(sT + b * kBr + 8 * c));
      }
      // A row whose scores are all -inf so far (additive mask) keeps p = 0: subtract 0,
      // not -inf, to avoid -inf - -inf = NaN.
      const f32x8 m_use =
          simd::select(m_new == simd::broadcast(-INFINITY), simd::broadcast(0.0f), m_new);
      const f32x8 alpha = simd::exp(m_old - m_use);
      f32x8 row_sum = simd::broadcast(0.0f);
      for (int b = 0; b < bc; ++b) {
        const f32x8 pb = simd::exp(simd::load(sT + b * kBr + 8 * c) - m_use);
        simd::store(sT + b * kBr + 8 * c, pb);
        row_sum += pb;
      }
      simd::store(ws.l + 8 * c, alpha * simd::load(ws.l + 8 * c) + row_sum);
      simd::store(ws.m + 8 * c, m_new);
      simd::store(ws.alpha + 8 * c, alpha);
    }
    accumulate_pv(sT, v + int64_t(j0) * E, ws.alpha, bc, E, oT);
  }

  // O = oT^T / l. A row with l = 0 saw only -inf scores: 0 / 0 = NaN, as MLX gives.
  float* out = p.out + ((int64_t(n) * p.H_q + h) * L + i0) * E;
  for (int a = 0; a < br; ++a) {
    const float inv = 1.0f / ws.l[a];
    for (int e = 0; e < E; ++e) {
      out[a * E + e] = ws.l[a] == 0.0f ? NAN : oT[e * kBr + a] * inv;
    }
  }
  if (p.lse != nullptr) { // Week 4: what the backward pass recomputes P from
    float* lse = p.lse + (int64_t(n) * p.H_q + h) * L + i0;
    for (int a = 0; a < br; ++a) {
      lse[a] = ws.m[a] + std::log(ws.l[a]);
    }
  }
  return tiles;
}

} // namespace

void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads) {
  const int tiles_per_head = (p.L + kBr - 1) / kBr;
  const int64_t n_items = int64_t(p.N) * p.H_q * tiles_per_head;
  int threads = num_threads > 0 ? num_threads : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<int>(std::min<int64_t>(threads, n_items));

  std::atomic<int64_t> next{0};
  std::atomic<int64_t> tiles{0};
  auto worker = [&]() {
    Workspace ws(p.E);
    int64_t my_tiles = 0;
    for (int64_t item; (item = next.fetch_add(1)) < n_items;) {
      // Head by head: the threads share one head's K and V (2 S E floats, 4 MiB at S = 4096)
      // in the last-level cache instead of each streaming a different head's from memory.
      // Within a head, the last Q tile first: under a causal mask the last tiles are the
      // longest, and starting them early keeps a thread from ending alone with one.
      const int64_t head = item / tiles_per_head;
      const int tile = tiles_per_head - 1 - static_cast<int>(item % tiles_per_head);
      my_tiles += process_q_tile(p, head / p.H_q, head % p.H_q, tile, ws);
    }
    tiles += my_tiles;
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back(worker);
  }
  worker(); // the calling thread works too
  for (auto& t : pool) {
    t.join();
  }
  tiles_visited() += tiles.load();
}

} // namespace tiny_attn
