// Week 5, day 2: split-K (flash-decoding). A decode has B * H tasks, one per key/value group:
// at B = 1, H = 8 that is 8 tasks for a machine that runs many more at once. Cutting each
// sequence's keys into num_splits ranges gives B * H * num_splits tasks; each writes a partial
// (o, lse), and a second pass merges them with Week 2's rule.
#include <algorithm>
#include <cmath>
#include <vector>

#include "decode_attention.h"
#include "flash_attention.h" // report_cpu_kernel
#include "metalsim/mlx_extension.h"
#include "tasks.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: how many splits
int choose_num_splits(int S, int tasks, int workers) {
  // Enough tasks for every worker, but no split shorter than kMinKeysPerSplit keys.
  const int wanted = (workers + tasks - 1) / std::max(tasks, 1);
  const int most = std::max(1, S / kMinKeysPerSplit);
  return std::clamp(std::min(wanted, most), 1, kMaxSplits);
}

std::pair<int, int> split_range(int S, int num_splits, int split) {
  // The first S % num_splits splits get one key more; with more splits than keys, the last
  // ones are empty.
  const int base = S / num_splits, extra = S % num_splits;
  const int first = split * base + std::min(split, extra);
  return {first, first + base + (split < extra ? 1 : 0)};
}

// ---------------------------------------------------------------- Task 2: the CPU passes
void decode_attention_split_cpu(const DecodeProblem& p, int num_threads) {
  const int G = p.group(), R = G * p.L, n_splits = p.num_splits;
  const int64_t n_tasks = int64_t(p.B) * p.H * n_splits;
  const int threads = task_threads(num_threads, n_tasks);
  report_cpu_kernel("decode_split", n_splits);

  // Pass 1: the partial output (normalised) and log-sum-exp of every row in every split.
  const int64_t n_rows = int64_t(p.B) * p.H_q * p.L; // row n = (b * H_q + h_q) * L + i
  std::vector<float> o_part(n_rows * n_splits * p.E), lse_part(n_rows * n_splits);
  run_tasks(
      n_tasks,
      threads,
      [] { return GroupState(); },
      [&](GroupState& st, int64_t task) {
        const int z = static_cast<int>(task % n_splits);
        const int h = static_cast<int>(task / n_splits % p.H);
        const int b = static_cast<int>(task / (int64_t(n_splits) * p.H));
        const auto [j0, j1] = split_range(p.seq_len(b), n_splits, z);
        st.reset(R, p.E);
        decode_group(p, b, h, 0, R, j0, j1, st);
        for (int r = 0; r < R; ++r) {
          const int64_t n = (int64_t(b) * p.H_q + h * G + r / p.L) * p.L + r % p.L;
          const bool empty = st.l[r] == 0.0f; // the row sees no key of this split
          lse_part[n * n_splits + z] = empty ? -INFINITY : st.m[r] + std::log(st.l[r]);
          for (int e = 0; e < p.E; ++e) {
            o_part[(n * n_splits + z) * p.E + e] =
                empty ? 0.0f : st.o[size_t(r) * p.E + e] / st.l[r];
          }
        }
      });

  // Pass 2: merge the splits of every row (Week 2's rule); an empty split weighs exp(-inf) = 0.
  for (int64_t n = 0; n < n_rows; ++n) {
    const float* lse = lse_part.data() + n * n_splits;
    const float M = *std::max_element(lse, lse + n_splits);
    float* out = p.out + n * p.E;
    std::fill(out, out + p.E, 0.0f);
    float w_sum = 0.0f;
    for (int z = 0; z < n_splits; ++z) {
      const float w = std::exp(lse[z] - M);
      w_sum += w;
      const float* o = o_part.data() + (n * n_splits + z) * p.E;
      for (int e = 0; e < p.E; ++e) {
        out[e] += w * o[e];
      }
    }
    for (int e = 0; e < p.E; ++e) {
      out[e] /= w_sum;
    }
  }
}

// ---------------------------------------------------------------- Task 3: the GPU passes
void dispatch_decode_split(mx::Stream s, const DecodeParams& p_in, const DecodeBuffers& bufs) {
  DecodeParams p = p_in;
  const int rows = p.H_q / p.H * p.L;
  p.rows_per_block = std::min(rows, kDecodeRows);
  const int row_blocks = (rows + p.rows_per_block - 1) / p.rows_per_block;
  const int n_rows = p.B * p.H_q * p.L;
  const std::string suffix = decode_type_suffix(bufs.q.dtype());

  // The partials live between the two dispatches only.
  mx::array o_part({n_rows, p.num_splits, p.E}, mx::float32, nullptr, {});
  mx::array lse_part({n_rows, p.num_splits}, mx::float32, nullptr, {});
  o_part.set_data(mx::allocator::malloc(o_part.nbytes()));
  lse_part.set_data(mx::allocator::malloc(lse_part.nbytes()));

  auto& d = gpu::device(s.device);
  auto& enc = gpu::get_command_encoder(s);
  enc.add_temporaries({o_part, lse_part});

  // Pass 1: one threadgroup per (group, row block, split).
  const std::string split_name = "decode_attention_split_" + suffix + "_e128";
  auto* split_kernel = d.get_kernel(split_name, metalsim::extension_library(d));
  const int threads = decode_threads(split_kernel, split_name.c_str());
  enc.set_compute_pipeline_state(split_kernel);
  enc.set_input_array(bufs.q, 0);
  enc.set_input_array(bufs.k, 1);
  enc.set_input_array(bufs.v, 2);
  enc.set_input_array(bufs.block_table, 4);
  enc.set_input_array(bufs.seq_lens, 5);
  enc.set_output_array(o_part, 6);
  enc.set_output_array(lse_part, 7);
  enc.set_bytes(p, 8);
  enc.set_output_array(decode_gpu_rows_read(), kDecodeCountsBuffer);
  enc.dispatch_threadgroups(
      MTL::Size(p.B * p.H, row_blocks, p.num_splits), MTL::Size(threads, 1, 1));

  // Pass 2: one threadgroup per query row, one thread per column.
  auto* merge_kernel = d.get_kernel("decode_merge_" + suffix, metalsim::extension_library(d));
  enc.set_compute_pipeline_state(merge_kernel);
  enc.set_output_array(bufs.out, 3);
  enc.set_input_array(o_part, 6);
  enc.set_input_array(lse_part, 7);
  enc.set_bytes(p, 8);
  enc.dispatch_threadgroups(MTL::Size(n_rows, 1, 1), MTL::Size(kMaxDecodeHeadDim, 1, 1));
}

} // namespace tiny_attn
