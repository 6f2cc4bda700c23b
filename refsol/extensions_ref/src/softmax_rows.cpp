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
  // Validate everything here, while the caller is still on the Python stack: an exception
  // thrown later, inside eval_cpu, would surface far from the line that caused it.
  if (x.ndim() < 1) {
    throw std::invalid_argument("[softmax_rows] x must have at least 1 dimension, got a scalar");
  }
  if (x.dtype() != mx::float32) {
    std::ostringstream os;
    os << "[softmax_rows] x must be float32, got " << x.dtype()
       << " (convert with x.astype(mx.float32))";
    throw std::invalid_argument(os.str());
  }
  // The eval_cpu below reads rows as contiguous runs of memory. mx::contiguous is free for
  // an array that already is row-contiguous and copies otherwise (a transpose, a slice ...).
  // metalsim::place_op is mx::to_stream(s), except for a GPU call on a machine without Metal
  // (Week 3): then the primitive sits on a CPU stream and runs its GPU kernel on metalsim.
  auto [stream, simulated] = metalsim::place_op(s);
  auto input = mx::contiguous(x, /* allow_col_major = */ false, stream);
  // The output has x's shape and dtype. Nothing runs now: the array only records
  // "SoftmaxRows applied to input", to be evaluated when someone needs its values.
  return mx::array(
      x.shape(), mx::float32, std::make_shared<SoftmaxRows>(stream, simulated), {input});
}

// ---------------------------------------------------------------- Task 2: eval_cpu
void SoftmaxRows::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  if (simulated_) {
    return eval_gpu(inputs, out); // Week 3: a GPU call, run on metalsim
  }
  const mx::array& x = inputs[0];
  // eval_cpu owns the output's memory: allocate it (row-contiguous, like x).
  out.set_data(mx::allocator::malloc(out.nbytes()));

  // The work itself is queued on the stream's command encoder and runs on the stream's
  // thread, in order with every other op of that stream. The lambda captures raw pointers
  // and sizes by value; registering the arrays keeps their buffers alive until it has run.
  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_output_array(out);
  const int64_t n = x.shape(-1);
  const int64_t rows = n == 0 ? 0 : static_cast<int64_t>(x.size()) / n;
  encoder.dispatch([in = x.data<float>(), dst = out.data<float>(), rows, n]() {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = in + r * n;
      float* y = dst + r * n;
      // Subtract the row maximum first: exp of a large score would overflow to inf.
      float m = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        m = std::max(m, row[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        y[j] = std::exp(row[j] - m);
        sum += y[j];
      }
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < n; ++j) {
        y[j] *= inv;
      }
    }
  });
}

// eval_gpu (Week 3) is in src/softmax_rows_gpu.cpp.

} // namespace tiny_attn
