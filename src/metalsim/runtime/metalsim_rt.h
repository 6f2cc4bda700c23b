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

#include <dlfcn.h>
#if defined(__linux__)
#include <link.h>
#endif
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
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
// Threadgroup memory of a worker: 32 KiB of allocations plus the red zones between them.
constexpr size_t kArenaCapacity = 96 * 1024;
constexpr size_t kRedZone = 256; // bytes after each threadgroup allocation that are out of bounds

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
  uint32_t barriers; // threadgroup barriers this thread has passed
  uint32_t seq;      // threadgroup memory accesses since its SIMD group last synchronised
};

struct SimdGroup {
  alignas(16) unsigned char in[kSimdWidth][kSlotBytes];
  alignas(16) unsigned char out[kSimdWidth][kSlotBytes];
  uint32_t arg[kSimdWidth];
  void* ptr[kSimdWidth];
  uint32_t first;  // linear id of lane 0
  uint32_t nlanes; // lanes that exist (the last group may be partial)
  uint32_t sync;   // how many times its lanes synchronised (collectives, simdgroup_barrier)
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

// Nonzero while a thread runs code that the watchdog's stop signal must not leave (it holds a
// lock, or writes an error report).
inline thread_local volatile int tls_no_stop = 0;

// Collects the first error of a dispatch (any worker may report one).
struct Errors {
  std::mutex mu;
  std::atomic<bool> failed{false};
  int status = METALSIM_OK;
  std::string message;
  void fail(int st, std::string msg) {
    tls_no_stop = tls_no_stop + 1;
    struct Leave {
      ~Leave() {
        tls_no_stop = tls_no_stop - 1;
      }
    } leave;
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
  // Threadgroup memory: each allocation (kernel-body arrays, then [[threadgroup(n)]] buffers)
  // with a red zone after it, so that an access past its end is seen as one.
  struct TgAlloc {
    size_t off, size;
    int index;          // n of [[threadgroup(n)]], or -1 for a kernel-body array
    const TgDecl* decl; // the kernel-body array, or null
  };
  std::vector<TgAlloc> tg_allocs;
  // Device buffers as the kernel sees them: [lo, hi) may be accessed, data is its pointer.
  struct Buf {
    uintptr_t lo, hi, data;
    unsigned index;
    bool read_only;
  };
  std::vector<Buf> bufs;
  uintptr_t guard_lo = 0, guard_len = 0; // the host's guarded region around the buffers
  int schedule = METALSIM_SCHEDULE_FORWARD;
  uint64_t seed = 0;
  // Set by the watchdog (METALSIM_ERR_TIMEOUT or METALSIM_ERR_INTERRUPTED): workers stop.
  std::atomic<int> stop{0};
  double timeout_s = 0;
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

// The workers of this library, found from a stack pointer: the sanitizer's checks, called on
// every memory access, learn which simulated thread runs from the stack it runs on (cheaper
// than a thread-local variable in a shared library). Workers are never freed (see WorkerPool).
struct WorkerRegistry {
  static constexpr unsigned kMax = 256;
  Worker* slots[kMax]; // read and written with __atomic builtins (no std::atomic calls: the
  unsigned n;          // checks run uninstrumented, and std::atomic's functions are not)
};
// Constant-initialised (no guard variable: the checks read it on every access).
inline WorkerRegistry g_worker_registry;
__attribute__((no_sanitize_thread)) inline WorkerRegistry& worker_registry() {
  return g_worker_registry;
}
inline std::mutex g_worker_registry_mu;
__attribute__((no_sanitize_thread)) inline void register_worker(Worker* w) {
  std::lock_guard<std::mutex> lk(g_worker_registry_mu);
  WorkerRegistry& r = worker_registry();
  unsigned i = __atomic_load_n(&r.n, __ATOMIC_RELAXED);
  if (i < WorkerRegistry::kMax) {
    __atomic_store_n(&r.slots[i], w, __ATOMIC_RELEASE);
    __atomic_store_n(&r.n, i + 1, __ATOMIC_RELEASE);
  }
}

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
  // What made a trap jump back: the faulting address (0: a stack overflow) and the instruction.
  volatile uintptr_t fault_addr = 0;
  volatile uintptr_t fault_pc = 0;
  volatile int trap_reason = 0; // 1 memory fault, 2 stopped by the watchdog
  char* altstack = nullptr;
  size_t altstack_len = 0;
  // Threadgroup memory: kArenaCapacity bytes in the middle of a larger PROT_NONE reservation,
  // so that an access far outside it faults, and one near it is recognised as out of bounds.
  unsigned char* arena = nullptr;
  char* arena_map = nullptr;
  size_t arena_map_len = 0;
  uintptr_t arena_win_lo = 0, arena_win_len = 0;
  // Race detection: one shadow record per byte of threadgroup memory (see Shadow below).
  struct Shadow* shadow = nullptr;
  size_t shadow_len = 0;
  uint32_t epoch = 0;    // one per barrier interval of a threadgroup, never reused by a worker
  size_t last_buf = 0;   // the device buffer the last checked access was in
  bool in_group = false; // a threadgroup is under way (its fibers say where its threads are)
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
    map_arena();
    register_worker(this);
  }
  ~Worker() {
    if (stacks)
      munmap(stacks, stacks_len);
    if (altstack)
      munmap(altstack, altstack_len);
    if (arena_map)
      munmap(arena_map, arena_map_len);
    if (shadow)
      munmap(shadow, shadow_len);
  }
  void map_arena();
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
__attribute__((no_sanitize_thread)) inline void block(Fiber& f) {
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

__attribute__((no_sanitize_thread)) inline void fiber_main(void* arg) {
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
__attribute__((no_sanitize_thread)) inline T
collective(const T& v, uint32_t arg, CombineFn combine, const Site& site) {
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
__attribute__((no_sanitize_thread)) inline void
collective_ptr(void* p, CombineFn combine, const Site& site) {
  Fiber& f = current_fiber();
  SimdGroup& g = f.w->sgs[f.sg];
  g.ptr[f.lane] = p;
  f.site = site;
  f.combine = combine;
  f.state = State::Simd;
  block(f);
}

__attribute__((no_sanitize_thread)) inline void barrier(const Site& site) {
  Fiber& f = current_fiber();
  f.site = site;
  f.state = State::Barrier;
  block(f);
}

__attribute__((no_sanitize_thread)) inline void simd_barrier(const Site& site) {
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

// A source file name as messages show it: relative to the working folder when inside it.
inline std::string short_path(const std::string& file) {
  char cwd[4096];
  if (getcwd(cwd, sizeof(cwd))) {
    std::string c = std::string(cwd) + "/";
    if (file.compare(0, c.size(), c) == 0)
      return file.substr(c.size());
  }
  return file;
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
    if (f.state == State::Ready)
      continue; // running, or ready to run

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
        short_path(reps[k]->site.file).c_str(),
        reps[k]->site.line,
        thread_desc(w, *reps[k]).c_str());
  }
  if (done)
    msg += format("\n  %u %s ha%s returned", done, who, done == 1 ? "s" : "ve");
  return msg;
}

// The barrier rule. MSL requires every thread of a threadgroup to reach each threadgroup_barrier.
// metalsim lets a thread return before its first barrier (kernels commonly send the threads past
// the end of the data home first); once a thread has passed a barrier, it must reach every
// barrier the others wait at, and as often: a thread that returns while others wait at a barrier
// (a barrier inside an `if` that it skipped, or a return after the first barrier), or that waits
// at a barrier one more or one fewer time than the others, is an error naming that barrier.
__attribute__((no_sanitize_thread)) inline bool check_barrier_release(Worker& w, const Fiber& at) {
  const Fiber* ret = nullptr;
  const Fiber* other = nullptr;
  for (uint32_t i = 0; i < w.nthreads; ++i) {
    const Fiber& f = w.fibers[i];
    if (f.state == State::Done && f.barriers > 0 && !ret)
      ret = &f;
    if (f.state == State::Barrier && f.barriers != at.barriers && !other)
      other = &f;
  }
  if (!ret && !other)
    return true;
  Dispatch& d = *w.d;
  std::string msg = format(
      "kernel '%s': divergent threadgroup_barrier at %s:%u in threadgroup (%u,%u,%u): ",
      d.kernel->name,
      short_path(at.site.file).c_str(),
      at.site.line,
      w.tgpig.x,
      w.tgpig.y,
      w.tgpig.z);
  if (ret)
    msg += format(
        "%s waits there, but %s returned after passing %u barrier(s) without reaching it",
        thread_desc(w, at).c_str(),
        thread_desc(w, *ret).c_str(),
        ret->barriers);
  else
    msg += format(
        "%s reaches it for barrier number %u, but %s for barrier number %u",
        thread_desc(w, at).c_str(),
        at.barriers + 1,
        thread_desc(w, *other).c_str(),
        other->barriers + 1);
  msg += ". Every thread of a threadgroup must reach every threadgroup_barrier (a thread may "
         "return before its first one): move the barrier out of the `if`, or let the threads "
         "that have no work skip the work but not the barrier";
  d.errors.fail(METALSIM_ERR_DEADLOCK, msg);
  return false;
}

// Runs the lanes of one SIMD group until every live lane waits at a threadgroup barrier or has
// returned. False (and an error recorded) if its lanes deadlock at a simdgroup_barrier.
// (The scheduler is not instrumented: it runs for every lane switch.)
__attribute__((no_sanitize_thread)) inline bool run_simdgroup(Worker& w, SimdGroup& g) {
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
        ++g.sync;
        for (uint32_t l = l0; l < g.nlanes; ++l)
          if (mask >> l & 1u) {
            w.fibers[g.first + l].state = State::Ready;
            w.fibers[g.first + l].seq = 0;
          }
        pending &= ~mask;
      }
      if (w.d->stop.load(std::memory_order_relaxed) || w.d->errors.failed.load())
        return false;
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
      ++g.sync;
      for (uint32_t l = 0; l < g.nlanes; ++l)
        if (w.fibers[g.first + l].state == State::SimdBarrier) {
          w.fibers[g.first + l].state = State::Ready;
          w.fibers[g.first + l].seq = 0;
        }
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
__attribute__((no_sanitize_thread)) inline bool run_group(Worker& w, uint64_t gidx) {
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
  ++w.epoch;                                 // what earlier groups did is no race with this one
  w.in_group = true;
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
    f.barriers = 0;
    f.seq = 0;
  }
  w.ensure_guards(n);
  uint16_t order[kMaxThreadsPerGroup / kSimdWidth];
  for (uint32_t s = 0; s < w.nsg; ++s) {
    w.sgs[s].first = s * kSimdWidth;
    w.sgs[s].nlanes = std::min<uint32_t>(kSimdWidth, n - s * kSimdWidth);
    w.sgs[s].sync = 0;
    order[s] = uint16_t(s);
  }
  // The order SIMD groups run in between two barriers (a GPU promises none).
  if (d.schedule == METALSIM_SCHEDULE_REVERSE) {
    std::reverse(order, order + w.nsg);
  } else if (d.schedule == METALSIM_SCHEDULE_RANDOM) {
    uint64_t x = d.seed * 0x9E3779B97F4A7C15ull + gidx + 1; // splitmix64 per group
    for (uint32_t s = w.nsg; s > 1; --s) {
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      std::swap(order[s - 1], order[z % s]);
    }
  }
  for (;;) {
    for (uint32_t s = 0; s < w.nsg; ++s)
      if (!run_simdgroup(w, w.sgs[order[s]]))
        return false;
    if (d.errors.failed.load(std::memory_order_relaxed) || d.stop.load(std::memory_order_relaxed))
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
    if (!first) {
      w.in_group = false;
      return true;
    }
    if (same) {
      if (!check_barrier_release(w, *first))
        return false;
      ++w.epoch;
      for (uint32_t i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.seq = 0;
        if (f.state == State::Barrier) {
          f.state = State::Ready;
          ++f.barriers;
        }
      }
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

// ---------------------------------------------------------------- the sanitizer

// Kernel libraries are compiled with -fsanitize=thread, but without ThreadSanitizer's runtime:
// the compiler then calls __tsan_read4(addr), __tsan_write8(addr), ... before every load and
// store that may touch shared memory, and metalsim defines those functions (at the end of this
// file) to check each access of a kernel thread:
//   - in device memory: inside a bound buffer, and not a write to a read-only one;
//   - in threadgroup memory: inside an allocation (not in the red zone after it), and no race:
//     two threads of different SIMD groups touch the same byte, at least one writes, and no
//     threadgroup_barrier lies between them. Within a SIMD group (lockstep on a GPU), metalsim
//     runs lanes one after another; where that gives another value than lockstep would (a lane
//     reads what a later lane writes earlier in program order), it says so.
// The instruction of an access is named by its .metal line (from the line tables of -g1).

// The state of one 4-byte word of threadgroup memory in the current barrier interval (epoch).
// (Words, not bytes: two SIMD groups that write different bytes of one word with no barrier
// between them are reported too.)
struct Shadow {
  uint32_t w_epoch, r_epoch; // epoch of the last write / of the reads recorded
  uint16_t w_tid, r_tid;     // thread that wrote last; a thread that read
  uint16_t r_tid2;           // a reader of another SIMD group than r_tid (0xFFFF: none)
  uint16_t w_seq, r_seq;     // their positions in their SIMD group (Fiber::seq)
  uint16_t w_sync, r_sync;   // their SIMD group's SimdGroup::sync at the time
  uint32_t w_pc, r_pc;       // where (offsets into this library)
};

inline uintptr_t library_base() {
  static uintptr_t base = [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&library_base), &info) && info.dli_fbase)
      return reinterpret_cast<uintptr_t>(info.dli_fbase);
    return uintptr_t(0);
  }();
  return base;
}

// Whether pc lies in this kernel library (its code, not the C library's).
inline bool in_this_library(uintptr_t pc) {
  Dl_info info;
  return dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fbase &&
         reinterpret_cast<uintptr_t>(info.dli_fbase) == library_base();
}

// "file.metal:12" for an instruction of this library (its line tables map it to the .metal
// source through the translator's #line directives), or "" if unknown. return_address: pc is
// the address after a call (the instruction of interest is the one before it).
inline std::string source_line(uintptr_t pc, bool return_address = true) {
  if (!pc)
    return "";
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(pc), &info) || !info.dli_fname || !info.dli_fbase)
    return "";
  uintptr_t off = pc - reinterpret_cast<uintptr_t>(info.dli_fbase) - (return_address ? 1 : 0);
  std::string cmd =
      format("addr2line -i -e '%s' 0x%llx 2>/dev/null", info.dli_fname, (unsigned long long)off);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p)
    return "";
  // Inlined frames come innermost first: the first that is not in metalsim's own headers.
  std::string first, pick;
  char line[4096];
  while (std::fgets(line, sizeof(line), p)) {
    std::string l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r'))
      l.pop_back();
    size_t disc = l.find(" (discriminator");
    if (disc != std::string::npos)
      l.resize(disc);
    if (l.empty() || l[0] == '?')
      continue;
    if (first.empty())
      first = l;
    bool runtime = l.find("/runtime/metal") != std::string::npos;
    if (!runtime && pick.empty())
      pick = l;
  }
  pclose(p);
  // A relative .metal name comes back joined to the compiler's working folder: drop that.
  return short_path(pick.empty() ? first : pick);
}

