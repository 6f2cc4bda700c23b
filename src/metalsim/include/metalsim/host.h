// metalsim host library: compile .metal sources into a kernel library and dispatch kernels.
//
//   auto lib = metalsim::Library::from_files({"softmax.metal"});
//   metalsim::Bindings b;
//   b.buffer(0, x_ptr, x_bytes, metalsim::Dtype::float32);
//   b.buffer(1, out_ptr, out_bytes, metalsim::Dtype::float32);
//   b.bytes(2, &n, sizeof(n), metalsim::Dtype::int32);
//   b.threadgroup(0, 32 * sizeof(float));
//   lib->dispatch("row_softmax", {rows, 1, 1}, {256, 1, 1}, b);  // threadgroups, like Metal
//
// A library is JIT-compiled like Metal compiles a library at run time: the .metal text is
// rewritten into a C++ translation unit (with #line directives pointing back at the .metal
// lines), compiled by the system C++ compiler ($METALSIM_CXX, $CXX, or the compiler metalsim
// was built with) into a shared object cached under cache_dir(), and loaded with dlopen.
// Every failure is a metalsim::Error subclass whose what() says what went wrong and where.
//
// Environment: METALSIM_HOME (the src/metalsim folder, to find the runtime headers),
// METALSIM_CACHE_DIR (else $XDG_CACHE_HOME/metalsim or ~/.cache/metalsim),
// METALSIM_THREADS (OS threads per dispatch), METALSIM_CXXFLAGS (extra compiler flags, e.g. -g),
// METALSIM_STACK_KB (stack per simulated thread, default 256), METALSIM_TIMEOUT (a dispatch's
// deadline in seconds, default 60, 0 for none), METALSIM_SCHEDULE (the order SIMD groups run
// in: forward, reverse, random or random:SEED), METALSIM_CHECKS=0 (compile kernels without the
// sanitizer's checks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "metalsim/abi.h"

