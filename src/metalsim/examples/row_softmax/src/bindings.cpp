#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "row_softmax.h"

namespace nb = nanobind;
using namespace nb::literals;

// Take the stream argument as Device-or-Stream (Device first). With mx::StreamOrDevice directly,
// nanobind tries Stream first and MLX's implicit Device -> Stream conversion asks for a GPU
// stream, which fails on machines without a GPU backend before the op can pick the simulator.
using DeviceOrStream = std::variant<std::monostate, mlx::core::Device, mlx::core::Stream>;

static mlx::core::StreamOrDevice to_stream_or_device(const DeviceOrStream& s) {
  if (auto* d = std::get_if<mlx::core::Device>(&s)) return *d;
  if (auto* st = std::get_if<mlx::core::Stream>(&s)) return *st;
  return {};
}

NB_MODULE(_ext, m) {
  m.doc() = "metalsim example: a row softmax whose GPU path runs on Metal or on metalsim";
  m.def(
      "row_softmax",
      [](const mlx::core::array& x, int threads, const DeviceOrStream& stream) {
        return metalsim_example::row_softmax(x, threads, to_stream_or_device(stream));
      },
      "x"_a, nb::kw_only(), "threads"_a = 0, "stream"_a = nb::none(),
        R"(Softmax over the last axis of a 2-D float32 array.

With stream=mx.gpu the Metal kernel row_softmax_f32 runs (on the simulator where there is no
Metal device); otherwise the CPU implementation.)");
}
