// metalsim: the execution runtime compiled into every kernel library.
//
// One dispatch = a grid of threadgroups. Threadgroups are handed out to a pool of OS threads
// (workers, one per core, METALSIM_THREADS overrides). A worker runs one threadgroup at a time:
// every thread of the group is a cooperative fiber with its own stack, all on the worker's OS
// thread. A fiber runs until it reaches a barrier, a SIMD collective or its end; then the next
// ready lane of its SIMD group runs (a direct stack switch, a few nanoseconds).
//
// Scheduling of one group (the scheduler runs on the worker's own stack):
//   repeat:
//     for each SIMD group: run its ready lanes in lane order until none is ready;
//                          lanes waiting at the same collective call site form the active set
//                          and complete together (lanes that returned or wait at a barrier are
//                          inactive, as divergent lanes are on hardware); repeat. Then, if
//                          lanes wait at a simdgroup_barrier: when every live lane of the SIMD
//                          group waits at that same one, release them and repeat; otherwise the
//                          SIMD group is deadlocked.
//     now every live thread waits at a threadgroup barrier: if all at the same call site,
//     release them all; otherwise the group is deadlocked (error naming the sites and threads).
//
// Each fiber stack has a PROT_NONE guard region under it, and kernels are compiled with stack
// probes, so a thread whose private memory outgrows its stack faults on its own guard; a
// SIGSEGV/SIGBUS handler (on an alternate signal stack) turns that fault into an error.
//
// Threadgroup memory (kernel-body `threadgroup` arrays and [[threadgroup(n)]] buffers) is one
// arena per worker, refilled with 0xFF bytes (NaN for float/half/bfloat) for every group.
#pragma once

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "metalsim/abi.h"
#include "metalsim_types.h"

namespace metalsim::rt {

using metal::uint;
using uint3 = metal::vec<unsigned int, 3>;

constexpr unsigned kSimdWidth = 32;
constexpr unsigned kMaxThreadsPerGroup = 1024;
constexpr size_t kMaxThreadgroupMemory = 32768;
constexpr size_t kSlotBytes = 16; // largest value a SIMD collective exchanges (float4)

// The .metal call site of a barrier or collective, captured by a default argument.
struct Site {
  const char* file;
  unsigned line;
  Site(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) : file(f), line(l) {}
  bool operator==(const Site& o) const {
    return line == o.line && (file == o.file || std::strcmp(file, o.file) == 0);
  }
};

// Barrier: at a threadgroup_barrier; SimdBarrier: at a simdgroup_barrier; Simd: at a value
// collective (simd_sum, simd_shuffle, simdgroup_matrix products, ...).
enum class State : uint8_t { Ready, Barrier, SimdBarrier, Simd, Done };

struct Worker;
struct SimdGroup;
using CombineFn = void (*)(SimdGroup&, uint32_t active_mask);

struct Fiber {
  void* sp;
  Worker* w;
  State state;
  uint16_t lane;
  uint16_t sg;
  uint32_t linear;
  uint3 tpitg;
  Site site;
  CombineFn combine;
  char* stack_top;
};

struct SimdGroup {
  alignas(16) unsigned char in[kSimdWidth][kSlotBytes];
  alignas(16) unsigned char out[kSimdWidth][kSlotBytes];
  uint32_t arg[kSimdWidth];
  void* ptr[kSimdWidth];
  uint32_t first;  // linear id of lane 0
  uint32_t nlanes; // lanes that exist (the last group may be partial)
};

struct TgDecl {
  const char* name;
  size_t size;
  size_t align;
  unsigned line;
};

struct Dispatch;
struct Errors;

struct KernelInfo {
  const char* name;
  const char* file;
  unsigned line;
  void (*thread_fn)(Fiber&);
  void (*check)(const Dispatch&, Errors&);
  const TgDecl* tg_decls;
  size_t n_tg_decls;
  unsigned max_threads; // [[max_total_threads_per_threadgroup(n)]] or 1024
};

// Collects the first error of a dispatch (any worker may report one).
struct Errors {
  std::mutex mu;
  std::atomic<bool> failed{false};
  int status = METALSIM_OK;
  std::string message;
  void fail(int st, std::string msg) {
    std::lock_guard<std::mutex> lk(mu);
    if (!failed.load()) {
      status = st;
      message = std::move(msg);
      failed.store(true);
    }
  }
};

inline std::string format(const char* fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

struct Dispatch {
  const KernelInfo* kernel;
  const metalsim_dispatch_args* args;
  uint3 groups;       // threadgroups per grid
  uint3 group_size;   // nominal threads per threadgroup
  uint3 grid_threads; // threads per grid (exact for dispatch_threads)
  bool nonuniform;    // dispatch_threads: edge groups are cut to the grid
  std::vector<size_t> tg_decl_offsets;
  size_t tg_buffer_offsets[32];
  size_t arena_bytes;
  std::atomic<uint64_t> next_group{0};
  uint64_t total_groups;
  Errors errors;
};

// ---------------------------------------------------------------- context switch

extern "C" void metalsim_ctx_switch_v1(void** save_sp, void* load_sp);
extern "C" void metalsim_fiber_entry_v1();

// Lays out a fresh frame so that switching to it enters metalsim_fiber_entry_v1, which calls
// fn(arg) on the new stack. The frame matches the register save order of the switch.
inline void* init_stack(char* top, void (*fn)(void*), void* arg) {
  uintptr_t t = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
#if defined(__x86_64__)
  // A new fiber starts with the floating-point control state of the thread that creates it.
  uint32_t mxcsr;
  uint16_t x87cw;
  __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(x87cw));
  void** f = reinterpret_cast<void**>(t - 64);
  f[0] = reinterpret_cast<void*>(uintptr_t(mxcsr) | uintptr_t(x87cw) << 32); // MXCSR, x87 CW
  f[1] = nullptr;                                                            // r15
  f[2] = nullptr;                                                            // r14
  f[3] = reinterpret_cast<void*>(fn);                                        // r13
  f[4] = arg;                                                                // r12
  f[5] = nullptr;                                                            // rbx
  f[6] = nullptr;                                                            // rbp
  f[7] = reinterpret_cast<void*>(&metalsim_fiber_entry_v1);                  // return address
  return f;
#elif defined(__aarch64__)
  uint64_t fpcr;
  __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
  void** f = reinterpret_cast<void**>(t - 176);
  std::memset(f, 0, 176);
  f[0] = arg;                                                // x19
  f[1] = reinterpret_cast<void*>(fn);                        // x20
  f[10] = nullptr;                                           // x29 (fp): ends the frame chain
  f[11] = reinterpret_cast<void*>(&metalsim_fiber_entry_v1); // x30 (lr)
  f[20] = reinterpret_cast<void*>(fpcr);                     // FPCR
  return f;
#else
#error "metalsim: the fiber switch is written for x86-64 and aarch64 only"
#endif
}

// ---------------------------------------------------------------- workers

struct Worker {
  Dispatch* d = nullptr;
  void* main_sp = nullptr;
  Fiber* current = nullptr;
  uint3 tgpig; // this group's position in the grid
  uint3 tptg;  // this group's actual size
  uint32_t nthreads = 0;
  uint32_t nsg = 0;
  // Fiber stacks: slot i is [guard | stack of thread i], the stack growing down to its guard.
  char* stacks = nullptr;
  size_t stack_size = 0; // usable bytes per thread (METALSIM_STACK_KB)
  size_t guard_size = 0; // PROT_NONE bytes under each stack
  size_t slot_size = 0;
  size_t stacks_len = 0;
  uint32_t guarded = 0;  // slots [0, guarded) have their guard
  bool guards_ok = true; // false once mprotect failed (too many mappings): unguarded from then
  // Stack-overflow trap: the fault handler jumps back to worker_loop through `trap`.
  sigjmp_buf trap;
  volatile sig_atomic_t trap_armed = 0;
  Fiber* volatile overflowed = nullptr;
  char* altstack = nullptr;
  size_t altstack_len = 0;
  alignas(64) unsigned char arena[kMaxThreadgroupMemory + 64];
  SimdGroup sgs[kMaxThreadsPerGroup / kSimdWidth];
  Fiber fibers[kMaxThreadsPerGroup];

