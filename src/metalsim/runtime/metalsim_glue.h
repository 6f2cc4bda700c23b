// What the code that metalsim generates around kernels uses: parameter types of a kernel,
// threadgroup variables declared in a kernel body, function constants.
#pragma once

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "metalsim_rt.h"

namespace metalsim::rt {

// The type of parameter I of a kernel function (template kernels are instantiated first).
template <class F> struct kernel_params;
template <class... A> struct kernel_params<void(A...)> {
  using type = std::tuple<A...>;
};
template <class F, size_t I>
using param_t = std::tuple_element_t<I, typename kernel_params<F>::type>;

// The generated code follows the kernel source, where MSL's rules are in force (no std::, no
// exceptions: see the prelude), so what it needs of C++ lives here.
template <class F> inline void guarded_check(const Dispatch& d, Errors& e, F&& check) {
  try {
    check();
  } catch (const std::exception& ex) {
    e.fail(METALSIM_ERR_BINDING, format("kernel '%s': %s", d.kernel->name, ex.what()));
  }
}

// The kernels of each translation unit of a library, and the library's entry points.
using FileKernels = const KernelInfo* const* (*)(size_t*);
inline std::vector<const KernelInfo*>& library_kernels(const FileKernels* files, size_t n) {
  static std::vector<const KernelInfo*> all = [&] {
    std::vector<const KernelInfo*> v;
    for (size_t i = 0; i < n; ++i) {
      size_t m = 0;
      const KernelInfo* const* t = files[i](&m);
      v.insert(v.end(), t, t + m);
    }
    return v;
  }();
  return all;
}
inline int library_dispatch(
    const FileKernels* files, size_t n, const metalsim_dispatch_args* a, char* err, size_t len) {
  auto& ks = library_kernels(files, n);
  return run_dispatch(ks.data(), ks.size(), a, err, len);
}
inline const char* library_kernel_names(const FileKernels* files, size_t n) {
  static std::string s = [&] {
    std::string r;
    for (auto k : library_kernels(files, n))
      r += std::string(k->name) + "\n";
    return r;
  }();
  return s.c_str();
}

// The value a parameter takes when its [[function_constant(name)]] is false (Metal drops the
// parameter: nothing is bound to it and the kernel must not use it).
template <class P> inline P unbound() {
  using Q = std::remove_reference_t<P>;
  if constexpr (std::is_pointer_v<Q>) {
    return nullptr;
  } else {
    static Q zero{};
    return zero;
  }
}

// Threadgroup variables declared in a kernel body (`threadgroup float t[BN * BD];`). Their size
// may use the kernel's template arguments and local constants, so it is known only where the
// declaration is compiled: each declaration instantiates a TgSlot, whose initializer (run when
// the library is loaded) writes its size into the kernel's table.
constexpr size_t kMaxTgDecls = 64;
template <auto Kernel> struct KernelTag {};
template <class Tag> inline TgDecl tg_decls_of[kMaxTgDecls] = {};
template <class T, class Tag, unsigned K> struct TgSlot {
  static const bool registered;
};
template <class T, class Tag, unsigned K>
const bool TgSlot<T, Tag, K>::registered =
    (tg_decls_of<Tag>[K].size = sizeof(T), tg_decls_of<Tag>[K].align = alignof(T), true);
template <class T, class Tag, unsigned K> inline T* tg_decl() {
  static_assert(K < kMaxTgDecls, "metalsim: too many threadgroup declarations in one kernel");
  (void)&TgSlot<T, Tag, K>::registered;
  return tg_decl<T>(K);
}
template <class Tag> inline bool tg_name(unsigned k, const char* name, unsigned line) {
  tg_decls_of<Tag>[k].name = name;
  tg_decls_of<Tag>[k].line = line;
  return true;
}

// [[thread_index_in_quadgroup]] (which 0), [[quadgroup_index_in_threadgroup]] (1),
// [[quadgroups_per_threadgroup]] (2): a quad-group is 4 consecutive threads of a SIMD group.
template <class P> inline P quad_builtin(const Fiber& f, int which) {
  uint3 n = builtin_uint3(f, Builtin::threads_per_threadgroup);
  uint32_t linear = builtin_uint3(f, Builtin::thread_index_in_threadgroup).x;
  uint32_t v = which == 0 ? linear % 4 : which == 1 ? linear / 4 : (n.x * n.y * n.z + 3) / 4;
  using Q = std::remove_cv_t<std::remove_reference_t<P>>;
  return Q(v);
}

// ---------------------------------------------------------------- function constants

struct FunctionConstantDecl {
  unsigned index;
  int dtype;
  const char* name;
};
inline std::vector<FunctionConstantDecl>& function_constant_decls() {
  static std::vector<FunctionConstantDecl> v;
  return v;
}

// A function constant read outside any kernel (by an initializer run when the library loads):
// the library refuses to load (load.cpp), as the value exists only per pipeline.
inline const char*& function_constant_read_at_load() {
  static const char* name = nullptr;
  return name;
}

// `constant bool has_mask [[function_constant(20)]];` becomes a FunctionConstant<bool, 20>: its
// value is the one the pipeline was created with.
template <class T, unsigned Index> struct FunctionConstant {
  const char* name;
  explicit FunctionConstant(const char* n) : name(n) {
    function_constant_decls().push_back({Index, dtype_of<T>::value, n});
  }
  const metalsim_constant* find() const {
    const metalsim_dispatch_args* a = tls_worker ? tls_worker->d->args : nullptr;
    for (uint32_t i = 0; a && i < a->n_constants; ++i)
      if (a->constants[i].index == Index)
        return &a->constants[i];
    return nullptr;
  }
  bool is_defined() const {
    return find() != nullptr;
  }
  T value(const metalsim_dispatch_args* a) const {
    const metalsim_constant* c = nullptr;
    for (uint32_t i = 0; a && i < a->n_constants; ++i)
      if (a->constants[i].index == Index)
        c = &a->constants[i];
    if (!c)
      throw std::runtime_error(
          std::string("function constant '") + name + "' [[function_constant(" +
          std::to_string(Index) +
          ")]] has no value: set it when creating the pipeline (Python: "
          "lib.pipeline(kernel, function_constants={" +
          std::to_string(Index) + ": ...}))");
    bool is_float = c->dtype == METALSIM_FLOAT16 || c->dtype == METALSIM_BFLOAT16 ||
                    c->dtype == METALSIM_FLOAT32 || c->dtype == METALSIM_FLOAT64;
    if constexpr (std::is_same_v<T, bool>)
      return c->value.i != 0;
    else if constexpr (std::is_integral_v<T>)
      return T(c->value.i);
    else
      return is_float ? T(float(c->value.f)) : T(float(c->value.i));
  }
  operator T() const {
    if (!tls_worker) { // not in a kernel: an initializer run when the library loads
      if (!function_constant_read_at_load())
        function_constant_read_at_load() = name;
      return T{};
    }
    return value(tls_worker->d->args);
  }
};

// A program-scope constant computed from function constants: computed when read.
template <class T> struct DerivedConstant {
  T (*compute)();
  operator T() const {
    return compute();
  }
};

// An argument of os_log/printf as C's varargs take it (floats and halves as double).
template <class T> inline auto log_arg(T v) {
  if constexpr (std::is_integral_v<T> || std::is_pointer_v<T>)
    return v;
  else
    return static_cast<double>(static_cast<float>(v));
}

inline const char* library_function_constants() {
  static std::string s = [] {
    std::string r;
    if (function_constant_read_at_load())
      r += std::string("! ") + function_constant_read_at_load() + "\n";
    for (auto& c : function_constant_decls())
      r += std::to_string(c.index) + " " + std::to_string(c.dtype) + " " + c.name + "\n";
    return r;
  }();
  return s.c_str();
}

} // namespace metalsim::rt

#define is_function_constant_defined(name) ((name).is_defined())
