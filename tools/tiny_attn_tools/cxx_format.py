"""clang-format over the course's C++ (.cpp, .h), in the style of the repository's .clang-format.

  python tools/cxx_format.py           format in place   (part of `pdm run format`)
  python tools/cxx_format.py --check   only report       (part of `pdm run lint`)

The .metal kernels are left as written: they are laid out to read like the chapters' diagrams.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tiny_attn_tools import course

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ["src/extensions", "src/extension_common", "refsol/extensions_ref", "src/metalsim"]


def cxx_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *(f"{d}/*.cpp" for d in FOLDERS), *(f"{d}/*.h" for d in FOLDERS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in out.stdout.split() if (ROOT / f).is_file()]


def main() -> int:
    exe = course.find_program("clang-format")
    if not exe:
        print("clang-format is missing: `pdm sync` installs it from PyPI", file=sys.stderr)
        return 1
    files = cxx_files()
    args = ["--dry-run", "--Werror"] if "--check" in sys.argv[1:] else ["-i"]
    rc = subprocess.call([exe, *args, *files], cwd=ROOT)
    if rc == 0:
        print(f"clang-format: {len(files)} C++ files {'clean' if args[0] != '-i' else 'formatted'}")
    else:
        print("clang-format: run `pdm run format` to fix the files above", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