  Worker() {
    size_t page = size_t(sysconf(_SC_PAGESIZE));
    size_t kb = 256;
    if (const char* e = std::getenv("METALSIM_STACK_KB")) {
      long v = std::atol(e);
      if (v >= 16)
        kb = size_t(v);
    }
    stack_size = (kb * 1024 + page - 1) / page * page;
    // 64 KiB: GCC's stack probes on aarch64 step by up to 64 KiB (and it costs no memory).
    guard_size = (size_t(65536) + page - 1) / page * page;
    slot_size = guard_size + stack_size;
    stacks_len = slot_size * kMaxThreadsPerGroup;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
    flags |= MAP_NORESERVE;
#endif
    void* p = mmap(nullptr, stacks_len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED)
      throw std::bad_alloc();
    stacks = static_cast<char*>(p);
    altstack_len = 128 * 1024;
    void* a =
        mmap(nullptr, altstack_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
      munmap(stacks, stacks_len);
      throw std::bad_alloc();
    }
    altstack = static_cast<char*>(a);
  }
  ~Worker() {
    if (stacks)
      munmap(stacks, stacks_len);
    if (altstack)
      munmap(altstack, altstack_len);
  }
  // Guards the stacks of threads [0, n): done lazily, as each guard costs two memory mappings
  // and the kernel's map count is limited (vm.max_map_count); if mprotect fails, the remaining
  // stacks simply stay unguarded.
  void ensure_guards(uint32_t n) {
    while (guards_ok && guarded < n) {
      if (mprotect(stacks + size_t(guarded) * slot_size, guard_size, PROT_NONE) != 0)
        guards_ok = false;
      else
        ++guarded;
    }
  }
  char* stack_top(uint32_t i) const {
    return stacks + (size_t(i) + 1) * slot_size;
  }
  // Whether addr lies in the guard of a stack.
  bool in_guard(uintptr_t addr) const {
    uintptr_t base = reinterpret_cast<uintptr_t>(stacks);
    return addr >= base && addr < base + stacks_len && (addr - base) % slot_size < guard_size;
  }
};

inline thread_local Worker* tls_worker = nullptr;

// Workers are reused between dispatches (their stacks are the expensive part).
struct WorkerPool {
  std::mutex mu;
  std::vector<std::unique_ptr<Worker>> free;
  std::unique_ptr<Worker> get() {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!free.empty()) {
        auto w = std::move(free.back());
        free.pop_back();
        return w;
      }
    }
    return std::make_unique<Worker>();
  }
  void put(std::unique_ptr<Worker> w) {
    std::lock_guard<std::mutex> lk(mu);
    free.push_back(std::move(w));
  }
};
inline WorkerPool& worker_pool() {
  static WorkerPool* pool = new WorkerPool(); // never destroyed: may outlive static teardown
  return *pool;
}

inline Fiber& current_fiber() {
  return *tls_worker->current;
}

// Gives up the OS thread: resumes the next ready lane of the same SIMD group, or the scheduler.
inline void block(Fiber& f) {
  Worker& w = *f.w;
  SimdGroup& g = w.sgs[f.sg];
  for (uint32_t l = f.lane + 1u; l < g.nlanes; ++l) {
    Fiber& n = w.fibers[g.first + l];
    if (n.state == State::Ready) {
      w.current = &n;
      metalsim_ctx_switch_v1(&f.sp, n.sp);
      return;
    }
  }
  w.current = nullptr;
  metalsim_ctx_switch_v1(&f.sp, w.main_sp);
}

