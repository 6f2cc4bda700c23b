// Stage 4, dispatch: run a kernel of a loaded library over a grid of threadgroups.
//
// The host's part of the sanitizer lives here: the bound memory is copied into guarded pages
// (so that the kernel library can tell an access outside a buffer from one inside it, and a
// stray pointer faults instead of corrupting the process), a dispatch gets its deadline and its
// schedule from the environment, and Ctrl-C stops it.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "internal.h"
#include "metalsim/abi.h"

namespace metalsim {

namespace {

// The bound memory of a dispatch, copied into one reservation of address space:
//
//   [ guard | copy of region 0 | guard | copy of region 1 | guard | ... ]
//
// A region is the memory of one binding, or of several that overlap (the same array bound
// twice, an output sharing its input's buffer: they share one copy and still alias). Each copy
// starts at a page, as Metal's buffers do, so a kernel sees the alignment a Mac gives it. The
// guards (PROT_NONE, gigabytes wide, no memory behind them) fault on any access that the
// kernel library's checks did not see; they also tell those checks which accesses are out of
// bounds. A region whose bindings are all read-only is mapped read-only. After the dispatch,
// what the kernel changed is copied back.
class GuardedCopies {
 public:
  explicit GuardedCopies(std::vector<metalsim_binding>& bufs) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    std::vector<size_t> order;
    for (size_t i = 0; i < bufs.size(); ++i)
      if (bufs[i].data)
        order.push_back(i);
    auto lo = [&](size_t i) { return reinterpret_cast<uintptr_t>(bufs[i].data) - bufs[i].before; };
    auto hi = [&](size_t i) { return reinterpret_cast<uintptr_t>(bufs[i].data) + bufs[i].size; };
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return lo(x) < lo(y); });
    struct Group {
      size_t k0, k1;
      uintptr_t begin, end;
      bool read_only;
    };
    std::vector<Group> groups;
    for (size_t k = 0; k < order.size();) {
      Group g{k, k + 1, lo(order[k]), hi(order[k]), bufs[order[k]].read_only != 0};
      // Bytes (setBytes copies) never share memory with anything else.
      while (!bufs[order[k]].is_bytes && g.k1 < order.size() && !bufs[order[g.k1]].is_bytes &&
             lo(order[g.k1]) < g.end) {
        g.end = std::max(g.end, hi(order[g.k1]));
        g.read_only = g.read_only && bufs[order[g.k1]].read_only;
        ++g.k1;
      }
      groups.push_back(g);
      k = g.k1;
    }
    if (groups.empty())
      return;
    auto pages = [&](size_t n) { return (std::max<size_t>(n, 1) + page - 1) / page * page; };
    size_t data_len = 0;
    for (auto& g : groups)
      data_len += pages(g.end - g.begin);
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
    flags |= MAP_NORESERVE;
#endif
    // 16 GiB guards catch an index that is off by up to 2^32 floats; smaller where the address
    // space is short (an emulator).
    for (size_t guard = size_t(16) << 30; guard >= page && !map_; guard /= 16) {
      size_t len = data_len + (groups.size() + 1) * guard;
      void* m = mmap(nullptr, len, PROT_NONE, flags, -1, 0);
      if (m == MAP_FAILED)
        continue;
      map_ = static_cast<unsigned char*>(m);
      map_len_ = len;
      guard_ = guard;
    }
    if (!map_)
      throw Error("metalsim: cannot reserve address space for the bound buffers");
    unsigned char* at = map_ + guard_;
    for (auto& g : groups) {
      size_t n = g.end - g.begin;
      size_t len = pages(n);
      if (mprotect(at, len, PROT_READ | PROT_WRITE) != 0)
        throw Error("metalsim: cannot map memory for a bound buffer");
      Region r;
      r.host = reinterpret_cast<unsigned char*>(g.begin);
      r.copy = at;
      r.size = n;
      r.read_only = g.read_only;
      if (n)
        std::memcpy(r.copy, r.host, n);
      if (g.read_only)
        mprotect(at, len, PROT_READ);
      for (size_t j = g.k0; j < g.k1; ++j) {
        metalsim_binding& b = bufs[order[j]];
        b.data = r.copy + (reinterpret_cast<uintptr_t>(b.data) - g.begin);
      }
      regions_.push_back(r);
      at += len + guard_;
    }
  }
  GuardedCopies(const GuardedCopies&) = delete;
  GuardedCopies& operator=(const GuardedCopies&) = delete;
  ~GuardedCopies() {
    if (map_)
      munmap(map_, map_len_);
  }
  uint64_t lo() const {
    return reinterpret_cast<uintptr_t>(map_);
  }
  uint64_t hi() const {
    return reinterpret_cast<uintptr_t>(map_) + map_len_;
  }
  // Writes what the kernel changed back to the caller's memory (compare first: an input may
  // live in memory that must not be written, and unchanged bytes need no write).
  void copy_back() {
    for (auto& r : regions_)
      if (!r.read_only && r.size && std::memcmp(r.host, r.copy, r.size) != 0)
        std::memcpy(r.host, r.copy, r.size);
  }

 private:
  struct Region {
    unsigned char* host = nullptr;
    unsigned char* copy = nullptr;
    size_t size = 0;
    bool read_only = false;
  };
  std::vector<Region> regions_;
  unsigned char* map_ = nullptr;
  size_t map_len_ = 0;
  size_t guard_ = 0;
};

// Ctrl-C during a dispatch: while any dispatch runs, SIGINT goes to the handler that was there
// before (Python's, which raises KeyboardInterrupt once the dispatch has returned) and then sets
// g_interrupted, which the running dispatches watch. In that order, so that a dispatch which has
// seen g_interrupted and returned finds the signal already marked for Python, whichever thread
// the signal ran on. A process that ignores SIGINT (a background job, nohup) keeps ignoring it:
// its dispatches run on.
volatile int32_t g_interrupted = 0;
std::mutex g_sigint_mu;
int g_sigint_users = 0;
struct sigaction g_prev_sigint;

