// The glue between an MLX extension and its GPU backend: MLX's Metal backend where the build has
// it, metalsim (the CPU simulator) everywhere else. One include gives an extension everything:
//
//   #include "metalsim/mlx_extension.h"
//
// How to write an op whose eval_gpu runs on both (an op function, a primitive, a binding):
//
//   mx::array my_op(const mx::array& x, mx::StreamOrDevice s) {
//     // ... check the arguments ...
//     auto [stream, simulated] = metalsim::place_op(s);           // instead of mx::to_stream(s)
//     auto input = mx::contiguous(x, false, stream);
//     return mx::array(x.shape(), x.dtype(), std::make_shared<MyOp>(stream, simulated), {input});
//   }
//   void MyOp::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
//     if (simulated_) return eval_gpu(in, out);                   // a GPU call without Metal
//     ...                                                         // the CPU implementation
//   }
//   void MyOp::eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
//     auto& d = gpu::device(stream().device);
//     auto* kernel = d.get_kernel("my_kernel", metalsim::extension_library(d));
//     auto& enc = gpu::get_command_encoder(stream());
//     enc.set_compute_pipeline_state(kernel);
//     ...                                                         // set_input_array, set_bytes
//     enc.dispatch_threadgroups(grid, group);
//   }
//   // The binding takes the stream as metalsim::DeviceOrStream (see below for why):
//   m.def("my_op", [](const mx::array& x, const metalsim::DeviceOrStream& stream) {
//     return my_op(x, metalsim::to_stream_or_device(stream));
//   }, "x"_a, nb::kw_only(), "stream"_a = nb::none());
//
// `gpu` is mlx::core::metal with Metal and metalsim::shim (metalsim/mlx_shim.h, the same calls)
// otherwise, so the eval_gpu above is the one source for both.
//
// Which backend a build uses is decided when it is compiled:
//   - METALSIM_FORCE defined: the simulator, on any machine (a Mac without the Metal compiler, or
//     a Mac build that wants the simulator's checks);
//   - else on macOS with <Metal/Metal.hpp> (metal-cpp, shipped with MLX's Metal build): Metal;
//   - else: the simulator.
// METALSIM_USE_METAL (defined by a build that links MLX's Metal backend and no simulator) turns a
// missing <Metal/Metal.hpp> into an #error that says what to install, instead of a link failure.
//
// Environment: METALSIM_DEFAULT_DEVICE=gpu makes default_device() and mlx_has_gpu() below answer
// as on a Mac, so that a test suite on Linux sees what a Mac sees (cpu: the other way round).
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <variant>

#include "mlx/device.h"
#include "mlx/stream.h"
#include "mlx/utils.h"

#if defined(METALSIM_USE_METAL) && !defined(METALSIM_FORCE) && !__has_include(<Metal/Metal.hpp>)
#error                                                                                             \
    "metalsim/mlx_extension.h: this build uses MLX's Metal backend (METALSIM_USE_METAL), but <Metal/Metal.hpp> (metal-cpp) is not on the include path. MLX's Metal build ships it in <mlx package>/include/metal_cpp: reinstall MLX (pip install --force-reinstall mlx) and install Apple's command line tools (xcode-select --install); or run the kernels on the simulator instead: configure the extension with -DMETALSIM_FORCE=ON and build it again."
#endif

#if defined(__APPLE__) && __has_include(<Metal/Metal.hpp>) && !defined(METALSIM_FORCE)
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"
namespace metalsim_backend = mlx::core::metal;
#define METALSIM_GPU_IS_SIMULATED 0
#else
#include "metalsim/mlx_shim.h"
namespace metalsim_backend = metalsim::shim;
#define METALSIM_GPU_IS_SIMULATED 1
#endif

// `gpu`: the backend seen through metalsim's dispatch log (defined in dispatch_log.h).
#include "metalsim/dispatch_log.h"