inline void fiber_main(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
  Dispatch& d = *f.w->d;
  try {
    d.kernel->thread_fn(f);
  } catch (const std::exception& e) {
    d.errors.fail(
        METALSIM_ERR_RUNTIME,
        format("kernel '%s': thread %u threw: %s", d.kernel->name, f.linear, e.what()));
  } catch (...) {
    d.errors.fail(
        METALSIM_ERR_RUNTIME,
        format("kernel '%s': thread %u threw an exception", d.kernel->name, f.linear));
  }
  f.state = State::Done;
  block(f);
  std::abort(); // a finished fiber is never resumed
}

// ---------------------------------------------------------------- collectives and barriers

// Runs on a lane: deposit the value, wait until the active set is complete, read the result.
template <class T>
inline T collective(const T& v, uint32_t arg, CombineFn combine, const Site& site) {
  static_assert(sizeof(T) <= kSlotBytes, "SIMD collective on a type larger than 16 bytes");
  Fiber& f = current_fiber();
  SimdGroup& g = f.w->sgs[f.sg];
  std::memcpy(g.in[f.lane], &v, sizeof(T));
  g.arg[f.lane] = arg;
  f.site = site;
  f.combine = combine;
  f.state = State::Simd;
  block(f);
  T r;
  std::memcpy(&r, g.out[f.lane], sizeof(T));
  return r;
}

// Same, exchanging a pointer to lane-private data (simdgroup_matrix products).
inline void collective_ptr(void* p, CombineFn combine, const Site& site) {
  Fiber& f = current_fiber();
  SimdGroup& g = f.w->sgs[f.sg];
  g.ptr[f.lane] = p;
  f.site = site;
  f.combine = combine;
  f.state = State::Simd;
  block(f);
}

inline void barrier(const Site& site) {
  Fiber& f = current_fiber();
  f.site = site;
  f.state = State::Barrier;
  block(f);
}

inline void simd_barrier(const Site& site) {
  Fiber& f = current_fiber();
  f.site = site;
  f.state = State::SimdBarrier;
  block(f);
}

inline uint32_t lane_of_current() {
  return current_fiber().lane;
}

// ---------------------------------------------------------------- the scheduler

inline uint3 builtin_tpig(const Fiber& f) {
  const Worker& w = *f.w;
  const uint3& gs = w.d->group_size;
  return uint3(
      w.tgpig.x * gs.x + f.tpitg.x, w.tgpig.y * gs.y + f.tpitg.y, w.tgpig.z * gs.z + f.tpitg.z);
}

inline std::string thread_desc(const Worker& w, const Fiber& f) {
  (void)w;
  return format(
      "thread %u (thread_position_in_threadgroup (%u,%u,%u), simdgroup %u, lane %u)",
      f.linear,
      f.tpitg.x,
      f.tpitg.y,
      f.tpitg.z,
      unsigned(f.sg),
      unsigned(f.lane));
}

// "N thread(s) wait at the <what> at file:line, e.g. <thread>" for each distinct wait, in thread
// order, then how many returned. fibers: [first, first + n).
inline std::string describe_waits(const Worker& w, uint32_t first, uint32_t n, const char* who) {
  std::vector<const Fiber*> reps;
  std::vector<unsigned> counts;
  unsigned done = 0;
  for (uint32_t i = first; i < first + n; ++i) {
    const Fiber& f = w.fibers[i];
    if (f.state == State::Done) {
      ++done;
      continue;
    }
    size_t k = 0;
    while (k < reps.size() && !(reps[k]->state == f.state && reps[k]->site == f.site))
      ++k;
    if (k == reps.size()) {
      reps.push_back(&f);
      counts.push_back(0);
    }
    ++counts[k];
  }
  std::string msg;
  for (size_t k = 0; k < reps.size(); ++k) {
    const char* what = reps[k]->state == State::SimdBarrier ? "simdgroup_barrier"
                       : reps[k]->state == State::Barrier   ? "threadgroup_barrier"
                                                            : "SIMD-group function";
    msg += format(
        "\n  %u %s wait%s at the %s at %s:%u, e.g. %s",
        counts[k],
        who,
        counts[k] == 1 ? "s" : "",
        what,
        reps[k]->site.file,
        reps[k]->site.line,
        thread_desc(w, *reps[k]).c_str());
  }
  if (done)
    msg += format("\n  %u %s ha%s returned", done, who, done == 1 ? "s" : "ve");
  return msg;
}

