"""Building metalsim's Python module, metalsim._core, and projects that embed metalsim.

    python -m metalsim build        # what `import metalsim` does on first use, with its output

metalsim._core is the host library (src/*.cpp) with its Python bindings, built with CMake and
Ninja from the Python environment into this folder; `ensure_built` rebuilds it when one of its
sources is newer. `cmake_build` configures and builds any CMake project the same way (the MLX
extension example in examples/ uses it).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

HOME = Path(__file__).resolve().parent


def _build_inputs() -> list[Path]:
    """The files metalsim._core is built from (the host library, one file per pipeline stage)."""
    src = sorted((HOME / "src").glob("*.cpp")) + sorted((HOME / "src").glob("*.h"))
    return [
        HOME / "CMakeLists.txt",
        *src,
        HOME / "include/metalsim/host.h",
        HOME / "include/metalsim/abi.h",
    ]


def _built_module() -> Path | None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    p = HOME / f"_core{suffix}"
    return p if p.exists() else None


def _tool(name: str) -> str:
    """A build tool from the environment's bin folder if it is there, else from PATH."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def cmake_build(source_dir: Path, build_dir: Path, *, what: str, verbose: bool = False) -> None:
    """Configure (once) and build a CMake project with Ninja from the Python environment.

    Used for metalsim._core and for extensions that embed metalsim (e.g. the example in
    src/metalsim/examples/axpby). Incremental: Ninja rebuilds only what changed.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    import nanobind

    configure = [
        _tool("cmake"),
        "-S",
        str(source_dir),
        "-B",
        str(build_dir),
        "-G",
        "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dnanobind_ROOT={nanobind.cmake_dir()}",
    ]
    steps = [configure] if not (build_dir / "build.ninja").exists() else []
    steps.append([_tool("cmake"), "--build", str(build_dir), "-j", "2"])
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=not verbose, text=True)
        if r.returncode != 0:
            out = (r.stdout or "") + (r.stderr or "")
            raise RuntimeError(f"metalsim: building {what} failed:\n$ {' '.join(cmd)}\n{out}")


def _core_is_fresh() -> bool:
    mod = _built_module()
    if mod is None:
        return False
    return mod.stat().st_mtime >= max(f.stat().st_mtime for f in _build_inputs())


def ensure_built(verbose: bool = False) -> None:
    """Build metalsim._core (CMake + Ninja) if it is missing or older than its sources."""
    if _core_is_fresh():
        return
    build_dir = HOME / "build"
    build_dir.mkdir(exist_ok=True)
    import fcntl

    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time across processes
        if _core_is_fresh():
            return
        print(
            "[metalsim] building the Python module metalsim._core (first use, ~30 s) ...",
            file=sys.stderr,
            flush=True,
        )
        cmake_build(HOME, build_dir, what="metalsim._core", verbose=verbose)
        print("[metalsim] built.", file=sys.stderr, flush=True)


def load_core() -> ModuleType:
    """metalsim._core, built first if it is missing or out of date."""
    ensure_built()
    return importlib.import_module("metalsim._core")
