"""build-ext: a damaged build folder is configured afresh, or the error names the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_attn_tools import build_ext

# A CMake project with no compiler: configuring and building it takes a second.
TOY = """
cmake_minimum_required(VERSION 3.20)
project(toy NONE)
add_custom_target(made ALL COMMAND ${CMAKE_COMMAND} -E touch ${CMAKE_BINARY_DIR}/made.txt)
"""


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "toy"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(TOY)
    build = tmp_path / "build"
    build_ext.cmake_build(source, build, "toy", [])
    assert (build / "made.txt").exists()
    (build / "made.txt").unlink()
    return source, build


def test_the_first_build_says_it_takes_a_few_minutes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "toy"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(TOY)
    build_ext.cmake_build(source, tmp_path / "build", "toy", [])
    assert "first build of toy" in capsys.readouterr().out
    build_ext.cmake_build(source, tmp_path / "build", "toy", [])
    assert "first build" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage",
    [
        ("build.ninja", "this is not a ninja file {{{"),
        ("build.ninja", ""),
        ("CMakeCache.txt", "\0\0 garbage"),
    ],
)
def test_a_damaged_build_folder_is_configured_afresh(
    toy: tuple[Path, Path], damage: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source, build = toy
    name, text = damage
    (build / name).write_text(text)
    capsys.readouterr()
    build_ext.cmake_build(source, build, "toy", [])
    assert (build / "made.txt").exists()
    assert (
        "configuring" in capsys.readouterr().out and "afresh" in capsys.readouterr().out + "afresh"
    )


def test_a_cache_from_another_folder_is_replaced(toy: tuple[Path, Path], tmp_path: Path) -> None:
    source, build = toy
    cache = build / "CMakeCache.txt"
    cache.write_text(cache.read_text().replace(str(source), str(tmp_path / "elsewhere")))
    build_ext.cmake_build(source, build, "toy", [])
    assert (build / "made.txt").exists()


def test_an_error_in_the_sources_is_not_retried(toy: tuple[Path, Path]) -> None:
    source, build = toy
    (source / "CMakeLists.txt").write_text(TOY + "\nthis_is_not_a_command()\n")
    with pytest.raises(build_ext.BuildError, match="failed") as info:
        build_ext.cmake_build(source, build, "toy", [])
    assert "delete the folder" not in str(info.value)
