// Week 3: what every GPU path of the extension shares.
//
// `gpu::` is MLX's Metal backend (mlx::core::metal) on a Mac whose MLX has Metal, and
// metalsim's stand-in with the same calls (metalsim::shim) everywhere else; see
// src/metalsim/include/metalsim/gpu_backend.h. eval_gpu is written once, against `gpu::`.
#pragma once

#include <string>
#include <variant>

#include "metalsim/gpu_backend.h"
#include "mlx/array.h"
#include "mlx/stream.h"
#include "mlx/utils.h"

namespace mx = mlx::core;

namespace tiny_attn {

// Where an op of the extension runs, for the stream or device `s` its caller passed.
// With Metal: mx::to_stream(s), simulated = false. Without Metal, a call that asks for the
// GPU (stream=mx.gpu) gets a CPU stream and simulated = true: the primitive's eval_cpu then
// hands over to eval_gpu, which runs the very same Metal kernels on metalsim.
struct OpPlacement {
  mx::Stream stream;
  bool simulated;
  bool on_gpu() const {
    return simulated || stream.device == mx::Device::gpu;
  }
};
OpPlacement place_op(mx::StreamOrDevice s);

// The type of the `stream` argument of the Python functions: Device before Stream. With
// mx::StreamOrDevice, nanobind tries Stream first, and MLX's implicit Device -> Stream conversion
// asks for a GPU stream, which fails without a GPU backend before place_op can pick metalsim.
using DeviceOrStream = std::variant<std::monostate, mx::Device, mx::Stream>;
inline mx::StreamOrDevice to_stream_or_device(const DeviceOrStream& s) {
  if (const auto* d = std::get_if<mx::Device>(&s)) {
    return *d;
  }
  if (const auto* st = std::get_if<mx::Stream>(&s)) {
    return *st;
  }
  return {};
}

// The library of the course's kernels (src/*.metal), built next to the extension's module:
// tiny_attn.metallib on Metal, tiny_attn.metalsim (the simulator's manifest) elsewhere.
MTL::Library* kernel_library(mx::Device device);

// The folder of the extension's compiled module.
std::string extension_dir();

} // namespace tiny_attn
