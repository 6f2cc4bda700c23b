"""`pdm run copy-test --week W --day D [--force]`: copy a day's graded test into tests/."""

from __future__ import annotations

import argparse
import sys

from tiny_attn_tools import course


def main() -> int:
    parser = argparse.ArgumentParser(prog="pdm run copy-test", description=__doc__)
    parser.add_argument("--week", type=int, required=True)
    parser.add_argument("--day", type=int, required=True)
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite tests/test_week_W_day_D.py even if it exists",
    )
    args = parser.parse_args()
    ((week, day),) = course.select_days(args.week, args.day)
    course.copy_test(week, day, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
