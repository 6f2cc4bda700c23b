"""What the sanitizer's checks cost: the course's two attention kernels with and without them.

    pdm run python src/metalsim/tests/bench_checks.py

Compiles flash_attention.metal twice (METALSIM_CHECKS=0 and the default, checks on), then runs
each kernel on the same problem, alternating the two builds, and prints the median CPU time of
the repeats and their ratio. CPU time (all threads of the process), not wall time: the machine
may be shared.
"""

from __future__ import annotations

import os
import statistics
import time

import test_course_kernels as course

import metalsim

REPEATS = 5
KERNELS = [("flash_attention_f32_e128", 1024), ("flash_attention_simdgroup_f32", 128)]


def main() -> None:
    text = course.FLASH.read_text()
    libs = {}
    for checks in ("0", "1"):
        os.environ["METALSIM_CHECKS"] = checks
        libs[checks] = metalsim.Library.from_source(text, name=course.FLASH.name)
    q, k, v, mask = course.problem(L=64, S=256, E=64)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(REPEATS):
        for kernel, threads in KERNELS:
            for checks in ("0", "1"):
                t0 = time.process_time()
                course.attention(libs[checks], kernel, q, k, v, mask, threads)
                times.setdefault((kernel, checks), []).append(time.process_time() - t0)
    for kernel, _ in KERNELS:
        off = statistics.median(times[(kernel, "0")])
        on = statistics.median(times[(kernel, "1")])
        ratio = on / off
        print(
            f"{kernel}: checks off {off:.3f} s, on {on:.3f} s CPU"
            f" (median of {REPEATS}): {ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