// Runs the lanes of one SIMD group until every live lane waits at a threadgroup barrier or has
// returned. False (and an error recorded) if its lanes deadlock at a simdgroup_barrier.
inline bool run_simdgroup(Worker& w, SimdGroup& g) {
  for (;;) {
    Fiber* first = nullptr;
    for (uint32_t l = 0; l < g.nlanes; ++l) {
      Fiber& f = w.fibers[g.first + l];
      if (f.state == State::Ready) {
        first = &f;
        break;
      }
    }
    if (first) {
      w.current = first;
      metalsim_ctx_switch_v1(&w.main_sp, first->sp);
      // Every lane of g is now blocked or done: complete the collectives they wait at.
      uint32_t pending = 0;
      for (uint32_t l = 0; l < g.nlanes; ++l)
        if (w.fibers[g.first + l].state == State::Simd)
          pending |= 1u << l;
      while (pending) {
        uint32_t l0 = uint32_t(__builtin_ctz(pending));
        Fiber& f0 = w.fibers[g.first + l0];
        uint32_t mask = 0;
        for (uint32_t l = l0; l < g.nlanes; ++l) {
          Fiber& f = w.fibers[g.first + l];
          if ((pending >> l & 1u) && f.site == f0.site && f.combine == f0.combine)
            mask |= 1u << l;
        }
        f0.combine(g, mask);
        for (uint32_t l = l0; l < g.nlanes; ++l)
          if (mask >> l & 1u)
            w.fibers[g.first + l].state = State::Ready;
        pending &= ~mask;
      }
      continue;
    }
    // No lane can run: each waits at a barrier of either kind or has returned.
    const Fiber* sb = nullptr;
    bool release = true;
    for (uint32_t l = 0; l < g.nlanes; ++l) {
      const Fiber& f = w.fibers[g.first + l];
      if (f.state == State::Done)
        continue;
      if (f.state != State::SimdBarrier)
        release = false;
      else if (!sb)
        sb = &f;
      else if (!(f.site == sb->site))
        release = false;
    }
    if (!sb)
      return true; // only threadgroup barriers (or nothing) left: the group decides
    if (release) {
      for (uint32_t l = 0; l < g.nlanes; ++l)
        if (w.fibers[g.first + l].state == State::SimdBarrier)
          w.fibers[g.first + l].state = State::Ready;
      continue;
    }
    Dispatch& d = *w.d;
    d.errors.fail(
        METALSIM_ERR_DEADLOCK,
        format(
            "kernel '%s': deadlock in threadgroup (%u,%u,%u), SIMD group %u: a "
            "simdgroup_barrier waits for every live lane of its SIMD group, but the live "
            "lanes wait at different places and none can proceed:",
            d.kernel->name,
            w.tgpig.x,
            w.tgpig.y,
            w.tgpig.z,
            unsigned(sb->sg)) +
            describe_waits(w, g.first, g.nlanes, "lane(s)"));
    return false;
  }
}

// Runs one threadgroup to completion; false if the dispatch failed.
inline bool run_group(Worker& w, uint64_t gidx) {
  Dispatch& d = *w.d;
  uint64_t gx = d.groups.x, gy = d.groups.y;
  w.tgpig = uint3(uint32_t(gidx % gx), uint32_t((gidx / gx) % gy), uint32_t(gidx / (gx * gy)));
  w.tptg = d.group_size;
  if (d.nonuniform) {
    for (int i = 0; i < 3; ++i) {
      uint32_t start = w.tgpig[i] * d.group_size[i];
      uint32_t left = d.grid_threads[i] - start;
      if (left < w.tptg[i])
        w.tptg[i] = left;
    }
  }
  const uint32_t n = w.tptg.x * w.tptg.y * w.tptg.z;
  w.nthreads = n;
  w.nsg = (n + kSimdWidth - 1) / kSimdWidth;
  std::memset(w.arena, 0xFF, d.arena_bytes); // poison: NaN for every float type
  for (uint32_t i = 0; i < n; ++i) {
    Fiber& f = w.fibers[i];
    f.w = &w;
    f.state = State::Ready;
    f.linear = i;
    f.lane = uint16_t(i % kSimdWidth);
    f.sg = uint16_t(i / kSimdWidth);
    f.tpitg = uint3(i % w.tptg.x, (i / w.tptg.x) % w.tptg.y, i / (w.tptg.x * w.tptg.y));
    f.stack_top = w.stack_top(i);
    f.sp = init_stack(f.stack_top, &fiber_main, &f);
    f.combine = nullptr;
  }
  w.ensure_guards(n);
  for (uint32_t s = 0; s < w.nsg; ++s) {
    w.sgs[s].first = s * kSimdWidth;
    w.sgs[s].nlanes = std::min<uint32_t>(kSimdWidth, n - s * kSimdWidth);
  }
  for (;;) {
    for (uint32_t s = 0; s < w.nsg; ++s)
      if (!run_simdgroup(w, w.sgs[s]))
        return false;
    if (d.errors.failed.load(std::memory_order_relaxed))
      return false;
    // Every live thread now waits at a barrier.
    const Fiber* first = nullptr;
    bool same = true;
    for (uint32_t i = 0; i < n; ++i) {
      const Fiber& f = w.fibers[i];
      if (f.state == State::Done)
        continue;
      if (!first)
        first = &f;
      else if (!(f.site == first->site))
        same = false;
    }
    if (!first)
      return true;
    if (same) {
      for (uint32_t i = 0; i < n; ++i)
        if (w.fibers[i].state == State::Barrier)
          w.fibers[i].state = State::Ready;
      continue;
    }
    // Deadlock: describe who waits where.
    std::string msg = format(
        "kernel '%s': deadlock in threadgroup (%u,%u,%u): the live threads of the group wait at "
        "different threadgroup_barrier calls and none can proceed (every live thread must reach "
        "the same barrier):",
        d.kernel->name,
        w.tgpig.x,
        w.tgpig.y,
        w.tgpig.z);
    msg += describe_waits(w, 0, n, "thread(s)");
    d.errors.fail(METALSIM_ERR_DEADLOCK, msg);
    return false;
  }
}

// ---------------------------------------------------------------- stack overflow

// The handlers that were installed before this library's (a fault that is not a fiber's stack
// overflow goes to them, or gets the default action).
struct PrevHandlers {
  struct sigaction segv, bus;
};
inline PrevHandlers& prev_handlers() {
  static PrevHandlers p;
  return p;
}

inline void on_fault(int sig, siginfo_t* si, void* ctx) {
  Worker* w = tls_worker;
  if (w && w->trap_armed && w->current && w->in_guard(reinterpret_cast<uintptr_t>(si->si_addr))) {
    w->trap_armed = 0;
    w->overflowed = w->current;
    siglongjmp(w->trap, 1); // back to worker_loop, on the worker's own stack
  }
  const struct sigaction& prev = sig == SIGBUS ? prev_handlers().bus : prev_handlers().segv;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, si, ctx);
    return;
  }
  if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  // Default action: uninstall and return; the faulting instruction runs again and the process
  // dies of the signal as it would have without metalsim.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
}

inline void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &prev_handlers().segv);
    sigaction(SIGBUS, &sa, &prev_handlers().bus);
  });
}

// ---------------------------------------------------------------- workers' loop

