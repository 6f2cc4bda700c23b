// Stage 4, dispatch: run a kernel of a loaded library over a grid of threadgroups.
#include <algorithm>
#include <cstring>
#include <memory>

#include "internal.h"
#include "metalsim/abi.h"

namespace metalsim {

namespace {

// Metal buffers are always well aligned, and kernels rely on it (a `device const float4*` load
// is a 16-byte aligned load). Host memory need not be: MLX's CPU allocator returns addresses at
// 8 mod 16, and a NumPy view can start anywhere. Bound arrays whose memory starts misaligned
// are run on an aligned copy, written back after the dispatch wherever the kernel changed it.
// Bindings that overlap (the same array bound twice, an output sharing its input's buffer)
// share one copy, so they still alias as they do in memory.
class AlignedCopies {
 public:
  static constexpr uintptr_t kAlign = 16; // the largest vector type (float4, int4)

  explicit AlignedCopies(std::vector<metalsim_binding>& bufs) {
    std::vector<size_t> order;
    for (size_t i = 0; i < bufs.size(); ++i)
      if (bufs[i].data && bufs[i].size > 0 && !bufs[i].is_bytes)
        order.push_back(i);
    auto lo = [&](size_t i) { return reinterpret_cast<uintptr_t>(bufs[i].data); };
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return lo(x) < lo(y); });
    for (size_t k = 0; k < order.size();) {
      uintptr_t begin = lo(order[k]), end = begin + bufs[order[k]].size;
      size_t k2 = k + 1;
      while (k2 < order.size() && lo(order[k2]) < end) {
        end = std::max<uintptr_t>(end, lo(order[k2]) + bufs[order[k2]].size);
        ++k2;
      }
      if (begin % kAlign != 0) {
        Region r;
        r.host = reinterpret_cast<unsigned char*>(begin);
        r.size = end - begin;
        r.storage.reset(new unsigned char[r.size + 64]);
        uintptr_t p = reinterpret_cast<uintptr_t>(r.storage.get());
        r.copy = reinterpret_cast<unsigned char*>((p + 63) & ~uintptr_t(63));
        std::memcpy(r.copy, r.host, r.size);
        for (size_t j = k; j < k2; ++j)
          bufs[order[j]].data = r.copy + (lo(order[j]) - begin);
        regions_.push_back(std::move(r));
      }
      k = k2;
    }
  }
  // Writes what the kernel changed back to the caller's memory (compare first: an input may
  // live in memory that must not be written, and unchanged bytes need no write).
  void copy_back() {
    for (auto& r : regions_)
      if (std::memcmp(r.host, r.copy, r.size) != 0)
        std::memcpy(r.host, r.copy, r.size);
    regions_.clear();
  }

 private:
  struct Region {
    unsigned char* host = nullptr;
    unsigned char* copy = nullptr;
    size_t size = 0;
    std::unique_ptr<unsigned char[]> storage;
  };
  std::vector<Region> regions_;
};

} // namespace

void Library::dispatch(
    const std::string& kernel,
    Size3 grid,
    Size3 group,
    const Bindings& bindings,
    bool grid_is_threads,
    int workers) const {
  std::vector<metalsim_binding> bufs;
  for (auto& [idx, b] : bindings.buffers()) {
    if (size_t(idx) >= bufs.size())
      bufs.resize(size_t(idx) + 1, metalsim_binding{nullptr, 0, 0, 0});
    bufs[size_t(idx)] = metalsim_binding{b.data, b.size, int32_t(b.dtype), b.is_bytes ? 1 : 0};
    // A zero-length array still counts as bound.
    if (!bufs[size_t(idx)].data)
      bufs[size_t(idx)].data = const_cast<char*>("");
  }
  AlignedCopies aligned(bufs);
  std::vector<uint64_t> tg;
  for (auto& [idx, len] : bindings.threadgroup_lengths()) {
    if (size_t(idx) >= tg.size())
      tg.resize(size_t(idx) + 1, 0);
    tg[size_t(idx)] = len;
  }
  metalsim_dispatch_args a{};
  a.abi_version = METALSIM_ABI_VERSION;
  a.kernel = kernel.c_str();
  a.grid[0] = grid.x;
  a.grid[1] = grid.y;
  a.grid[2] = grid.z;
  a.group[0] = group.x;
  a.group[1] = group.y;
  a.group[2] = group.z;
  a.grid_is_threads = grid_is_threads ? 1 : 0;
  a.n_buffers = uint32_t(bufs.size());
  a.buffers = bufs.data();
  a.n_threadgroup = uint32_t(tg.size());
  a.threadgroup_lengths = tg.data();
  a.n_workers = workers;
  std::vector<char> err(8192, 0);
  int rc = reinterpret_cast<metalsim_dispatch_fn>(dispatch_fn_)(&a, err.data(), err.size());
  aligned.copy_back();
  std::string msg = err.data();
  switch (rc) {
  case METALSIM_OK:
    return;
  case METALSIM_ERR_KERNEL_NOT_FOUND:
    throw KernelNotFoundError(msg);
  case METALSIM_ERR_BINDING:
    throw BindingError(msg);
  case METALSIM_ERR_LIMIT:
    throw LimitError(msg);
  case METALSIM_ERR_DEADLOCK:
    throw DeadlockError(msg);
  default:
    throw DispatchError(msg);
  }
}

} // namespace metalsim
