// Week 5: attention for inference. Decoding against a KV cache (day 1), split-K (day 2) and a
// paged KV cache (day 3), on the CPU and as Metal kernels.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace tiny_attn {

// The most query rows per sequence a decode call takes: one new token, or a few drafted ones
// checked at once (speculative decoding).
constexpr int kDecodeMaxL = 8;
// The Metal decode kernels: 32 SIMD groups of 32 lanes (fewer where the device allows fewer
// threads for the kernel); one threadgroup holds up to kDecodeRows query rows (the group's query
// heads times L), so the keys and values of a key/value head are read once for all of them.
constexpr int kDecodeThreads = 1024;
constexpr int kDecodeRows = 8;
// The largest head dimension of the Metal kernels: each of the 32 lanes holds E / 32 <= 4 values.
constexpr int kMaxDecodeHeadDim = 128;
// How many threadgroups choose_num_splits counts on a GPU running at once (a few per core of an
// Apple GPU); the CPU counts its hardware threads.
constexpr int kGpuDecodeWorkers = 64;
// Day 2: no split gets fewer keys than this, so that a split's work outweighs its merge.
constexpr int kMinKeysPerSplit = 256;
constexpr int kMaxSplits = 64;

// ---------------------------------------------------------------- the ops
// Day 1: softmax(scale * Q K^T) V for query (B, H_q, L, E) with L <= 8, key and value
// (B, H, S, E); H_q a multiple of H. causal: query row i sees keys j <= i + S - L.
mx::array decode_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    bool causal,
    mx::StreamOrDevice s = {});

// Day 2: the same, with the keys of each sequence cut into num_splits ranges computed apart
// and merged (flash-decoding). num_splits = 0: choose_num_splits decides.
mx::array decode_attention_split(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    int num_splits,
    bool causal,
    mx::StreamOrDevice s = {});

// Day 2: how many splits a decode of S keys in `tasks` (batch x key/value head) independent
// pieces should use on a machine that runs `workers` of them at once: enough pieces to keep
// every worker busy, none shorter than kMinKeysPerSplit keys, at most kMaxSplits.
int choose_num_splits(int S, int tasks, int workers);

// Day 3: decode a batch of sequences whose keys and values live in pages of a shared pool.
// k_pages, v_pages: (num_pages, H, page_size, E); block_table: int32 (B, max_blocks), entry
// [b, i] the page that holds keys i * page_size .. of sequence b; seq_lens: int32 (B,).
mx::array paged_decode_attention(
    const mx::array& query,
    const mx::array& k_pages,
    const mx::array& v_pages,
    const mx::array& block_table,
    const mx::array& seq_lens,
    float scale,
    int num_splits,
    bool causal,
    mx::StreamOrDevice s = {});

// ---------------------------------------------------------------- what the CPU kernels get
struct DecodeProblem {
  const float* q; // (B, H_q, L, E), row-contiguous
  const float* k; // (B, H, S, E), or day 3: the pool (num_pages, H, page_size, E)
  const float* v; // like k
  float* out;     // (B, H_q, L, E), row-contiguous
  // Strides of k and v, in elements, over their first three axes (the last one is 1): the live
  // part of a KVCache is a view of a larger buffer, read in place, never copied.
  int64_t kv_strides[3];
  int B, H_q, H, L, S, E;
  float scale;
  bool causal;
  int num_splits = 1; // day 2
  // Day 3: where set, K/V rows are found through the block table.
  const int32_t* block_table = nullptr; // (B, max_blocks)
  const int32_t* seq_lens = nullptr;    // (B,)
  int max_blocks = 0;
  int page_size = 0;

  int group() const {
    return H_q / H; // query heads per key/value head
  }
  // Keys of sequence b: S, or its own length in a paged batch.
  int seq_len(int b) const {
    return seq_lens ? seq_lens[b] : S;
  }
};

// The softmax state of the G * L query rows of one key/value group over some range of keys:
// per row its max m, sum l and unnormalised output o (E floats), as in Week 2's online softmax.
struct GroupState {
  int rows = 0, E = 0;
  std::vector<float> m, l, o;
  void reset(int rows_, int E_); // no key seen yet: m = -inf, l = 0, o = 0
};

// The rows [r0, r0 + st.rows) of group (b, h) done: out = o / l, row by row (each row has
// seen at least one key: l > 0).
void write_group_rows(const DecodeProblem& p, int b, int h, int r0, const GroupState& st);

// Reads a row of E floats into the cache, front to back, one load a 64-byte cache line: a
// stream the hardware prefetcher follows. For a kernel that then reads the row in another
// order (a block's columns) or several times. (A volatile read is one the compiler must do.)
inline void read_row(const float* row, int E) {
  for (int e = 0; e < E; e += 16) {
    (void)*static_cast<const volatile float*>(row + e);
  }
}

// Day 1 (src/decode_attention_cpu.cpp): adds keys [j0, j1) to the state `st` of rows
// [r0, r1) of group (b, h) (its G * L query rows, head by head); st.reset(r1 - r0, E) first.
void decode_group(
    const DecodeProblem& p, int b, int h, int r0, int r1, int j0, int j1, GroupState& st);
