#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "axpby.h"
#include "metalsim/mlx_extension.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_core, m) {
  m.doc() = "metalsim example: alpha * x + beta * y, whose GPU path runs on Metal or metalsim";
  m.def(
      "axpby",
      // The stream is taken as metalsim::DeviceOrStream (a Device first): see
      // metalsim/mlx_extension.h for why not mx::StreamOrDevice.
      [](const mlx::core::array& x,
         const mlx::core::array& y,
         float alpha,
         float beta,
         int threads,
         const metalsim::DeviceOrStream& stream) {
        return metalsim_example::axpby(
            x, y, alpha, beta, threads, metalsim::to_stream_or_device(stream));
      },
      "x"_a,
      "y"_a,
      "alpha"_a,
      "beta"_a,
      nb::kw_only(),
      "threads"_a = 0,
      "stream"_a = nb::none(),
      R"(alpha * x + beta * y for two float32 arrays of one shape.

With stream=mx.gpu the Metal kernel axpby_f32 runs (on metalsim where there is no Metal
device); otherwise the CPU implementation.)");
}
