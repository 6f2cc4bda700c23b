// metalsim._core: the Python face of the host library (wrapped by metalsim/__init__.py).
#include <nanobind/nanobind.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "metalsim/host.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_core, m) {
  m.doc() = "metalsim core: compile .metal sources and run compute dispatches on the CPU";

  auto base = nb::exception<metalsim::Error>(m, "Error", PyExc_RuntimeError);
  nb::exception<metalsim::CompileError>(m, "CompileError", base);
  nb::exception<metalsim::KernelNotFoundError>(m, "KernelNotFoundError", base);
  nb::exception<metalsim::BindingError>(m, "BindingError", base);
  nb::exception<metalsim::LimitError>(m, "LimitError", base);
  nb::exception<metalsim::DeadlockError>(m, "DeadlockError", base);
  nb::exception<metalsim::DispatchError>(m, "DispatchError", base);
  nb::exception<metalsim::RaceError>(m, "RaceError", base);
  nb::exception<metalsim::MemoryAccessError>(m, "MemoryAccessError", base);
  nb::exception<metalsim::TimeoutError>(m, "TimeoutError", base);
  nb::exception<metalsim::InterruptedError>(m, "InterruptedError", base);

  // The element types' codes by name ({"float32": 12, ...}), from abi.h, where they are
  // written: metalsim/__init__.py maps NumPy's dtypes with it.
  nb::dict dtype_codes;
  for (int32_t code = 0; code < METALSIM_DTYPE_COUNT; ++code)
    dtype_codes[metalsim_dtype_name(code)] = code;
  m.attr("dtype_codes") = dtype_codes;

  nb::class_<metalsim::Pipeline>(m, "Pipeline").def_prop_ro("kernel", &metalsim::Pipeline::kernel);

  nb::class_<metalsim::Library>(m, "Library")
      .def_static(
          "from_files",
          &metalsim::Library::from_files,
          "paths"_a,
          "include_dirs"_a,
          nb::call_guard<nb::gil_scoped_release>())
      .def_static(
          "from_source",
          &metalsim::Library::from_source,
          "source"_a,
          "name"_a,
          "include_dirs"_a,
          nb::call_guard<nb::gil_scoped_release>())
      .def_static(
          "from_manifest",
          &metalsim::Library::from_manifest,
          "path"_a,
          nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("kernel_names", &metalsim::Library::kernel_names)
      .def_prop_ro("path", &metalsim::Library::path)
      .def_prop_ro("warnings", &metalsim::Library::warnings)
      // function constants: (index, dtype code, int value, float value)
      .def_prop_ro(
          "function_constants",
          [](const metalsim::Library& lib) {
            std::vector<std::tuple<unsigned, std::string, int>> r;
            for (auto& c : lib.function_constants())
              r.emplace_back(c.index, c.name, int(c.dtype));
            return r;
          })
      .def(
          "pipeline",
          [](const metalsim::Library& lib,
             const std::string& kernel,
             const std::vector<std::tuple<unsigned, int, int64_t, double>>& constants) {
            metalsim::FunctionConstants c;
            for (auto& [index, dtype, i, f] : constants)
              c[index] = metalsim::ConstantValue{metalsim::Dtype(dtype), i, f};
            return lib.pipeline(kernel, c);
          },
          "kernel"_a,
          "constants"_a)
      // buffers: (index, address, size, dtype code, is_bytes, read_only, bytes before address);
      // threadgroup: (index, length)
      .def(
          "dispatch",
          [](const metalsim::Library& lib,
             const std::string& kernel,
             std::tuple<uint64_t, uint64_t, uint64_t> grid,
             std::tuple<uint64_t, uint64_t, uint64_t> group,
             const std::vector<std::tuple<int, uintptr_t, uint64_t, int, bool, bool, uint64_t>>&
                 buffers,
             const std::vector<std::tuple<int, uint64_t>>& threadgroup,
             bool grid_is_threads,
             int workers,
             const metalsim::Pipeline* pipeline) {
            metalsim::Bindings b;
            for (auto& [idx, addr, size, dtype, is_bytes, read_only, before] : buffers) {
              if (is_bytes)
                b.bytes(idx, reinterpret_cast<void*>(addr), size, metalsim::Dtype(dtype));
              else
                b.buffer(
                    idx,
                    reinterpret_cast<void*>(addr),
                    size,
                    metalsim::Dtype(dtype),
                    before,
                    read_only);
            }
            for (auto& [idx, len] : threadgroup)
              b.threadgroup(idx, len);
            try {
              nb::gil_scoped_release release;
              lib.dispatch(
                  kernel,
                  {std::get<0>(grid), std::get<1>(grid), std::get<2>(grid)},
                  {std::get<0>(group), std::get<1>(group), std::get<2>(group)},
                  b,
                  grid_is_threads,
                  workers,
                  pipeline ? pipeline->constants() : metalsim::FunctionConstants{});
            } catch (const metalsim::InterruptedError&) {
              // Ctrl-C stopped the dispatch: Python's handler raises KeyboardInterrupt.
              if (PyErr_CheckSignals() != 0)
                throw nb::python_error();
              throw;
            }
          },
          "kernel"_a,
          "grid"_a,
          "group"_a,
          "buffers"_a,
          "threadgroup"_a,
          "grid_is_threads"_a,
          "workers"_a,
          "pipeline"_a.none() = nb::none());

  m.def("cache_dir", &metalsim::cache_dir);
  m.def("runtime_dir", &metalsim::runtime_dir);
  m.def("compiler", &metalsim::compiler);
  m.def("compiler_runs", &metalsim::compiler_runs);
}
