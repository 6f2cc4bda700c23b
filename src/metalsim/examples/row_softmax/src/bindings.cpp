#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "metalsim/mlx_extension.h"
#include "row_softmax.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "metalsim example: a row softmax whose GPU path runs on Metal or on metalsim";
  m.def(
      "row_softmax",
      // The stream argument is taken as metalsim::DeviceOrStream (Device first): see
      // metalsim/mlx_extension.h for why not mx::StreamOrDevice.
      [](const mlx::core::array& x, int threads, const metalsim::DeviceOrStream& stream) {
        return metalsim_example::row_softmax(x, threads, metalsim::to_stream_or_device(stream));
      },
      "x"_a,
      nb::kw_only(),
      "threads"_a = 0,
      "stream"_a = nb::none(),
      R"(Softmax over the last axis of a 2-D float32 array.

With stream=mx.gpu the Metal kernel row_softmax_f32 runs (on the simulator where there is no
Metal device); otherwise the CPU implementation.)");
}
