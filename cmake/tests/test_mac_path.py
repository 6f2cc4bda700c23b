"""The Mac path of the extensions' build, checked on any machine.

There is no Mac in CI, so these tests make Linux answer the questions a Mac's build asks:
- CMake is configured as on a Mac whose MLX has Metal (-DAPPLE=ON -DMLX_BUILD_METAL=ON), with a
  stand-in `xcrun` on PATH that either compiles (it writes the file after -o and logs its
  arguments) or fails the way Apple's does without the Metal compiler; the tests read what the
  configure step says and the build.ninja it writes (nothing is built);
- the bfloat16 refusal is compiled into a small program with the definition a build for an older
  macOS gets;
- the one-time warning of a GPU call on the simulator where MLX has a GPU is seen through the
  Mac view (METALSIM_DEFAULT_DEVICE=gpu).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "refsol" / "extensions_ref"
PACKAGE = "tiny_attn_ext_ref"

# What Apple's tools print when the Metal compiler is missing: the command line tools alone
# (xcrun exits 72), and Xcode 26 without its separately downloaded Metal toolchain.
NO_METAL = {
    "command line tools only": (
        72,
        'xcrun: error: unable to find utility "metal", not a developer tool or in PATH',
    ),
    "Xcode without the Metal toolchain": (
        1,
        "error: error: cannot execute tool 'metal' due to missing Metal Toolchain; use: "
        "xcodebuild -downloadComponent MetalToolchain",
    ),
}


def fake_xcrun(bin_dir: Path, log: Path, fails: tuple[int, str] | None) -> None:
    """An `xcrun` that logs its arguments, then fails like Apple's or writes its -o file."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    if fails:
        code, message = fails
        (bin_dir / "message.txt").write_text(message + "\n")
        body = f'echo "$*" >> "{log}"\ncat "{bin_dir / "message.txt"}" >&2\nexit {code}\n'
    else:
        body = (
            f'echo "$*" >> "{log}"\n'
            'out=""; prev=""\n'
            'for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done\n'
            '[ -n "$out" ] && : > "$out"\n'
            "exit 0\n"
        )
    script = bin_dir / "xcrun"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is part of the course environment"
    return found


def configure(
    tmp_path: Path, *, as_a_mac: bool, fails: tuple[int, str] | None = None, defines=()
) -> tuple[subprocess.CompletedProcess, str, str]:
    """Configure the reference extension into tmp_path; (result, build.ninja, xcrun's log)."""
    log = tmp_path / "xcrun.log"
    fake_xcrun(tmp_path / "bin", log, fails)
    build = tmp_path / "build"
    cmd = [tool("cmake"), "-S", str(EXTENSION), "-B", str(build), "-G", "Ninja"]
    cmd += [f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}", f"-DPython_EXECUTABLE={sys.executable}"]
    if as_a_mac:
        # APPLE is what CMake sets on macOS; MLX's CMake config sets MLX_BUILD_METAL in its Metal
        # build and leaves it alone in its CPU one.
        cmd += ["-DAPPLE=ON", "-DMLX_BUILD_METAL=ON"]
    cmd += [f"-D{d}" for d in defines]
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    ninja = (build / "build.ninja").read_text()
    return result, ninja, log.read_text() if log.exists() else ""


def metal_commands(ninja: str) -> list[str]:
    return [line for line in ninja.splitlines() if "xcrun -sdk macosx metal" in line]


def test_metallib_is_built_for_macos_14(tmp_path):
    result, ninja, log = configure(tmp_path, as_a_mac=True)
    # The probe compiled and linked a kernel for the target before choosing Metal.
    assert "-mmacosx-version-min=14.0 -c" in log and "probe.metallib" in log
    commands = metal_commands(ninja)
    sources = sorted(p.name for p in (EXTENSION / "src").glob("*.metal"))
    compiled = sorted(
        Path(m.group(1)).name for c in commands if (m := re.search(r" -c (\S+\.metal)", c))
    )
    assert compiled == sources
    linked = [c for c in commands if f"{PACKAGE}.metallib" in c]
    assert len(linked) == 1
    # Every step, compile and link, pins the deployment target.
    assert all("-mmacosx-version-min=14.0" in c for c in commands), commands
    assert "METALSIM_USE_METAL=1" in ninja and "METALSIM_FORCE" not in ninja
    assert "TINY_ATTN_METAL_BFLOAT16=1" in ninja
    assert "CMake Warning" not in result.stderr