void on_sigint(int sig, siginfo_t* si, void* ctx) {
  const struct sigaction& p = g_prev_sigint;
  if ((p.sa_flags & SA_SIGINFO) && p.sa_sigaction)
    p.sa_sigaction(sig, si, ctx);
  else if (!(p.sa_flags & SA_SIGINFO) && p.sa_handler != SIG_IGN && p.sa_handler != SIG_DFL)
    p.sa_handler(sig);
  else if (p.sa_handler == SIG_DFL) {
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
    return;
  }
  std::atomic_thread_fence(std::memory_order_seq_cst); // what the handler wrote, before the flag
  g_interrupted = 1;
}

bool g_sigint_hooked = false; // on_sigint installed (SIGINT was not ignored)

struct SigintWatch {
  SigintWatch() {
    std::lock_guard<std::mutex> lk(g_sigint_mu);
    if (g_sigint_users++ == 0) {
      g_interrupted = 0;
      struct sigaction now;
      sigaction(SIGINT, nullptr, &now);
      g_sigint_hooked = (now.sa_flags & SA_SIGINFO) || now.sa_handler != SIG_IGN;
      if (g_sigint_hooked) {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = &on_sigint;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &g_prev_sigint);
      }
    }
  }
  ~SigintWatch() {
    std::lock_guard<std::mutex> lk(g_sigint_mu);
    if (--g_sigint_users == 0 && g_sigint_hooked)
      sigaction(SIGINT, &g_prev_sigint, nullptr);
  }
};

double timeout_from_env() {
  const char* e = detail::getenv_nonempty("METALSIM_TIMEOUT");
  if (!e)
    return 60.0;
  char* end = nullptr;
  double v = std::strtod(e, &end);
  if (end == e || *end != '\0' || !(v >= 0))
    throw Error(
        std::string("METALSIM_TIMEOUT must be a number of seconds (0: no deadline), got '") + e +
        "'");
  return v;
}

void schedule_from_env(int32_t& schedule, uint64_t& seed) {
  schedule = METALSIM_SCHEDULE_FORWARD;
  seed = 0;
  const char* e = detail::getenv_nonempty("METALSIM_SCHEDULE");
  if (!e)
    return;
  std::string s = e;
  if (s == "forward")
    return;
  if (s == "reverse") {
    schedule = METALSIM_SCHEDULE_REVERSE;
    return;
  }
  if (s == "random" || s.rfind("random:", 0) == 0) {
    schedule = METALSIM_SCHEDULE_RANDOM;
    if (s.size() > 7) {
      char* end = nullptr;
      seed = std::strtoull(s.c_str() + 7, &end, 10);
      if (*end != '\0')
        throw Error("METALSIM_SCHEDULE=random:SEED needs an integer seed, got '" + s + "'");
    }
    return;
  }
  throw Error("METALSIM_SCHEDULE must be forward, reverse, random or random:SEED, got '" + s + "'");
}

} // namespace

void Library::dispatch(
    const std::string& kernel,
    Size3 grid,
    Size3 group,
    const Bindings& bindings,
    bool grid_is_threads,
    int workers,
    const FunctionConstants& constants) const {
  std::vector<metalsim_binding> bufs;
  for (auto& [idx, b] : bindings.buffers()) {
    if (size_t(idx) >= bufs.size())
      bufs.resize(size_t(idx) + 1, metalsim_binding{});
    metalsim_binding& m = bufs[size_t(idx)];
    m.data = b.data;
    m.size = b.size;
    m.dtype = int32_t(b.dtype);
    m.is_bytes = b.is_bytes ? 1 : 0;
    m.before = b.before;
    m.read_only = b.read_only ? 1 : 0;
    // A zero-length array still counts as bound.
    if (!m.data) {
      m.data = const_cast<char*>("");
      m.before = 0;
    }
  }
  metalsim_dispatch_args a{};
  a.timeout_s = timeout_from_env();
  schedule_from_env(a.schedule, a.seed);
  GuardedCopies copies(bufs);
  std::vector<uint64_t> tg;
  for (auto& [idx, len] : bindings.threadgroup_lengths()) {
    if (size_t(idx) >= tg.size())
      tg.resize(size_t(idx) + 1, 0);
    tg[size_t(idx)] = len;
  }
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
  a.guard_lo = copies.lo();
  a.guard_hi = copies.hi();
  a.cancel = &g_interrupted;
  std::vector<metalsim_constant> consts;
  for (auto& [index, v] : constants) {
    metalsim_constant c{};
    c.index = index;
    c.dtype = int32_t(v.dtype);
    if (detail::is_float_dtype(v.dtype))
      c.value.f = v.f;
    else
      c.value.i = v.i;
    consts.push_back(c);
  }
  a.n_constants = uint32_t(consts.size());
  a.constants = consts.data();
  std::vector<char> err(8192, 0);
  int rc;
  {
    SigintWatch watch;
    rc = reinterpret_cast<metalsim_dispatch_fn>(dispatch_fn_)(&a, err.data(), err.size());
  }
  copies.copy_back();
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
  case METALSIM_ERR_RACE:
    throw RaceError(msg);
  case METALSIM_ERR_MEMORY:
    throw MemoryAccessError(msg);
  case METALSIM_ERR_TIMEOUT:
    throw TimeoutError(msg);
  case METALSIM_ERR_INTERRUPTED:
    throw InterruptedError(msg);
  default:
    throw DispatchError(msg);
  }
}

} // namespace metalsim
