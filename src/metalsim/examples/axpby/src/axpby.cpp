// metalsim's example op: the op (checks, graph node), eval_cpu and eval_gpu side by side.
#include "axpby.h"

#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"

namespace metalsim_example {

mx::array axpby(
    const mx::array& x,
    const mx::array& y,
    float alpha,
    float beta,
    int threads,
    mx::StreamOrDevice s) {
  for (const auto& [name, a] : {std::pair{"x", &x}, std::pair{"y", &y}}) {
    if (a->dtype() != mx::float32) {
      std::ostringstream os;
      os << "[axpby] " << name << " must be float32, got " << a->dtype();
      throw std::invalid_argument(os.str());
    }
  }
  if (x.shape() != y.shape()) {
    throw std::invalid_argument("[axpby] y must have the shape of x");
  }
  if (x.size() > std::numeric_limits<uint32_t>::max()) {
    throw std::invalid_argument("[axpby] x has more than 2^32 - 1 elements");
  }
  if (threads < 0) {
    throw std::invalid_argument("[axpby] threads must be >= 0 (0: the default, 256)");
  }
  auto [stream, simulated] = metalsim::place_op(s);
  auto xc = mx::contiguous(x, /* allow_col_major = */ false, stream);
  auto yc = mx::contiguous(y, /* allow_col_major = */ false, stream);
  return mx::array(
      x.shape(),
      mx::float32,
      std::make_shared<Axpby>(stream, simulated, alpha, beta, threads),
      {xc, yc});
}

void Axpby::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  if (simulated_) {
    return eval_gpu(inputs, out);
  }
  const mx::array& x = inputs[0];
  const mx::array& y = inputs[1];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_input_array(y);
  enc.set_output_array(out);
  enc.dispatch([xp = x.data<float>(),
                yp = y.data<float>(),
                op = out.data<float>(),
                n = out.size(),
                a = alpha_,
                b = beta_] {
    for (size_t i = 0; i < n; ++i) {
      op[i] = a * xp[i] + b * yp[i];
    }
  });
}

// The same code on a Mac (Metal) and elsewhere (metalsim).
void Axpby::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  const uint32_t n = static_cast<uint32_t>(out.size());
  if (n == 0) {
    return; // nothing to launch (Metal rejects a grid with a zero extent)
  }
  const size_t threads = threads_ > 0 ? size_t(threads_) : 256;
  auto& d = gpu::device(stream().device);
  auto* kernel = d.get_kernel("axpby_f32", metalsim::extension_library(d));
  auto& enc = gpu::get_command_encoder(stream());
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(inputs[0], 0);
  enc.set_input_array(inputs[1], 1);
  enc.set_output_array(out, 2);
  enc.set_bytes(alpha_, 3);
  enc.set_bytes(beta_, 4);
  enc.set_bytes(n, 5);
  enc.dispatch_threadgroups(MTL::Size((n + threads - 1) / threads, 1, 1), MTL::Size(threads, 1, 1));
}

} // namespace metalsim_example
