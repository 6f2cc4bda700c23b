// Week 3, day 1: SoftmaxRows::eval_gpu, the dispatch of softmax_rows_f32 (softmax_rows.metal).
#include <algorithm>
#include <stdexcept>

#include "metalsim/mlx_extension.h"
#include "softmax_rows.h"

namespace tiny_attn {

void SoftmaxRows::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  // inputs[0]: x, float32 and row-contiguous (the op made it so); out: x's shape.
  //
  // TODO(Task 1): allocate the output; rows = x.size() / n with n = x.shape(-1) (launch
  //   nothing for an empty array); threads = min(1024, n rounded up to a multiple of 32).
  // TODO(Task 1): get the kernel "softmax_rows_f32" (d.get_kernel(name,
  //   metalsim::extension_library(d)) with auto& d = gpu::device(stream().device)) and the
  //   command encoder (gpu::get_command_encoder(stream())); bind x at 0, out at 1, n (an int)
  //   with set_bytes at 2, and dispatch (rows, 1, 1) threadgroups of (threads, 1, 1).
  throw std::runtime_error(
      "SoftmaxRows::eval_gpu is not implemented yet: see book/src/week3-01-gpu-model.md, Task 1");
}

} // namespace tiny_attn
