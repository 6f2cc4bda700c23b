// Week 3, day 1: SoftmaxRows::eval_gpu, the dispatch of softmax_rows_f32 (softmax_rows.metal).
#include <algorithm>

#include "metalsim/mlx_extension.h"
#include "softmax_rows.h"

namespace tiny_attn {

void SoftmaxRows::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0]; // float32, row-contiguous: the op made it so
  out.set_data(mx::allocator::malloc(out.nbytes()));
  const int n = x.shape(-1);
  const size_t rows = n == 0 ? 0 : x.size() / n;
  if (rows == 0) {
    return; // an empty array: nothing to launch (Metal rejects a grid with a zero extent)
  }

  // One threadgroup per row; as many threads as columns, rounded up to whole SIMD groups,
  // at most 1024 (longer rows: each thread strides over several columns).
  const int threads = std::min(1024, (n + 31) / 32 * 32);

  auto& d = gpu::device(stream().device);
  auto* kernel = d.get_kernel("softmax_rows_f32", metalsim::extension_library(d));
  auto& enc = gpu::get_command_encoder(stream());
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(x, 0);
  enc.set_output_array(out, 1);
  enc.set_bytes(n, 2);
  enc.dispatch_threadgroups(MTL::Size(rows, 1, 1), MTL::Size(threads, 1, 1));
}

} // namespace tiny_attn