inline std::string at_line(uintptr_t pc, bool return_address = true) {
  tls_no_stop = 1; // a report is being written: finish it (worker_loop resets this)
  std::string l = source_line(pc, return_address);
  return l.empty() ? std::string("(line unknown)") : "at " + l;
}

inline std::string group_desc(const Worker& w) {
  return format("threadgroup (%u,%u,%u)", w.tgpig.x, w.tgpig.y, w.tgpig.z);
}

inline std::string tg_alloc_desc(const Dispatch::TgAlloc& t) {
  if (t.decl)
    return format(
        "threadgroup array '%s' (declared at line %u, %zu bytes)",
        t.decl->name,
        t.decl->line,
        t.size);
  return format(
      "[[threadgroup(%d)]] (%zu bytes set by threadgroup_memory / "
      "set_threadgroup_memory_length)",
      t.index,
      t.size);
}

[[noreturn]] inline void stop_thread_here(Worker& w) {
  // Leave the fiber for good: back to worker_loop, which has recorded nothing more to do.
  w.trap_armed = 0;
  w.trap_reason = 3;
  siglongjmp(w.trap, 1);
}

inline void memory_error(Worker& w, Fiber&, std::string msg) {
  w.d->errors.fail(METALSIM_ERR_MEMORY, std::move(msg));
  stop_thread_here(w);
}

