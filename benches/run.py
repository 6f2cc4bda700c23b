"""`pdm run bench`: the course's benchmarks, one week after another, with plots into the book.

pdm run bench                    every week's benchmark (a few minutes on 2 cores)
pdm run bench --quick            small sizes only: a smoke test in seconds
pdm run bench --week 2           one week
pdm run bench --student          your code (src/) instead of the reference (refsol/)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# week -> (module in benches/, extra arguments for --quick)
BENCHES = {
    1: ("week1_memory_wall", ["--max-n", "1024", "--no-plot"]),
    2: ("week2_cpu", ["--quick"]),
    3: ("week3_gpu", ["--quick"]),
    4: ("week4_backward", ["--quick"]),
    5: ("week5_inference", ["--quick"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--week", type=int, choices=sorted(BENCHES), help="only this week")
    parser.add_argument("--quick", action="store_true", help="small sizes, no plots")
    parser.add_argument("--student", action="store_true", help="bench your code in src/")
    args = parser.parse_args(argv)
    weeks = [args.week] if args.week else sorted(BENCHES)
    status = 0
    for week in weeks:
        name, quick_args = BENCHES[week]
        if not (HERE / f"{name}.py").exists():
            print(f"[bench] week {week}: benches/{name}.py is not there yet, skipped")
            continue
        bench_args = (quick_args if args.quick else []) + (["--student"] if args.student else [])
        print(f"\n[bench] ===== week {week}: benches/{name}.py {' '.join(bench_args)}", flush=True)
        t = time.perf_counter()
        rc = _load(name).main(bench_args)
        print(f"[bench] week {week} finished in {time.perf_counter() - t:.0f} s (exit {rc})")
        status = status or (rc or 0)
    return status


def _load(name: str):
    """benches/<name>.py as a module (the benches are scripts, not an importable package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
