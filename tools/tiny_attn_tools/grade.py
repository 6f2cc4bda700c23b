"""`pdm run grade`: where you stand, task by task.

Runs the official graded tests (tests_refsol/, never your possibly edited copies) against your
code in src/ and prints one row per week/day/task:
  passed       every test of the task passes
  failing      you started (not every failure is a stub's "not implemented"), something fails
  not started  every test of the task still stops at a stub
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from tiny_attn_tools import course


def task_status(outcomes: list[course.Outcome]) -> str:
    if all(o.status == "passed" for o in outcomes):
        return "passed"
    if all(o.status != "passed" and course.STUB_MARKER in o.message for o in outcomes):
        return "not started"
    return "failing"


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
    by_task: dict[tuple[int, int, int | None], list[course.Outcome]] = defaultdict(list)
    for o in outcomes:
        by_task[(o.week, o.day, o.task)].append(o)

    mark = {"passed": "✔ passed", "failing": "✘ failing", "not started": "· not started"}
    print(f"\n{'week':>4} {'day':>3} {'task':>4}  {'tests':>9}  status")
    counts: dict[str, int] = defaultdict(int)
    for (w, d, t), group in sorted(
        by_task.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
    ):
        status = task_status(group)
        counts[status] += 1
        passed = sum(o.status == "passed" for o in group)
        print(
            f"{w:>4} {d:>3} {t if t is not None else '-':>4}  {passed:>4}/{len(group):<4}  "
            f"{mark[status]}"
        )
    total = len(by_task)
    print(
        f"\n{counts['passed']}/{total} tasks passed, {counts['failing']} failing, "
        f"{counts['not started']} not started"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