// The worker whose fiber runs on this stack, or null (not a simulated thread).
__attribute__((no_sanitize_thread, always_inline)) inline Worker* worker_of_stack(uintptr_t sp) {
  WorkerRegistry& r = worker_registry();
  const unsigned nw = __atomic_load_n(&r.n, __ATOMIC_ACQUIRE);
  for (unsigned i = 0; i < nw; ++i) {
    Worker* c = __atomic_load_n(&r.slots[i], __ATOMIC_RELAXED);
    if (sp - reinterpret_cast<uintptr_t>(c->stacks) < c->stacks_len)
      return c;
  }
  return nullptr;
}

// An access to [a, a + n) by the current thread of w that is in threadgroup memory's window.
inline void check_threadgroup_access(
    Worker& w, Fiber& f, uintptr_t a, unsigned n, bool write, uintptr_t pc, bool atomic) {
  Dispatch& d = *w.d;
  intptr_t off = intptr_t(a - reinterpret_cast<uintptr_t>(w.arena));
  const Dispatch::TgAlloc* in = nullptr;
  const Dispatch::TgAlloc* near = nullptr;
  for (const auto& t : d.tg_allocs) {
    if (off >= intptr_t(t.off) && off + intptr_t(n) <= intptr_t(t.off + t.size)) {
      in = &t;
      break;
    }
    if (!near || (off >= intptr_t(t.off))) // the last allocation that starts at or before it
      near = &t;
  }
  if (!in) {
    std::string where =
        near ? format(
                   "byte offset %lld of %s",
                   (long long)(off - intptr_t(near->off)),
                   tg_alloc_desc(*near).c_str())
             : format(
                   "byte offset %lld of threadgroup memory, where the kernel has none",
                   (long long)off);
    memory_error(
        w,
        f,
        format(
            "kernel '%s': out-of-bounds %s of %u bytes in threadgroup memory: %s, by %s of %s, %s",
            d.kernel->name,
            write ? "write" : "read",
            n,
            where.c_str(),
            thread_desc(w, f).c_str(),
            group_desc(w).c_str(),
            at_line(pc).c_str()));
  }
  if (!w.shadow || atomic) // atomics never race (with each other)
    return;
  const uint32_t e = w.epoch;
  const uint16_t tid = uint16_t(f.linear);
  const uint16_t sg = f.sg;
  SimdGroup& g = w.sgs[sg];
  const uint16_t seq = uint16_t(f.seq++);
  const uint16_t sync = uint16_t(g.sync);
  const uint32_t pco = uint32_t(pc - library_base());
  // One shadow record per 4-byte word: an access covers the words it touches.
  const size_t w_first = size_t(off) >> 2, w_last = (size_t(off) + n - 1) >> 2;
  for (size_t wi = w_first; wi <= w_last; ++wi) {
    const size_t i = wi * 4 > size_t(off) ? wi * 4 - size_t(off) : 0; // byte of the access
    Shadow& sh = w.shadow[wi];
    const char* kind = nullptr;   // a race between SIMD groups
    const char* hazard = nullptr; // a lockstep order metalsim did not follow
    uint16_t other = 0;
    uint32_t other_pc = 0;
    bool other_wrote = false;
    if (sh.w_epoch == e && sh.w_tid != tid) {
      if (sh.w_tid / kSimdWidth != sg) {
        kind = write ? "writes" : "reads";
      } else if (sh.w_sync == sync && sh.w_seq > seq) {
        hazard = "wrote";
      }
      if (kind || hazard) {
        other = sh.w_tid;
        other_pc = sh.w_pc;
        other_wrote = true;
      }
    }
    if (!kind && !hazard && write && sh.r_epoch == e) {
      if (sh.r_tid / kSimdWidth != sg && sh.r_tid != tid) {
        kind = "writes";
        other = sh.r_tid;
        other_pc = sh.r_pc;
      } else if (sh.r_tid2 != 0xFFFF) {
        kind = "writes";
        other = sh.r_tid2;
        other_pc = sh.r_pc;
      } else if (sh.r_tid != tid && sh.r_sync == sync && sh.r_seq >= seq) {
        hazard = "read";
        other = sh.r_tid;
        other_pc = sh.r_pc;
      }
    }
    if (kind) {
      const Fiber& o = w.fibers[other];
      d.errors.fail(
          METALSIM_ERR_RACE,
          format(
              "kernel '%s': data race on threadgroup memory in %s, byte offset %lld of %s: %s %s "
              "it %s, and %s %s it %s, with no threadgroup_barrier between them. SIMD groups "
              "run in no fixed order on a GPU: put threadgroup_barrier(mem_flags::mem_threadgroup) "
              "between the two accesses",
              d.kernel->name,
              group_desc(w).c_str(),
              (long long)(off - intptr_t(in->off) + intptr_t(i)),
              tg_alloc_desc(*in).c_str(),
              thread_desc(w, f).c_str(),
              kind,
              at_line(pc).c_str(),
              thread_desc(w, o).c_str(),
              other_wrote ? "wrote" : "read",
              at_line(library_base() + other_pc).c_str()));
      stop_thread_here(w);
    }
    if (hazard) {
      const Fiber& o = w.fibers[other];
      d.errors.fail(
          METALSIM_ERR_RACE,
          format(
              "kernel '%s': lanes of one SIMD group share threadgroup memory with no barrier in "
              "an order metalsim cannot reproduce, in %s, byte offset %lld of %s: %s %s it %s "
              "after %s %s it %s, but on a GPU the lanes of a SIMD group run in lockstep and the "
              "%s comes first. metalsim runs the lanes one after another: put "
              "simdgroup_barrier(mem_flags::mem_threadgroup) between the write and the read",
              d.kernel->name,
              group_desc(w).c_str(),
              (long long)(off - intptr_t(in->off) + intptr_t(i)),
              tg_alloc_desc(*in).c_str(),
              thread_desc(w, f).c_str(),
              write ? "writes" : "reads",
              at_line(pc).c_str(),
              thread_desc(w, o).c_str(),
              hazard,
              at_line(library_base() + other_pc).c_str(),
              write ? "write" : "write"));
      stop_thread_here(w);
    }
    if (write) {
      sh.w_epoch = e;
      sh.w_tid = tid;
      sh.w_seq = seq;
      sh.w_sync = sync;
      sh.w_pc = pco;
    } else if (sh.r_epoch != e) {
      sh.r_epoch = e;
      sh.r_tid = tid;
      sh.r_tid2 = 0xFFFF;
      sh.r_seq = seq;
      sh.r_sync = sync;
      sh.r_pc = pco;
    } else if (sh.r_tid / kSimdWidth != sg) {
      if (sh.r_tid2 == 0xFFFF)
        sh.r_tid2 = tid;
    } else {
      sh.r_tid = tid; // the latest reader of its SIMD group
      sh.r_seq = seq;
      sh.r_sync = sync;
      sh.r_pc = pco;
    }
  }
}

