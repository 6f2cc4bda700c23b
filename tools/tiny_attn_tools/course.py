"""What the course tools share: where things are, which days exist, running graded tests.

Used by run_tests, copy_test, grade and the course checks.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tiny_attn_tools import supervise

ROOT = Path(__file__).resolve().parents[2]
TESTS_REFSOL = ROOT / "tests_refsol"
TESTS_STUDENT = ROOT / "tests"
DAY_FILE = re.compile(r"test_week_(\d+)_day_(\d+)\.py$")
TASK_NAME = re.compile(r"test_task_(\d+)")
# A stub's message always says this: "<name> is not implemented yet: see book/src/<chapter>.md,
# Task N" (Python raises NotImplementedError, C++ throws std::runtime_error).
STUB_MARKER = "not implemented"


def find_program(name: str) -> str | None:
    """A program of the course's environment (its bin/ folder) first, then from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def test_file_name(week: int, day: int) -> str:
    return f"test_week_{week}_day_{day}.py"


def available_days() -> list[tuple[int, int]]:
    """Every (week, day) that has a graded test file in tests_refsol/, in order."""
    days = []
    for path in TESTS_REFSOL.glob("test_week_*_day_*.py"):
        m = DAY_FILE.search(path.name)
        if m:
            days.append((int(m.group(1)), int(m.group(2))))
    return sorted(days)


def select_days(week: int | None, day: int | None) -> list[tuple[int, int]]:
    """The days matching --week/--day (either may be None); exits with a clear message if none."""
    if day is not None and week is None:
        sys.exit("error: --day needs --week too, e.g. `--week 1 --day 2`")
    days = [(w, d) for (w, d) in available_days() if week in (None, w) and day in (None, d)]
    if not days:
        have = ", ".join(f"week {w} day {d}" for w, d in available_days()) or "none"
        wanted = f"week {week}" + (f" day {day}" if day is not None else "")
        sys.exit(f"error: there is no graded test for {wanted} (available: {have})")
    return days


def copy_test(week: int, day: int, *, force: bool = False, quiet: bool = False) -> Path:
    """Copy tests_refsol/test_week_W_day_D.py into tests/ if absent (or if force).

    Warns when the student's copy differs from the reference one, so a stale or edited copy
    never goes unnoticed.
    """
    name = test_file_name(week, day)
    src, dst = TESTS_REFSOL / name, TESTS_STUDENT / name
    if not src.exists():
        sys.exit(f"error: {src.relative_to(ROOT)} does not exist")
    if dst.exists() and not force:
        if dst.read_bytes() != src.read_bytes():
            print(
                f"warning: tests/{name} differs from tests_refsol/{name}; "
                f"`pdm run copy-test --week {week} --day {day} --force` restores it",
                file=sys.stderr,
            )
        return dst
    shutil.copyfile(src, dst)
    if not quiet:
        print(f"copied tests_refsol/{name} -> tests/{name}")
    return dst


def rerun_command(week: int, day: int, test: str = "", *, refsol: bool = False) -> str:
    """The command that runs one day (and, with `test`, one test of it) on its own."""
    cmd = f"pdm run {'test-refsol' if refsol else 'test'} --week {week} --day {day}"
    if test:
        name = test.split("::")[-1].split("[")[0]
        cmd += f" -- -k {name}"
    return cmd


def report_incident(incident: supervise.TestResult, *, refsol: bool) -> None:
    """A crashed or hung test: what happened and the command to see it alone."""
    m = DAY_FILE.search(incident.nodeid.split("::")[0]) if incident.nodeid else None
    test = incident.nodeid or "the test run"
    print(f"\n[tiny-attn] {test}: {incident.message}", file=sys.stderr)
    if m:
        w, d = int(m.group(1)), int(m.group(2))
        command = rerun_command(w, d, incident.nodeid, refsol=refsol)
        print(f"[tiny-attn]   run it alone: {command}", file=sys.stderr)
    sys.stderr.flush()


