// Week 5, given and shared by both extensions: the decode ops' checks, the lazy arrays, and the
// primitive's eval_cpu / eval_gpu, which fill a DecodeProblem or DecodeParams and hand over to
// the course's kernels (src/decode_attention_cpu.cpp, src/decode_attention_gpu.cpp,
// src/decode_attention_split.cpp, src/paged_decode_attention.cpp, src/decode_attention.metal).
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "flash_attention.h" // shape_str, report_cpu_kernel
#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/transforms.h"
#include "tasks.h" // cpu_cores

namespace tiny_attn {

std::atomic<int64_t>& decode_cpu_rows_read() {
  static std::atomic<int64_t> count{0};
  return count;
}

mx::array& decode_gpu_rows_read() {
  // Never freed: it must outlive every dispatch, up to the end of the process.
  static auto* counts = new mx::array({0}, mx::int32);
  return *counts;
}

void GroupState::reset(int rows_, int E_) {
  rows = rows_;
  E = E_;
  m.assign(rows, -INFINITY);
  l.assign(rows, 0.0f);
  o.assign(size_t(rows) * E, 0.0f);
}

void write_group_rows(const DecodeProblem& p, int b, int h, int r0, const GroupState& st) {
  for (int r = 0; r < st.rows; ++r) {
    const int h_q = h * p.group() + (r0 + r) / p.L, i = (r0 + r) % p.L;
    float* out = p.out + ((int64_t(b) * p.H_q + h_q) * p.L + i) * p.E;
    for (int e = 0; e < p.E; ++e) {
      out[e] = st.o[size_t(r) * p.E + e] / st.l[r];
    }
  }
}

namespace {

// 4 axes; float32, or float16 / bfloat16 on the GPU.
void check_operand(
    const char* op, const mx::array& x, const char* name, const char* layout, bool on_gpu) {
  check_operand_of(op, x, name, 4, layout, on_gpu, true);
}

// The checks every decode op shares: query (B, H_q, L, E) against keys/values (.., H, .., E).
void check_query(
    const char* op,
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    const char* key_name,
    const char* value_name,
    float scale,
    bool on_gpu) {
  if (key.dtype() != query.dtype() || value.dtype() != query.dtype()) {
    std::ostringstream os;
    os << "query, " << key_name << " and " << value_name << " must have the same dtype, got "
       << query.dtype() << ", " << key.dtype() << " and " << value.dtype();
    fail_op(op, os.str());
  }
  if (key.shape() != value.shape()) {
    fail_op(
        op,
        std::string(key_name) + " and " + value_name + " must have the same shape, got " +
            shape_str(key.shape()) + " and " + shape_str(value.shape()));
  }
  const int H_q = query.shape(1), L = query.shape(2), E = query.shape(3), H = key.shape(1);
  if (key.shape(3) != E) {
    fail_op(
        op,
        std::string(key_name) + " must have the head dimension E = " + std::to_string(E) +
            " of query, got " + std::to_string(key.shape(3)));
  }
  for (int d = 0; d < 4; ++d) {
    if (query.shape(d) == 0 || key.shape(d) == 0) {
      fail_op(
          op,
          "every dimension must be at least 1, got query " + shape_str(query.shape()) + " and " +
              key_name + " " + shape_str(key.shape()));
    }
  }
  if (L > kDecodeMaxL) {
    fail_op(
        op,
        "query must have at most " + std::to_string(kDecodeMaxL) +
            " rows L (decoding: one new token, or a few drafted ones); got L = " +
            std::to_string(L) + ", use flash_attention for a prompt");
  }
  if (H_q % H != 0) {
    fail_op(
        op,
        "the query heads H_q = " + std::to_string(H_q) +
            " must be a multiple of the key/value heads H = " + std::to_string(H));
  }
  if (on_gpu && E > kMaxDecodeHeadDim) {
    fail_op(
        op,
        "on the GPU the head dimension E of query must be at most " +
            std::to_string(kMaxDecodeHeadDim) + ", got E = " + std::to_string(E));
  }
  if (!std::isfinite(scale)) {
    fail_op(op, "scale must be a finite float, got " + std::to_string(scale));
  }
}

// Splits beyond the keys are empty (they still cost a partial (o, lse) each): allowed up to
// max(S, kMaxSplits), so that a huge count is a ValueError here, never a giant allocation.
void check_num_splits(const char* op, int num_splits, int minimum, int64_t S) {
  const int64_t most = std::max<int64_t>(S, kMaxSplits);
  if (num_splits < minimum || num_splits > most) {
    fail_op(
        op,
        "num_splits must be in [" + std::to_string(minimum) + ", max(S, " +
            std::to_string(kMaxSplits) + ") = " + std::to_string(most) + "]" +
            (minimum == 0 ? " (0: chosen from S)" : "") + ", got " + std::to_string(num_splits));
  }
}

// Keys and values are read in place through their strides when they are already computed
// with unit stride along E (a KVCache's live part is such a view); anything else becomes a
// dense copy first.
std::pair<mx::array, mx::array>
in_place_or_dense(const mx::array& key, const mx::array& value, mx::Stream stream) {
  const bool in_place = key.is_available() && value.is_available() &&
                        key.strides() == value.strides() && key.strides(3) == 1;
  if (in_place) {
    return {key, value};
  }
  return {mx::contiguous(key, false, stream), mx::contiguous(value, false, stream)};
}

mx::array make_decode(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    std::vector<mx::array> extra,
    float scale,
    bool causal,
    int num_splits,
    const metalsim::OpPlacement& place) {
  auto [k, v] = in_place_or_dense(key, value, place.stream);
  std::vector<mx::array> inputs = {mx::contiguous(query, false, place.stream), k, v};
  for (auto& x : extra) {
    inputs.push_back(mx::contiguous(x, false, place.stream));
  }
  const bool paged = inputs.size() == 5;
  auto primitive = std::make_shared<DecodeAttention>(
      place.stream, scale, causal, num_splits, paged, place.simulated);
  return mx::array(query.shape(), query.dtype(), primitive, std::move(inputs));
}

} // namespace

// ---------------------------------------------------------------- the ops
namespace {

mx::array contiguous_decode(
    const char* op,
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    int num_splits,
    bool causal,
    mx::StreamOrDevice s) {
  const metalsim::OpPlacement place = metalsim::place_op(s);
  check_operand(op, query, "query", "(B, H_q, L, E)", place.on_gpu());
  check_operand(op, key, "key", "(B, H, S, E)", place.on_gpu());
  check_operand(op, value, "value", "(B, H, S, E)", place.on_gpu());
  check_query(op, query, key, value, "key", "value", scale, place.on_gpu());
  if (key.shape(0) != query.shape(0)) {
    fail_op(
        op,
        "key must have the batch size B = " + std::to_string(query.shape(0)) + " of query, got " +
            std::to_string(key.shape(0)));
  }
  const int L = query.shape(2), S = key.shape(2);
  if (causal && S < L) {
    fail_op(
        op,
        "with causal=True key must hold at least the L = " + std::to_string(L) +
            " new tokens (S >= L), got S = " + std::to_string(S));
  }
  check_num_splits(op, num_splits, 0, S);
  if (num_splits == 0) {
    const int workers = place.on_gpu() ? kGpuDecodeWorkers : cpu_cores();
    num_splits = choose_num_splits(S, query.shape(0) * key.shape(1), workers);
  }
  return make_decode(query, key, value, {}, scale, causal, num_splits, place);
}

} // namespace

mx::array decode_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    bool causal,
    mx::StreamOrDevice s) {
  return contiguous_decode("decode_attention", query, key, value, scale, 1, causal, s);
}