namespace metalsim {

// Element types of bindings: the codes of metalsim_dtype in abi.h, where they are written.
enum class Dtype : int32_t {
  untyped = METALSIM_UNTYPED,
  bool_ = METALSIM_BOOL,
  uint8 = METALSIM_UINT8,
  uint16 = METALSIM_UINT16,
  uint32 = METALSIM_UINT32,
  uint64 = METALSIM_UINT64,
  int8 = METALSIM_INT8,
  int16 = METALSIM_INT16,
  int32 = METALSIM_INT32,
  int64 = METALSIM_INT64,
  float16 = METALSIM_FLOAT16,
  bfloat16 = METALSIM_BFLOAT16,
  float32 = METALSIM_FLOAT32,
  float64 = METALSIM_FLOAT64,
  complex64 = METALSIM_COMPLEX64,
};

// The dtype of a C++ scalar type (untyped for anything else, e.g. a struct).
template <class T> constexpr Dtype dtype_of();

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The .metal source did not compile (message: the compiler's diagnostics, .metal file:line).
class CompileError : public Error {
 public:
  using Error::Error;
};
// No kernel of that name in the library.
class KernelNotFoundError : public Error {
 public:
  using Error::Error;
};
// A [[buffer(n)]] / [[threadgroup(n)]] parameter is unbound, or bound to the wrong type/size.
class BindingError : public Error {
 public:
  using Error::Error;
};
// A hardware limit: > 1024 threads per threadgroup, > 32 KiB threadgroup memory, a thread whose
// private memory overflows its stack (METALSIM_STACK_KB).
class LimitError : public Error {
 public:
  using Error::Error;
};
// A threadgroup_barrier (simdgroup_barrier) that the live threads of a threadgroup (SIMD group)
// cannot all reach.
class DeadlockError : public Error {
 public:
  using Error::Error;
};
// Anything else about a dispatch (a 0 in the grid or threadgroup size, exception in a kernel, ...).
class DispatchError : public Error {
 public:
  using Error::Error;
};
// Threads of different SIMD groups touched the same threadgroup memory, at least one writing,
// with no threadgroup_barrier between them (or lanes of one SIMD group did so in an order
// metalsim cannot run in lockstep).
class RaceError : public Error {
 public:
  using Error::Error;
};
// An access outside a bound buffer or a threadgroup allocation, a write to a read-only buffer,
// any other invalid address.
class MemoryAccessError : public Error {
 public:
  using Error::Error;
};
// The dispatch ran past its deadline (METALSIM_TIMEOUT seconds, default 60) and was stopped.
class TimeoutError : public Error {
 public:
  using Error::Error;
};
// The dispatch was stopped by Ctrl-C (SIGINT).
class InterruptedError : public Error {
 public:
  using Error::Error;
};

struct Size3 {
  uint64_t x = 1, y = 1, z = 1;
};

// What a dispatch binds: [[buffer(i)]] pointers/bytes and [[threadgroup(i)]] lengths.
class Bindings {
 public:
  struct Buffer {
    void* data = nullptr;
    uint64_t size = 0;
    Dtype dtype = Dtype::untyped;
    bool is_bytes = false;
    uint64_t before = 0;    // bytes of the same allocation before data (a binding at an offset)
    bool read_only = false; // writes are errors
    std::shared_ptr<std::vector<unsigned char>> copy; // owned bytes for set_bytes
  };
  // A buffer the kernel reads and writes: `size` bytes from `data`, and `before` bytes of the
  // same allocation before it (an array that is a view at an offset into a larger buffer, whose
  // strides may step back). The kernel runs on a copy, placed as Metal places buffers (at the
  // start of a page), with inaccessible memory around it; what it writes is copied back after
  // the dispatch. A read-only buffer may not be written (an error names the line).
  void buffer(
      int index,
      void* data,
      uint64_t size,
      Dtype dtype,
      uint64_t before = 0,
      bool read_only = false);
  // A small constant: the bytes are copied now (like setBytes).
  void bytes(int index, const void* data, uint64_t size, Dtype dtype);
  // Length in bytes of [[threadgroup(index)]] memory (a multiple of 16).
  void threadgroup(int index, uint64_t length);

  const std::map<int, Buffer>& buffers() const {
    return buffers_;
  }
  const std::map<int, uint64_t>& threadgroup_lengths() const {
    return threadgroup_;
  }

 private:
  std::map<int, Buffer> buffers_;
  std::map<int, uint64_t> threadgroup_;
};

// The value of one [[function_constant(index)]] (Metal's MTLFunctionConstantValues entry).
struct ConstantValue {
  Dtype dtype = Dtype::bool_; // bool_, an integer dtype, or a float dtype
  int64_t i = 0;              // bool_ and integers
  double f = 0;               // floats
  static ConstantValue boolean(bool v) {
    return {Dtype::bool_, v ? 1 : 0, 0};
  }
  static ConstantValue integer(int64_t v, Dtype d = Dtype::int64) {
    return {d, v, 0};
  }
  static ConstantValue floating(double v, Dtype d = Dtype::float64) {
    return {d, 0, v};
  }
};
// Function constant values by index, set when a pipeline is created.
using FunctionConstants = std::map<unsigned, ConstantValue>;

// A function constant a library declares (`constant bool has_mask [[function_constant(20)]];`).
struct FunctionConstantDecl {
  unsigned index = 0;
  Dtype dtype = Dtype::untyped;
  std::string name;
};

class Pipeline;

class Library : public std::enable_shared_from_this<Library> {
 public:
  // Compiles (or takes from the cache) a library made of these .metal files.
  // include_dirs are searched by #include "..." in addition to each file's folder.
  static std::shared_ptr<Library> from_files(
      const std::vector<std::string>& paths, const std::vector<std::string>& include_dirs = {});
  // Same from source text; `name` is the file name diagnostics show.
  static std::shared_ptr<Library> from_source(
      const std::string& source,
      const std::string& name = "source.metal",
      const std::vector<std::string>& include_dirs = {});
  // A manifest written by the CMake function metalsim_build_library (<dir>/<title>.metalsim).
  static std::shared_ptr<Library> from_manifest(const std::string& manifest_path);

  const std::vector<std::string>& kernel_names() const {
    return kernel_names_;
  }
  bool has_kernel(const std::string& name) const;
  // What compiles on metalsim but not on a Mac ("file:line: warning: printf is ..."). The
  // Python module shows them as warnings when the library is loaded.
  const std::vector<std::string>& warnings() const {
    return warnings_;
  }
  // The [[function_constant(n)]] declarations of the library's sources.
  const std::vector<FunctionConstantDecl>& function_constants() const {
    return function_constants_;
  }
  // A compute pipeline of `kernel` specialised with function constant values (Metal's
  // newFunctionWithName:constantValues: + newComputePipelineState). Throws KernelNotFoundError
  // for an unknown kernel and BindingError for a constant the library does not declare or a
  // value of the wrong kind (a float for a bool, ...). A constant left unset is an error when a
  // kernel thread reads it.
  std::shared_ptr<Pipeline>
  pipeline(const std::string& kernel, const FunctionConstants& constants = {}) const;
  // The compiled shared object (in the cache).
  const std::string& path() const {
    return so_path_;
  }

  // Runs `kernel` over `grid` threadgroups of `group` threads (Metal's dispatchThreadgroups);
  // with grid_is_threads, `grid` counts threads and edge threadgroups are cut to fit
  // (dispatchThreads). Returns when every threadgroup has finished; throws an Error otherwise.
  // workers <= 0: one OS thread per core (METALSIM_THREADS overrides). constants: the
  // function constants (Pipeline::dispatch passes its own).
  void dispatch(
      const std::string& kernel,
      Size3 grid,
      Size3 group,
      const Bindings& bindings,
      bool grid_is_threads = false,
      int workers = 0,
      const FunctionConstants& constants = {}) const;

  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;
  ~Library() = default;

 private:
  Library() = default;
  static std::shared_ptr<Library> build(
      const std::vector<std::string>& paths,
      const std::vector<std::string>& sources,
      const std::vector<std::string>& include_dirs);
  // Opens a compiled shared object (load.cpp).
  static std::shared_ptr<Library> load(const std::string& so_path);
  std::string so_path_;
  void* handle_ = nullptr;
  void* dispatch_fn_ = nullptr;
  std::vector<std::string> kernel_names_;
  std::vector<FunctionConstantDecl> function_constants_;
  std::vector<std::string> warnings_;
};

// A kernel with its function constants fixed; dispatch() is Library::dispatch for that kernel.
class Pipeline {
 public:
  Pipeline(std::shared_ptr<const Library> library, std::string kernel, FunctionConstants constants)
      : library_(std::move(library)), kernel_(std::move(kernel)), constants_(std::move(constants)) {
  }
  const std::string& kernel() const {
    return kernel_;
  }
  const FunctionConstants& constants() const {
    return constants_;
  }
  void dispatch(
      Size3 grid,
      Size3 group,
      const Bindings& bindings,
      bool grid_is_threads = false,
      int workers = 0) const {
    library_->dispatch(kernel_, grid, group, bindings, grid_is_threads, workers, constants_);
  }

 private:
  std::shared_ptr<const Library> library_;
  std::string kernel_;
  FunctionConstants constants_;
};

// Where compiled libraries are cached.
std::string cache_dir();
// The folder with the simulated <metal_stdlib> and the runtime.
std::string runtime_dir();
// The C++ compiler used for kernels.
std::string compiler();
// How many times this process has run the C++ compiler on kernel sources (a library found in
// the cache, or a compile that already failed in this process, does not run it again).
uint64_t compiler_runs();

template <class T> constexpr Dtype dtype_of() {
  if constexpr (std::is_same_v<T, bool>)
    return Dtype::bool_;
  else if constexpr (std::is_same_v<T, float>)
    return Dtype::float32;
  else if constexpr (std::is_same_v<T, double>)
    return Dtype::float64;
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    return sizeof(T) == 1   ? Dtype::int8
           : sizeof(T) == 2 ? Dtype::int16
           : sizeof(T) == 4 ? Dtype::int32
                            : Dtype::int64;
  } else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    return sizeof(T) == 1   ? Dtype::uint8
           : sizeof(T) == 2 ? Dtype::uint16
           : sizeof(T) == 4 ? Dtype::uint32
                            : Dtype::uint64;
  } else {
    return Dtype::untyped;
  }
}

} // namespace metalsim