def report_incidents(run: supervise.Run, *, refsol: bool) -> None:
    """One paragraph per crashed or hung test (report_incident), in the order they happened."""
    for incident in run.incidents:
        report_incident(incident, refsol=refsol)


def run_pytest(files: list[Path], extra: list[str], cwd: Path = ROOT, *, refsol: bool) -> int:
    """Run pytest under supervision (a crash or a hang fails one test, never the terminal).

    Exit code 5 (no test selected, e.g. a -k that matches nothing) is explained.
    """
    # Each crash or hang is told as it happens (a hang costs minutes before it is killed), and
    # all of them again at the end, after pytest's own report.
    run = supervise.run_pytest(
        files, extra, cwd=cwd, on_incident=lambda i: report_incident(i, refsol=refsol)
    )
    report_incidents(run, refsol=refsol)
    if run.returncode == 5:
        print("no test was selected: check the --week/--day and -k arguments", file=sys.stderr)
    return run.returncode


@dataclass
class Outcome:
    """One graded test's result: passed, failed, error, skipped, crashed or timed out."""

    week: int
    day: int
    task: int | None
    name: str
    status: str
    message: str


# A day of graded tests may take this long in all (the slowest takes about a minute).
DAY_TIMEOUT = 900.0


def run_graded_against_student(
    days: list[tuple[int, int]],
    timeout: int = 120,
    *,
    day_timeout: float = DAY_TIMEOUT,
    test_timeout: float = supervise.HARD_TEST_TIMEOUT,
    root: Path | None = None,
) -> list[Outcome]:
    """Run the official graded tests (from tests_refsol/) against the student's code.

    The files are copied, with the student's tiny_attn_base.py and conftest.py, into a
    scratch folder, so an edited copy in tests/ cannot change a grade. Each day runs in a
    process of its own, under supervision (tiny_attn_tools.supervise): a crash or a hang costs
    the test that caused it; a day past `day_timeout` is stopped. `timeout` is pytest-timeout's
    limit per test (it sees hangs in Python code), `test_timeout` the hard one. `root` is the
    checkout to grade (default: this one).
    """
    root = root or ROOT
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="tiny-attn-grade-") as tmp:
        work = Path(tmp)
        for helper in ("tiny_attn_base.py", "conftest.py"):
            shutil.copyfile(root / "tests" / helper, work / helper)
        # Only pass or fail counts here: no shrinking (see tiny_attn_tools.pytest_progress).
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TINY_ATTN_NO_SHRINK="1")
        for w, d in days:
            name = test_file_name(w, d)
            shutil.copyfile(root / "tests_refsol" / name, work / name)
            run = supervise.run_pytest(
                [name],
                ["-q", "-p", "no:cacheprovider", f"--timeout={timeout}", "--tb=line"],
                cwd=work,
                env=env,
                test_timeout=test_timeout,
                total_timeout=day_timeout,
                capture=True,
            )
            for r in run.results:
                m = TASK_NAME.match(r.nodeid.split("::")[-1])
                task = int(m.group(1)) if m else None
                outcomes.append(Outcome(w, d, task, r.nodeid, r.status, r.message))
            for incident in run.incidents:
                if not incident.nodeid:  # nothing ran, or the process died between tests
                    tail = "\n".join(run.output.strip().splitlines()[-15:])
                    outcomes.append(
                        Outcome(w, d, None, name, incident.status, f"{incident.message}\n{tail}")
                    )
            if not run.results and not run.incidents:
                tail = "\n".join(run.output.strip().splitlines()[-15:])
                outcomes.append(
                    Outcome(w, d, None, name, "error", f"no test ran ({describe(run)})\n{tail}")
                )
    return outcomes


def describe(run: supervise.Run) -> str:
    return f"pytest {supervise.describe_exit(run.returncode)}"
