// Week 2, day 3: softmax_rows, the op (graph building) and its CPU evaluation.
#include "src/softmax_rows.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "mlx/backend/cpu/encoder.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: the op
mx::array softmax_rows(const mx::array& x, mx::StreamOrDevice s) {
  // TODO(Task 1): validate x (at least 1 dimension, float32: throw std::invalid_argument
  // with a message naming x and what was expected), make it row-contiguous with
  // mx::contiguous, and return the lazy array built around a SoftmaxRows primitive.
  throw std::runtime_error(
      "softmax_rows is not implemented yet: see book/src/week2-03-first-extension.md, Task 1");
}

// ---------------------------------------------------------------- Task 2: eval_cpu
void SoftmaxRows::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  // TODO(Task 2): allocate out, then dispatch on the stream's CPU command encoder a lambda
  // that computes the numerically stable softmax of every row (the last axis).
  throw std::runtime_error(
      "SoftmaxRows::eval_cpu is not implemented yet: see "
      "book/src/week2-03-first-extension.md, Task 2");
}

// ---------------------------------------------------------------- GPU: Week 3
void SoftmaxRows::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  throw std::runtime_error(
      "[softmax_rows] no GPU path in Week 2: Week 3 gives this primitive its Metal kernel");
}

} // namespace tiny_attn