mx::array decode_attention_split(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    int num_splits,
    bool causal,
    mx::StreamOrDevice s) {
  return contiguous_decode(
      "decode_attention_split", query, key, value, scale, num_splits, causal, s);
}

mx::array paged_decode_attention(
    const mx::array& query,
    const mx::array& k_pages,
    const mx::array& v_pages,
    const mx::array& block_table,
    const mx::array& seq_lens,
    float scale,
    int num_splits,
    bool causal,
    mx::StreamOrDevice s) {
  const char* op = "paged_decode_attention";
  const metalsim::OpPlacement place = metalsim::place_op(s);
  check_operand(op, query, "query", "(B, H_q, L, E)", place.on_gpu());
  check_operand(op, k_pages, "k_pages", "(num_pages, H, page_size, E)", place.on_gpu());
  check_operand(op, v_pages, "v_pages", "(num_pages, H, page_size, E)", place.on_gpu());
  check_query(op, query, k_pages, v_pages, "k_pages", "v_pages", scale, place.on_gpu());
  const int B = query.shape(0), L = query.shape(2);
  const int num_pages = k_pages.shape(0), page_size = k_pages.shape(2);
  if (block_table.ndim() != 2 || block_table.dtype() != mx::int32 || block_table.shape(0) != B) {
    std::ostringstream os;
    os << "block_table must be int32 of shape (B, max_blocks) with B = " << B << ", got "
       << block_table.dtype() << " of shape " << shape_str(block_table.shape());
    fail_op(op, os.str());
  }
  if (seq_lens.ndim() != 1 || seq_lens.dtype() != mx::int32 || seq_lens.shape(0) != B) {
    std::ostringstream os;
    os << "seq_lens must be int32 of shape (B,) with B = " << B << ", got " << seq_lens.dtype()
       << " of shape " << shape_str(seq_lens.shape());
    fail_op(op, os.str());
  }
  const int max_blocks = block_table.shape(1);
  check_num_splits(op, num_splits, 1, int64_t(max_blocks) * page_size);
  // The table is small and written by the host: its values are checked now, so that a wrong
  // page number is a ValueError here and never a read outside the pool in a kernel.
  mx::array bt = mx::contiguous(block_table);
  mx::array lens = mx::contiguous(seq_lens);
  mx::eval({bt, lens});
  const int32_t* t = bt.data<int32_t>();
  const int32_t* n = lens.data<int32_t>();
  for (int b = 0; b < B; ++b) {
    const int lowest = causal ? L : 1;
    if (n[b] < lowest || int64_t(n[b]) > int64_t(max_blocks) * page_size) {
      fail_op(
          op,
          "seq_lens[" + std::to_string(b) + "] = " + std::to_string(n[b]) + " must be in [" +
              std::to_string(lowest) +
              ", max_blocks * page_size = " + std::to_string(int64_t(max_blocks) * page_size) +
              "]" + (causal ? " (causal: every sequence holds its L new tokens)" : ""));
    }
    const int blocks = (n[b] + page_size - 1) / page_size;
    for (int i = 0; i < blocks; ++i) {
      const int page = t[b * max_blocks + i];
      if (page < 0 || page >= num_pages) {
        fail_op(
            op,
            "block_table[" + std::to_string(b) + ", " + std::to_string(i) +
                "] = " + std::to_string(page) +
                " is not a page of the pool (0 <= page < num_pages = " + std::to_string(num_pages) +
                ")");
      }
    }
  }
  return make_decode(query, k_pages, v_pages, {bt, lens}, scale, causal, num_splits, place);
}

