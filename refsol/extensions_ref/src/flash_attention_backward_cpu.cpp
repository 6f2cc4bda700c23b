// Week 4, day 3: FlashAttention-2's backward pass on the CPU, threads over K/V tiles.
//
// One work item is (batch n, key/value head hk, a set of K/V tiles). For each of its K/V tiles j
// it keeps dK_j and dV_j (Bc x E each) in a private buffer, visits every Q tile i of the G query
// heads that read head hk, and writes dK_j and dV_j once at the end: no other thread ever
// touches them. dQ_i collects a term from every K/V tile:
//
//            K/V tile j (outer loop, one work item)
//          +-------+
//   Q  i=0 | S, P  |  P_ij  = exp(S_ij - lse_i)           dV_j += P_ij^T dO_i
//   tiles  +-------+  dP_ij = dO_i V_j^T                   dK_j += scale dS_ij^T Q_i
//   (inner)|       |  dS_ij = P_ij (dP_ij - D_i)           dQ_i += scale dS_ij K_j
//          +-------+
//
// When there are at least as many (n, hk) heads as threads, each work item owns whole heads and
// writes their dQ rows directly. Otherwise a head's K/V tiles are dealt to several work items
// (tile j to item j % chunks, so that causal rows stay balanced), each adds its dQ terms into a
// private copy of dQ, and the copies are summed in a fixed order at the end: no atomics, and
// the same answer on every run with the same number of threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flash_attention_backward.h"
#include "simd.h"
#include "tasks.h"

