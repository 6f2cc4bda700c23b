// metalsim's stand-in for MLX's Metal backend API (mlx/backend/metal/device.h), for machines
// without Metal. The subset an eval_gpu uses has the same names and meaning, so one dispatch
// source compiles against either:
//
//   auto& d = gpu::device(s.device);
//   auto* lib = d.get_library("my_ext", current_binary_dir());          // <dir>/<name>.metalsim
//   auto* kernel = d.get_kernel("row_softmax_f32", lib);                 // throws if unknown
//   auto& enc = gpu::get_command_encoder(s);
//   enc.set_compute_pipeline_state(kernel);
//   enc.set_input_array(x, 0);
//   enc.set_output_array(out, 1);
//   enc.set_bytes(n_cols, 2);
//   enc.set_threadgroup_memory_length(32 * sizeof(float), 0);
//   enc.dispatch_threadgroups(MTL::Size(n_rows, 1, 1), MTL::Size(256, 1, 1));
//
// Where Metal would encode the dispatch into a command buffer, the shim enqueues it on MLX's CPU
// command encoder of the stream (mlx::core::cpu::get_command_encoder(s).dispatch), capturing the
// arrays, so it runs in stream order once the inputs are computed. A failure in the simulator
// (deadlock, bad binding, ...) is raised by MLX when the result is evaluated (a RuntimeError in
// Python whose message names the kernel).
//
// Bindings last for one dispatch: bind every buffer before each dispatch_* call (as MLX does).
// Include it through <metalsim/mlx_extension.h>, which picks real Metal where it exists.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "metalsim/host.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/device.h"
#include "mlx/stream.h"

namespace MTL {

// metal-cpp's MTL::Size: a grid or threadgroup extent.
struct Size {
  size_t width = 1, height = 1, depth = 1;
  Size() = default;
  Size(size_t w, size_t h = 1, size_t d = 1) : width(w), height(h), depth(d) {}
  static Size Make(size_t w, size_t h, size_t d) {
    return Size(w, h, d);
  }
};

// A kernel of a library (what Device::get_kernel returns).
class ComputePipelineState {
 public:
  ComputePipelineState(std::shared_ptr<metalsim::Library> lib, std::string name)
      : lib_(std::move(lib)), name_(std::move(name)) {}
  size_t maxTotalThreadsPerThreadgroup() const {
    return 1024;
  }
  size_t threadExecutionWidth() const {
    return 32;
  }
  const std::string& name() const {
    return name_;
  }
  const std::shared_ptr<metalsim::Library>& library() const {
    return lib_;
  }

 private:
  std::shared_ptr<metalsim::Library> lib_;
  std::string name_;
};

class Library {
 public:
  explicit Library(std::shared_ptr<metalsim::Library> lib) : lib_(std::move(lib)) {}
  const std::shared_ptr<metalsim::Library>& get() const {
    return lib_;
  }

 private:
  std::shared_ptr<metalsim::Library> lib_;
};

} // namespace MTL

namespace metalsim::shim {

inline Dtype to_dtype(const mlx::core::Dtype& t) {
  using V = mlx::core::Dtype::Val;
  switch (t.val()) {
  case V::bool_:
    return Dtype::bool_;
  case V::uint8:
    return Dtype::uint8;
  case V::uint16:
    return Dtype::uint16;
  case V::uint32:
    return Dtype::uint32;
  case V::uint64:
    return Dtype::uint64;
  case V::int8:
    return Dtype::int8;
  case V::int16:
    return Dtype::int16;
  case V::int32:
    return Dtype::int32;
  case V::int64:
    return Dtype::int64;
  case V::float16:
    return Dtype::float16;
  case V::bfloat16:
    return Dtype::bfloat16;
  case V::float32:
    return Dtype::float32;
  case V::float64:
    return Dtype::float64;
  case V::complex64:
    return Dtype::complex64;
  default:
    return Dtype::untyped;
  }
}

template <class T> constexpr Dtype host_dtype() {
  if constexpr (std::is_same_v<T, mlx::core::float16_t>)
    return Dtype::float16;
  else if constexpr (std::is_same_v<T, mlx::core::bfloat16_t>)
    return Dtype::bfloat16;
  else
    return dtype_of<T>();
}

class CommandEncoder {
 public:
  explicit CommandEncoder(mlx::core::Stream s) : stream_(s) {}
  CommandEncoder(const CommandEncoder&) = delete;
  CommandEncoder& operator=(const CommandEncoder&) = delete;

