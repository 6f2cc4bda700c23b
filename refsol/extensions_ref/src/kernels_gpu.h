// Week 3: what every eval_gpu of the extension needs: the device, the library that holds the
// course's kernels, and the command encoder of a stream.
//
// On a Mac whose MLX has Metal (TINY_ATTN_METAL), these are MLX's own Metal objects and the
// library is <package>/tiny_attn.metallib, built by CMake from src/*.metal. Everywhere else
// they come from metalsim's mlx_shim.h, which offers the same calls and runs the same .metal
// sources on the CPU. eval_gpu code is written once, against the names below.
#pragma once

#include <string>

#ifdef TINY_ATTN_METAL
#include "mlx/backend/metal/device.h"
namespace tiny_attn::gpu {
namespace metal = mlx::core::metal;
} // namespace tiny_attn::gpu
#else
#include "metalsim/mlx_shim.h"
namespace tiny_attn::gpu {
namespace metal = metalsim::mlx::metal;
} // namespace tiny_attn::gpu
#endif

namespace tiny_attn::gpu {

// The folder of the extension's compiled module: tiny_attn.metallib sits next to it.
std::string extension_dir();

// The library of the course's kernels on the device of `stream`.
MTL::Library* kernel_library(metal::Device& device);

} // namespace tiny_attn::gpu
