// Pipelines: a kernel with its function constants fixed, checked against the library's
// [[function_constant(n)]] declarations (Metal checks them when the pipeline is created).
#include <algorithm>

#include "internal.h"

namespace metalsim {

namespace detail {

const char* msl_type_name(Dtype d) {
  switch (d) {
  case Dtype::bool_:
    return "bool";
  case Dtype::uint8:
    return "uchar";
  case Dtype::uint16:
    return "ushort";
  case Dtype::uint32:
    return "uint";
  case Dtype::uint64:
    return "ulong";
  case Dtype::int8:
    return "char";
  case Dtype::int16:
    return "short";
  case Dtype::int32:
    return "int";
  case Dtype::int64:
    return "long";
  case Dtype::float16:
    return "half";
  case Dtype::bfloat16:
    return "bfloat";
  case Dtype::float32:
  case Dtype::float64: // a host value (a Python float)
    return "float";
  default:
    return "a type MSL has no function constants of";
  }
}

} // namespace detail

using namespace detail;

std::shared_ptr<Pipeline>
Library::pipeline(const std::string& kernel, const FunctionConstants& constants) const {
  if (!has_kernel(kernel)) {
    std::string names;
    for (auto& n : kernel_names_)
      names += (names.empty() ? "" : ", ") + n;
    throw KernelNotFoundError(
        "no kernel named '" + kernel +
        "' in this library (kernels: " + (names.empty() ? "none" : names) + ")");
  }
  for (auto& [index, v] : constants) {
    auto decl = std::find_if(function_constants_.begin(), function_constants_.end(), [&](auto& d) {
      return d.index == index;
    });
    if (decl == function_constants_.end()) {
      std::string declared;
      for (auto& d : function_constants_)
        declared += std::string(declared.empty() ? "" : ", ") + d.name + " (" +
                    std::to_string(d.index) + ", " + msl_type_name(d.dtype) + ")";
      throw BindingError(
          "pipeline '" + kernel + "': function_constants[" + std::to_string(index) +
          "]: the library declares no [[function_constant(" + std::to_string(index) +
          ")]] (it declares: " + (declared.empty() ? "none" : declared) + ")");
    }
    bool ok = decl->dtype == Dtype::bool_   ? v.dtype == Dtype::bool_
              : is_int_dtype(decl->dtype)   ? is_int_dtype(v.dtype)
              : is_float_dtype(decl->dtype) ? is_float_dtype(v.dtype) || is_int_dtype(v.dtype)
                                            : false;
    if (!ok)
      throw BindingError(
          "pipeline '" + kernel + "': function_constants[" + std::to_string(index) + "] ('" +
          decl->name + "') is a " + msl_type_name(decl->dtype) + ", got a value of type " +
          msl_type_name(v.dtype));
  }
  return std::make_shared<Pipeline>(shared_from_this(), kernel, constants);
}

} // namespace metalsim