  void set_compute_pipeline_state(MTL::ComputePipelineState* kernel) {
    kernel_ = kernel;
  }

  void set_input_array(const mlx::core::array& a, int idx, int64_t offset = 0) {
    args_.insert_or_assign(idx, Arg{true, a, offset, {}, Dtype::untyped});
  }
  void set_output_array(mlx::core::array& a, int idx, int64_t offset = 0) {
    args_.insert_or_assign(idx, Arg{true, a, offset, {}, Dtype::untyped});
  }
  void register_output_array(const mlx::core::array&) {}

  template <typename T> void set_bytes(const T& v, int idx) {
    set_raw_bytes(&v, sizeof(T), host_dtype<T>(), idx);
  }
  template <typename T> void set_bytes(const T* v, int n, int idx) {
    set_raw_bytes(v, size_t(n) * sizeof(T), host_dtype<T>(), idx);
  }
  template <typename Vec> void set_vector_bytes(const Vec& vec, size_t nelems, int idx) {
    using T = typename Vec::value_type;
    if (nelems > 0) {
      set_raw_bytes(vec.data(), nelems * sizeof(T), host_dtype<T>(), idx);
    } else {
      T val{};
      set_raw_bytes(&val, sizeof(T), host_dtype<T>(), idx);
    }
  }
  template <typename Vec> void set_vector_bytes(const Vec& vec, int idx) {
    set_vector_bytes(vec, vec.size(), idx);
  }

  void set_threadgroup_memory_length(size_t length, int idx) {
    tg_[idx] = length;
  }

  void dispatch_threadgroups(MTL::Size grid_dims, MTL::Size group_dims) {
    enqueue(grid_dims, group_dims, false);
  }
  void dispatch_threads(MTL::Size grid_dims, MTL::Size group_dims) {
    enqueue(grid_dims, group_dims, true);
  }

  void add_temporary(mlx::core::array arr) {
    temporaries_.push_back(std::move(arr));
  }
  void add_temporaries(std::vector<mlx::core::array> arrays) {
    for (auto& a : arrays)
      temporaries_.push_back(std::move(a));
  }
  // Dispatches run one after another on the stream: there is nothing to order.
  void barrier() {}
  void maybeInsertBarrier() {}

 private:
  struct Arg {
    bool is_array;
    mlx::core::array arr;
    int64_t offset;
    std::vector<unsigned char> bytes;
    Dtype dtype;
  };

  void set_raw_bytes(const void* p, size_t n, Dtype dt, int idx) {
    Arg a{false, mlx::core::array(0), 0, std::vector<unsigned char>(n), dt};
    if (n)
      std::memcpy(a.bytes.data(), p, n);
    args_.insert_or_assign(idx, std::move(a));
  }

  void enqueue(MTL::Size grid, MTL::Size group, bool grid_is_threads) {
    if (!kernel_)
      throw std::runtime_error(
          "[metalsim] dispatch without a kernel: call set_compute_pipeline_state first");
    auto lib = kernel_->library();
    std::string name = kernel_->name();
    auto args = std::move(args_);
    auto tg = std::move(tg_);
    auto temps = std::move(temporaries_);
    args_.clear();
    tg_.clear();
    temporaries_.clear();
    Size3 g{grid.width, grid.height, grid.depth};
    Size3 t{group.width, group.height, group.depth};
    auto& cpu_enc = mlx::core::cpu::get_command_encoder(stream_);
    for (auto& [idx, a] : args)
      if (a.is_array)
        cpu_enc.set_input_array(a.arr);
    cpu_enc.dispatch([lib,
                      name,
                      args = std::move(args),
                      tg = std::move(tg),
                      temps = std::move(temps),
                      g,
                      t,
                      grid_is_threads]() mutable {
      Bindings b;
      for (auto& [idx, a] : args) {
        if (a.is_array) {
          // As Metal binds it: the array's whole buffer, the kernel's pointer at the array's
          // offset in it (a view with a negative stride reads memory before that pointer).
          char* base = static_cast<char*>(const_cast<mlx::core::array&>(a.arr).buffer().raw_ptr());
          char* p = const_cast<char*>(a.arr.data<char>()) + a.offset;
          int64_t before = p - base;
          int64_t size = int64_t(a.arr.buffer_size()) - before;
          if (before < 0 || size < 0) { // not inside its buffer: bind what the array spans
            before = 0;
            size = int64_t(a.arr.data_size() * a.arr.itemsize()) - a.offset;
          }
          b.buffer(
              idx, p, uint64_t(size > 0 ? size : 0), to_dtype(a.arr.dtype()), uint64_t(before));
        } else {
          b.bytes(idx, a.bytes.data(), a.bytes.size(), a.dtype);
        }
      }
      for (auto& [idx, len] : tg)
        b.threadgroup(idx, len);
      lib->dispatch(name, g, t, b, grid_is_threads);
    });
  }

