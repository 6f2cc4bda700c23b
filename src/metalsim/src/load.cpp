// Stage 3, load: dlopen a compiled kernel library, check that it speaks this metalsim's ABI, and
// list its kernels.
#include <dlfcn.h>

#include <algorithm>
#include <sstream>

#include "internal.h"
#include "metalsim/abi.h"

namespace metalsim {

std::shared_ptr<Library> Library::load(const std::string& so) {
  void* handle = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    throw Error(std::string("metalsim: cannot load '") + so + "': " + dlerror());
  auto abi = reinterpret_cast<metalsim_abi_version_fn>(dlsym(handle, "metalsim_abi_version"));
  auto names_fn =
      reinterpret_cast<metalsim_kernel_names_fn>(dlsym(handle, "metalsim_kernel_names"));
  void* disp = dlsym(handle, "metalsim_dispatch");
  if (!abi || !names_fn || !disp || abi() != METALSIM_ABI_VERSION)
    throw Error(
        "metalsim: '" + so + "' is not a kernel library of this metalsim version (delete it)");
  std::shared_ptr<Library> lib(new Library());
  lib->so_path_ = so;
  lib->handle_ = handle;
  lib->dispatch_fn_ = disp;
  std::istringstream ss(names_fn());
  std::string line;
  while (std::getline(ss, line))
    if (!line.empty())
      lib->kernel_names_.push_back(line);
  auto fcs_fn = reinterpret_cast<metalsim_function_constants_fn>(
      dlsym(handle, "metalsim_function_constants"));
  if (!fcs_fn)
    throw Error(
        "metalsim: '" + so + "' is not a kernel library of this metalsim version (delete it)");
  std::istringstream fs(fcs_fn());
  while (std::getline(fs, line)) {
    std::istringstream ls(line);
    FunctionConstantDecl fc;
    int dtype = 0;
    if (line.rfind("! ", 0) == 0)
      throw CompileError(
          "metalsim: function constant '" + line.substr(2) +
          "' is read by an initializer outside any kernel (a static member or a variable in a "
          "function's scope), when the library loads: a function constant has a value only in "
          "a pipeline. Read it in the kernel, or derive a program-scope `constant T name = "
          "expr;` from it");
    if (ls >> fc.index >> dtype >> fc.name) {
      fc.dtype = Dtype(dtype);
      lib->function_constants_.push_back(fc);
    }
  }
  return lib;
}

bool Library::has_kernel(const std::string& name) const {
  return std::find(kernel_names_.begin(), kernel_names_.end(), name) != kernel_names_.end();
}

} // namespace metalsim
