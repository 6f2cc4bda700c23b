"""metalsim.build: CMake builds through the compiler cache (metalsim/compiler_cache.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metalsim import build

# A C++ program whose answer comes from a header found through an include folder: two copies
# of the tree differ in their paths only, or also in the header's value.
PROJECT = """
cmake_minimum_required(VERSION 3.20)
project(toy CXX)
add_executable(answer main.cpp)
target_include_directories(answer PRIVATE include)
"""
MAIN = '#include "value.h"\n#include <cstdio>\nint main() { std::printf("%d\\n", VALUE); }\n'

needs_cxx = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")


def make_tree(root: Path, value: int) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text(PROJECT)
    (root / "main.cpp").write_text(MAIN)
    (root / "include" / "value.h").write_text(f"#define VALUE {value}\n")
    return root


def build_and_run(tree: Path) -> str:
    build.cmake_build(tree, tree / "build", name="toy", verbose=False)
    return subprocess.run([tree / "build" / "answer"], capture_output=True, text=True).stdout


@pytest.fixture
def compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A compiler that logs each run that compiles main.cpp (not the ones that only preprocess
    it, nor CMake's own checks), and an empty cache."""
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "logging-c++"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -E "*) ;; *" -c "*main.cpp*) echo "$*" >> {log} ;; esac\n'
        f'exec {shutil.which("c++")} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    monkeypatch.setenv("METALSIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("METALSIM_COMPILER_CACHE", raising=False)
    return log


def compiled(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@needs_cxx
def test_a_copy_of_a_tree_in_another_folder_compiles_nothing(tmp_path: Path, compiles: Path):
    assert build_and_run(make_tree(tmp_path / "a", 7)) == "7\n"
    assert compiled(compiles) == 1
    assert build_and_run(make_tree(tmp_path / "b", 7)) == "7\n"
    assert compiled(compiles) == 1, "the second folder's identical source was compiled again"


@needs_cxx
def test_a_changed_header_is_compiled_again(tmp_path: Path, compiles: Path):
    assert build_and_run(make_tree(tmp_path / "a", 7)) == "7\n"
    assert build_and_run(make_tree(tmp_path / "b", 8)) == "8\n"
    assert compiled(compiles) == 2
    # The same folder after an edit: ninja asks, the cache answers with the earlier object.
    (tmp_path / "a" / "include" / "value.h").write_text("#define VALUE 8\n")
    assert build_and_run(tmp_path / "a") == "8\n"
    assert compiled(compiles) == 2


@needs_cxx
def test_the_cache_can_be_turned_off(
    tmp_path: Path, compiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METALSIM_COMPILER_CACHE", "0")
    assert build_and_run(make_tree(tmp_path / "a", 7)) == "7\n"
    assert build_and_run(make_tree(tmp_path / "b", 7)) == "7\n"
    assert compiled(compiles) == 2
    assert not (tmp_path / "cache" / "objects").exists() or not any(
        (tmp_path / "cache" / "objects").rglob("*.o")
    )


def test_importing_metalsim_builds_nothing() -> None:
    """metalsim.build is usable alone (the course's build tool imports it): importing the
    package must not build metalsim._core."""
    code = "import sys, metalsim, metalsim.build; print('metalsim._core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
