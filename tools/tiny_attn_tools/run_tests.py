"""`pdm run test` and `pdm run test-refsol`: run the graded tests of a week/day.

pdm run test --week 1 --day 1                 your code (copies the day's test into tests/)
pdm run test --week 2 --day 4 -- -k task_2    extra pytest arguments after `--`
pdm run test-refsol                           every day, against the reference solution
pdm run test-refsol --mac-view --week 2       as a Mac sees it: MLX's default device the GPU

pytest runs in a supervised child process (tiny_attn_tools.supervise): a test that crashes the
process (a segfault in native code) or hangs where pytest-timeout cannot stop it fails as
"crashed (signal N)" or "timed out", with the command to run it alone, and the other tests
still run.
"""

from __future__ import annotations

import argparse
import os
import sys

from tiny_attn_tools import course


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        prog="pdm run test",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", action="store_true", help="test src/ (tests/)")
    who.add_argument("--refsol", action="store_true", help="test refsol/ (tests_refsol/)")
    parser.add_argument("--week", type=int, help="week number, e.g. 1")
    parser.add_argument("--day", type=int, help="day number within the week, e.g. 3")
    parser.add_argument(
        "--mac-view",
        action="store_true",
        help="run as a Mac sees it, where MLX's default device is the GPU (for Linux machines)",
    )
    args, unknown = parser.parse_known_args(argv)
    extra = unknown + extra  # `pdm run test --week 1 --day 1 -k task_1` works too

    days = course.select_days(args.week, args.day)
    if args.refsol:
        files = [course.TESTS_REFSOL / course.test_file_name(w, d) for w, d in days]
    else:
        files = [course.copy_test(w, d) for w, d in days]
    if args.mac_view:
        # Read by the extensions' glue (metalsim/mlx_extension.h) and tiny_attn_tools.testing.
        os.environ["METALSIM_DEFAULT_DEVICE"] = "gpu"
    label = "reference solution" if args.refsol else "your code"
    which = ", ".join(f"w{w}d{d}" for w, d in days) if len(days) < 6 else f"{len(days)} days"
    view = " (Mac view)" if args.mac_view else ""
    print(f"[tiny-attn] testing {label}: {which}{view}", flush=True)
    return course.run_pytest(files, extra, refsol=args.refsol)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