// Day 1: key (or value) row j of sequence b, head h, in `base` (p.k or p.v).
const float* kv_row(const DecodeProblem& p, const float* base, int b, int h, int j);
// Day 1: one task per (batch, key/value head) on num_threads threads (0: one per core); a
// paged batch goes to day 3's paged_decode_cpu.
void decode_attention_cpu(const DecodeProblem& p, int num_threads);
// Day 2 (src/decode_attention_split_cpu.cpp): one task per (batch, head, split) writing a
// partial (o, lse), then the merge.
void decode_attention_split_cpu(const DecodeProblem& p, int num_threads);
// Day 2: the keys [first, last) of split `split` out of `num_splits` over `S` keys.
std::pair<int, int> split_range(int S, int num_splits, int split);
// Day 3 (src/paged_decode_attention.cpp): row j of sequence b, head h, in the pool `pool`.
const float* paged_kv_row(const DecodeProblem& p, const float* pool, int b, int h, int j);
// Day 3: a paged batch, one task per (sequence, range of heads) walking the sequence's pages
// in address order.
void paged_decode_cpu(const DecodeProblem& p, int num_threads);

// What ran, for the tests: key/value rows (a key and a value vector) read by the decode
// kernels, CPU and GPU, since the last reset. Reading every row once per group gives
// B * H * S; once per query head, B * H_q * S.
std::atomic<int64_t>& decode_cpu_rows_read();
constexpr int kDecodeCountsBuffer = 9;
mx::array& decode_gpu_rows_read(); // one int32, added to by the Metal kernels

// ---------------------------------------------------------------- the Metal side
// The scalars of a dispatch at [[buffer(8)]]; DecodeParams in decode_attention.metal mirrors
// it field for field.
struct DecodeParams {
  int64_t kv_strides[3]; // as DecodeProblem::kv_strides
  int32_t B;
  int32_t H_q;
  int32_t H;
  int32_t L;
  int32_t S;
  int32_t E;
  float scale;
  int32_t causal;
  int32_t num_splits;
  int32_t paged;
  int32_t max_blocks;
  int32_t page_size;
  int32_t rows_per_block; // query rows per threadgroup: G * L, at most kDecodeRows
  int32_t pad_;
};
static_assert(sizeof(DecodeParams) == 80, "DecodeParams must match the .metal side");

// The arrays a dispatch binds; block_table and seq_lens are one-element placeholders unless
// paged (a kernel's buffers must all be bound).
struct DecodeBuffers {
  const mx::array& q;
  const mx::array& k;
  const mx::array& v;
  const mx::array& block_table;
  const mx::array& seq_lens;
  mx::array& out;
};
// Threads per threadgroup for a decode kernel: 1024, or as many whole SIMD groups as the
// pipeline allows (a kernel holding many registers per thread may get fewer), at least 4 (the
// merge has a thread per column, E <= 128).
template <typename Pipeline> int decode_threads(const Pipeline* kernel, const char* name) {
  const int allowed = static_cast<int>(kernel->maxTotalThreadsPerThreadgroup()) / 32 * 32;
  if (allowed < kMaxDecodeHeadDim) {
    throw std::runtime_error(
        std::string("[decode_attention on the GPU] ") + name + " allows only " +
        std::to_string(allowed) + " threads per threadgroup on this device; it needs at least " +
        std::to_string(kMaxDecodeHeadDim));
  }
  return std::min(kDecodeThreads, allowed);
}

// The kernel name's type suffix for the inputs' dtype: f32, f16 or bf16.
inline std::string decode_type_suffix(mx::Dtype dtype) {
  return dtype == mx::float16 ? "f16" : dtype == mx::bfloat16 ? "bf16" : "f32";
}
// Day 1 (src/decode_attention_gpu.cpp): decode_attention_<t>_e128, one pass.
void dispatch_decode(mx::Stream s, const DecodeParams& p, const DecodeBuffers& bufs);
// Day 2 (src/decode_attention_split.cpp): decode_attention_split_<t>_e128, then decode_merge_<t>.
void dispatch_decode_split(mx::Stream s, const DecodeParams& p, const DecodeBuffers& bufs);

// The primitive of all three ops: inputs q, k, v (+ block_table, seq_lens when paged).
class DecodeAttention : public mx::Primitive {
 public:
  DecodeAttention(
      mx::Stream stream, float scale, bool causal, int num_splits, bool paged, bool simulated)
      : mx::Primitive(stream), scale_(scale), causal_(causal), num_splits_(num_splits),
        paged_(paged), simulated_(simulated) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override {
    return "DecodeAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const DecodeAttention&>(other);
    return scale_ == o.scale_ && causal_ == o.causal_ && num_splits_ == o.num_splits_ &&
           paged_ == o.paged_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  // What eval_cpu's DecodeProblem and eval_gpu's DecodeParams both hold: the sizes, the strides
  // of K/V, the scalars and, paged, day 3's table geometry.
  template <typename Params> void set_sizes(Params& p, const std::vector<mx::array>& inputs) const;

  float scale_;
  bool causal_;
  int num_splits_; // 1: day 1's kernel; more: day 2's split kernel and the merge
  bool paged_;
  bool simulated_;
};

} // namespace tiny_attn
