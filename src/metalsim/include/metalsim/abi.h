// The C interface between the metalsim host library and a compiled kernel library.
//
// Every kernel library (.so) that metalsim JIT-compiles from .metal sources exports these
// four functions. The host (dispatch.cpp) fills a metalsim_dispatch_args and calls
// metalsim_dispatch; errors come back as text plus a metalsim_status code, never as a crash.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define METALSIM_ABI_VERSION 2

#ifdef __cplusplus
extern "C" {
#endif

// Element type of a bound buffer, used to check a binding against the kernel's parameter type.
enum metalsim_dtype {
  METALSIM_UNTYPED = 0, // raw bytes: matches any parameter type
  METALSIM_BOOL,
  METALSIM_UINT8,
  METALSIM_UINT16,
  METALSIM_UINT32,
  METALSIM_UINT64,
  METALSIM_INT8,
  METALSIM_INT16,
  METALSIM_INT32,
  METALSIM_INT64,
  METALSIM_FLOAT16,
  METALSIM_BFLOAT16,
  METALSIM_FLOAT32,
  METALSIM_FLOAT64,
  METALSIM_COMPLEX64,
  METALSIM_DTYPE_COUNT
};

// The name of each element type, as NumPy and MLX spell it ("untyped bytes" for raw bytes).
// The host and the kernels' runtime name dtypes in their messages with it, and metalsim's
// Python module maps NumPy's dtypes to the codes above by it: the codes are written here only.
static inline const char* metalsim_dtype_name(int32_t code) {
  switch (code) {
  case METALSIM_UNTYPED:
    return "untyped bytes";
  case METALSIM_BOOL:
    return "bool";
  case METALSIM_UINT8:
    return "uint8";
  case METALSIM_UINT16:
    return "uint16";
  case METALSIM_UINT32:
    return "uint32";
  case METALSIM_UINT64:
    return "uint64";
  case METALSIM_INT8:
    return "int8";
  case METALSIM_INT16:
    return "int16";
  case METALSIM_INT32:
    return "int32";
  case METALSIM_INT64:
    return "int64";
  case METALSIM_FLOAT16:
    return "float16";
  case METALSIM_BFLOAT16:
    return "bfloat16";
  case METALSIM_FLOAT32:
    return "float32";
  case METALSIM_FLOAT64:
    return "float64";
  case METALSIM_COMPLEX64:
    return "complex64";
  default:
    return "unknown";
  }
}

enum metalsim_status {
  METALSIM_OK = 0,
  METALSIM_ERR_KERNEL_NOT_FOUND = 1,
  METALSIM_ERR_BINDING = 2,
  METALSIM_ERR_LIMIT = 3,
  METALSIM_ERR_DEADLOCK = 4,
  METALSIM_ERR_RUNTIME = 5,
  METALSIM_ERR_INVALID = 6,
  METALSIM_ERR_RACE = 7,        // threadgroup memory shared between SIMD groups with no barrier
  METALSIM_ERR_MEMORY = 8,      // out of bounds, a read-only buffer written, a misaligned access
  METALSIM_ERR_TIMEOUT = 9,     // the dispatch ran past its deadline
  METALSIM_ERR_INTERRUPTED = 10 // the host asked the dispatch to stop (Ctrl-C)
};

enum metalsim_schedule {
  METALSIM_SCHEDULE_FORWARD = 0, // SIMD groups of a threadgroup in index order
  METALSIM_SCHEDULE_REVERSE = 1, // in reverse order
  METALSIM_SCHEDULE_RANDOM = 2   // in an order drawn from the seed, per threadgroup
};

typedef struct metalsim_binding {
  void* data;        // NULL: this index is not bound
  uint64_t size;     // bytes visible to the kernel from data
  int32_t dtype;     // enum metalsim_dtype
  int32_t is_bytes;  // 1: set_bytes (a copy), 0: a buffer/array
  uint64_t before;   // bytes of the same buffer that lie before data (a binding at an offset)
  int32_t read_only; // 1: the kernel must not write it (a read-only NumPy array)
  int32_t reserved;
} metalsim_binding;

// The value of a [[function_constant(index)]], set when the pipeline is created.
typedef struct metalsim_constant {
  uint32_t index;
  int32_t dtype; // enum metalsim_dtype of the value given (BOOL, INT64, FLOAT64, ...)
  union {
    int64_t i; // BOOL and the integer dtypes
    double f;  // FLOAT16, BFLOAT16, FLOAT32, FLOAT64
  } value;
} metalsim_constant;

typedef struct metalsim_dispatch_args {
  uint32_t abi_version;    // METALSIM_ABI_VERSION
  const char* kernel;      // kernel (function) name
  uint64_t grid[3];        // threadgroups per grid, or threads per grid if grid_is_threads
  uint64_t group[3];       // threads per threadgroup
  int32_t grid_is_threads; // 1: dispatch_threads (edge groups may be partial)
  uint32_t n_buffers;      // bindings[i] is [[buffer(i)]]
  const metalsim_binding* buffers;
  uint32_t n_threadgroup; // threadgroup_lengths[i] is [[threadgroup(i)]] (0 = unset)
  const uint64_t* threadgroup_lengths;
  int32_t n_workers; // OS threads to spread threadgroups over (<= 0: automatic)
  int32_t schedule;  // enum metalsim_schedule
  uint64_t seed;     // for METALSIM_SCHEDULE_RANDOM
  // [guard_lo, guard_hi): memory the host reserved around its copies of the bound buffers. An
  // access in it that is in no binding is out of bounds (0, 0: the host reserved none).
  uint64_t guard_lo, guard_hi;
  double timeout_s;               // the dispatch's deadline in seconds (<= 0: none)
  const volatile int32_t* cancel; // the host sets *cancel to nonzero to stop the dispatch
  uint32_t n_constants;           // the pipeline's function constant values
  const metalsim_constant* constants;
} metalsim_dispatch_args;

// Returns a metalsim_status; on error writes a NUL-terminated message into err.
typedef int (*metalsim_dispatch_fn)(const metalsim_dispatch_args* args, char* err, size_t errlen);
// The library's function constants, one per line: "<index> <dtype> <name>".
typedef const char* (*metalsim_function_constants_fn)(void);
// Newline-separated kernel names of the library.
typedef const char* (*metalsim_kernel_names_fn)(void);
typedef int (*metalsim_abi_version_fn)(void);

#ifdef __cplusplus
}
#endif