inline void run_groups(Worker& w, Dispatch& d) {
  for (;;) {
    if (d.errors.failed.load(std::memory_order_relaxed))
      break;
    uint64_t g = d.next_group.fetch_add(1);
    if (g >= d.total_groups)
      break;
    if (!run_group(w, g))
      break;
  }
}

inline void worker_loop(Dispatch& d) {
  install_fault_handler();
  auto owned = worker_pool().get();
  Worker& w = *owned;
  w.d = &d;
  Worker* saved = tls_worker;
  tls_worker = &w;
  // The fault handler runs on this alternate stack (the faulting fiber's stack is exhausted).
  stack_t alt, old_alt;
  std::memset(&alt, 0, sizeof(alt));
  std::memset(&old_alt, 0, sizeof(old_alt));
  alt.ss_sp = w.altstack;
  alt.ss_size = w.altstack_len;
  const bool alt_set = sigaltstack(&alt, &old_alt) == 0;
  if (sigsetjmp(w.trap, 1) == 0) {
    w.trap_armed = 1;
    run_groups(w, d);
    w.trap_armed = 0;
  } else {
    const Fiber& f = *w.overflowed;
    d.errors.fail(
        METALSIM_ERR_LIMIT,
        format(
            "kernel '%s': stack overflow in threadgroup (%u,%u,%u), %s: its thread-private "
            "memory (local variables and arrays, and the frames of the functions it calls) "
            "exceeds the %zu KiB stack of a simulated thread. A GPU thread has far less "
            "private memory than that: keep large arrays in threadgroup or device memory "
            "(METALSIM_STACK_KB sets the simulator's stack size)",
            d.kernel->name,
            w.tgpig.x,
            w.tgpig.y,
            w.tgpig.z,
            thread_desc(w, f).c_str(),
            w.stack_size / 1024));
  }
  w.current = nullptr;
  w.overflowed = nullptr;
  if (alt_set) {
    if (old_alt.ss_flags & SS_DISABLE) {
      std::memset(&old_alt, 0, sizeof(old_alt));
      old_alt.ss_flags = SS_DISABLE;
    }
    sigaltstack(&old_alt, nullptr);
  }
  tls_worker = saved;
  w.d = nullptr;
  worker_pool().put(std::move(owned));
}

// ---------------------------------------------------------------- bindings (generated code)

template <class T> struct dtype_of {
  static constexpr int value = -1; // unknown (a struct): not checked
};
#define METALSIM_DTYPE(T, code)                                                                    \
  template <> struct dtype_of<T> {                                                                 \
    static constexpr int value = code;                                                             \
  };
METALSIM_DTYPE(bool, METALSIM_BOOL)
METALSIM_DTYPE(char, METALSIM_INT8)
METALSIM_DTYPE(signed char, METALSIM_INT8)
METALSIM_DTYPE(unsigned char, METALSIM_UINT8)
METALSIM_DTYPE(short, METALSIM_INT16)
METALSIM_DTYPE(unsigned short, METALSIM_UINT16)
METALSIM_DTYPE(int, METALSIM_INT32)
METALSIM_DTYPE(unsigned int, METALSIM_UINT32)
METALSIM_DTYPE(long, METALSIM_INT64)
METALSIM_DTYPE(unsigned long, METALSIM_UINT64)
METALSIM_DTYPE(long long, METALSIM_INT64)
METALSIM_DTYPE(unsigned long long, METALSIM_UINT64)
METALSIM_DTYPE(float, METALSIM_FLOAT32)
METALSIM_DTYPE(double, METALSIM_FLOAT64)
METALSIM_DTYPE(metal::half, METALSIM_FLOAT16)
METALSIM_DTYPE(metal::bfloat, METALSIM_BFLOAT16)
#undef METALSIM_DTYPE
template <class T, int N, bool P> struct dtype_of<metal::vec<T, N, P>> : dtype_of<T> {};

inline const char* dtype_name(int code) {
  static const char* names[] = {
      "untyped bytes",
      "bool",
      "uint8",
      "uint16",
      "uint32",
      "uint64",
      "int8",
      "int16",
      "int32",
      "int64",
      "float16",
      "bfloat16",
      "float32",
      "float64",
      "complex64"};
  return (code >= 0 && code < METALSIM_DTYPE_COUNT) ? names[code] : "unknown";
}

template <class P>
using pointee_t = std::remove_cv_t<std::remove_pointer_t<std::remove_reference_t<P>>>;

template <class P>
inline void
check_buffer(const Dispatch& d, Errors& e, unsigned idx, const char* param, const char* type_text) {
  const metalsim_dispatch_args& a = *d.args;
  const char* k = d.kernel->name;
  if (idx >= a.n_buffers || a.buffers[idx].data == nullptr) {
    e.fail(
        METALSIM_ERR_BINDING,
        format(
            "kernel '%s': [[buffer(%u)]] '%s' (%s) is not bound: bind it with "
            "set_input_array/set_output_array/set_bytes (Python: buffers={%u: ...})",
            k,
            idx,
            param,
            type_text,
            idx));
    return;
  }
  using E = pointee_t<P>;
  const metalsim_binding& b = a.buffers[idx];
  constexpr int want = dtype_of<E>::value;
  if (want >= 0 && b.dtype != METALSIM_UNTYPED && b.dtype != want) {
    e.fail(
        METALSIM_ERR_BINDING,
        format(
            "kernel '%s': [[buffer(%u)]] '%s' is declared '%s' (%s elements) but the bound "
            "%s has dtype %s",
            k,
            idx,
            param,
            type_text,
            dtype_name(want),
            b.is_bytes ? "bytes" : "array",
            dtype_name(b.dtype)));
    return;
  }
  if constexpr (!std::is_void_v<E>) {
    if (b.size > 0 && reinterpret_cast<uintptr_t>(b.data) % alignof(E) != 0) {
      e.fail(
          METALSIM_ERR_BINDING,
          format(
              "kernel '%s': [[buffer(%u)]] '%s' (%s) is bound at an address that is not a "
              "multiple of %zu bytes, the alignment of its element type (an offset into a "
              "buffer must be a multiple of it, in Metal too)",
              k,
              idx,
              param,
              type_text,
              alignof(E)));
      return;
    }
  }
  if constexpr (!std::is_pointer_v<std::remove_reference_t<P>>) {
    if (b.size < sizeof(E)) {
      e.fail(
          METALSIM_ERR_BINDING,
          format(
              "kernel '%s': [[buffer(%u)]] '%s' (%s) needs %zu bytes but only %llu are bound",
              k,
              idx,
              param,
              type_text,
              sizeof(E),
              (unsigned long long)b.size));
    }
  }
}