// An access in the host's guarded region around the buffers.
inline void
check_device_access(Worker& w, Fiber& f, uintptr_t a, unsigned n, bool write, uintptr_t pc) {
  Dispatch& d = *w.d;
  if (w.last_buf < d.bufs.size()) { // most accesses hit the buffer the last one hit
    const auto& b = d.bufs[w.last_buf];
    if (a >= b.lo && a + n <= b.hi && !(write && b.read_only))
      return;
  }
  const Dispatch::Buf* near = nullptr;
  uintptr_t dist = ~uintptr_t(0);
  for (const auto& b : d.bufs) {
    if (a >= b.lo && a + n <= b.hi) {
      w.last_buf = size_t(&b - d.bufs.data());
      if (write && b.read_only)
        memory_error(
            w,
            f,
            format(
                "kernel '%s': write of %u bytes to [[buffer(%u)]] at byte offset %lld, which is "
                "bound to a read-only array (a NumPy array with writeable=False); by %s of %s, %s",
                d.kernel->name,
                n,
                b.index,
                (long long)(intptr_t(a) - intptr_t(b.data)),
                thread_desc(w, f).c_str(),
                group_desc(w).c_str(),
                at_line(pc).c_str()));
      return;
    }
    uintptr_t dd = a < b.lo ? b.lo - a : a - b.hi;
    if (dd < dist) {
      dist = dd;
      near = &b;
    }
  }
  if (!near)
    return;
  memory_error(
      w,
      f,
      format(
          "kernel '%s': out-of-bounds %s of %u bytes %s [[buffer(%u)]] at byte offset %lld (it "
          "has %llu bytes%s), by %s of %s, %s",
          d.kernel->name,
          write ? "write" : "read",
          n,
          write ? "to" : "from",
          near->index,
          (long long)(intptr_t(a) - intptr_t(near->data)),
          (unsigned long long)(near->hi - near->data),
          near->lo < near->data
              ? format(
                    " from its start, %llu before it", (unsigned long long)(near->data - near->lo))
                    .c_str()
              : "",
          thread_desc(w, f).c_str(),
          group_desc(w).c_str(),
          at_line(pc).c_str()));
}

__attribute__((no_sanitize_thread, always_inline)) inline void
on_access(const void* p, unsigned n, bool write, void* pc, bool atomic = false) {
  // Only accesses made on a fiber's stack (by a simulated thread) are checked.
  Worker* w = worker_of_stack(reinterpret_cast<uintptr_t>(__builtin_frame_address(0)));
  if (!w)
    return;
  Fiber* f = w->current;
  if (!f || !w->trap_armed)
    return;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a - w->arena_win_lo < w->arena_win_len) {
    check_threadgroup_access(*w, *f, a, n, write, reinterpret_cast<uintptr_t>(pc), atomic);
    return;
  }
  const Dispatch* d = w->d;
  if (a - d->guard_lo < d->guard_len)
    check_device_access(*w, *f, a, n, write, reinterpret_cast<uintptr_t>(pc));
}

