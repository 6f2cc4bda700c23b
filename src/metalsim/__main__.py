"""`python -m metalsim build` builds metalsim._core; `python -m metalsim info` shows its paths."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "info"
    if cmd not in ("build", "info"):
        print("usage: python -m metalsim [build|info]", file=sys.stderr)
        return 2
    import metalsim

    metalsim.ensure_built(verbose=(cmd == "build"))
    from metalsim import _core

    print(f"metalsim home:     {metalsim.HOME}")
    print(f"runtime headers:   {_core.runtime_dir()}")
    print(f"kernel compiler:   {_core.compiler()}")
    print(f"kernel cache:      {_core.cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
