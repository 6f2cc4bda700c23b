"""Building metalsim's Python module, metalsim._core, and CMake projects that embed metalsim.

    python -m metalsim build        # what the first use of metalsim does, with its output

`cmake_build` configures (once) and builds any CMake project with Ninja from the Python
environment, two compile jobs at a time, each through a cache of compiled objects
(compiler_cache.py), one build per folder at a time (a lock file), and
repairs a build folder whose CMake state is damaged (a build.ninja cut short by a killed build,
a CMakeCache.txt copied from another folder) by configuring it afresh, once. metalsim._core (the
host library, src/*.cpp, with its Python bindings) is built with it into this folder, and so is
the MLX extension example in examples/; projects that embed metalsim (an MLX extension whose
eval_gpu runs on the simulator) build with it too. Importing this module builds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

HOME = Path(__file__).resolve().parent
JOBS = 2  # small machines: keep the compiler from taking every core


class BuildError(RuntimeError):
    """A CMake project could not be configured or built; the message says why."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output  # what the failing step printed


def find_tool(name: str) -> str:
    """A build tool (cmake, ninja) from the Python environment's bin folder, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise BuildError(
        f"`{name}` was not found: install it into the Python environment (pip install {name})."
    )


def check_compiler() -> None:
    """Raise a BuildError that says how to install a C++ compiler if there is none."""
    if os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return
    if sys.platform == "darwin":
        hint = "install Apple's command line tools: xcode-select --install"
    else:
        hint = (
            "install a C++17 compiler, e.g. `sudo apt-get install g++` (Debian/Ubuntu) or "
            "`sudo dnf install gcc-c++` (Fedora)"
        )
    raise BuildError(f"no C++ compiler found (looked for c++, g++, clang++): {hint}")


@contextlib.contextmanager
def locked(build_dir: Path) -> Iterator[None]:
    """Hold build_dir's lock: two processes building in one folder at once would corrupt
    ninja's state, so the second waits for the first (and then finds little left to do)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], what: str, *, prefix: str, echo: bool) -> str:
    """Run a build step; with echo, show its output as it comes. Returns the output."""
    if echo:
        print(f"{prefix} {what}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    lines = []
    for line in proc.stdout:
        if echo:
            print(line, end="", flush=True)
        lines.append(line)
    output = "".join(lines)
    if proc.wait() != 0:
        shown = "see the output above" if echo else f"$ {' '.join(cmd)}\n{output}"
        raise BuildError(f"{what} failed (exit code {proc.returncode}): {shown}", output=output)
    return output


# What CMake or ninja say when the state of the build folder is damaged, not the sources.
_DAMAGED_STATE = (
    "loading 'build.ninja'",  # ninja cannot read its manifest
    "ninja: error: build.ninja:",
    "could not load cache",  # CMake cannot read CMakeCache.txt
    "CMakeCache.txt directory",  # the cache was made for another folder
    "Error: could not find CMAKE_",  # ... CMAKE_GENERATOR in Cache, CMAKE_ROOT
)


def _damaged(build_dir: Path, source: Path) -> str | None:
    """Why the CMake state of build_dir cannot be used as it is, or None if it looks sound."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return None
    text = cache.read_text(errors="replace")
    home = next(
        (ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("CMAKE_HOME_DIRECTORY:")),
        None,
    )
    if home is None:
        return "CMakeCache.txt is damaged"
    if Path(home).resolve() != source.resolve():
        return f"CMakeCache.txt was made for {home}"
    ninja = build_dir / "build.ninja"
    if not ninja.exists() or "ninja_required_version" not in ninja.read_text(errors="replace"):
        return "build.ninja is missing or damaged"
    return None


def _start_afresh(build_dir: Path, why: str, prefix: str) -> None:
    print(f"{prefix} {why}: configuring {build_dir} afresh", flush=True)
    for entry in build_dir.iterdir():
        if entry.name == ".build.lock":  # held by this build
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def cmake_build(
    source: Path,
    build_dir: Path,
    *,
    name: str,
    configure_args: Sequence[str] = (),
    verbose: bool = True,
    prefix: str = "[metalsim]",
) -> None:
    """Configure (the first time) and build the CMake project `source` in `build_dir`.

    Release, Ninja, the Python environment's Python (for nanobind and MLX), `configure_args`
    added. Incremental: ninja rebuilds only what changed. With verbose, each step prints its
    command and output (the lines start with `prefix`); without, a failure's message holds
    them. A damaged build folder is configured afresh, once; if that does not help, the error
    says which folder to delete.
    """
    check_compiler()
    cmake, ninja = find_tool("cmake"), find_tool("ninja")
    with locked(build_dir):
        why = _damaged(build_dir, source)
        if why:
            _start_afresh(build_dir, why, prefix)
        configure = [cmake, "-S", str(source), "-B", str(build_dir), "-G", "Ninja"]
        configure += [
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            # Each compile through metalsim's compiler cache (compiler_cache.py): a translation
            # unit compiled once, by any build in any folder, is not compiled again.
            f"-DCMAKE_CXX_COMPILER_LAUNCHER={sys.executable};{HOME / 'compiler_cache.py'}",
            *configure_args,
        ]
        compile_ = [cmake, "--build", str(build_dir), "-j", str(JOBS)]
        for attempt in range(2):
            try:
                if not (build_dir / "CMakeCache.txt").exists():
                    if verbose:
                        print(
                            f"{prefix} first build of {name}: configuring CMake and compiling "
                            "everything takes a few minutes; later builds only recompile what "
                            "changed",
                            flush=True,
                        )
                    _run(configure, f"configuring {name}", prefix=prefix, echo=verbose)
                _run(compile_, f"building {name}", prefix=prefix, echo=verbose)
                return
            except BuildError as e:
                if not any(sign in e.output for sign in _DAMAGED_STATE):
                    raise
                if attempt == 1:
                    raise BuildError(
                        f"{e}\nThe build folder still looks damaged after configuring it "
                        f"afresh: delete the folder {build_dir} and build again."
                    ) from None
                _start_afresh(build_dir, "the build folder's CMake state is damaged", prefix)


# ---------------------------------------------------------------- metalsim._core


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


def _core_is_fresh() -> bool:
    mod = _built_module()
    if mod is None:
        return False
    return mod.stat().st_mtime >= max(f.stat().st_mtime for f in _build_inputs())


def ensure_built(verbose: bool = False) -> None:
    """Build metalsim._core (CMake + Ninja) if it is missing or older than its sources."""
    if _core_is_fresh():
        return
    print(
        "[metalsim] building the Python module metalsim._core (first use, ~30 s) ...",
        file=sys.stderr,
        flush=True,
    )
    import nanobind

    try:
        cmake_build(
            HOME,
            HOME / "build",
            name="metalsim._core",
            configure_args=[f"-Dnanobind_ROOT={nanobind.cmake_dir()}"],
            verbose=verbose,
        )
    except BuildError as e:
        raise RuntimeError(f"metalsim: building metalsim._core failed:\n{e}") from None
    print("[metalsim] built.", file=sys.stderr, flush=True)


def load_core() -> ModuleType:
    """metalsim._core, built first if it is missing or out of date."""
    ensure_built()
    return importlib.import_module("metalsim._core")