namespace tiny_attn {

namespace {

struct Workspace {
  explicit Workspace(int E)
      : kT(size_t(E) * kBc), vT(size_t(E) * kBc), p(kBr * kBc), dp(kBr * kBc), dk(size_t(kBc) * E),
        dv(size_t(kBc) * E) {}
  std::vector<float> kT, vT; // K_j and V_j transposed: (E, Bc)
  std::vector<float> p, dp;  // P_ij, and dP_ij then dS_ij: (Br, Bc)
  std::vector<float> dk, dv; // dK_j, dV_j accumulators: (Bc, E)
  std::vector<float> D;      // D = rowsum(dO * O) for every row of the group's heads
};

using simd::f32x8;
constexpr int kVecs = kBc / 8; // a row of a 32-wide tile: four 8-float vectors

// acc[a][0..32) = alpha * sum_e x[a][e] * yT[e][0..32) for a < br: the 32 sums of a row stay in
// four vector registers for the whole loop over e. Columns past the tile's bc come out as
// zeros times zeros (yT is zero-padded) and are never read.
TINY_ATTN_INLINE void
tile_product(const float* x, const float* yT, int br, int E, float alpha, float* acc) {
  for (int a = 0; a < br; ++a) {
    f32x8 sum[kVecs] = {};
    for (int e = 0; e < E; ++e) {
      const f32x8 xa = simd::broadcast(x[a * E + e]);
      for (int c = 0; c < kVecs; ++c) {
        sum[c] += xa * simd::load(yT + e * kBc + 8 * c);
      }
    }
    for (int c = 0; c < kVecs; ++c) {
      simd::store(acc + a * kBc + 8 * c, simd::broadcast(alpha) * sum[c]);
    }
  }
}

// C[x][:] += alpha * sum_{r < nr} W(r, x) * B[r][:] for x < nx, W(r, x) = w[r * w_r + x * w_x]:
// the three gradient products (dV_j += P^T dO_i, dK_j += dS^T Q_i, dQ_i += dS K_j). 32 columns
// of C stay in registers across the sum over r.
TINY_ATTN_INLINE void accumulate(
    float* C,
    const float* w,
    int64_t w_r,
    int64_t w_x,
    const float* B,
    int nx,
    int nr,
    int E,
    float alpha) {
  for (int x = 0; x < nx; ++x) {
    float* c_row = C + int64_t(x) * E;
    int e = 0;
    for (; e + 32 <= E; e += 32) {
      f32x8 sum[4] = {};
      for (int r = 0; r < nr; ++r) {
        const f32x8 wr = simd::broadcast(w[r * w_r + x * w_x]);
        const float* b = B + int64_t(r) * E + e;
        for (int c = 0; c < 4; ++c) {
          sum[c] += wr * simd::load(b + 8 * c);
        }
      }
      for (int c = 0; c < 4; ++c) {
        simd::store(
            c_row + e + 8 * c, simd::load(c_row + e + 8 * c) + simd::broadcast(alpha) * sum[c]);
      }
    }
    for (; e < E; ++e) { // E not a multiple of 32: the last columns one by one
      float sum = 0.0f;
      for (int r = 0; r < nr; ++r) {
        sum += w[r * w_r + x * w_x] * B[int64_t(r) * E + e];
      }
      c_row[e] += alpha * sum;
    }
  }
}

// One K/V tile j of head (n, hk), against every Q tile of the group that needs it.
// dq points at the dQ (or the private copy of dQ) of query head hk * G. Returns the tiles
// computed.
TINY_ATTN_MULTIVERSION
int64_t process_kv_tile(const BackwardProblem& p, int n, int hk, int j, float* dq, Workspace& ws) {
  const int E = p.E, L = p.L, S = p.S, G = p.H_q / p.H;
  const int j0 = j * kBc, bc = std::min(kBc, S - j0);
  const float lowest = std::numeric_limits<float>::lowest();
  const int64_t kv = (int64_t(n) * p.H + hk) * S * E;
  const float* k = p.k + kv + int64_t(j0) * E;
  const float* v = p.v + kv + int64_t(j0) * E;
  if (bc < kBc) { // a short last tile: zero columns, so that the products stay finite
    std::fill(ws.kT.begin(), ws.kT.end(), 0.0f);
    std::fill(ws.vT.begin(), ws.vT.end(), 0.0f);
  }
  for (int b = 0; b < bc; ++b) {
    for (int e = 0; e < E; ++e) {
      ws.kT[e * kBc + b] = k[b * E + e];
      ws.vT[e * kBc + b] = v[b * E + e];
    }
  }
  std::fill(ws.dk.begin(), ws.dk.end(), 0.0f);
  std::fill(ws.dv.begin(), ws.dv.end(), 0.0f);
  float* P = ws.p.data();
  float* dS = ws.dp.data(); // dP, then dS in place
  int64_t tiles = 0;

  for (int g = 0; g < G; ++g) {
    const int h = hk * G + g;
    const int64_t row0 = (int64_t(n) * p.H_q + h) * L; // first row of head h
    for (int i0 = 0; i0 < L; i0 += kBr) {
      const int br = std::min(kBr, L - i0);
      // Causal: the forward's rule. Row i sees keys <= i + S - L; a Q tile whose first row
      // sees no key at all (L > S) visits every K/V tile, as in the forward.
      const int first_limit = i0 + S - L;
      const int last_limit = i0 + br - 1 + S - L;
      if (p.causal && first_limit >= 0 && j0 > last_limit) {
        continue;
      }
      ++tiles;
      const float* q = p.q + (row0 + i0) * E;
      const float* dO = p.d_out + (row0 + i0) * E;
      const float* lse = p.lse + row0 + i0;
      const float* D = ws.D.data() + int64_t(g) * L + i0;
      float* dq_i = dq + (int64_t(g) * L + i0) * E;

      tile_product(q, ws.kT.data(), br, E, p.scale, P); // S_ij
      tile_product(dO, ws.vT.data(), br, E, 1.0f, dS);  // dP_ij
      const bool diagonal = p.causal && j0 + bc - 1 > first_limit;
      const bool masked = diagonal || p.mask_keep != nullptr || p.mask_add != nullptr;
      for (int a = 0; a < br; ++a) {
        const int i = i0 + a;
        float* P_a = P + a * kBc;
        float* dS_a = dS + a * kBc;
        // A row that sees no key has lse = lowest + log(S) = lowest in float32: its P is 1/S.
        const bool blind = lse[a] == lowest;
        if (!masked && !blind) { // the common case, 8 columns at a time
          const f32x8 lse_a = simd::broadcast(lse[a]), D_a = simd::broadcast(D[a]);
          for (int c = 0; c < kVecs; ++c) {
            const f32x8 pv = simd::exp(simd::load(P_a + 8 * c) - lse_a);
            simd::store(P_a + 8 * c, pv);
            simd::store(dS_a + 8 * c, pv * (simd::load(dS_a + 8 * c) - D_a));
          }
          continue;
        }
        for (int b = 0; b < bc; ++b) {
          float s = P_a[b];
          bool hide = false;
          if (diagonal) {
            hide = j0 + b > i + S - L;
          } else if (p.mask_keep != nullptr) {
            hide = !p.mask_keep[p.mask_offset(n, h, i, j0 + b)];
          } else if (p.mask_add != nullptr) {
            s += p.mask_add[p.mask_offset(n, h, i, j0 + b)];
          }
          const float pab = blind ? 1.0f / S : (hide ? 0.0f : std::exp(s - lse[a]));
          P_a[b] = pab;
          // A hidden score is a constant: no gradient flows through it.
          dS_a[b] = hide ? 0.0f : pab * (dS_a[b] - D[a]);
        }
      }
      accumulate(ws.dv.data(), P, kBc, 1, dO, bc, br, E, 1.0f);    // dV_j += P^T dO_i
      accumulate(ws.dk.data(), dS, kBc, 1, q, bc, br, E, p.scale); // dK_j += dS^T Q_i
      accumulate(dq_i, dS, 1, kBc, k, br, bc, E, p.scale);         // dQ_i += dS K_j
    }
  }
  // dK_j and dV_j are finished: written once, by this thread only.
  std::copy(ws.dk.begin(), ws.dk.begin() + int64_t(bc) * E, p.dk + kv + int64_t(j0) * E);
  std::copy(ws.dv.begin(), ws.dv.begin() + int64_t(bc) * E, p.dv + kv + int64_t(j0) * E);
  return tiles;
}

} // namespace

std::atomic<int64_t>& backward_tiles_visited() {
  static std::atomic<int64_t> count{0};
  return count;
}

std::atomic<int>& backward_threads() {
  static std::atomic<int> count{0};
  return count;
}

void flash_attention_backward_cpu(const BackwardProblem& p, int num_threads) {
  const int G = p.H_q / p.H;
  const int Tc = (p.S + kBc - 1) / kBc;
  const int64_t heads = int64_t(p.N) * p.H;
  // Deal each head's K/V tiles to `chunks` work items only when there are fewer heads than
  // threads; then each chunk needs a private dQ.
  const int cores = task_threads(num_threads, heads * Tc);
  const int chunks = static_cast<int>(std::min<int64_t>(Tc, (cores + heads - 1) / heads));
  const int64_t n_items = heads * chunks;
  const int threads = task_threads(num_threads, n_items);
  const int64_t dq_size = int64_t(p.N) * p.H_q * p.L * p.E;
  std::vector<float> dq_copies(chunks > 1 ? size_t(chunks) * dq_size : 0, 0.0f);
  if (chunks == 1) {
    std::fill(p.dq, p.dq + dq_size, 0.0f);
  }

  std::atomic<int64_t> tiles{0};
  auto workspace = [&] {
    Workspace ws(p.E);
    ws.D.resize(size_t(G) * p.L);
    return ws;
  };
  run_tasks(n_items, threads, workspace, [&](Workspace& ws, int64_t item) {
    const int64_t head = item / chunks;
    const int c = static_cast<int>(item % chunks);
    const int n = static_cast<int>(head / p.H), hk = static_cast<int>(head % p.H);
    const int64_t first_row = (int64_t(n) * p.H_q + int64_t(hk) * G) * p.L;
    // D_i = dO_i . O_i for the rows of the group's G query heads.
    for (int64_t r = 0; r < int64_t(G) * p.L; ++r) {
      const float* dO = p.d_out + (first_row + r) * p.E;
      const float* o = p.out + (first_row + r) * p.E;
      float d = 0.0f;
      for (int e = 0; e < p.E; ++e) {
        d += dO[e] * o[e];
      }
      ws.D[r] = d;
    }
    float* dq = (chunks == 1 ? p.dq : dq_copies.data() + c * dq_size) + first_row * p.E;
    int64_t item_tiles = 0;
    for (int j = c; j < Tc; j += chunks) {
      item_tiles += process_kv_tile(p, n, hk, j, dq, ws);
    }
    tiles += item_tiles;
  });
  if (chunks > 1) { // dQ = the sum of the private copies, in a fixed order
    for (int64_t x = 0; x < dq_size; ++x) {
      float sum = 0.0f;
      for (int c = 0; c < chunks; ++c) {
        sum += dq_copies[c * dq_size + x];
      }
      p.dq[x] = sum;
    }
  }
  backward_tiles_visited() += tiles.load();
  backward_threads() = threads;
}

} // namespace tiny_attn
