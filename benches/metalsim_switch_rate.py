"""How fast the Metal simulator switches between simulated GPU threads (fibers).

Every simulated thread blocks at each barrier or SIMD collective, and the runtime switches to the
next lane: the switch rate bounds how fast kernels with many collectives run. One OS thread
(workers=1) so the number is per core.

    pdm run python benches/metalsim_switch_rate.py
"""

from __future__ import annotations

import time

import numpy as np

import metalsim

SOURCE = """
#include <metal_stdlib>
using namespace metal;

// Each lane blocks `iters` times at a SIMD-group barrier (no data exchanged).
kernel void simd_barriers(constant uint& iters [[buffer(0)]],
                          device uint* out [[buffer(1)]],
                          uint tid [[thread_position_in_grid]]) {
    for (uint i = 0; i < iters; ++i) simdgroup_barrier(mem_flags::mem_none);
    out[tid] = iters;
}

// Each lane takes part in `iters` simd_sum reductions.
kernel void simd_sums(constant uint& iters [[buffer(0)]],
                      device float* out [[buffer(1)]],
                      uint tid [[thread_position_in_grid]]) {
    float acc = 0.0f;
    for (uint i = 0; i < iters; ++i) acc += simd_sum(1.0f);
    out[tid] = acc;
}

// Each thread waits `iters` times at a threadgroup barrier.
kernel void tg_barriers(constant uint& iters [[buffer(0)]],
                        device uint* out [[buffer(1)]],
                        uint tid [[thread_position_in_grid]]) {
    for (uint i = 0; i < iters; ++i) threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = iters;
}
"""


def measure(lib: metalsim.Library, kernel: str, threads: int, groups: int, iters: int) -> float:
    out = np.zeros(threads * groups, dtype=np.float32 if kernel == "simd_sums" else np.uint32)
    buffers = {0: np.uint32(iters), 1: out}
    lib.dispatch(kernel, grid=groups, threadgroup=threads, buffers=buffers, workers=1)  # warm up
    t0 = time.perf_counter()
    lib.dispatch(kernel, grid=groups, threadgroup=threads, buffers=buffers, workers=1)
    dt = time.perf_counter() - t0
    switches = threads * groups * iters  # one switch per blocked thread per iteration
    return switches / dt


def main() -> None:
    lib = metalsim.Library.from_source(SOURCE, "switch_rate.metal")
    for kernel, what in [
        ("simd_barriers", "simdgroup_barrier"),
        ("simd_sums", "simd_sum"),
        ("tg_barriers", "threadgroup_barrier"),
    ]:
        rate = measure(lib, kernel, threads=1024, groups=4, iters=2000)
        print(f"{what:22s} 1024 threads x 4 groups: {rate / 1e6:7.1f} M fiber switches/s (1 core)")


if __name__ == "__main__":
    main()
