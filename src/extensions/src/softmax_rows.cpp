// Week 2, day 3: softmax_rows, the op (graph building) and its CPU evaluation.
#include "softmax_rows.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: the op
mx::array softmax_rows(const mx::array& x, mx::StreamOrDevice s) {
  // TODO(Task 1): validate x (at least 1 dimension, float32: throw std::invalid_argument
  // with a message naming x and what was expected), make it row-contiguous with
  // mx::contiguous, and return the lazy array built around a SoftmaxRows primitive.
  // Build it on the stream `auto [stream, simulated] = metalsim::place_op(s);` gives, passing
  // `simulated` to SoftmaxRows: Week 3 uses it to run GPU calls without Metal.
  throw std::runtime_error(
      "softmax_rows is not implemented yet: see book/src/week2-03-first-extension.md, Task 1");
}

// ---------------------------------------------------------------- Task 2: eval_cpu
void SoftmaxRows::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  if (simulated_) {
    return eval_gpu(inputs, out); // Week 3: a GPU call, run on metalsim
  }
  // TODO(Task 2): allocate out, then dispatch on the stream's CPU command encoder a lambda
  // that computes the numerically stable softmax of every row (the last axis).
  throw std::runtime_error(
      "SoftmaxRows::eval_cpu is not implemented yet: see "
      "book/src/week2-03-first-extension.md, Task 2");
}

// eval_gpu (Week 3) is in src/softmax_rows_gpu.cpp.

} // namespace tiny_attn