// What -fsanitize=alignment passes for a load or store through a pointer that is not aligned
// for its type (the compiler checks every typed access; the .metal line comes from #line).
struct UbsanSourceLocation {
  const char* file;
  uint32_t line;
  uint32_t column;
};
struct UbsanTypeDescriptor {
  uint16_t kind;
  uint16_t info;
  char name[1];
};
struct UbsanTypeMismatch {
  UbsanSourceLocation loc;
  const UbsanTypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char type_check_kind; // 0 load, 1 store, others: a reference or member access
};

// "float4" for "const struct metal::vec<float, 4, false>", the type name as written otherwise.
inline std::string msl_type_name(const char* name) {
  std::string t = name;
  for (const char* drop : {"'", "const ", "volatile ", "struct ", "metal::"})
    for (size_t p; (p = t.find(drop)) != std::string::npos;)
      t.erase(p, std::strlen(drop));
  if (t.rfind("vec<", 0) == 0) {
    size_t c1 = t.find(", "), c2 = t.find(", ", c1 + 2);
    if (c1 != std::string::npos && c2 != std::string::npos) {
      std::string elem = t.substr(4, c1 - 4), n = t.substr(c1 + 2, c2 - c1 - 2);
      bool packed = t.find("true", c2) != std::string::npos;
      if (elem == "unsigned int")
        elem = "uint";
      else if (elem == "_Float16")
        elem = "half";
      return (packed ? "packed_" : "") + elem + n;
    }
  }
  return t;
}

__attribute__((no_sanitize_thread)) inline void
on_misaligned(const UbsanTypeMismatch* data, uintptr_t ptr) {
  Worker* w = worker_of_stack(reinterpret_cast<uintptr_t>(__builtin_frame_address(0)));
  if (!w || !w->current || !w->trap_armed || !data || !data->type)
    return;
  Fiber& f = *w->current;
  Dispatch& d = *w->d;
  tls_no_stop = 1;
  const unsigned align = 1u << data->log_alignment;
  std::string where;
  for (const auto& b : d.bufs)
    if (ptr >= b.lo && ptr < b.hi) {
      where = format(
          " (byte offset %lld of [[buffer(%u)]])",
          (long long)(intptr_t(ptr) - intptr_t(b.data)),
          b.index);
      break;
    }
  if (where.empty() && ptr - w->arena_win_lo < w->arena_win_len)
    where = format(
        " (byte offset %lld of threadgroup memory)",
        (long long)(intptr_t(ptr) - intptr_t(reinterpret_cast<uintptr_t>(w->arena))));
  const char* what = data->type_check_kind == 0   ? "load"
                     : data->type_check_kind == 1 ? "store"
                                                  : "use";
  std::string type = msl_type_name(data->type->name);
  if (type == "vec") // the compiler names the template, not its arguments
    type = align == 16  ? "vector type (float4, int4, float3, ...)"
           : align == 8 ? "vector type (float2, half4, ...)"
                        : "vector type";
  d.errors.fail(
      METALSIM_ERR_MEMORY,
      format(
          "kernel '%s': misaligned %s of a %s at address 0x%llx%s, which is not a multiple of "
          "%u bytes, the alignment of its type; by %s of %s, at %s:%u. A GPU reads a vector "
          "type only from an address aligned for it: read a packed_ type (aligned like its "
          "scalar), or the scalars one by one",
          d.kernel->name,
          what,
          type.c_str(),
          (unsigned long long)ptr,
          where.c_str(),
          align,
          thread_desc(*w, f).c_str(),
          group_desc(*w).c_str(),
          short_path(data->loc.file ? data->loc.file : "?").c_str(),
          data->loc.line));
  stop_thread_here(*w);
}

// Threadgroup memory: [8 GiB PROT_NONE | kArenaCapacity | 8 GiB PROT_NONE] (smaller if the
// address space is short, e.g. under an emulator), shadow records beside it.
inline void Worker::map_arena() {
  size_t page = size_t(sysconf(_SC_PAGESIZE));
  size_t cap = (kArenaCapacity + page - 1) / page * page;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
  flags |= MAP_NORESERVE;
#endif
  for (size_t guard = size_t(8) << 30; guard >= page; guard /= 16) {
    void* m = mmap(nullptr, cap + 2 * guard, PROT_NONE, flags, -1, 0);
    if (m == MAP_FAILED)
      continue;
    char* base = static_cast<char*>(m);
    if (mprotect(base + guard, cap, PROT_READ | PROT_WRITE) != 0) {
      munmap(m, cap + 2 * guard);
      continue;
    }
    arena_map = base;
    arena_map_len = cap + 2 * guard;
    arena = reinterpret_cast<unsigned char*>(base + guard);
    arena_win_lo = reinterpret_cast<uintptr_t>(base);
    arena_win_len = arena_map_len;
    break;
  }
  if (!arena)
    throw std::bad_alloc();
  void* sh = mmap(nullptr, cap / 4 * sizeof(Shadow), PROT_READ | PROT_WRITE, flags, -1, 0);
  if (sh != MAP_FAILED) {
    shadow = static_cast<Shadow*>(sh); // zero: epoch 0, which no group has
    shadow_len = cap / 4 * sizeof(Shadow);
  }
}

// ---------------------------------------------------------------- faults and stops

// A fault in a kernel thread (a stack overflow into its guard, or an access far outside every
// buffer) and the watchdog's stop signal both jump back to worker_loop through Worker::trap; the
// handlers run on an alternate signal stack (the faulting fiber's stack may be exhausted).

// The handlers that were installed before this library's (a fault that is not a kernel
// thread's goes to them, or gets the default action).
struct PrevHandlers {
  struct sigaction segv, bus;
};
inline PrevHandlers& prev_handlers() {
  static PrevHandlers p;
  return p;
}