namespace metalsim {

// MLX's default device: the GPU on a Mac, the CPU elsewhere. METALSIM_DEFAULT_DEVICE=gpu (or cpu)
// overrides it: MLX's CPU build cannot make the GPU its default device, and this is how a Linux
// machine answers as a Mac does.
inline mlx::core::Device default_device() {
  if (const char* v = std::getenv("METALSIM_DEFAULT_DEVICE"); v && *v) {
    if (std::strcmp(v, "gpu") == 0) {
      return mlx::core::Device::gpu;
    }
    if (std::strcmp(v, "cpu") == 0) {
      return mlx::core::Device::cpu;
    }
    throw std::invalid_argument(
        std::string("METALSIM_DEFAULT_DEVICE must be gpu or cpu, got ") + v);
  }
  return mlx::core::default_device();
}

// Whether this machine's MLX has a GPU (Metal), as a Mac's does; with METALSIM_DEFAULT_DEVICE set,
// whether that names the GPU.
inline bool mlx_has_gpu() {
  const char* v = std::getenv("METALSIM_DEFAULT_DEVICE");
  return v && *v ? default_device() == mlx::core::Device::gpu
                 : mlx::core::is_available(mlx::core::Device::gpu);
}

// Where an op runs, as place_op decides it.
struct OpPlacement {
  mlx::core::Stream stream; // the stream to build the primitive on
  bool simulated;           // a GPU call scheduled on a CPU stream: eval_cpu hands it to eval_gpu
  bool on_gpu() const {
    return simulated || stream.device == mlx::core::Device::gpu;
  }
};

namespace detail {

// One line on stderr, the first time a build without Metal kernels runs a GPU call on a machine
// whose MLX has a GPU (a Mac without the Metal compiler): it runs, on the simulator, and slowly.
inline void warn_simulated_on_a_gpu_machine() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (mlx_has_gpu()) {
      std::fprintf(
          stderr,
          "[metalsim] warning: this extension was built without Apple's Metal compiler, so its "
          "GPU kernels run on metalsim, the CPU simulator: correct, but slow. For the real GPU, "
          "install Xcode and its Metal toolchain (xcodebuild -downloadComponent "
          "MetalToolchain), then rebuild the extension.\n");
    }
  });
}

} // namespace detail

// Where an op called with `s` runs: the device or stream `s` names, and with none the CPU, even
// where default_device() is the GPU.
//
// MLX's own ops take a missing stream to mean the default device, which is the GPU on a Mac and
// the CPU elsewhere. An extension's ops take it to mean the CPU on every machine: the same call
// runs the same code on a Mac and on Linux, and the GPU kernels run where a caller asks for them
// (stream=mx.gpu), never by accident.
//
// A GPU call in a build without Metal (Linux, or METALSIM_FORCE) gets the CPU stream and
// simulated = true: the primitive's eval_cpu then hands over to eval_gpu, which runs the very same
// Metal kernels on metalsim.
inline OpPlacement place_op(const mlx::core::StreamOrDevice& s) {
  mlx::core::Device device = mlx::core::Device::cpu;
  if (const auto* st = std::get_if<mlx::core::Stream>(&s)) {
    device = st->device;
  } else if (const auto* dv = std::get_if<mlx::core::Device>(&s)) {
    device = *dv;
  }
  if (device == mlx::core::Device::gpu && METALSIM_GPU_IS_SIMULATED) {
    detail::warn_simulated_on_a_gpu_machine();
    return {mlx::core::default_stream(mlx::core::Device::cpu), true};
  }
  if (std::holds_alternative<std::monostate>(s)) {
    return {mlx::core::default_stream(mlx::core::Device::cpu), false};
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
// extensions apart in MLX's library cache, which is keyed by name.
inline MTL::Library* extension_library(::gpu::Device& d) {
  const std::string dir = module_dir();
  const auto slash = dir.find_last_of('/');
  return d.get_library(slash == std::string::npos ? dir : dir.substr(slash + 1), dir);
}

} // namespace

} // namespace metalsim
