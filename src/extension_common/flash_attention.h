// Week 2, days 4 and 5: FlashAttention on the CPU as an MLX primitive.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace tiny_attn {

// The tile sizes of every kernel of the course: Br query rows by Bc key columns.
constexpr int kBr = 32;
constexpr int kBc = 32;

// For the op's checks (Task 1): a shape as "(1, 2, 8, 4)", and the error to throw, which
// Python sees as a ValueError whose message starts with "[flash_attention]".
// Every op of both extensions throws through fail_op (a ValueError starting with "[op] ").
inline std::string shape_str(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "") << shape[i];
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

[[noreturn]] inline void fail_op(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string("[") + op + "] " + message);
}

[[noreturn]] inline void fail(const std::string& message) {
  fail_op("flash_attention", message);
}

// The first check of each array of the given ops (Week 5's decode and varlen): `ndim` axes,
// named by `layout`, then float32, or float16 / bfloat16 on the GPU where the op has 16-bit
// kernels (`half_kernels`).
inline void check_operand_of(
    const char* op,
    const mx::array& x,
    const char* name,
    int ndim,
    const char* layout,
    bool on_gpu,
    bool half_kernels) {
  if (x.ndim() != ndim) {
    fail_op(
        op,
        std::string(name) + " must have " + std::to_string(ndim) + " dimensions " + layout +
            ", got shape " + shape_str(x.shape()));
  }
  const bool half = x.dtype() == mx::float16 || x.dtype() == mx::bfloat16;
  if (x.dtype() != mx::float32 && !(on_gpu && half_kernels && half)) {
    std::ostringstream os;
    os << name << " must be float32" << (on_gpu && half_kernels ? ", float16 or bfloat16" : "")
       << ", got " << x.dtype()
       << (half && half_kernels ? " (16-bit inputs run on the GPU only: pass stream=mx.gpu)"
                                : " (use .astype(mx.float32))");
    fail_op(op, os.str());
  }
}

// Which kernel evaluates the attention. On the CPU: day 4's readable one (Simple) or day 5's
// fast one (Fast); on the GPU (Week 3): flash_attention_<t>_e128 (Simple) or the
// simdgroup_matrix kernel flash_attention_simdgroup_<t> (Fast).
enum class Kernel { Simple, Fast };

// softmax(scale * Q K^T + mask) V for query (N, H_q, L, E), key and value (N, H, S, E), all
// float32; query head h reads key/value head h / (H_q / H) (grouped-query attention).
// `mask`: bool (true = keep) or floating (added to the scores), any shape that broadcasts to
// (N, H_q, L, S). `causal`: query i sees keys j <= i + S - L (bottom-right aligned).
// Every check happens here, before the lazy array exists; bad input throws
// std::invalid_argument, which Python sees as ValueError.
mx::array flash_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask = std::nullopt,
    bool causal = false,
    Kernel kernel = Kernel::Simple,
    int num_threads = 0,
    mx::StreamOrDevice s = {});

// What a CPU kernel needs, as raw pointers and sizes: eval_cpu fills it in.
struct AttentionProblem {
  const float* q; // (N, H_q, L, E), row-contiguous
  const float* k; // (N, H, S, E), row-contiguous
  const float* v; // (N, H, S, E), row-contiguous
  float* out;     // (N, H_q, L, E), row-contiguous
  int N, H_q, H, L, S, E;
  float scale;
  bool causal;
  // At most one of these is set. The mask is read through its strides, in elements, over
  // (N, H_q, L, S): a broadcast axis has stride 0, so a (L, S) mask is never copied.
  const float* mask_add = nullptr; // added to the scaled scores
  const bool* mask_keep = nullptr; // false: the score is replaced by the lowest float
  int64_t mask_strides[4] = {0, 0, 0, 0};
  // Week 4: where set, (N, H_q, L) float32: each row's log-sum-exp m + log(l), which the
  // backward pass recomputes P from.
  float* lse = nullptr;

  float mask_at(int n, int h, int i, int j) const {
    return mask_add
        [n * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3]];
  }
  bool keep_at(int n, int h, int i, int j) const {
    return mask_keep
        [n * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2] + j * mask_strides[3]];
  }
};

// Day 4: one thread, plain loops (src/flash_attention_simple.cpp).
void flash_attention_simple_cpu(const AttentionProblem& p);
// Causal block skipping (day 4, Task 3, in src/flash_attention_simple.cpp; day 5 reuses it): how
// many K/V tiles, from the first, query rows first_row..last_row must visit. Row i sees keys
// j <= i + S - L, so with p.causal the tiles after the one holding last_row's last key are
// skipped; not when first_row sees no key at all (only if L > S): such a row averages every
// value, as MLX does. Without p.causal, every tile. The same rule, under the same name, is
// kv_tiles_to_visit in flash_attention.metal and in tiny_attn/flash_attention_tiled.py.
int kv_tiles_to_visit(const AttentionProblem& p, int first_row, int last_row);
// Day 5: packed tiles, 8-wide micro-kernels, threads (src/flash_attention_fast.cpp).
// num_threads = 0 means one per hardware thread.
void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads);

// Counts the (Q tile, K/V tile) pairs the kernels compute: a kernel adds one for every tile
// of scores it evaluates. Tests read it to check causal block skipping without timing.
std::atomic<int64_t>& tiles_visited();

// Which CPU kernel ran, on how many threads: every kernel reports itself once per call, the
// simple one as report_cpu_kernel("simple", 1), the fast one with the threads it started.
// Tests read the list (ext.cpu_kernel_runs()) to check that the fast op runs the fast kernel.
struct CpuKernelRun {
  std::string name;
  int threads;
};
inline std::vector<CpuKernelRun>& cpu_kernel_runs() {
  static std::vector<CpuKernelRun> runs;
  return runs;
}
inline std::mutex& cpu_kernel_runs_mutex() {
  static std::mutex mu;
  return mu;
}
inline void report_cpu_kernel(const char* name, int threads) {
  std::lock_guard<std::mutex> lock(cpu_kernel_runs_mutex());
  cpu_kernel_runs().push_back({name, threads});
}

class FlashAttention : public mx::Primitive {
 public:
  FlashAttention(
      mx::Stream stream,
      float scale,
      bool causal,
      bool has_mask,
      Kernel kernel,
      int num_threads,
      bool simulated = false)
      : mx::Primitive(stream), scale_(scale), causal_(causal), has_mask_(has_mask), kernel_(kernel),
        num_threads_(num_threads), simulated_(simulated) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  const char* name() const override {
    return "FlashAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    if (!returns_lse()) {
      return {inputs[0].shape()};
    }
    const mx::Shape& q = inputs[0].shape();
    return {q, {q[0], q[1], q[2]}};
  }
  // Week 4: the op has a second output, the (N, H_q, L) float32 log-sum-exp (Day 3 on the CPU,
  // Day 4 on the GPU), and a vjp (src/flash_attention_backward.cpp) that runs the backward pass
  // from it, on the device the forward ran on.
  bool returns_lse() {
    return true;
  }
  // A GPU call that runs on metalsim (see simulated_ below).
  bool simulated() const {
    return simulated_;
  }
  std::vector<mx::array>
  vjp(const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;

 private:
  float scale_;
  bool causal_;
  bool has_mask_;
  Kernel kernel_;
  int num_threads_;
  // Week 3: a GPU call on a machine without Metal. The primitive sits on a CPU stream and
  // eval_cpu hands over to eval_gpu, which runs the Metal kernels on metalsim
  // (metalsim::place_op, src/metalsim/include/metalsim/mlx_extension.h).
  bool simulated_;
};

} // namespace tiny_attn
