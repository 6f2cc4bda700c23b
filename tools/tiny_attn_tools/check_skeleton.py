"""Course check: every graded test, run against the untouched student stubs, fails cleanly.

"Cleanly" means: the test fails (it is not skipped, it does not pass, it does not break the
collection of its file) and its failure message is a stub's "not implemented ... see book/..."
pointer. A hang is caught by a per-test timeout. Run it on a clean checkout of src/.
"""

from __future__ import annotations

import sys

from tiny_attn_tools import build_ext, course


def main() -> int:
    days = course.available_days()
    # The stubs must build; building them here keeps a slow first build (minutes on a busy
    # machine) out of the per-test time limit of the first test that needs the extension.
    build_ext.ensure_built("student")
    print(
        f"[check-skeleton] running {len(days)} graded test files against the stubs ...", flush=True
    )
    outcomes = course.run_graded_against_student(days, timeout=120)
    bad = []
    for o in outcomes:
        where = f"week {o.week} day {o.day}: {o.name}"
        if o.status == "passed":
            bad.append(f"{where}: passes against the stubs (a test that cannot fail?)")
        elif o.status == "skipped":
            bad.append(f"{where}: skipped")
        elif course.STUB_MARKER not in o.message or "book/src/" not in o.message:
            first = o.message.strip().splitlines()[0] if o.message.strip() else "(no message)"
            bad.append(f"{where}: fails without the stub's message: {first[:200]}")
    seen = {(o.week, o.day) for o in outcomes}
    for w, d in days:
        if (w, d) not in seen:
            bad.append(f"week {w} day {d}: no test ran (collection error?)")
    if bad:
        print(f"[check-skeleton] FAILED: {len(bad)} of {len(outcomes)} tests")
        for line in bad:
            print("  " + line)
        return 1
    print(f"[check-skeleton] ok: all {len(outcomes)} graded tests fail with the stub's message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
