// The strict-MSL rules (check.cpp): what Apple's Metal compiler refuses, metalsim refuses at the
// same .metal line, saying what MSL offers instead.
#pragma once
#include <string>
#include <vector>

#include "text.h"

namespace metalsim {
namespace detail {

// What the translator found of one kernel (see translate.cpp).
struct KernelSource {
  std::string name;
  size_t body_begin, body_end; // the `{` and `}` of its body
  struct Param {
    std::string name, type, kind; // kind: "buffer", "threadgroup", "builtin"
    size_t pos;
  };
  std::vector<Param> params;
  std::vector<std::string> threadgroup_arrays; // threadgroup variables declared in its body
};

// The source rules, on one translation unit (src: its text with includes inlined, m: masked).
// Throws SourceError at the first violation; appends "file:line: warning: ..." for what compiles
// here but not on a Mac (printf).
void check_source(
    const std::string& src,
    const std::string& m,
    const std::string& file,
    const std::vector<KernelSource>& kernels,
    std::vector<std::string>& warnings);

// The compiler's report of a failed compile, for a student: warnings left out, and the errors of
// the rules the kernel prelude leaves to the compiler (poisoned words, variable-length arrays,
// writes to `constant`) say what MSL offers instead.
std::string explain_diagnostics(const std::string& compiler_output);

// Recursion (MSL has none), from the call graphs GCC wrote next to the shared object `so`
// (-fcallgraph-info): the error text, or "" if none. Removes the graph files.
std::string find_recursion(const std::string& so, const std::string& runtime_dir);

} // namespace detail
} // namespace metalsim