@pytest.mark.parametrize("why", list(NO_METAL))
def test_without_the_metal_compiler_the_gpu_ops_run_on_metalsim(tmp_path, why):
    code, message = NO_METAL[why]
    result, ninja, log = configure(tmp_path, as_a_mac=True, fails=(code, message))
    assert log, "the configure step must try the Metal compiler"
    # Configuring succeeds: the extension is built for metalsim, no metallib step at all.
    assert metal_commands(ninja) == []
    assert "METALSIM_FORCE=1" in ninja and "METALSIM_USE_METAL" not in ninja
    assert "metalsim_host" in ninja
    # One warning, with the compiler's own words and what to install.
    assert result.stderr.count("CMake Warning") == 1, result.stderr
    text = " ".join(result.stderr.split())
    assert message in text
    assert "install Xcode" in text and "xcodebuild -downloadComponent MetalToolchain" in text
    assert "run on metalsim" in text and "Weeks 1-2 need no Metal" in text


def test_an_older_macos_target_compiles_bfloat16_out(tmp_path):
    defines = ["TINY_ATTN_MACOS_DEPLOYMENT_TARGET=13.0"]
    _, ninja, _ = configure(tmp_path, as_a_mac=True, defines=defines)
    commands = metal_commands(ninja)
    assert commands and all("-mmacosx-version-min=13.0" in c for c in commands)
    assert "TINY_ATTN_METAL_BFLOAT16=0" in ninja


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux's configure (a Mac's is tested above)")
def test_linux_never_looks_for_metal(tmp_path):
    result, ninja, log = configure(tmp_path, as_a_mac=False)
    assert log == "" and metal_commands(ninja) == []
    assert "METALSIM_FORCE=1" in ninja and "CMake Warning" not in result.stderr


BF16_PROGRAM = r"""
#include <iostream>
#include "mlx/ops.h"
#include "flash_attention_gpu.h"
namespace mx = mlx::core;
int main() {
  const mx::array bf16 = mx::zeros({1, 1, 1, 8}, mx::bfloat16);
  const mx::array f16 = mx::zeros({1, 1, 1, 8}, mx::float16);
  tiny_attn::check_gpu_has_bfloat16(f16, true);    // float16 kernels exist on every target
  tiny_attn::check_gpu_has_bfloat16(bf16, false);  // the CPU path never asks
  try {
    tiny_attn::check_gpu_has_bfloat16(bf16, true);
    std::cout << "accepted\n";
  } catch (const std::invalid_argument& e) {  // nanobind raises it in Python as ValueError
    std::cout << "refused: " << e.what() << "\n";
  }
}
"""


@pytest.mark.parametrize("bfloat16_kernels", [0, 1])
def test_bfloat16_is_refused_where_its_kernels_are_compiled_out(tmp_path, bfloat16_kernels):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "clang++"
    mlx_dir = Path(mx.__file__).resolve().parent
    src = tmp_path / "bf16.cpp"
    src.write_text(BF16_PROGRAM)
    exe = tmp_path / "bf16"
    cmd = [cxx, "-std=c++20", f"-DTINY_ATTN_METAL_BFLOAT16={bfloat16_kernels}"]
    common = ROOT / "src" / "extension_common"
    cmd += [f"-I{common}", f"-I{mlx_dir / 'include'}", str(src), "-o", str(exe)]
    cmd += [f"-L{mlx_dir / 'lib'}", "-lmlx", f"-Wl,-rpath,{mlx_dir / 'lib'}"]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout
    if bfloat16_kernels:
        assert out.strip() == "accepted"
    else:
        assert out.startswith("refused: [flash_attention on the GPU] query is bfloat16")
        assert "Metal 3.1 (macOS 14)" in out and "float16 or float32" in out


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac either answer may be right")
def test_the_extension_says_where_its_gpu_kernels_run():
    # The demo and the Week 3 bench ask the build, not MLX: on a Mac without the Metal compiler
    # MLX has a GPU but the kernels run on metalsim, and their timings are no GPU timings.
    from tiny_attn_tools.testing import gpu_backend_name, load_extension

    load_extension("tiny_attn_ext_ref")
    assert gpu_backend_name("tiny_attn_ext_ref") == "metalsim"


