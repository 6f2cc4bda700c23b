#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "row_softmax.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "metalsim example: a row softmax whose GPU path runs on Metal or on metalsim";
  m.def("row_softmax", &metalsim_example::row_softmax, "x"_a, nb::kw_only(), "stream"_a = nb::none(),
        R"(Softmax over the last axis of a 2-D float32 array.

With stream=mx.gpu the Metal kernel row_softmax_f32 runs (on the simulator where there is no
Metal device); otherwise the CPU implementation.)");
}