template <class P>
inline void check_threadgroup(
    const Dispatch& d, Errors& e, unsigned idx, const char* param, const char* type_text) {
  const metalsim_dispatch_args& a = *d.args;
  if (idx >= a.n_threadgroup || a.threadgroup_lengths[idx] == 0) {
    e.fail(
        METALSIM_ERR_BINDING,
        format(
            "kernel '%s': [[threadgroup(%u)]] '%s' (%s) has no memory: call "
            "set_threadgroup_memory_length(bytes, %u) (Python: threadgroup_memory={%u: bytes})",
            d.kernel->name,
            idx,
            param,
            type_text,
            idx,
            idx));
  }
}

template <class P> inline P bind_buffer(Fiber& f, unsigned idx) {
  void* p = f.w->d->args->buffers[idx].data;
  using Q = std::remove_reference_t<P>;
  if constexpr (std::is_pointer_v<Q>) {
    return reinterpret_cast<Q>(p);
  } else if constexpr (std::is_reference_v<P>) {
    return *reinterpret_cast<Q*>(p);
  } else {
    Q v;
    std::memcpy(&v, p, sizeof(Q));
    return v;
  }
}

template <class P> inline P bind_threadgroup(Fiber& f, unsigned idx) {
  return reinterpret_cast<P>(f.w->arena + f.w->d->tg_buffer_offsets[idx]);
}

enum class Builtin {
  thread_position_in_grid,
  thread_position_in_threadgroup,
  threadgroup_position_in_grid,
  thread_index_in_threadgroup,
  threads_per_threadgroup,
  threadgroups_per_grid,
  threads_per_grid,
  simdgroup_index_in_threadgroup,
  thread_index_in_simdgroup,
  threads_per_simdgroup,
  simdgroups_per_threadgroup,
  thread_execution_width,
  dispatch_threads_per_threadgroup,
};

inline uint3 builtin_uint3(const Fiber& f, Builtin b) {
  const Worker& w = *f.w;
  switch (b) {
  case Builtin::thread_position_in_grid:
    return builtin_tpig(f);
  case Builtin::thread_position_in_threadgroup:
    return f.tpitg;
  case Builtin::threadgroup_position_in_grid:
    return w.tgpig;
  case Builtin::thread_index_in_threadgroup:
    return uint3(f.linear, 0u, 0u);
  case Builtin::threads_per_threadgroup:
    return w.tptg;
  case Builtin::threadgroups_per_grid:
    return w.d->groups;
  case Builtin::threads_per_grid:
    return w.d->grid_threads;
  case Builtin::simdgroup_index_in_threadgroup:
    return uint3(unsigned(f.sg), 0u, 0u);
  case Builtin::thread_index_in_simdgroup:
    return uint3(unsigned(f.lane), 0u, 0u);
  case Builtin::threads_per_simdgroup:
  case Builtin::thread_execution_width:
    return uint3(kSimdWidth, 0u, 0u);
  case Builtin::simdgroups_per_threadgroup:
    return uint3(w.nsg, 0u, 0u);
  case Builtin::dispatch_threads_per_threadgroup:
    return w.d->group_size;
  }
  return uint3(0u);
}

template <class P> inline P builtin(const Fiber& f, Builtin b) {
  uint3 v = builtin_uint3(f, b);
  using Q = std::remove_cv_t<std::remove_reference_t<P>>;
  if constexpr (metal::is_vec<Q>::value) {
    Q r;
    for (int i = 0; i < Q::size; ++i)
      r.elems[i] = typename Q::value_type(v.elems[i]);
    return r;
  } else {
    return Q(v.x);
  }
}

// Storage of a `threadgroup T name[...]` declared in a kernel body: the k-th declaration.
template <class T> inline T* tg_decl(unsigned k) {
  Worker* w = tls_worker;
  return reinterpret_cast<T*>(w->arena + w->d->tg_decl_offsets[k]);
}

// ---------------------------------------------------------------- the dispatch entry

inline unsigned default_workers() {
  if (const char* e = std::getenv("METALSIM_THREADS")) {
    int v = std::atoi(e);
    if (v > 0)
      return unsigned(v);
  }
  unsigned h = std::thread::hardware_concurrency();
  return h ? h : 1;
}

inline int fail_out(char* err, size_t errlen, int status, const std::string& msg) {
  if (err && errlen) {
    std::snprintf(err, errlen, "%s", msg.c_str());
  }
  return status;
}

