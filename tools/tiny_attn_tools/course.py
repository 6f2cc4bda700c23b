"""What the course tools share: where things are, which days exist, running graded tests.

Used by run_tests, copy_test, grade and the course checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

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


def pytest_command(files: list[Path], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *map(str, files), *extra]


def run_pytest(files: list[Path], extra: list[str], cwd: Path = ROOT) -> int:
    """Run pytest; exit code 5 (no test selected, e.g. a -k that matches nothing) is reported."""
    rc = subprocess.call(pytest_command(files, extra), cwd=cwd)
    if rc == 5:
        print("no test was selected: check the --week/--day and -k arguments", file=sys.stderr)
    return rc


@dataclass
class Outcome:
    """One graded test's result: 'passed', 'failed', 'error' or 'skipped', and its message."""

    week: int
    day: int
    task: int | None
    name: str
    status: str
    message: str


def run_graded_against_student(days: list[tuple[int, int]], timeout: int = 120) -> list[Outcome]:
    """Run the official graded tests (from tests_refsol/) against the student's code.

    The files are copied, with the student's tiny_attn_base.py and conftest.py, into a
    scratch folder, so an edited copy in tests/ cannot change a grade.
    """
    with tempfile.TemporaryDirectory(prefix="tiny-attn-grade-") as tmp:
        work = Path(tmp)
        for helper in ("tiny_attn_base.py", "conftest.py"):
            shutil.copyfile(TESTS_STUDENT / helper, work / helper)
        files = []
        for w, d in days:
            shutil.copyfile(TESTS_REFSOL / test_file_name(w, d), work / test_file_name(w, d))
            files.append(work / test_file_name(w, d))
        report = work / "report.xml"
        cmd = pytest_command(
            files,
            [
                "-q",
                "-p",
                "no:cacheprovider",
                f"--timeout={timeout}",
                f"--junitxml={report}",
                "-o",
                "junit_family=xunit1",
                "--tb=line",
            ],
        )
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not report.exists():
            sys.exit("error: pytest wrote no report; run `pdm run test` to see what went wrong")
        return parse_junit(report)


def parse_junit(report: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(report).getroot().iter("testcase"):
        m = DAY_FILE.search(case.get("file", "") or "") or re.search(
            r"test_week_(\d+)_day_(\d+)", case.get("classname", "")
        )
        if not m:
            continue
        name = case.get("name", "")
        t = TASK_NAME.match(name)
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        outcomes.append(
            Outcome(
                int(m.group(1)),
                int(m.group(2)),
                int(t.group(1)) if t else None,
                name,
                status,
                message,
            )
        )
    return outcomes
