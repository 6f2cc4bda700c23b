// SPOILER for Week 3, Day 1 of the course (book/src/week3-01-gpu-model.md): this example
// solves that day in another form. Open it only after your own kernel passes the day's tests.
#include "row_softmax.h"

#include <dlfcn.h>

#include <cmath>
#include <filesystem>
#include <stdexcept>

#include "metalsim/mlx_extension.h"
#include "mlx/backend/cpu/encoder.h"

namespace metalsim_example {

// The folder of this extension's binary: the kernel library (.metallib on a Mac, .metalsim
// manifest elsewhere) sits next to it.
static std::string binary_dir() {
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&binary_dir), &info))
    throw std::runtime_error("row_softmax: cannot locate the extension binary");
  return std::filesystem::path(info.dli_fname).parent_path().string();
}

mx::array row_softmax(const mx::array& x, int threads, mx::StreamOrDevice s) {
  if (x.ndim() != 2)
    throw std::invalid_argument("row_softmax: x must be 2-D (rows, cols)");
  if (x.dtype() != mx::float32)
    throw std::invalid_argument("row_softmax: x must be float32");
  auto [stream, sim] = metalsim::place_op(s);
  mx::array xc = mx::contiguous(x, false, stream);
  return mx::array(
      x.shape(), mx::float32, std::make_shared<RowSoftmax>(stream, sim, threads), {xc});
}

void RowSoftmax::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  if (on_simulator_)
    return eval_gpu(inputs, outputs);
  const mx::array& x = inputs[0];
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_output_array(out);
  enc.dispatch(
      [xp = x.data<float>(), op = out.data<float>(), rows = x.shape(0), cols = x.shape(1)] {
        for (int r = 0; r < rows; ++r) {
          const float* xr = xp + size_t(r) * cols;
          float m = -INFINITY, l = 0.0f;
          for (int j = 0; j < cols; ++j)
            m = std::fmax(m, xr[j]);
          for (int j = 0; j < cols; ++j)
            l += std::exp(xr[j] - m);
          for (int j = 0; j < cols; ++j)
            op[size_t(r) * cols + j] = std::exp(xr[j] - m) / l;
        }
      });
}

// The same code on a Mac (Metal) and elsewhere (metalsim).
void RowSoftmax::eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const mx::array& x = inputs[0];
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& s = stream();
  auto& d = gpu::device(s.device);
  auto* kernel =
      d.get_kernel("row_softmax_f32", d.get_library("metalsim_row_softmax", binary_dir()));
  auto& enc = gpu::get_command_encoder(s);
  enc.set_compute_pipeline_state(kernel);
  int n_cols = x.shape(1);
  size_t n_threads =
      threads_ > 0 ? size_t(threads_) : std::min<size_t>(1024, (size_t(n_cols) + 31) / 32 * 32);
  enc.set_input_array(x, 0);
  enc.set_output_array(out, 1);
  enc.set_bytes(n_cols, 2);
  enc.set_threadgroup_memory_length(32 * sizeof(float), 0);
  enc.dispatch_threadgroups(MTL::Size(x.shape(0), 1, 1), MTL::Size(n_threads, 1, 1));
}

} // namespace metalsim_example
