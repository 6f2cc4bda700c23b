// One include for an extension's eval_gpu: real Metal where MLX has it, the simulator elsewhere.
//
//   #include "metalsim/gpu_backend.h"
//
//   void MyOp::eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
//     auto& s = stream();
//     auto& d = gpu::device(s.device);
//     auto* kernel = d.get_kernel("my_kernel", d.get_library("my_ext", binary_dir()));
//     auto& enc = gpu::get_command_encoder(s);
//     ...  // set_input_array / set_output_array / set_bytes / dispatch_threadgroups
//   }
//
// `gpu` is mlx::core::metal on macOS with Metal, metalsim::shim otherwise (configure with
// -DMETALSIM_FORCE=ON, i.e. define METALSIM_FORCE, to use the simulator on a Mac as well); on
// both, its device and command encoder record every dispatch (metalsim/dispatch_log.h).
// A build that defines METALSIM_USE_METAL must find <Metal/Metal.hpp>, or it stops with an
// #error saying what to install.
//
// When to use the simulator: metalsim::use_simulator(s) is true when the caller asked for the
// GPU (mx.gpu, a GPU stream, or a GPU default device) and this build runs GPU work on the
// simulator, or when the environment sets TINY_ATTN_METALSIM=1 in such a build (then every call
// goes through the simulator, the CPU ones included). The op then builds its primitive on the
// CPU stream (metalsim::simulator_stream()) with a flag, and eval_cpu calls eval_gpu:
//
//   mx::array my_op(const mx::array& x, mx::StreamOrDevice s) {
//     bool sim = metalsim::use_simulator(s);
//     auto stream = sim ? metalsim::simulator_stream() : mx::to_stream(s);
//     return mx::array(x.shape(), x.dtype(), std::make_shared<MyOp>(stream, sim), {x});
//   }
//   void MyOp::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
//     if (on_simulator_) return eval_gpu(in, out);
//     ...  // the CPU implementation
//   }
#pragma once

#include <cstdlib>
#include <cstring>
#include <variant>

#include "mlx/device.h"
#include "mlx/stream.h"
#include "mlx/utils.h"

// METALSIM_USE_METAL: the build links MLX's Metal backend and no simulator (cmake/
// tiny_attn_extension.cmake defines it on a Mac whose MLX has Metal), so a missing metal-cpp
// is an error here rather than a fallback to the simulator that fails at link time.
#if defined(METALSIM_USE_METAL) && !defined(METALSIM_FORCE) && !__has_include(<Metal/Metal.hpp>)
#error                                                                                             \
    "metalsim/gpu_backend.h: this build uses MLX's Metal backend (METALSIM_USE_METAL), but <Metal/Metal.hpp> (metal-cpp) is not on the include path. MLX's Metal build ships it in <mlx package>/include/metal_cpp: reinstall MLX (pip install --force-reinstall mlx) and install Apple's command line tools (xcode-select --install); or run the kernels on the simulator instead: cmake -DMETALSIM_FORCE=ON build/tiny_attn_ext (build/tiny_attn_ext_ref for the reference), then pdm run build-ext (build-ext-ref) again."
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

// True if `s` asks for the GPU: mx.gpu, a GPU stream, or nothing while the default device is GPU.
inline bool wants_gpu(const mlx::core::StreamOrDevice& s) {
  if (auto* st = std::get_if<mlx::core::Stream>(&s))
    return st->device == mlx::core::Device::gpu;
  if (auto* dv = std::get_if<mlx::core::Device>(&s))
    return *dv == mlx::core::Device::gpu;
  return mlx::core::default_device() == mlx::core::Device::gpu;
}

// True if TINY_ATTN_METALSIM=1 asks to run every call on the simulator.
inline bool simulator_forced() {
  const char* v = std::getenv("TINY_ATTN_METALSIM");
  return v && std::strcmp(v, "1") == 0;
}

// Whether an op called with `s` runs its GPU kernels on the simulator (see the top of the file).
inline bool use_simulator(const mlx::core::StreamOrDevice& s) {
#if METALSIM_GPU_IS_SIMULATED
  return wants_gpu(s) || simulator_forced();
#else
  (void)s;
  return false;
#endif
}

// The stream simulated GPU work is scheduled on: the default CPU stream.
inline mlx::core::Stream simulator_stream() {
  return mlx::core::default_stream(mlx::core::Device::cpu);
}

} // namespace metalsim
