// Week 2, day 4: FlashAttention-2 on the CPU, one thread, plain loops.
//
// For each (batch n, query head h) and each Q tile of Br rows:
//
//            keys j ->   j0        j0+Bc
//          +-----------+---------+-----------+
//   i0     |  visited  |  S_ij   | skipped   |   S_ij = scale * Q_i K_j^T  (Br x Bc)
//   i0+Br  |           |  tile   | (causal)  |   m, l: running row max and row sum
//          +-----------+---------+-----------+   O_i  = sum over tiles of P_ij V_j,
//                                                rescaled whenever the max grows
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "flash_attention.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 3
int kv_tiles_to_visit(const AttentionProblem& p, int first_row, int last_row) {
  const int Tc = (p.S + kBc - 1) / kBc;
  if (!p.causal || first_row + p.S - p.L < 0) {
    return Tc;
  }
  return std::min(Tc, (last_row + p.S - p.L) / kBc + 1);
}

// ---------------------------------------------------------------- Tasks 2 and 3
void flash_attention_simple_cpu(const AttentionProblem& p) {
  const int E = p.E, L = p.L, S = p.S;
  const int group = p.H_q / p.H; // query heads per key/value head
  // Masked scores (boolean mask, causal) become the lowest float, not -inf, as in MLX: a row
  // that sees no key at all then averages every value instead of dividing 0 by 0.
  const float lowest = std::numeric_limits<float>::lowest();
  std::vector<float> s_tile(kBr * kBc), o(kBr * E), m(kBr), l(kBr);
  int64_t tiles = 0;

  for (int n = 0; n < p.N; ++n) {
    for (int h = 0; h < p.H_q; ++h) {
      const int64_t kv = int64_t(n) * p.H + h / group; // GQA: an index, never a copy
      const float* q = p.q + (int64_t(n) * p.H_q + h) * L * E;
      const float* k = p.k + kv * S * E;
      const float* v = p.v + kv * S * E;
      float* out = p.out + (int64_t(n) * p.H_q + h) * L * E;

      for (int i0 = 0; i0 < L; i0 += kBr) {
        const int br = std::min(kBr, L - i0);
        std::fill(m.begin(), m.end(), -INFINITY);
        std::fill(l.begin(), l.end(), 0.0f);
        std::fill(o.begin(), o.end(), 0.0f);

        // Causal: row i sees keys j <= i + S - L; the tiles past the Q tile's last row are
        // fully masked and never computed (kv_tiles_to_visit above).
        const int first_limit = i0 + S - L;
        const int j_end = std::min(S, kv_tiles_to_visit(p, i0, i0 + br - 1) * kBc);

        for (int j0 = 0; j0 < j_end; j0 += kBc) {
          const int bc = std::min(kBc, S - j0);
          ++tiles;
          for (int a = 0; a < br; ++a) {
            for (int b = 0; b < bc; ++b) {
              float dot = 0.0f;
              for (int e = 0; e < E; ++e) {
                dot += q[(i0 + a) * E + e] * k[(j0 + b) * E + e];
              }
              float s = p.scale * dot;
              if (p.causal) {
                // Only a tile crossing the diagonal needs the test; below it, all is visible.
                if (j0 + bc - 1 > first_limit && j0 + b > i0 + a + S - L) {
                  s = lowest;
                }
              } else if (p.mask_add != nullptr) {
                s += p.mask_at(n, h, i0 + a, j0 + b);
              } else if (p.mask_keep != nullptr && !p.keep_at(n, h, i0 + a, j0 + b)) {
                s = lowest;
              }
              s_tile[a * kBc + b] = s;
            }
          }

          for (int a = 0; a < br; ++a) {
            const float* s_row = &s_tile[a * kBc];
            float m_new = m[a];
            for (int b = 0; b < bc; ++b) {
              m_new = std::max(m_new, s_row[b]);
            }
            if (m_new == -INFINITY) {
              continue; // every score so far is -inf (additive mask): nothing to add yet
            }
            // The max grew from m[a] to m_new: what was summed with the old max shrinks by
            // alpha = exp(m_old - m_new) (0 on the first tile, where m_old = -inf).
            const float alpha = std::exp(m[a] - m_new);
            float row_sum = 0.0f;
            float* o_row = &o[a * E];
            for (int e = 0; e < E; ++e) {
              o_row[e] *= alpha;
            }
            for (int b = 0; b < bc; ++b) {
              const float p_ab = std::exp(s_row[b] - m_new);
              row_sum += p_ab;
              const float* v_row = v + (j0 + b) * int64_t(E);
              for (int e = 0; e < E; ++e) {
                o_row[e] += p_ab * v_row[e];
              }
            }
            l[a] = alpha * l[a] + row_sum;
            m[a] = m_new;
          }
        }

        // Normalise once at the end. l = 0 only if every score was -inf: 0 / 0 = NaN,
        // the answer MLX gives for such a row.
        for (int a = 0; a < br; ++a) {
          for (int e = 0; e < E; ++e) {
            out[(i0 + a) * E + e] = l[a] == 0.0f ? NAN : o[a * E + e] / l[a];
          }
        }
        if (p.lse != nullptr) { // Week 4: what the backward pass recomputes P from
          float* lse = p.lse + (int64_t(n) * p.H_q + h) * L + i0;
          for (int a = 0; a < br; ++a) {
            lse[a] = m[a] + std::log(l[a]);
          }
        }
      }
    }
  }
  tiles_visited() += tiles;
}

} // namespace tiny_attn
