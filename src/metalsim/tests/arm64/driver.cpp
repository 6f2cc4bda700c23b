// Runs kernels.metal's kernels through a kernel library's C entry point (metalsim_dispatch),
// without the host library: built for AArch64 and run under qemu-user by run.py.
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "metalsim/abi.h"

extern "C" int metalsim_dispatch(const metalsim_dispatch_args* args, char* err, size_t errlen);

static int failures = 0;

// Buffers live in one mapping of their own, as the host library's copies do: the runtime then
// treats every access inside it that is in no binding as out of bounds.
struct Arena {
  char* base = nullptr;
  size_t used = 0, len = size_t(1) << 20;
  Arena() {
    base = static_cast<char*>(
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  float* floats(size_t n, float fill = 0.0f) {
    used = (used + 4095) / 4096 * 4096;
    float* p = reinterpret_cast<float*>(base + used);
    used += n * 4 + 4096; // a gap after each buffer
    std::fill(p, p + n, fill);
    return p;
  }
};
static Arena arena;

static void check(bool ok, const char* what, const std::string& detail = "") {
  std::printf(
      "%s %s%s%s\n", ok ? "ok  " : "FAIL", what, detail.empty() ? "" : ": ", detail.c_str());
  if (!ok)
    ++failures;
}

struct Dispatch {
  metalsim_dispatch_args a{};
  std::vector<metalsim_binding> b;
  char err[8192] = {0};
  Dispatch(const char* kernel, uint64_t groups, uint64_t threads) {
    a.abi_version = METALSIM_ABI_VERSION;
    a.kernel = kernel;
    a.grid[0] = groups;
    a.grid[1] = a.grid[2] = 1;
    a.group[0] = threads;
    a.group[1] = a.group[2] = 1;
  }
  void bind(void* p, size_t bytes) {
    metalsim_binding m{};
    m.data = p;
    m.size = bytes;
    m.dtype = METALSIM_FLOAT32;
    b.push_back(m);
  }
  int run() {
    a.n_buffers = uint32_t(b.size());
    a.buffers = b.data();
    a.guard_lo = reinterpret_cast<uintptr_t>(arena.base);
    a.guard_hi = a.guard_lo + arena.len;
    return metalsim_dispatch(&a, err, sizeof(err));
  }
};

int main() {
  const int groups = 3, n = 256;
  float* x = arena.floats(groups * n);
  float* out = arena.floats(groups);
  float* shuffled = arena.floats(groups * n);
  for (int i = 0; i < groups * n; ++i)
    x[i] = float(i % 97) * 0.25f;
  for (int workers : {1, 2}) {
    Dispatch d("block_sum", groups, n);
    d.a.n_workers = workers;
    d.bind(x, groups * n * 4);
    d.bind(out, groups * 4);
    d.bind(shuffled, groups * n * 4);
    int rc = d.run();
    bool sums = rc == METALSIM_OK, shuf = rc == METALSIM_OK;
    for (int g = 0; g < groups; ++g) {
      float want = 0.0f;
      for (int i = 0; i < n; ++i)
        want += x[g * n + i];
      sums = sums && std::fabs(out[g] - want) <= 1e-3f * std::fabs(want);
    }
    for (int i = 0; i < groups * n; ++i)
      shuf = shuf && shuffled[i] == x[i ^ 1];
    std::string w = std::to_string(workers) + " worker(s)";
    check(sums, "barriers and simd_sum: block sums", w + (rc ? std::string(", ") + d.err : ""));
    check(shuf, "simd_shuffle_xor", w);
  }
  {
    float* o = arena.floats(64);
    Dispatch d("racy", 1, 64);
    d.bind(o, 64 * 4);
    int rc = d.run();
    check(
        rc == METALSIM_ERR_RACE && std::strstr(d.err, "data race"),
        "race between SIMD groups",
        d.err);
  }
  {
    float* o = arena.floats(64);
    Dispatch d("past_end", 2, 32);
    d.bind(o, 64 * 4);
    int rc = d.run();
    check(
        rc == METALSIM_ERR_MEMORY && std::strstr(d.err, "byte offset 256"),
        "out-of-bounds write",
        d.err);
  }
  {
    float* o = arena.floats(64, 1.0f);
    Dispatch d("forever", 2, 32);
    d.a.timeout_s = 1.0;
    d.bind(o, 64 * 4);
    int rc = d.run();
    check(rc == METALSIM_ERR_TIMEOUT && std::strstr(d.err, "deadline"), "deadline", d.err);
  }
  std::printf("%s\n", failures ? "arm64: FAILED" : "arm64: all passed");
  return failures ? 1 : 0;
}
