// How the bindings turn Python arguments into C++ ones, for every bindings*.cpp file.
//
// The arguments arrive as Python objects (nb::handle) and are converted here, so that a wrong
// one (a list, None, a NumPy array, a string, an int out of range) is a TypeError or ValueError
// that names the op and the argument, not nanobind's "incompatible function arguments":
//
//   [flash_attention] key must be an mx.array, got list
//
// A file with a group of ops defines `void bind_<topic>(nb::module_& m)` and uses these helpers;
// bindings.cpp calls it once.
#pragma once

#include <nanobind/nanobind.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"
#include "mlx/array.h"
#include "mlx/utils.h"

namespace nb = nanobind;
namespace mx = mlx::core;

namespace tiny_attn::bindings {

// The Python type's name, for the messages: "list", "NoneType", "ndarray".
inline std::string python_type(nb::handle x) {
  return nb::cast<std::string>(nb::str(nb::handle(x.type()).attr("__name__")));
}

// Python sees a TypeError (the wrong kind of thing) or a ValueError (the right kind, a wrong
// value), each starting with "[op] ".
[[noreturn]] inline void type_error(const std::string& op, const std::string& message) {
  throw nb::type_error(("[" + op + "] " + message).c_str());
}

[[noreturn]] inline void value_error(const std::string& op, const std::string& message) {
  throw std::invalid_argument("[" + op + "] " + message);
}

inline mx::array array_arg(const char* op, const char* name, nb::handle x) {
  if (!nb::isinstance<mx::array>(x)) {
    type_error(op, std::string(name) + " must be an mx.array, got " + python_type(x));
  }
  return nb::cast<mx::array>(x);
}

inline std::optional<mx::array> mask_arg(const char* op, nb::handle mask) {
  if (mask.is_none()) {
    return std::nullopt;
  }
  if (!nb::isinstance<mx::array>(mask)) {
    type_error(op, "mask must be None or an mx.array, got " + python_type(mask));
  }
  return nb::cast<mx::array>(mask);
}

// A Python int that is not a bool (bool is a subclass of int in Python).
inline bool is_int(nb::handle x) {
  return PyLong_Check(x.ptr()) && !PyBool_Check(x.ptr());
}

// A Python float or int, not a bool.
inline bool is_number(nb::handle x) {
  return !PyBool_Check(x.ptr()) && (PyFloat_Check(x.ptr()) || is_int(x));
}

// A Python float or int (not a bool) as the float32 the kernels compute with.
inline float scale_arg(const char* op, nb::handle scale) {
  if (!is_number(scale)) {
    type_error(op, "scale must be a float, got " + python_type(scale));
  }
  const double v = PyFloat_AsDouble(scale.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    value_error(op, "scale must be a finite float32 value, got an int too large for a float");
  }
  // A finite value that float32 cannot hold would reach the op as inf; NaN and inf themselves
  // are left to the op's own checks (Week 2, Day 4, Task 1).
  if (std::isfinite(v) && std::fabs(v) > FLT_MAX) {
    std::ostringstream os;
    os << "scale must be a finite float32 value, got " << v;
    value_error(op, os.str());
  }
  return static_cast<float>(v);
}

// What scale=None means to the ops that allow it: 1 / sqrt(E), E the last axis of the query
// (1 for a query without one: the op's own checks then name the query).
inline float default_scale(const mx::array& query) {
  return query.ndim() > 0 && query.shape(-1) > 0 ? 1.0f / std::sqrt(float(query.shape(-1))) : 1.0f;
}

inline bool bool_arg(const char* op, const char* name, nb::handle x) {
  if (!PyBool_Check(x.ptr())) {
    type_error(op, std::string(name) + " must be True or False, got " + python_type(x));
  }
  return x.ptr() == Py_True;
}

inline int int_arg(const char* op, const char* name, nb::handle x) {
  if (!is_int(x)) {
    type_error(op, std::string(name) + " must be an int, got " + python_type(x));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(x.ptr(), &overflow);
  if (overflow != 0 || v < INT_MIN || v > INT_MAX) {
    value_error(
        op,
        std::string(name) + " must fit in a 32-bit int, got " + nb::cast<std::string>(nb::str(x)));
  }
  return static_cast<int>(v);
}

inline mx::StreamOrDevice stream_arg(const char* op, nb::handle stream) {
  if (stream.is_none()) {
    return {};
  }
  // Like MLX's own ops: a Device, a DeviceType (mx.cpu, mx.gpu) or a Stream. The device is
  // tried first, so that mx.gpu is a device even where MLX has no GPU stream (Week 3).
  mx::Device device(mx::Device::cpu);
  if (nb::try_cast<mx::Device>(stream, device)) {
    return metalsim::to_stream_or_device(device);
  }
  mx::Stream s(0, device);
  if (nb::try_cast<mx::Stream>(stream, s)) {
    return metalsim::to_stream_or_device(s);
  }
  type_error(op, "stream must be None, an mx.Device or an mx.Stream, got " + python_type(stream));
}

// What every attention op takes first: query, key, value, scale, mask, causal.
struct AttentionArgs {
  mx::array query;
  mx::array key;
  mx::array value;
  float scale;
  std::optional<mx::array> mask;
  bool causal;
};

// Converts them in that order (a braced list is evaluated left to right), so the first wrong
// one is the one named.
inline AttentionArgs attention_args(
    const char* op,
    nb::handle query,
    nb::handle key,
    nb::handle value,
    nb::handle scale,
    nb::handle mask,
    nb::handle causal) {
  return AttentionArgs{
      array_arg(op, "query", query),
      array_arg(op, "key", key),
      array_arg(op, "value", value),
      scale_arg(op, scale),
      mask_arg(op, mask),
      bool_arg(op, "causal", causal)};
}

// Their Python names, in m.def after the function: query, key and value, then scale, and mask
// and causal with their defaults (None, False). Every one accepts None, so that None reaches the
// helpers above and is named in their error rather than refused by nanobind.
template <typename Func, typename... Extra>
void def_attention(nb::module_& m, const char* name, Func&& f, const Extra&... extra) {
  using namespace nb::literals;
  m.def(
      name,
      std::forward<Func>(f),
      "query"_a.none(),
      "key"_a.none(),
      "value"_a.none(),
      "scale"_a.none(),
      "mask"_a.none() = nb::none(),
      "causal"_a.none() = nb::bool_(false),
      extra...);
}

} // namespace tiny_attn::bindings
