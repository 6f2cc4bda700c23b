"""`pdm run grade`: where you stand, task by task.

Runs the official graded tests (tests_refsol/, never your possibly edited copies) against your
code in src/ and prints one row per week/day/task:
  passed       every test of the task passes
  failing      you started (not every failure is a stub's "not implemented"), something fails
  not started  every test of the task still stops at a stub
  crashed      a test killed the test process (signal N: a segfault in native code, ...)
  timed out    a test ran past the hard limit and was killed (a hang pytest cannot interrupt)
Each day runs in a process of its own with a hard time limit, so a crash or a hang costs that
test (or that day), never the table; each one is listed below the table with the command that
reproduces it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from tiny_attn_tools import course, supervise


def task_status(outcomes: list[course.Outcome]) -> str:
    for bad in (supervise.CRASHED, supervise.TIMED_OUT):
        if any(o.status == bad for o in outcomes):
            return bad
    if all(o.status == "passed" for o in outcomes):
        return "passed"
    if all(o.status != "passed" and course.STUB_MARKER in o.message for o in outcomes):
        return "not started"
    return "failing"


def print_table(outcomes: list[course.Outcome]) -> None:
    """The table of tasks, then each crash or hang with the command that reproduces it."""
    by_task: dict[tuple[int, int, int | None], list[course.Outcome]] = defaultdict(list)
    for o in outcomes:
        by_task[(o.week, o.day, o.task)].append(o)

    mark = {
        "passed": "✔ passed",
        "failing": "✘ failing",
        "not started": "· not started",
        supervise.CRASHED: "✘ crashed",
        supervise.TIMED_OUT: "✘ timed out",
    }
    print(f"\n{'week':>4} {'day':>3} {'task':>4}  {'tests':>9}  status")
    counts: dict[str, int] = defaultdict(int)
    for (w, d, t), group in sorted(
        by_task.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
    ):
        status = task_status(group)
        counts[status] += 1
        passed = sum(o.status == "passed" for o in group)
        label = mark[status]
        if status == supervise.CRASHED:  # "crashed (signal 11 (SIGSEGV)) while ..."
            first = next(o for o in group if o.status == status)
            label += f" ({first.message.split('(', 1)[1].split(')')[0]})"
        print(
            f"{w:>4} {d:>3} {t if t is not None else '-':>4}  {passed:>4}/{len(group):<4}  {label}"
        )
    total = len(by_task)
    broken = counts[supervise.CRASHED] + counts[supervise.TIMED_OUT]
    summary = (
        f"\n{counts['passed']}/{total} tasks passed, {counts['failing']} failing, "
        f"{counts['not started']} not started"
    )
    print(summary + (f", {broken} crashed or timed out" if broken else ""))
    for o in outcomes:
        if o.status in (supervise.CRASHED, supervise.TIMED_OUT):
            test = o.name if "::" in o.name else ""
            print(f"\nweek {o.week} day {o.day}: {o.name.split('/')[-1]}")
            print("  " + o.message.strip().splitlines()[0])
            print(f"  reproduce: {course.rerun_command(o.week, o.day, test)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="pdm run grade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--week", type=int)
    parser.add_argument("--day", type=int)
    args = parser.parse_args()
    days = course.select_days(args.week, args.day)
    print(
        f"[tiny-attn] grading your code on {len(days)} day(s); this runs every graded test ...",
        flush=True,
    )
    outcomes = course.run_graded_against_student(days)
    print_table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