inline int run_dispatch(
    const KernelInfo* const* kernels,
    size_t n_kernels,
    const metalsim_dispatch_args* a,
    char* err,
    size_t errlen) {
  if (!a || a->abi_version != METALSIM_ABI_VERSION)
    return fail_out(err, errlen, METALSIM_ERR_INVALID, "metalsim: dispatch ABI version mismatch");
  const KernelInfo* k = nullptr;
  for (size_t i = 0; i < n_kernels && !k; ++i)
    if (std::strcmp(kernels[i]->name, a->kernel) == 0)
      k = kernels[i];
  if (!k) {
    std::string names;
    for (size_t i = 0; i < n_kernels; ++i)
      names += std::string(i ? ", " : "") + kernels[i]->name;
    return fail_out(
        err,
        errlen,
        METALSIM_ERR_KERNEL_NOT_FOUND,
        format(
            "no kernel named '%s' in this library (kernels: %s)",
            a->kernel,
            names.empty() ? "none" : names.c_str()));
  }
  auto d = std::make_unique<Dispatch>();
  d->kernel = k;
  d->args = a;
  d->nonuniform = a->grid_is_threads != 0;
  uint64_t threads = 1;
  for (int i = 0; i < 3; ++i) {
    if (a->group[i] == 0)
      return fail_out(
          err,
          errlen,
          METALSIM_ERR_INVALID,
          format(
              "kernel '%s': the threadgroup size (threads per threadgroup) (%llu, %llu, "
              "%llu) has a zero dimension: Metal rejects it",
              k->name,
              (unsigned long long)a->group[0],
              (unsigned long long)a->group[1],
              (unsigned long long)a->group[2]));
    if (a->group[i] > kMaxThreadsPerGroup || a->grid[i] > 0xffffffffull)
      threads = ~0ull >> 1;
    else
      threads *= a->group[i];
  }
  for (int i = 0; i < 3; ++i)
    if (a->grid[i] == 0)
      return fail_out(
          err,
          errlen,
          METALSIM_ERR_INVALID,
          format(
              "kernel '%s': the grid (%s per grid) (%llu, %llu, %llu) has a zero "
              "dimension: Metal rejects an empty dispatch (skip the dispatch when "
              "there is no work)",
              k->name,
              a->grid_is_threads ? "threads" : "threadgroups",
              (unsigned long long)a->grid[0],
              (unsigned long long)a->grid[1],
              (unsigned long long)a->grid[2]));
  unsigned limit = k->max_threads ? k->max_threads : kMaxThreadsPerGroup;
  if (threads > limit) {
    return fail_out(
        err,
        errlen,
        METALSIM_ERR_LIMIT,
        format(
            "kernel '%s': %llu threads per threadgroup (%llu x %llu x %llu) exceeds the limit "
            "of %u%s",
            k->name,
            (unsigned long long)(a->group[0] * a->group[1] * a->group[2]),
            (unsigned long long)a->group[0],
            (unsigned long long)a->group[1],
            (unsigned long long)a->group[2],
            limit,
            limit == kMaxThreadsPerGroup ? " (maxTotalThreadsPerThreadgroup)"
                                         : " set by [[max_total_threads_per_threadgroup]]"));
  }
  for (int i = 0; i < 3; ++i) {
    d->group_size[i] = uint32_t(a->group[i]);
    if (d->nonuniform) {
      d->grid_threads[i] = uint32_t(a->grid[i]);
      d->groups[i] = uint32_t((a->grid[i] + a->group[i] - 1) / a->group[i]);
    } else {
      d->groups[i] = uint32_t(a->grid[i]);
      d->grid_threads[i] = uint32_t(a->grid[i] * a->group[i]);
    }
  }
  // Threadgroup memory layout: kernel-body arrays first, then [[threadgroup(n)]] buffers.
  size_t off = 0;
  std::string detail;
  for (size_t i = 0; i < k->n_tg_decls; ++i) {
    size_t al = k->tg_decls[i].align < 16 ? 16 : k->tg_decls[i].align;
    off = (off + al - 1) / al * al;
    d->tg_decl_offsets.push_back(off);
    off += k->tg_decls[i].size;
    detail += format(
        "\n  threadgroup array '%s' (line %u): %zu bytes",
        k->tg_decls[i].name,
        k->tg_decls[i].line,
        k->tg_decls[i].size);
  }
  for (unsigned i = 0; i < 32; ++i)
    d->tg_buffer_offsets[i] = 0;
  for (uint32_t i = 0; i < a->n_threadgroup && i < 32; ++i) {
    uint64_t len = a->threadgroup_lengths[i];
    if (len == 0)
      continue;
    if (len % 16 != 0)
      return fail_out(
          err,
          errlen,
          METALSIM_ERR_INVALID,
          format(
              "kernel '%s': threadgroup memory length %llu for [[threadgroup(%u)]] "
              "is not a multiple of 16 bytes (Metal requires it)",
              k->name,
              (unsigned long long)len,
              i));
    off = (off + 15) / 16 * 16;
    d->tg_buffer_offsets[i] = off;
    off += len;
    detail += format("\n  [[threadgroup(%u)]]: %llu bytes", i, (unsigned long long)len);
  }
  if (off > kMaxThreadgroupMemory)
    return fail_out(
        err,
        errlen,
        METALSIM_ERR_LIMIT,
        format(
            "kernel '%s': %zu bytes of threadgroup memory exceeds the limit of "
            "%zu bytes (32 KiB):%s",
            k->name,
            off,
            kMaxThreadgroupMemory,
            detail.c_str()));
  d->arena_bytes = off;
  k->check(*d, d->errors);
  if (d->errors.failed)
    return fail_out(err, errlen, d->errors.status, d->errors.message);

  d->total_groups = uint64_t(d->groups.x) * d->groups.y * d->groups.z;
  if (d->total_groups == 0)
    return METALSIM_OK;
  unsigned nw = a->n_workers > 0 ? unsigned(a->n_workers) : default_workers();
  if (nw > d->total_groups)
    nw = unsigned(d->total_groups);
  std::vector<std::thread> threads_v;
  try {
    for (unsigned i = 1; i < nw; ++i)
      threads_v.emplace_back([&d] { worker_loop(*d); });
    worker_loop(*d);
  } catch (const std::exception& e) {
    d->errors.fail(METALSIM_ERR_RUNTIME, format("kernel '%s': %s", k->name, e.what()));
  }
  for (auto& t : threads_v)
    t.join();
  std::fflush(stdout); // kernel printf output appears before the dispatch returns
  if (d->errors.failed)
    return fail_out(err, errlen, d->errors.status, d->errors.message);
  return METALSIM_OK;
}

} // namespace metalsim::rt

