// What an extension's eval_gpu dispatched: the kernel by name, the grid and the threadgroup size.
//
// The glue header names its backend `metalsim_backend` (MLX's metal::Device and CommandEncoder
// on a Mac with Metal, metalsim's shim elsewhere) and includes this file, which defines the
// `gpu` namespace an eval_gpu uses: the backend, with `gpu::device(...)` and
// `gpu::get_command_encoder(...)` seen through the two thin wrappers below. The same code
// records every dispatch on Metal and on metalsim, so a test can ask which kernel an op ran
// without looking at its source or timing it.
//
//   metalsim::dispatch_log()    every dispatch since the last clear_dispatch_log(), in order
//
// The log belongs to the module that includes this header (an extension's .so): the course's
// extension and its reference keep one each.
#pragma once

#include <array>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mlx/array.h"
#include "mlx/device.h"
#include "mlx/stream.h"

namespace metalsim {

struct DispatchRecord {
  std::string kernel;                // the name given to get_kernel
  std::array<size_t, 3> grid;        // threadgroups (dispatch_threadgroups) or threads
  std::array<size_t, 3> threadgroup; // threads per threadgroup
  bool grid_is_threads;              // dispatch_threads: `grid` counts threads
};

namespace detail {

inline std::mutex& log_mutex() {
  static std::mutex mu;
  return mu;
}
inline std::vector<DispatchRecord>& log_entries() {
  static std::vector<DispatchRecord> entries;
  return entries;
}
// The name each pipeline state was created from (real Metal pipelines carry no such name).
inline std::unordered_map<const void*, std::string>& kernel_names() {
  static std::unordered_map<const void*, std::string> names;
  return names;
}

} // namespace detail

// Every dispatch recorded since the last clear, oldest first.
inline std::vector<DispatchRecord> dispatch_log() {
  std::lock_guard<std::mutex> lk(detail::log_mutex());
  return detail::log_entries();
}

inline void clear_dispatch_log() {
  std::lock_guard<std::mutex> lk(detail::log_mutex());
  detail::log_entries().clear();
}

// The backend's device, with get_kernel remembering which name made which pipeline.
template <class Dev> class RecordingDevice {
 public:
  explicit RecordingDevice(Dev* d) : d_(d) {}

  template <class... A> auto get_library(A&&... args) {
    return d_->get_library(std::forward<A>(args)...);
  }
  template <class... A> auto get_kernel(const std::string& name, A&&... args) {
    auto* kernel = d_->get_kernel(name, std::forward<A>(args)...);
    std::lock_guard<std::mutex> lk(detail::log_mutex());
    detail::kernel_names()[kernel] = name;
    return kernel;
  }
  Dev& backend() {
    return *d_;
  }

 private:
  Dev* d_;
};

// The backend's command encoder, with every dispatch written to the log before it is encoded.
template <class Enc> class RecordingEncoder {
 public:
  void bind(Enc* e) {
    e_ = e;
  }

  template <class K> void set_compute_pipeline_state(K* kernel) {
    kernel_ = kernel;
    e_->set_compute_pipeline_state(kernel);
  }
  template <class Size> void dispatch_threadgroups(Size grid, Size group) {
    record(grid, group, false);
    e_->dispatch_threadgroups(grid, group);
  }
  template <class Size> void dispatch_threads(Size grid, Size group) {
    record(grid, group, true);
    e_->dispatch_threads(grid, group);
  }

  // Everything else goes straight through.
  template <class... A> void set_input_array(A&&... args) {
    e_->set_input_array(std::forward<A>(args)...);
  }
  template <class... A> void set_output_array(A&&... args) {
    e_->set_output_array(std::forward<A>(args)...);
  }
  template <class... A> void register_output_array(A&&... args) {
    e_->register_output_array(std::forward<A>(args)...);
  }
  template <class... A> void set_bytes(A&&... args) {
    e_->set_bytes(std::forward<A>(args)...);
  }
  template <class... A> void set_vector_bytes(A&&... args) {
    e_->set_vector_bytes(std::forward<A>(args)...);
  }
  template <class... A> void set_threadgroup_memory_length(A&&... args) {
    e_->set_threadgroup_memory_length(std::forward<A>(args)...);
  }
  void add_temporary(mlx::core::array a) {
    e_->add_temporary(std::move(a));
  }
  void add_temporaries(std::vector<mlx::core::array> arrays) {
    e_->add_temporaries(std::move(arrays));
  }
  void barrier() {
    e_->barrier();
  }
  Enc& backend() {
    return *e_;
  }

 private:
  template <class Size> void record(const Size& grid, const Size& group, bool grid_is_threads) {
    std::lock_guard<std::mutex> lk(detail::log_mutex());
    auto it = detail::kernel_names().find(kernel_);
    detail::log_entries().push_back(
        DispatchRecord{
            it == detail::kernel_names().end() ? std::string("?") : it->second,
            {size_t(grid.width), size_t(grid.height), size_t(grid.depth)},
            {size_t(group.width), size_t(group.height), size_t(group.depth)},
            grid_is_threads});
  }

  Enc* e_ = nullptr;
  const void* kernel_ = nullptr;
};

} // namespace metalsim

// The `gpu` namespace an eval_gpu uses. The glue header that includes this file first names
// the backend `metalsim_backend` (mlx::core::metal with Metal, metalsim::shim without).
namespace gpu {
using namespace metalsim_backend;
using Device = metalsim::RecordingDevice<metalsim_backend::Device>;
using CommandEncoder = metalsim::RecordingEncoder<metalsim_backend::CommandEncoder>;

inline Device& device(mlx::core::Device d) {
  thread_local Device recording(&metalsim_backend::device(d));
  return recording;
}

inline CommandEncoder& get_command_encoder(mlx::core::Stream s) {
  thread_local std::unordered_map<int, CommandEncoder> encoders;
  CommandEncoder& recording = encoders[s.index];
  recording.bind(&metalsim_backend::get_command_encoder(s)); // MLX may replace a stream's encoder
  return recording;
}
} // namespace gpu
