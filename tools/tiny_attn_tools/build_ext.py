"""Build the course's MLX C++ extensions: `pdm run build-ext` and `pdm run build-ext-ref`.

  python -m tiny_attn_tools.build_ext student   src/extensions         -> package tiny_attn_ext
  python -m tiny_attn_tools.build_ext ref       refsol/extensions_ref  -> package tiny_attn_ext_ref

The first build configures CMake (Ninja, Release) in build/<package>/; later builds are
incremental. The compiled module `_core.<suffix>` lands inside the package folder, next to its
__init__.py. `ensure_built(which)` is what the tests call: it returns at once when nothing
changed since the last successful build (a hash of the sources' names, sizes and mtimes).
`build_on_import()` makes the harness (tests, benches, demo) build an extension the first time
it is imported: the course packages import their extension by name and know nothing of this.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import subprocess
import sys
import sysconfig
from pathlib import Path

# The CMake + Ninja plumbing (tools from the environment, a lock per build folder, the repair
# of a damaged build folder, the compiler cache) is metalsim's, which builds itself the same way.
from metalsim.build import BuildError
from metalsim.build import cmake_build as _cmake_build

ROOT = Path(__file__).resolve().parents[2]

# which -> (source folder, Python package inside it)
EXTENSIONS = {
    "student": (ROOT / "src" / "extensions", "tiny_attn_ext"),
    "ref": (ROOT / "refsol" / "extensions_ref", "tiny_attn_ext_ref"),
}
SOURCE_SUFFIXES = {".cpp", ".h", ".hpp", ".metal", ".txt", ".cmake"}
# What both extensions' builds share: the CMake function that builds them, their bindings and
# the ops' headers (src/extension_common), and the simulator
# (its headers, its host library, its CMakeLists.txt). An edit there rebuilds them too.
SHARED_SOURCES = (
    ROOT / "cmake",
    ROOT / "src" / "extension_common",
    ROOT / "src" / "metalsim" / "include",
    ROOT / "src" / "metalsim" / "src",
)


def _paths(which: str) -> tuple[Path, str, Path, Path]:
    if which not in EXTENSIONS:
        raise ValueError(f"which must be one of {sorted(EXTENSIONS)}, got {which!r}")
    source, package = EXTENSIONS[which]
    build = ROOT / "build" / package
    return source, package, build, build / "tiny_attn.stamp"


def _sources(source: Path) -> list[Path]:
    """Every file the build depends on: CMakeLists.txt, src/**."""
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def _fingerprint(which: str) -> str:
    source, package, _, _ = _paths(which)
    shared = [p for folder in SHARED_SOURCES for p in _sources(folder)]
    shared.append(ROOT / "src" / "metalsim" / "CMakeLists.txt")
    h = hashlib.sha256()
    for p in _sources(source) + shared:
        st = p.stat()
        h.update(f"{p.relative_to(ROOT)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(sys.version.encode())
    import mlx.core as mx

    h.update(mx.__version__.encode())
    return h.hexdigest()


def _module_file(which: str) -> Path:
    source, package, _, _ = _paths(which)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return source / package / f"_core{suffix}"


def is_up_to_date(which: str) -> bool:
    _, _, _, stamp = _paths(which)
    return (
        _module_file(which).exists()
        and stamp.exists()
        and stamp.read_text().strip() == _fingerprint(which)
    )


def cmake_build(source: Path, build_dir: Path, name: str, configure_args: list[str]) -> None:
    """Configure (the first time) and build `source` in `build_dir`: metalsim.build's
    cmake_build, which says first that a C++ compiler is missing, and repairs a damaged build
    folder once."""
    _cmake_build(source, build_dir, name=name, configure_args=configure_args, prefix="[build-ext]")


def build(which: str, *, verbose: bool = True) -> Path:
    """Configure (first time) and build the extension; return the compiled module's path.

    Two processes building the same extension at once (two terminals, a test run beside
    `pdm run build-ext`) wait for each other: the second finds nothing left to do.
    """
    source, package, build_dir, stamp = _paths(which)
    if not (source / "CMakeLists.txt").exists():
        raise BuildError(f"{source / 'CMakeLists.txt'} is missing")
    cmake_build(source, build_dir, package, [])
    module = _module_file(which)
    if not module.exists():
        raise BuildError(f"the build finished but {module} is missing")
    stamp.write_text(_fingerprint(which) + "\n")
    if verbose:
        print(f"[build-ext] ok: {module.relative_to(ROOT)}", flush=True)
    return module


# Extensions already checked (or built) by this process. A Python process cannot reload a
# compiled module, so checking again on every call would only cost time: the Python wrappers
# call ensure_built before each op, and the check stats every source file.
_checked: set[str] = set()


def ensure_built(which: str) -> None:
    """Build the extension if a source changed since the last build; otherwise do nothing.

    Checks once per process: later calls return at once.
    """
    if which in _checked:
        return
    if is_up_to_date(which):
        _checked.add(which)
        return
    _, package, build_dir, _ = _paths(which)
    if (build_dir / "CMakeCache.txt").exists():
        print(f"[build-ext] {package} is out of date: building it ...", flush=True)
    else:
        print(
            f"[build-ext] {package} is not built yet: building it, which takes a few minutes "
            "the first time ...",
            flush=True,
        )
    # Build in a child process and keep its output off the test report unless it fails.
    result = subprocess.run(
        [sys.executable, "-m", "tiny_attn_tools.build_ext", which],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BuildError(
            f"building {package} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    _checked.add(which)
    if package in sys.modules:
        print(f"[build-ext] {package} was imported before this build: restart Python to load it")


class _BuildOnImport(importlib.abc.MetaPathFinder):
    """Builds a course extension (if a source changed) just before it is first imported."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        for which, (_, package) in EXTENSIONS.items():
            if name == package:
                ensure_built(which)
        return None  # the usual finders import the module


def build_on_import() -> None:
    """From now on, importing tiny_attn_ext or tiny_attn_ext_ref builds it first if needed."""
    if not any(isinstance(f, _BuildOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _BuildOnImport())


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in EXTENSIONS:
        usage = f"python -m tiny_attn_tools.build_ext {{{'|'.join(EXTENSIONS)}}}"
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    try:
        build(argv[0])
    except BuildError as e:
        print(f"[build-ext] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
