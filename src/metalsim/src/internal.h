// What the stages of metalsim's host library share (not part of its public header).
//
// The pipeline, one file per stage:
//   translate.cpp  .metal text -> C++ translation units (+ the kernels' glue)
//   library.cpp    compile those units with the system C++ compiler, cache the shared object
//   load.cpp       dlopen a compiled library, check its ABI, list its kernels
//   dispatch.cpp   run a kernel over a grid (bindings.cpp: what a dispatch binds)
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "metalsim/host.h"

namespace metalsim {
namespace detail {

// Part of the cache key: bump when the generated code or the runtime's ABI changes.
extern const char* const kGeneratorVersion;

std::string read_file(const std::string& path);
bool file_exists(const std::string& p);
std::string dirname_of(const std::string& p);
std::string absolute(const std::string& p);
void mkdirs(const std::string& path);
const char* getenv_nonempty(const char* name);
// Runs argv, returns exit status, stdout+stderr in `out`.
int run_command(const std::vector<std::string>& argv, std::string& out);
inline bool is_float_dtype(Dtype d) {
  return d == Dtype::float16 || d == Dtype::bfloat16 || d == Dtype::float32 || d == Dtype::float64;
}
inline bool is_int_dtype(Dtype d) {
  return d >= Dtype::uint8 && d <= Dtype::int64;
}
// The MSL name of a dtype ("float", "half", "uint", ...).
const char* msl_type_name(Dtype d);

// The names of the files in a folder (sorted; no hidden files).
std::vector<std::string> list_dir(const std::string& dir);
// The folder with metalsim's public headers (abi.h).
std::string include_dir();

struct Hasher {
  uint64_t a = 1469598103934665603ull, b = 0x9e3779b97f4a7c15ull;
  void add(const std::string& s) {
    for (unsigned char c : s) {
      a = (a ^ c) * 1099511628211ull;
      b = (b ^ c) * 0x100000001b3ull + 0x7f4a7c15ull;
      b ^= b >> 29;
    }
    a = (a ^ 0xff) * 1099511628211ull; // separator
  }
  std::string hex() const {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    return buf;
  }
};

// translate.cpp: the C++ translation units of a library's .metal files (one per file, the last
// one also holds the library's entry points) and the names of its kernels.
struct Generated {
  std::vector<std::string> tus; // translation units
  std::vector<std::string> kernel_names;
  std::vector<std::string> warnings; // "file:line: warning: ..." (compiles here, not on a Mac)
};
// include_dirs: where quoted #includes are looked for (after the including file's folder).
Generated generate(
    const std::vector<std::string>& display_names,
    const std::vector<std::string>& sources,
    const std::vector<std::string>& include_dirs);

} // namespace detail
} // namespace metalsim
