// The glue between an MLX extension's ops and its GPU backend, real Metal or metalsim: where an
// op runs, how its Python functions take a stream, and where its kernel library is.
//
//   #include "metalsim/mlx_extension.h"
//
//   mx::array my_op(const mx::array& x, mx::StreamOrDevice s) {
//     auto [stream, simulated] = metalsim::place_op(s);          // instead of mx::to_stream(s)
//     return mx::array(x.shape(), x.dtype(), std::make_shared<MyOp>(stream, simulated), {x});
//   }
//   void MyOp::eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
//     auto& d = gpu::device(stream().device);
//     auto* kernel = d.get_kernel("my_kernel", metalsim::extension_library(d));
//     auto& enc = gpu::get_command_encoder(stream());
//     ...
//   }
//   // bindings: take the stream as metalsim::DeviceOrStream, pass to_stream_or_device(stream)
//
// Header only; on a Mac with Metal nothing here touches the simulator (see gpu_backend.h).
#pragma once

#include <dlfcn.h>

#include <stdexcept>
#include <string>
#include <variant>

#include "metalsim/gpu_backend.h"

namespace metalsim {

// Where an op runs for the stream or device `s` its caller passed. With Metal: mx::to_stream(s),
// simulated = false. Without Metal, a call that asks for the GPU (stream=mx.gpu) gets a CPU
// stream and simulated = true: the primitive's eval_cpu then hands over to eval_gpu, which runs
// the very same Metal kernels on metalsim.
struct OpPlacement {
  mlx::core::Stream stream;
  bool simulated;
  bool on_gpu() const {
    return simulated || stream.device == mlx::core::Device::gpu;
  }
};

inline OpPlacement place_op(const mlx::core::StreamOrDevice& s) {
  if (use_simulator(s)) {
    return {simulator_stream(), true};
  }
  return {mlx::core::to_stream(s), false};
}

// The type to give the `stream` argument of an op's Python function: Device before Stream.
// With mx::StreamOrDevice, nanobind tries Stream first, and MLX's implicit Device -> Stream
// conversion asks for a GPU stream, which fails without a GPU backend before place_op can pick
// the simulator.
using DeviceOrStream = std::variant<std::monostate, mlx::core::Device, mlx::core::Stream>;

inline mlx::core::StreamOrDevice to_stream_or_device(const DeviceOrStream& s) {
  if (const auto* d = std::get_if<mlx::core::Device>(&s)) {
    return *d;
  }
  if (const auto* st = std::get_if<mlx::core::Stream>(&s)) {
    return *st;
  }
  return {};
}

// Internal linkage on purpose: every translation unit gets its own copy, so the address below
// always lies inside the module that includes this header (MLX's own current_binary_dir() would
// name the folder of libmlx instead).
namespace {

// The folder of the compiled module (the .so of the extension) that calls it.
inline std::string module_dir() {
  static const char anchor = 0;
  Dl_info info;
  if (dladdr(&anchor, &info) == 0 || info.dli_fname == nullptr) {
    throw std::runtime_error("[metalsim] cannot locate the extension's module file");
  }
  const std::string path = info.dli_fname;
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// The kernels of the calling extension: <dir>/<name>.metallib on Metal, <dir>/<name>.metalsim
// (metalsim's list of .metal sources) elsewhere, where <dir> is module_dir(), the extension's
// package folder, and <name> that folder's name. Naming the library after its package keeps two
// extensions (a course's and its reference) apart in MLX's library cache, which is keyed by name.
inline MTL::Library* extension_library(::gpu::Device& d) {
  const std::string dir = module_dir();
  const auto slash = dir.find_last_of('/');
  return d.get_library(slash == std::string::npos ? dir : dir.substr(slash + 1), dir);
}

} // namespace

} // namespace metalsim