GPU_CALLS = """
from tiny_attn_tools import build_ext
build_ext.ensure_built("ref")
import mlx.core as mx
import tiny_attn_ext_ref as ext
x = mx.ones((2, 8))
for _ in range(3):
    mx.eval(ext.softmax_rows(x, stream=mx.gpu))
print("ok")
"""


@pytest.mark.skipif(
    sys.platform == "darwin",
    reason="on a Mac the Metal compiler decides where GPU calls run: check-installation says",
)
def test_a_gpu_call_on_metalsim_warns_once_where_mlx_has_a_gpu():
    # A Mac without the Metal compiler builds for metalsim: its GPU calls run there, and the
    # first one says so. The Mac view makes this machine's MLX "have" a GPU.
    on_a_mac = run_python(GPU_CALLS, METALSIM_DEFAULT_DEVICE="gpu")
    assert on_a_mac.returncode == 0 and on_a_mac.stdout.strip().endswith("ok"), on_a_mac.stderr
    assert on_a_mac.stderr.count("[metalsim] warning:") == 1, on_a_mac.stderr
    assert "xcodebuild -downloadComponent MetalToolchain" in on_a_mac.stderr
    # Linux as it is: there is no GPU to miss, and nothing to warn about.
    plain = run_python(GPU_CALLS, METALSIM_DEFAULT_DEVICE="")
    assert plain.returncode == 0, plain.stderr
    assert "[metalsim] warning:" not in plain.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="a Mac needs no Mac view")
def test_the_mac_view_refuses_a_device_it_does_not_know():
    code = GPU_CALLS.replace('print("ok")', "")
    result = run_python(code, METALSIM_DEFAULT_DEVICE="tpu")
    assert result.returncode != 0
    assert "METALSIM_DEFAULT_DEVICE must be gpu or cpu, got tpu" in result.stderr


@pytest.mark.parametrize("why", [None, *NO_METAL])
def test_check_installation_tries_the_metal_compiler_as_the_build_does(tmp_path, monkeypatch, why):
    from tiny_attn_tools import check_installation

    log = tmp_path / "xcrun.log"
    fake_xcrun(tmp_path / "bin", log, NO_METAL[why] if why else None)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    works, words = check_installation.metal_compiler()
    assert "-mmacosx-version-min=14.0 -c" in log.read_text()
    if why is None:
        assert works
    else:
        assert not works and words == NO_METAL[why][1]
    # What to install when it does not work: Xcode, then its Metal toolchain.
    assert "xcodebuild -downloadComponent MetalToolchain" in check_installation.METAL_FIX


def test_the_mac_view_reaches_the_graded_tests():
    # `--mac-view` sets METALSIM_DEFAULT_DEVICE=gpu for the run: the tests' helpers say so in the
    # report's header, and the extension's glue reads the same variable.
    cmd = [sys.executable, "-m", "tiny_attn_tools.run_tests", "--refsol", "--mac-view"]
    cmd += ["--week", "2", "--day", "3", "--", "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "testing reference solution: w2d3 (Mac view)" in result.stdout
    assert "GPU kernels run on metalsim (Mac view: the default device is the GPU" in result.stdout
    # The whole day passes in it: the op calls that pass no stream stayed on the CPU.
    assert re.search(r"\b\d+ passed", result.stdout) and "failed" not in result.stdout
