"""Run pytest in a child process that cannot take the terminal, or the grade, down with it.

A test that segfaults kills the process that runs it. A test stuck in native code (a kernel
waiting at a barrier, a thread asleep on a lock) cannot be stopped by pytest-timeout: its
signal is only seen when Python code runs again. So pytest runs in a child process, in a
process group of its own, and this process watches it through tiny_attn_tools.pytest_progress:

  - the child dies (a signal, or an exit in the middle of a test): the test it was running is
    "crashed", with the signal's name;
  - a test runs longer than the hard limit: the whole process group is killed and the test is
    "timed out";

and in both cases pytest starts again on the tests that had not run yet, so one bad test costs
one test, not the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Past pytest-timeout's own limit (pyproject.toml: 300 s), which catches hangs in Python code
# with a traceback; this one catches those it cannot see.
HARD_TEST_TIMEOUT = 330.0
CRASHED, TIMED_OUT = "crashed", "timed out"


@dataclass
class TestResult:
    nodeid: str  # "" for something that no single test explains (collection, exit)
    status: str  # passed, failed, error, skipped, crashed, timed out
    message: str


@dataclass
class Run:
    results: list[TestResult] = field(default_factory=list)  # every test that ran, in order
    incidents: list[TestResult] = field(default_factory=list)  # crashed / timed out
    returncode: int = 0  # pytest's code for a single clean session; 1 after an incident
    output: str = ""  # what pytest printed, when captured


def describe_exit(returncode: int) -> str:
    """`signal 11, SIGSEGV` for a process killed by a signal, `exit code N` otherwise."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-returncode}, {name}"
    return f"exit code {returncode}"


class _ProgressFile:
    """Reads the records the plugin appends, as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def new_records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next read
        return [json.loads(line) for line in lines if line.strip()]


def _kill_group(proc: subprocess.Popen, first: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, first)
    except ProcessLookupError:
        return
    if first != signal.SIGKILL:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
    proc.wait()


class _Watch:
    """What the runs of one supervised call have seen so far."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.collected: list[str] = []
        self.finished: set[str] = set()
        self.current: str | None = None  # the test in progress
        self.started = 0.0

    def follow(self, progress: _ProgressFile) -> None:
        for rec in progress.new_records():
            if rec["event"] == "collected":
                if not self.collected:  # the first session collects everything
                    self.collected.extend(rec["nodeids"])
            elif rec["event"] == "start":
                self.current, self.started = rec["nodeid"], time.monotonic()
            elif rec["event"] == "done":
                self.current = None
                self.finished.add(rec["nodeid"])
                self.run.results.append(TestResult(rec["nodeid"], rec["status"], rec["message"]))


def _session(
    cmd: list[str],
    progress: _ProgressFile,
    watch: _Watch,
    *,
    cwd: Path,
    env: dict[str, str],
    test_timeout: float,
    deadline: float | None,
    output: list[str] | None,
) -> tuple[int, str | None]:
    """One pytest process, followed to its end; returns its exit code and why it was killed."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        start_new_session=True,  # a process group of its own: killed as a whole
        stdout=subprocess.PIPE if output is not None else None,
        stderr=subprocess.STDOUT if output is not None else None,
        text=True,
        errors="replace",
    )
    reader = None
    if output is not None:
        reader = threading.Thread(target=output.extend, args=(proc.stdout,), daemon=True)
        reader.start()
    killed_for = None
    try:
        while proc.poll() is None:
            time.sleep(0.05)
            watch.follow(progress)
            now = time.monotonic()
            if watch.current is not None and now - watch.started > test_timeout:
                killed_for = "test"
            elif deadline is not None and now > deadline:
                killed_for = "total"
            if killed_for:
                _kill_group(proc)
                break
    except KeyboardInterrupt:
        # The child has a process group of its own, so Ctrl-C did not reach it.
        _kill_group(proc, signal.SIGINT)
        raise
    proc.wait()
    if reader is not None:
        reader.join()
    watch.follow(progress)
    return proc.returncode, killed_for


def run_pytest(
    targets: Sequence[str | Path],
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    test_timeout: float = HARD_TEST_TIMEOUT,
    total_timeout: float | None = None,
    capture: bool = False,
    max_restarts: int = 20,
    on_incident: Callable[[TestResult], None] | None = None,
) -> Run:
    """Run `python -m pytest targets args` under supervision (see the module's docstring).

    `test_timeout` bounds one test, `total_timeout` the whole run (what is left then is
    "timed out" as one incident). With `capture`, pytest's output is collected into
    Run.output instead of going to the terminal. `on_incident` is told of each crash or hang
    as it happens, before pytest starts again on the tests left.
    """
    run = Run()
    watch = _Watch(run)
    targets = [str(t) for t in targets]
    deadline = time.monotonic() + total_timeout if total_timeout else None
    output: list[str] | None = [] if capture else None
    with tempfile.TemporaryDirectory(prefix="tiny-attn-progress-") as tmp:
        for attempt in range(max_restarts + 1):
            progress = _ProgressFile(Path(tmp) / f"progress-{attempt}.jsonl")
            child_env = dict(os.environ if env is None else env)
            child_env["TINY_ATTN_PROGRESS"] = str(progress.path)
            cmd = [sys.executable, "-m", "pytest", *targets]
            cmd += ["-p", "tiny_attn_tools.pytest_progress", *args]
            returncode, killed_for = _session(
                cmd,
                progress,
                watch,
                cwd=cwd,
                env=child_env,
                test_timeout=test_timeout,
                deadline=deadline,
                output=output,
            )
            current = watch.current
            if killed_for == "test":
                message = (
                    f"timed out: still running after {test_timeout:.0f} s, killed (a hang in "
                    "native code, such as a kernel or a thread waiting forever, cannot be "
                    "interrupted from Python)"
                )
            elif killed_for == "total":
                message = f"timed out: the run went past its limit of {total_timeout:.0f} s, killed"
            elif returncode < 0 or current is not None:
                if current is not None:
                    where = "while running this test"
                elif not watch.collected:
                    where = "while loading the test files"
                else:
                    where = "outside any test"
                message = (
                    f"crashed ({describe_exit(returncode)}) {where}: the test process died, "
                    "most likely in native code (the extension, a kernel, MLX)"
                )
            else:
                if attempt == 0:
                    run.returncode = returncode
                break
            incident = TestResult(current or "", TIMED_OUT if killed_for else CRASHED, message)
            watch.current = None
            run.incidents.append(incident)
            if on_incident is not None:
                on_incident(incident)
            run.returncode = 1
            if incident.nodeid:
                watch.finished.add(incident.nodeid)
                run.results.append(incident)
            targets = [n for n in watch.collected if n not in watch.finished]
            if killed_for == "total" or not incident.nodeid or not targets:
                break
    if any(r.status in ("failed", "error") for r in run.results) and run.returncode == 0:
        run.returncode = 1
    run.output = "".join(output or [])
    return run