// ---------------------------------------------------------------- eval_cpu
template <typename Params>
void DecodeAttention::set_sizes(Params& p, const std::vector<mx::array>& inputs) const {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  for (int d = 0; d < 3; ++d) {
    p.kv_strides[d] = k.strides(d);
  }
  p.B = q.shape(0);
  p.H_q = q.shape(1);
  p.L = q.shape(2);
  p.E = q.shape(3);
  p.H = k.shape(1);
  p.S = k.shape(2);
  p.scale = scale_;
  p.causal = causal_;
  p.num_splits = num_splits_;
  if (paged_) {
    p.max_blocks = inputs[3].shape(1);
    p.page_size = k.shape(2); // the pool's axis 2
  }
}

void DecodeAttention::eval_cpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  if (simulated_) {
    return eval_gpu(inputs, outputs); // a GPU call, run on metalsim
  }
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  const mx::array& v = inputs[2];
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));

  DecodeProblem p;
  p.q = q.data<float>();
  p.k = k.data<float>();
  p.v = v.data<float>();
  p.out = out.data<float>();
  set_sizes(p, inputs);

  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& x : inputs) {
    encoder.set_input_array(x);
  }
  encoder.set_output_array(out);
  if (paged_) {
    p.block_table = inputs[3].data<int32_t>();
    p.seq_lens = inputs[4].data<int32_t>();
  }
  if (num_splits_ == 1) {
    encoder.dispatch([p]() { decode_attention_cpu(p, 0); });
  } else {
    encoder.dispatch([p]() { decode_attention_split_cpu(p, 0); });
  }
}

// ---------------------------------------------------------------- eval_gpu
void DecodeAttention::eval_gpu(
    const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));

  DecodeParams p{};
  set_sizes(p, inputs);
  p.paged = paged_;
  const mx::array none(0, mx::int32); // stands in for block_table and seq_lens when not paged
  DecodeBuffers bufs{q, k, inputs[2], paged_ ? inputs[3] : none, paged_ ? inputs[4] : none, out};
  gpu::get_command_encoder(stream()).add_temporary(none);
  if (num_splits_ == 1) {
    dispatch_decode(stream(), p, bufs);
  } else {
    dispatch_decode_split(stream(), p, bufs);
  }
}

} // namespace tiny_attn