  mlx::core::Stream stream_;
  MTL::ComputePipelineState* kernel_ = nullptr;
  std::map<int, Arg> args_;
  std::map<int, size_t> tg_;
  std::vector<mlx::core::array> temporaries_;
};

class Device {
 public:
  // Loads <path>/<name>.metalsim (written by metalsim_build_library in CMake), the simulator's
  // counterpart of <path>/<name>.metallib. A path ending in .metallib names the file directly.
  MTL::Library* get_library(const std::string& name, const std::string& path = "") {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = libraries_.find(name);
    if (it != libraries_.end())
      return it->second.get();
    std::string manifest;
    const std::string ext = ".metallib";
    if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
      manifest = path.substr(0, path.size() - ext.size()) + ".metalsim";
    else
      manifest = (path.empty() ? std::string(".") : path) + "/" + name + ".metalsim";
    auto lib = std::make_unique<MTL::Library>(metalsim::Library::from_manifest(manifest));
    return (libraries_[name] = std::move(lib)).get();
  }
  // A library JIT-compiled from source text (MLX's get_library(name, builder)).
  MTL::Library*
  get_library(const std::string& name, const std::function<std::string(void)>& builder) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = libraries_.find(name);
    if (it != libraries_.end())
      return it->second.get();
    auto lib =
        std::make_unique<MTL::Library>(metalsim::Library::from_source(builder(), name + ".metal"));
    return (libraries_[name] = std::move(lib)).get();
  }

  MTL::ComputePipelineState*
  get_kernel(const std::string& base_name, MTL::Library* lib, const std::string& hash_name = "") {
    if (!lib)
      throw std::runtime_error("[metalsim::Device] get_kernel: no library");
    std::lock_guard<std::mutex> lk(mu_);
    auto key = std::make_pair(lib, hash_name.empty() ? base_name : hash_name);
    auto it = kernels_.find(key);
    if (it != kernels_.end())
      return it->second.get();
    if (!lib->get()->has_kernel(base_name)) {
      std::string names;
      for (auto& n : lib->get()->kernel_names())
        names += (names.empty() ? "" : ", ") + n;
      throw std::runtime_error(
          "[metalsim::Device] Unable to load kernel " + base_name +
          ": no kernel of that name in the library (kernels: " +
          (names.empty() ? std::string("none") : names) + ")");
    }
    auto k = std::make_unique<MTL::ComputePipelineState>(lib->get(), base_name);
    return (kernels_[key] = std::move(k)).get();
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<MTL::Library>> libraries_;
  std::map<std::pair<MTL::Library*, std::string>, std::unique_ptr<MTL::ComputePipelineState>>
      kernels_;
};

// One simulated device for every mlx device (there is no GPU behind it).
inline Device& device(mlx::core::Device) {
  static Device* d = new Device();
  return *d;
}

// The command encoder of a stream (the stream a primitive runs on).
inline CommandEncoder& get_command_encoder(mlx::core::Stream s) {
  static std::mutex mu;
  static auto* encoders = new std::unordered_map<int, std::unique_ptr<CommandEncoder>>();
  std::lock_guard<std::mutex> lk(mu);
  auto& e = (*encoders)[s.index];
  if (!e)
    e = std::make_unique<CommandEncoder>(s);
  return *e;
}

// There is no Metal device behind the shim.
inline bool is_available() {
  return false;
}

} // namespace metalsim::shim