inline uintptr_t context_pc(void* ctx) {
  auto* uc = static_cast<ucontext_t*>(ctx);
#if defined(__APPLE__) && defined(__x86_64__)
  return uintptr_t(uc->uc_mcontext->__ss.__rip);
#elif defined(__APPLE__) && defined(__aarch64__)
  return uintptr_t(uc->uc_mcontext->__ss.__pc);
#elif defined(__x86_64__)
  return uintptr_t(uc->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
  return uintptr_t(uc->uc_mcontext.pc);
#else
  (void)uc;
  return 0;
#endif
}

inline void on_fault(int sig, siginfo_t* si, void* ctx) {
  Worker* w = tls_worker;
  if (w && w->trap_armed && w->current) {
    w->trap_armed = 0;
    w->overflowed = w->current;
    w->fault_addr = reinterpret_cast<uintptr_t>(si->si_addr);
    w->fault_pc = context_pc(ctx);
    w->trap_reason = 1;
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

// The signal the watchdog sends to the workers of a dispatch it stops.
inline int stop_signal() {
#ifdef SIGRTMIN
  return SIGRTMIN + 7;
#else
  return SIGUSR2;
#endif
}

// This library's code, where a thread can be stopped without leaving a lock held (C library
// code, e.g. printf or malloc, is left to finish: the watchdog signals again).
struct TextRange {
  uintptr_t lo = 0, hi = 0;
};
inline TextRange& text_range() {
  static TextRange r;
  return r;
}
#if defined(__linux__)
inline void find_text_range() {
  static std::once_flag once;
  std::call_once(once, [] {
    dl_iterate_phdr(
        [](struct dl_phdr_info* info, size_t, void*) -> int {
          if (info->dlpi_addr != library_base())
            return 0;
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) {
              text_range().lo = info->dlpi_addr + ph.p_vaddr;
              text_range().hi = info->dlpi_addr + ph.p_vaddr + ph.p_memsz;
            }
          }
          return 1;
        },
        nullptr);
  });
}
#else
inline void find_text_range() {}
#endif

inline void on_stop(int, siginfo_t*, void* ctx) {
  Worker* w = tls_worker;
  if (!w || !w->trap_armed || !w->current || tls_no_stop)
    return; // the scheduler sees Dispatch::stop at its next step
  uintptr_t pc = context_pc(ctx);
  const TextRange& t = text_range();
  if (t.hi && !(pc >= t.lo && pc < t.hi))
    return;
  w->trap_armed = 0;
  w->overflowed = w->current;
  w->fault_pc = pc;
  w->trap_reason = 2;
  siglongjmp(w->trap, 1);
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
    struct sigaction st;
    std::memset(&st, 0, sizeof(st));
    st.sa_sigaction = &on_stop;
    st.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&st.sa_mask);
    sigaction(stop_signal(), &st, nullptr);
  });
}

// Where the threads of the worker's current group are (for a dispatch that was stopped).
inline std::string where_threads_are(const Worker& w, const Fiber* running, uintptr_t pc) {
  if (!w.in_group)
    return "\n  (no threadgroup of this worker had started)";
  std::string msg = format("\n  in %s:", group_desc(w).c_str());
  if (running)
    msg += format(
        "\n  %s was running, %s", thread_desc(w, *running).c_str(), at_line(pc, false).c_str());
  unsigned ready = 0;
  for (uint32_t i = 0; i < w.nthreads; ++i)
    if (w.fibers[i].state == State::Ready && &w.fibers[i] != running)
      ++ready;
  if (ready)
    msg += format("\n  %u other thread(s) had not yet reached a barrier", ready);
  msg += describe_waits(w, 0, w.nthreads, "thread(s)");
  return msg;
}

inline void report_stop(Worker& w, const Fiber* running, uintptr_t pc) {
  Dispatch& d = *w.d;
  if (d.stop.load() == METALSIM_ERR_INTERRUPTED)
    d.errors.fail(
        METALSIM_ERR_INTERRUPTED,
        format("kernel '%s': the dispatch was interrupted", d.kernel->name) +
            where_threads_are(w, running, pc));
  else
    d.errors.fail(
        METALSIM_ERR_TIMEOUT,
        format(
            "kernel '%s' ran past its deadline of %g s of CPU time and was stopped "
            "(METALSIM_TIMEOUT sets the deadline in seconds; 0 turns it off). A kernel that never "
            "ends usually loops "
            "on a condition that never changes:",
            d.kernel->name,
            d.timeout_s) +
            where_threads_are(w, running, pc));
}

// ---------------------------------------------------------------- workers' loop

__attribute__((no_sanitize_thread)) inline void run_groups(Worker& w, Dispatch& d) {
  for (;;) {
    if (d.errors.failed.load(std::memory_order_relaxed) || d.stop.load(std::memory_order_relaxed))
      break;
    uint64_t g = d.next_group.fetch_add(1);
    if (g >= d.total_groups)
      break;
    if (!run_group(w, g))
      break;
  }
}

