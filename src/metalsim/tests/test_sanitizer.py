"""metalsim as a sanitizer: each check triggered by a kernel that breaks its rule, and the
message a student sees (kernel, threads, .metal lines); and kernels that keep the rules pass.

Run: pdm run pytest src/metalsim/tests/test_sanitizer.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import metalsim

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sanitizer_kernels.metal"


def line(marker: str) -> str:
    """'sanitizer_kernels.metal:N' for the line that carries `// @marker`."""
    for n, text in enumerate(SOURCE.read_text().splitlines(), start=1):
        if f"// @{marker}" in text:
            return f"sanitizer_kernels.metal:{n}"
    raise AssertionError(f"no line marked @{marker}")


@pytest.fixture(scope="module")
def lib() -> metalsim.Library:
    return metalsim.Library.from_files([SOURCE])


def run(lib: metalsim.Library, kernel: str, threads: int = 64, groups: int = 1, **kw) -> None:
    lib.dispatch(kernel, grid=groups, threadgroup=threads, **kw)


# ---------------------------------------------------------------- races


def test_race_between_simdgroups_names_threads_and_lines(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    with pytest.raises(metalsim.RaceError) as e:
        run(lib, "race_read_after_write", buffers={0: out})
    msg = str(e.value)
    assert "kernel 'race_read_after_write'" in msg
    assert "data race on threadgroup memory" in msg
    assert "threadgroup array 't'" in msg
    assert "simdgroup 0" in msg and "simdgroup 1" in msg
    assert line("race-write") in msg and line("race-read") in msg
    assert "threadgroup_barrier" in msg


def test_the_same_exchange_with_a_barrier_passes(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    run(lib, "exchange_with_barrier", buffers={0: out})
    np.testing.assert_array_equal(out, (np.arange(64) + 32) % 64)


def test_write_write_race(lib: metalsim.Library) -> None:
    with pytest.raises(metalsim.RaceError, match="data race") as e:
        run(lib, "race_write_write", buffers={0: np.zeros(64, np.float32)})
    assert str(e.value).count(line("ww")) == 2


def test_write_after_read_race_across_loop_rounds(lib: metalsim.Library) -> None:
    with pytest.raises(metalsim.RaceError) as e:
        run(lib, "race_write_after_read", buffers={0: np.zeros(64, np.float32)})
    msg = str(e.value)
    assert line("war-write") in msg and line("war-read") in msg


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random:7"])
def test_races_are_found_in_every_schedule(
    lib: metalsim.Library, schedule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METALSIM_SCHEDULE", schedule)
    with pytest.raises(metalsim.RaceError):
        run(lib, "race_read_after_write", buffers={0: np.zeros(64, np.float32)})
    out = np.zeros(64, np.float32)
    run(lib, "exchange_with_barrier", buffers={0: out})
    np.testing.assert_array_equal(out, (np.arange(64) + 32) % 64)


def test_a_bad_schedule_name_is_an_error(
    lib: metalsim.Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METALSIM_SCHEDULE", "backwards")
    with pytest.raises(metalsim.Error, match="METALSIM_SCHEDULE"):
        run(lib, "exchange_with_barrier", buffers={0: np.zeros(64, np.float32)})


def test_lane0_staging_for_its_simdgroup_is_lockstep(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    run(lib, "lane0_stages_for_its_simdgroup", buffers={0: out})
    np.testing.assert_array_equal(out, np.repeat([10.0, 11.0], 32))


def test_a_later_lane_staging_is_reported_not_poison(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    with pytest.raises(metalsim.RaceError) as e:
        run(lib, "lane5_stages_for_its_simdgroup", buffers={0: out})
    msg = str(e.value)
    assert "lockstep" in msg and "simdgroup_barrier" in msg
    assert "lane 5" in msg and "lane 4" in msg
    assert line("lane5-write") in msg and line("lane5-read") in msg


def test_a_simdgroup_barrier_makes_later_lane_staging_correct(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    run(lib, "lane5_stages_then_simdgroup_barrier", buffers={0: out})
    np.testing.assert_array_equal(out, np.repeat([10.0, 11.0], 32))


def test_read_then_write_in_lockstep_matches_the_gpu(lib: metalsim.Library) -> None:
    out = np.zeros(32, np.float32)
    run(lib, "shift_left_in_lockstep", threads=32, buffers={0: out})
    np.testing.assert_array_equal(out, np.arange(1, 33))


# ---------------------------------------------------------------- barriers


def test_barrier_inside_an_if_is_reported_at_its_line(lib: metalsim.Library) -> None:
    with pytest.raises(metalsim.DeadlockError) as e:
        run(lib, "barrier_in_if", buffers={0: np.zeros(64, np.float32)})
    msg = str(e.value)
    assert "divergent threadgroup_barrier at " in msg and line("barrier-in-if") in msg
    assert "thread 40" in msg and "returned" in msg


def test_returning_before_the_first_barrier_is_allowed(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    run(lib, "return_before_first_barrier", buffers={0: out})
    np.testing.assert_array_equal(out[:40], 2.0)


def test_a_barrier_reached_a_different_number_of_times(lib: metalsim.Library) -> None:
    with pytest.raises(metalsim.DeadlockError) as e:
        run(lib, "barrier_count_differs", buffers={0: np.zeros(64, np.float32)})
    assert line("loop-barrier") in str(e.value)


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "offset,byte_offset",
    [(1, 256), (-1, -4), (1 << 20, (1 << 20) * 4), (-(1 << 28), -(1 << 28) * 4)],
    ids=["one-past-the-end", "one-before-the-start", "far-after", "far-before"],
)
def test_out_of_bounds_write_names_buffer_offset_thread_and_line(
    lib: metalsim.Library, offset: int, byte_offset: int
) -> None:
    out = np.zeros(64, np.float32)
    with pytest.raises(metalsim.MemoryAccessError) as e:
        run(lib, "write_at_offset", buffers={0: out, 1: np.int32(offset)})
    msg = str(e.value)
    assert "kernel 'write_at_offset'" in msg and "out-of-bounds write" in msg
    assert "[[buffer(0)]]" in msg and f"byte offset {byte_offset} " in msg
    assert "thread " in msg and line("write-at-offset") in msg


def test_out_of_bounds_read(lib: metalsim.Library) -> None:
    x = np.zeros(64, np.float32)
    out = np.zeros(64, np.float32)
    with pytest.raises(
        metalsim.MemoryAccessError, match=r"out-of-bounds read .*\[\[buffer\(0\)\]\]"
    ):
        run(lib, "read_at_offset", buffers={0: x, 1: out, 2: np.int64(3)})
    run(lib, "read_at_offset", buffers={0: x, 1: out, 2: np.int64(0)})  # still usable


def test_an_access_far_beyond_every_buffer_is_an_error_not_a_crash(lib: metalsim.Library) -> None:
    # 2^45 bytes before the buffer: outside the guarded memory around it, so the access faults;
    # the fault is reported as an error and the process goes on.
    x = np.zeros(64, np.float32)
    out = np.zeros(64, np.float32)
    with pytest.raises(metalsim.MemoryAccessError, match="invalid memory access|out-of-bounds"):
        run(lib, "read_at_offset", buffers={0: x, 1: out, 2: np.int64(-(2**43))})
    run(lib, "read_at_offset", buffers={0: x, 1: out, 2: np.int64(0)})


def test_writing_a_read_only_array_is_an_error(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    out.flags.writeable = False
    with pytest.raises(metalsim.MemoryAccessError, match="read-only") as e:
        run(lib, "write_at_offset", buffers={0: out, 1: np.int32(0)})
    assert line("write-at-offset") in str(e.value)
    assert not out.any()


def test_threadgroup_memory_smaller_than_the_kernel_uses(lib: metalsim.Library) -> None:
    out = np.zeros(64, np.float32)
    with pytest.raises(metalsim.MemoryAccessError) as e:
        run(
            lib,
            "uses_256_bytes_of_threadgroup_memory",
            buffers={0: out},
            threadgroup_memory={0: 16},
        )
    msg = str(e.value)
    assert "[[threadgroup(0)]] (16 bytes" in msg and "byte offset 16" in msg
    assert line("scratch-write") in msg
    run(lib, "uses_256_bytes_of_threadgroup_memory", buffers={0: out}, threadgroup_memory={0: 256})
    np.testing.assert_array_equal(out, np.arange(64)[::-1])


def test_threadgroup_array_overrun(lib: metalsim.Library) -> None:
    with pytest.raises(metalsim.MemoryAccessError) as e:
        run(lib, "threadgroup_array_overrun", buffers={0: np.zeros(64, np.float32)})
    msg = str(e.value)
    assert "threadgroup array 'tile'" in msg and "byte offset 128" in msg
    assert line("tile-write") in msg


def test_a_view_is_its_own_buffer(lib: metalsim.Library) -> None:
    # A view one float into an array is bound as a buffer of its own (copied to a page, as a
    # Metal buffer starts): the kernel's writes come back into the view only.
    base = np.zeros(65, np.float32)
    view = base[1:]
    run(lib, "write_at_offset", buffers={0: view, 1: np.int32(0)})
    np.testing.assert_array_equal(base, np.r_[0.0, np.ones(64)])


# ---------------------------------------------------------------- deadlines and Ctrl-C


def test_a_kernel_past_its_deadline_stops_with_where_its_threads_are(
    lib: metalsim.Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METALSIM_TIMEOUT", "2")
    x = np.ones(64, np.float32)
    t0 = time.monotonic()
    with pytest.raises(metalsim.TimeoutError) as e:
        run(lib, "wait_at_barrier_forever", buffers={0: x})
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "kernel 'wait_at_barrier_forever'" in msg and "deadline of 2 s" in msg
    assert "METALSIM_TIMEOUT" in msg
    # The running thread is caught in its loop: at the loop's body or at its condition (the line
    # before), wherever the stop found it.
    spin = line("spin-one")
    file, n = spin.split(":")
    assert "thread 63" in msg and (spin in msg or f"{file}:{int(n) - 1}" in msg)
    assert "wait at the threadgroup_barrier at " in msg and line("waiting-barrier") in msg
    # The process goes on: the same library runs the next dispatch.
    monkeypatch.setenv("METALSIM_TIMEOUT", "0")
    out = np.zeros(64, np.float32)
    run(lib, "exchange_with_barrier", buffers={0: out})
    assert out[0] == 32


def test_a_bad_timeout_is_an_error(lib: metalsim.Library, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALSIM_TIMEOUT", "soon")
    with pytest.raises(metalsim.Error, match="METALSIM_TIMEOUT"):
        run(lib, "exchange_with_barrier", buffers={0: np.zeros(64, np.float32)})


def ctrl_c_during(script: str, timeout: str) -> str:
    """Runs `script` in a new Python with METALSIM_TIMEOUT=timeout, sends it SIGINT a second
    after it prints "ready", and returns all it printed."""
    p = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, METALSIM_TIMEOUT=timeout),
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    return out


def test_ctrl_c_interrupts_a_dispatch(lib: metalsim.Library) -> None:
    # Python installs its Ctrl-C handler at start-up only where SIGINT is not ignored (in a
    # background job it is): the script sets it, as an interactive session has it.
    script = textwrap.dedent(
        f"""
        import signal, sys, time, numpy as np, metalsim
        signal.signal(signal.SIGINT, signal.default_int_handler)
        lib = metalsim.Library.from_files([{str(SOURCE)!r}])
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            lib.dispatch("spin_forever", grid=4, threadgroup=64,
                         buffers={{0: np.ones(256, np.float32)}})
        except KeyboardInterrupt:
            print(f"interrupted after {{time.monotonic() - t0:.1f}} s", flush=True)
            lib.dispatch("exchange_with_barrier", grid=1, threadgroup=64,
                         buffers={{0: np.zeros(64, np.float32)}})
            print("still usable", flush=True)
        """
    )
    out = ctrl_c_during(script, timeout="0")
    assert "interrupted after" in out and "still usable" in out, out


def test_a_process_that_ignores_ctrl_c_keeps_its_dispatch() -> None:
    # SIGINT ignored (nohup, a background job): the dispatch is not stopped by it, and runs on
    # to its deadline.
    script = textwrap.dedent(
        f"""
        import signal, sys, numpy as np, metalsim
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lib = metalsim.Library.from_files([{str(SOURCE)!r}])
        print("ready", flush=True)
        try:
            lib.dispatch("spin_forever", grid=4, threadgroup=64,
                         buffers={{0: np.ones(256, np.float32)}})
        except metalsim.TimeoutError:
            print("ran to its deadline", flush=True)
        except metalsim.InterruptedError:
            print("interrupted", flush=True)
        """
    )
    out = ctrl_c_during(script, timeout="3")
    assert "ran to its deadline" in out and "interrupted" not in out, out


# ---------------------------------------------------------------- grid limits


@pytest.mark.parametrize(
    "grid,threadgroup,match",
    [
        ((2**32, 1, 1), (1, 1, 1), "2\\^32 - 1"),
        ((2**60, 1, 1), (32, 1, 1), "2\\^32 - 1"),
        ((1, 2**33, 1), (1, 1, 1), "2\\^32 - 1"),
        ((2**27, 1, 1), (64, 1, 1), "2\\^32 - 1 \\(4294967295\\) threads per grid dimension"),
    ],
    ids=["2^32-groups", "2^60-groups", "y-axis", "threads"],
)
def test_grids_past_metals_limits_are_refused(
    lib: metalsim.Library, grid: tuple, threadgroup: tuple, match: str
) -> None:
    # Python refuses a grid dimension past 2^32 - 1 before the dispatch (ValueError); the
    # simulator refuses the rest (LimitError), e.g. threads = threadgroups x their size.
    with pytest.raises((metalsim.LimitError, ValueError), match=match):
        lib.dispatch(
            "exchange_with_barrier",
            grid=grid,
            threadgroup=threadgroup,
            buffers={0: np.zeros(64, np.float32)},
        )


# ---------------------------------------------------------------- alignment


def test_misaligned_vector_load_names_the_line(lib: metalsim.Library) -> None:
    x = np.arange(200, dtype=np.float32)
    out = np.zeros((32, 4), np.float32)
    run(lib, "float4_from_float_offset", threads=32, buffers={0: x, 1: out, 2: np.int32(0)})
    np.testing.assert_array_equal(out, x[:128].reshape(32, 4))
    with pytest.raises(metalsim.MemoryAccessError) as e:
        run(lib, "float4_from_float_offset", threads=32, buffers={0: x, 1: out, 2: np.int32(1)})
    msg = str(e.value)
    assert "misaligned" in msg and "multiple of 16 bytes" in msg
    assert "byte offset 4 of [[buffer(0)]]" in msg and line("float4-load") in msg
    assert "packed_" in msg


def test_packed_vector_load_needs_only_scalar_alignment(lib: metalsim.Library) -> None:
    x = np.arange(200, dtype=np.float32)
    out = np.zeros((32, 4), np.float32)
    run(lib, "packed_float4_from_float_offset", threads=32, buffers={0: x, 1: out, 2: np.int32(1)})
    np.testing.assert_array_equal(out, x[1:129].reshape(32, 4))


def test_threadgroup_atomics_do_not_race(lib: metalsim.Library) -> None:
    out = np.zeros(1, np.int32)
    run(lib, "threadgroup_atomic_count", threads=256, buffers={0: out})
    assert out[0] == 256