// Defines the context switch; expanded once per kernel library (in its main translation unit).
//
// metalsim_ctx_switch_v1(save_sp, load_sp) is called like a function: it saves the registers
// that the calling convention says a callee must preserve on the current stack, stores the
// stack pointer in *save_sp, loads load_sp and restores the same registers from that stack,
// then returns into the other context. Caller-saved registers need no saving: the compiler
// already assumes a call clobbers them. A fresh stack (init_stack) is laid out as if
// metalsim_fiber_entry_v1 had called the switch; the entry calls fn(arg) and never returns.
//
// Symbols: Mach-O (macOS) prefixes C names with an underscore and has no .type; ELF does not
// prefix. The code goes to .text through .pushsection/.popsection (ELF) so that the compiler's
// idea of the current section is left intact; on Mach-O, .text is set and the compiler switches
// sections explicitly for everything it emits.
#if defined(__APPLE__)
#define METALSIM_ASM_SYM(x) "_" #x
#define METALSIM_ASM_HIDE(x) ".private_extern _" #x "\n"
#define METALSIM_ASM_TYPE(x)
#define METALSIM_ASM_BEGIN ".text\n"
#define METALSIM_ASM_END
#else
#define METALSIM_ASM_SYM(x) #x
#define METALSIM_ASM_HIDE(x) ".hidden " #x "\n"
#define METALSIM_ASM_TYPE(x) ".type " #x ", %function\n"
#define METALSIM_ASM_BEGIN ".pushsection .text\n"
#define METALSIM_ASM_END ".popsection\n"
#endif

#define METALSIM_ASM_FUNC(x)                                                                       \
  ".globl " METALSIM_ASM_SYM(x) "\n" METALSIM_ASM_HIDE(x)                                          \
      METALSIM_ASM_TYPE(x) ".p2align 4\n" METALSIM_ASM_SYM(x) ":\n"

#if defined(__x86_64__)
// System V AMD64: the callee-saved state is rbx, rbp, r12-r15, rsp, the control bits of MXCSR
// and the x87 control word. Frame (from the saved rsp up): MXCSR (4 bytes) and x87 CW (2) in
// one 8-byte slot, r15, r14, r13, r12, rbx, rbp, return address.
#define METALSIM_DEFINE_CONTEXT_SWITCH                                                             \
  __asm__(METALSIM_ASM_BEGIN METALSIM_ASM_FUNC(                                                    \
      metalsim_ctx_switch_v1) "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n"           \
                              "  pushq %r14\n  pushq %r15\n"                                       \
                              "  subq $8, %rsp\n"                                                  \
                              "  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"                               \
                              "  movq %rsp, (%rdi)\n"                                              \
                              "  movq %rsi, %rsp\n"                                                \
                              "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n"                                \
                              "  addq $8, %rsp\n"                                                  \
                              "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n"               \
                              "  popq %rbx\n  popq %rbp\n"                                         \
                              "  ret\n" METALSIM_ASM_FUNC(                                         \
                                  metalsim_fiber_entry_v1) "  movq %r12, %rdi\n"                   \
                                                           "  callq *%r13\n"                       \
                                                           "  ud2\n" METALSIM_ASM_END);
#elif defined(__aarch64__)
// AAPCS64 (and Apple's arm64 ABI, which follows it and reserves x18, untouched here): the
// callee-saved state is x19-x28, x29 (fp), sp, d8-d15 (the low halves of v8-v15) and FPCR; x30
// (lr) holds the return address. Frame (176 bytes, sp stays 16-byte aligned): x19-x30 at 0-95,
// d8-d15 at 96-159, FPCR at 160. FPCR is written only when it differs (a write can be slow).
#define METALSIM_DEFINE_CONTEXT_SWITCH                                                             \
  __asm__(METALSIM_ASM_BEGIN METALSIM_ASM_FUNC(                                                    \
      metalsim_ctx_switch_v1) "  sub sp, sp, #176\n"                                               \
                              "  stp x19, x20, [sp, #0]\n  stp x21, x22, [sp, #16]\n"              \
                              "  stp x23, x24, [sp, #32]\n  stp x25, x26, [sp, #48]\n"             \
                              "  stp x27, x28, [sp, #64]\n  stp x29, x30, [sp, #80]\n"             \
                              "  stp d8, d9, [sp, #96]\n  stp d10, d11, [sp, #112]\n"              \
                              "  stp d12, d13, [sp, #128]\n  stp d14, d15, [sp, #144]\n"           \
                              "  mrs x9, fpcr\n  str x9, [sp, #160]\n"                             \
                              "  mov x10, sp\n  str x10, [x0]\n  mov sp, x1\n"                     \
                              "  ldr x10, [sp, #160]\n  cmp x9, x10\n  b.eq 1f\n  msr fpcr, x10\n" \
                              "1:\n"                                                               \
                              "  ldp x19, x20, [sp, #0]\n  ldp x21, x22, [sp, #16]\n"              \
                              "  ldp x23, x24, [sp, #32]\n  ldp x25, x26, [sp, #48]\n"             \
                              "  ldp x27, x28, [sp, #64]\n  ldp x29, x30, [sp, #80]\n"             \
                              "  ldp d8, d9, [sp, #96]\n  ldp d10, d11, [sp, #112]\n"              \
                              "  ldp d12, d13, [sp, #128]\n  ldp d14, d15, [sp, #144]\n"           \
                              "  add sp, sp, #176\n"                                               \
                              "  ret\n" METALSIM_ASM_FUNC(                                         \
                                  metalsim_fiber_entry_v1) "  mov x0, x19\n"                       \
                                                           "  blr x20\n"                           \
                                                           "  brk #0\n" METALSIM_ASM_END);
#endif