inline void report_fault(Worker& w) {
  Dispatch& d = *w.d;
  const Fiber& f = *w.overflowed;
  uintptr_t a = w.fault_addr;
  if (w.in_guard(a)) {
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
    return;
  }
  std::string what;
  if (a - w.arena_win_lo < w.arena_win_len) {
    what = format(
        "threadgroup memory at byte offset %lld, outside every threadgroup allocation",
        (long long)(intptr_t(a) - intptr_t(reinterpret_cast<uintptr_t>(w.arena))));
  } else {
    const Dispatch::Buf* near = nullptr;
    uintptr_t dist = ~uintptr_t(0);
    for (const auto& b : d.bufs) {
      uintptr_t dd = a < b.lo ? b.lo - a : a - b.hi;
      if (dd < dist) {
        dist = dd;
        near = &b;
      }
    }
    if (near && a - d.guard_lo < d.guard_len)
      what = format(
          "[[buffer(%u)]] at byte offset %lld (it has %llu bytes)",
          near->index,
          (long long)(intptr_t(a) - intptr_t(near->data)),
          (unsigned long long)(near->hi - near->data));
    else
      what = format("address 0x%llx, in no buffer", (unsigned long long)a);
  }
  d.errors.fail(
      METALSIM_ERR_MEMORY,
      format(
          "kernel '%s': invalid memory access to %s, by %s of %s, %s",
          d.kernel->name,
          what.c_str(),
          thread_desc(w, f).c_str(),
          group_desc(w).c_str(),
          at_line(w.fault_pc, false).c_str()));
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
  w.trap_reason = 0;
  if (sigsetjmp(w.trap, 1) == 0) {
    w.trap_armed = 1;
    run_groups(w, d);
    w.trap_armed = 0;
    if (d.stop.load() && !d.errors.failed.load())
      report_stop(w, nullptr, 0);
  } else {
    w.trap_armed = 0;
    tls_no_stop = 0;
    if (w.trap_reason == 1)
      report_fault(w);
    else if (w.trap_reason == 2)
      report_stop(w, w.overflowed, w.fault_pc);
    // 3: the error is recorded already
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
  tls_no_stop = 0;
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
  return metalsim_dtype_name(code);
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
    if (a->group[i] > kMaxThreadsPerGroup)
      threads = ~0ull >> 1;
    else
      threads *= a->group[i];
  }
  // Metal's grid limits: positions in the grid are 32-bit (thread_position_in_grid is a uint3),
  // so neither the threadgroups nor the threads of a grid may pass 2^32 - 1 along an axis.
  for (int i = 0; i < 3 && threads <= kMaxThreadsPerGroup; ++i) {
    const char axis = "xyz"[i];
    const uint64_t lim = 0xffffffffull;
    const uint64_t grid_threads =
        a->grid_is_threads ? a->grid[i] : (a->grid[i] > lim ? ~0ull : a->grid[i] * a->group[i]);
    if (!a->grid_is_threads && a->grid[i] > lim)
      return fail_out(
          err,
          errlen,
          METALSIM_ERR_LIMIT,
          format(
              "kernel '%s': %llu threadgroups along %c exceeds Metal's limit of 2^32 - 1 "
              "(4294967295) threadgroups per grid dimension",
              k->name,
              (unsigned long long)a->grid[i],
              axis));
    if (grid_threads > lim)
      return fail_out(
          err,
          errlen,
          METALSIM_ERR_LIMIT,
          format(
              "kernel '%s': %llu threads along %c (%s) exceeds Metal's limit of 2^32 - 1 "
              "(4294967295) threads per grid dimension (thread_position_in_grid is a uint3)",
              k->name,
              (unsigned long long)grid_threads,
              axis,
              a->grid_is_threads ? "the grid of threads"
                                 : format(
                                       "%llu threadgroups of %llu",
                                       (unsigned long long)a->grid[i],
                                       (unsigned long long)a->group[i])
                                       .c_str()));
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
  // Threadgroup memory layout: kernel-body arrays first, then [[threadgroup(n)]] buffers. `off`
  // counts what Metal counts against its 32 KiB; `at` places each allocation in the arena with a
  // red zone after it (so an access past its end is recognised, not one into the next).
  size_t off = 0, at = 0;
  size_t red = kRedZone;
  {
    size_t n_allocs = k->n_tg_decls + 1;
    for (uint32_t i = 0; i < a->n_threadgroup && i < 32; ++i)
      n_allocs += a->threadgroup_lengths[i] ? 1 : 0;
    while (red > 16 && kMaxThreadgroupMemory + n_allocs * (red + 16) > kArenaCapacity)
      red /= 2;
  }
  std::string detail;
  for (size_t i = 0; i < k->n_tg_decls; ++i) {
    size_t al = k->tg_decls[i].align < 16 ? 16 : k->tg_decls[i].align;
    off = (off + al - 1) / al * al;
    at = (at + al - 1) / al * al;
    d->tg_decl_offsets.push_back(at);
    d->tg_allocs.push_back({at, k->tg_decls[i].size, -1, &k->tg_decls[i]});
    off += k->tg_decls[i].size;
    at += k->tg_decls[i].size + red;
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
    at = (at + 15) / 16 * 16;
    d->tg_buffer_offsets[i] = at;
    d->tg_allocs.push_back({at, size_t(len), int(i), nullptr});
    off += len;
    at += len + red;
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
  d->arena_bytes = at;
  // Device buffers as the kernel sees them.
  for (uint32_t i = 0; i < a->n_buffers; ++i) {
    const metalsim_binding& b = a->buffers[i];
    if (!b.data)
      continue;
    uintptr_t p = reinterpret_cast<uintptr_t>(b.data);
    d->bufs.push_back({p - uintptr_t(b.before), p + uintptr_t(b.size), p, i, b.read_only != 0});
  }
  d->guard_lo = uintptr_t(a->guard_lo);
  d->guard_len = uintptr_t(a->guard_hi - a->guard_lo);
  d->schedule = a->schedule;
  d->seed = a->seed;
  d->timeout_s = a->timeout_s;
  k->check(*d, d->errors);
  if (d->errors.failed)
    return fail_out(err, errlen, d->errors.status, d->errors.message);

  d->total_groups = uint64_t(d->groups.x) * d->groups.y * d->groups.z;
  if (d->total_groups == 0)
    return METALSIM_OK;
  unsigned nw = a->n_workers > 0 ? unsigned(a->n_workers) : default_workers();
  if (nw > d->total_groups)
    nw = unsigned(d->total_groups);
  // The workers run the groups; this thread is their watchdog: it stops them at the deadline
  // or when the host cancels (Ctrl-C), with a signal that takes a thread out of a kernel loop.
  library_base();
  find_text_range();
  install_fault_handler();
  std::mutex mu;
  std::condition_variable cv;
  unsigned running = 0;
  std::vector<std::thread> threads_v;
  auto work = [&] {
    try {
      worker_loop(*d);
    } catch (const std::exception& e) {
      d->errors.fail(METALSIM_ERR_RUNTIME, format("kernel '%s': %s", k->name, e.what()));
    }
    std::lock_guard<std::mutex> lk(mu);
    --running;
    cv.notify_all();
  };
  try {
    for (unsigned i = 0; i < nw; ++i) {
      {
        std::lock_guard<std::mutex> lk(mu);
        ++running;
      }
      threads_v.emplace_back(work);
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu);
    --running;
    d->errors.fail(METALSIM_ERR_RUNTIME, format("kernel '%s': %s", k->name, e.what()));
  }
  // The deadline counts the CPU time of the busiest worker, not the wall clock: a kernel that
  // loops forever keeps its worker busy, while a kernel on a machine shared with other work
  // (a loaded CI runner) is not stopped for time it spent waiting for a core.
  auto busiest_worker_seconds = [&] {
    double most = 0;
    for (auto& t : threads_v) {
      clockid_t cid;
      timespec ts;
      if (pthread_getcpuclockid(t.native_handle(), &cid) == 0 && clock_gettime(cid, &ts) == 0)
        most = std::max(most, double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec));
    }
    return most;
  };
  {
    std::unique_lock<std::mutex> lk(mu);
    while (running > 0) {
      cv.wait_for(lk, std::chrono::milliseconds(20));
      if (running == 0)
        break;
      int reason = 0;
      if (a->cancel && *a->cancel)
        reason = METALSIM_ERR_INTERRUPTED;
      else if (d->timeout_s > 0 && busiest_worker_seconds() > d->timeout_s)
        reason = METALSIM_ERR_TIMEOUT;
      if (reason) {
        int none = 0;
        d->stop.compare_exchange_strong(none, reason);
        for (auto& t : threads_v)
          pthread_kill(t.native_handle(), stop_signal());
      }
    }
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
#define METALSIM_DEFINE_CONTEXT_SWITCH_ASM                                                         \
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
#define METALSIM_DEFINE_CONTEXT_SWITCH_ASM                                                         \
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

// The sanitizer's entry points (see "the sanitizer" above): what -fsanitize=thread makes the
// compiler call before each memory access of the kernel library. Expanded once per library.
#define METALSIM_DEFINE_CONTEXT_SWITCH                                                             \
  METALSIM_DEFINE_CONTEXT_SWITCH_ASM                                                               \
  METALSIM_DEFINE_SANITIZER_HOOKS
#define METALSIM_TSAN_FN extern "C" __attribute__((no_sanitize_thread, visibility("hidden")))
#define METALSIM_TSAN_ACCESS(n)                                                                    \
  METALSIM_TSAN_FN void __tsan_read##n(void* p) {                                                  \
    ::metalsim::rt::on_access(p, n, false, __builtin_return_address(0));                           \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_write##n(void* p) {                                                 \
    ::metalsim::rt::on_access(p, n, true, __builtin_return_address(0));                            \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_unaligned_read##n(void* p) {                                        \
    ::metalsim::rt::on_access(p, n, false, __builtin_return_address(0));                           \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_unaligned_write##n(void* p) {                                       \
    ::metalsim::rt::on_access(p, n, true, __builtin_return_address(0));                            \
  }
// Atomic operations (the compiler replaces __atomic builtins by these): checked as writes of
// their size, then done for real (device atomics are shared between the workers' threads).
#define METALSIM_TSAN_ATOMIC(n, T)                                                                 \
  METALSIM_TSAN_FN T __tsan_atomic##n##_load(const volatile T* p, int) {                           \
    ::metalsim::rt::on_access((const void*)p, n / 8, false, __builtin_return_address(0), true);    \
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_atomic##n##_store(volatile T* p, T v, int) {                        \
    ::metalsim::rt::on_access((const void*)p, n / 8, true, __builtin_return_address(0), true);     \
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                \
  METALSIM_TSAN_ATOMIC_RMW(n, T, exchange, __atomic_exchange_n)                                    \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_add, __atomic_fetch_add)                                    \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_sub, __atomic_fetch_sub)                                    \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_and, __atomic_fetch_and)                                    \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_or, __atomic_fetch_or)                                      \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_xor, __atomic_fetch_xor)                                    \
  METALSIM_TSAN_ATOMIC_RMW(n, T, fetch_nand, __atomic_fetch_nand)                                  \
  METALSIM_TSAN_FN int __tsan_atomic##n##_compare_exchange_strong(                                 \
      volatile T* p, T* expected, T desired, int, int) {                                           \
    ::metalsim::rt::on_access((const void*)p, n / 8, true, __builtin_return_address(0), true);     \
    return __atomic_compare_exchange_n(                                                            \
        p, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
  }                                                                                                \
  METALSIM_TSAN_FN int __tsan_atomic##n##_compare_exchange_weak(                                   \
      volatile T* p, T* expected, T desired, int, int) {                                           \
    ::metalsim::rt::on_access((const void*)p, n / 8, true, __builtin_return_address(0), true);     \
    return __atomic_compare_exchange_n(                                                            \
        p, expected, desired, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                           \
  }                                                                                                \
  METALSIM_TSAN_FN T __tsan_atomic##n##_compare_exchange_val(                                      \
      volatile T* p, T expected, T desired, int, int) {                                            \
    ::metalsim::rt::on_access((const void*)p, n / 8, true, __builtin_return_address(0), true);     \
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    return expected;                                                                               \
  }
#define METALSIM_TSAN_ATOMIC_RMW(n, T, op, builtin)                                                \
  METALSIM_TSAN_FN T __tsan_atomic##n##_##op(volatile T* p, T v, int) {                            \
    ::metalsim::rt::on_access((const void*)p, n / 8, true, __builtin_return_address(0), true);     \
    return builtin(p, v, __ATOMIC_SEQ_CST);                                                        \
  }
#define METALSIM_DEFINE_SANITIZER_HOOKS                                                            \
  METALSIM_TSAN_FN void __tsan_init() {}                                                           \
  METALSIM_TSAN_FN void __tsan_func_entry(void*) {}                                                \
  METALSIM_TSAN_FN void __tsan_func_exit(void*) {}                                                 \
  METALSIM_TSAN_FN void __tsan_vptr_update(void**, void*) {}                                       \
  METALSIM_TSAN_FN void __tsan_vptr_read(void**) {}                                                \
  METALSIM_TSAN_ACCESS(1)                                                                          \
  METALSIM_TSAN_ACCESS(2)                                                                          \
  METALSIM_TSAN_ACCESS(4)                                                                          \
  METALSIM_TSAN_ACCESS(8)                                                                          \
  METALSIM_TSAN_ACCESS(16)                                                                         \
  METALSIM_TSAN_FN void __tsan_read_range(void* p, unsigned long n) {                              \
    ::metalsim::rt::on_access(p, unsigned(n), false, __builtin_return_address(0));                 \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_write_range(void* p, unsigned long n) {                             \
    ::metalsim::rt::on_access(p, unsigned(n), true, __builtin_return_address(0));                  \
  }                                                                                                \
  METALSIM_TSAN_ATOMIC(8, unsigned char)                                                           \
  METALSIM_TSAN_ATOMIC(16, unsigned short)                                                         \
  METALSIM_TSAN_ATOMIC(32, unsigned int)                                                           \
  METALSIM_TSAN_ATOMIC(64, unsigned long)                                                          \
  METALSIM_TSAN_FN void __tsan_atomic_thread_fence(int) {                                          \
    __atomic_thread_fence(__ATOMIC_SEQ_CST);                                                       \
  }                                                                                                \
  METALSIM_TSAN_FN void __tsan_atomic_signal_fence(int) {}                                         \
  extern "C" __attribute__((no_sanitize("alignment", "thread"), visibility("hidden"))) void        \
  __ubsan_handle_type_mismatch_v1(void* data, unsigned long ptr) {                                 \
    ::metalsim::rt::on_misaligned(                                                                 \
        static_cast<const ::metalsim::rt::UbsanTypeMismatch*>(data), ptr);                         \
  }                                                                                                \
  extern "C" __attribute__((no_sanitize("alignment", "thread"), visibility("hidden"))) void        \
  __ubsan_handle_type_mismatch_v1_abort(void* data, unsigned long ptr) {                           \
    ::metalsim::rt::on_misaligned(                                                                 \
        static_cast<const ::metalsim::rt::UbsanTypeMismatch*>(data), ptr);                         \
  }
