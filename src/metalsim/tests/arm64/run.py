"""metalsim's runtime on arm64, under qemu-user: `pdm run check-metalsim-arm64`.

The runtime's context switch and its fault and stop handlers have an AArch64 version that an
x86-64 machine never runs. This script has metalsim translate tests/arm64/kernels.metal on the
host, cross-compiles the translation with the AArch64 runtime and a small driver (driver.cpp,
which calls the kernel library's C entry point as the host library would), and runs the result
under qemu-aarch64: barriers and SIMD-group collectives on 1 and 2 workers (the fiber switch),
a race, an out-of-bounds write and a deadline.

Needs (Debian/Ubuntu): apt-get install qemu-user g++-aarch64-linux-gnu
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
METALSIM = HERE.parents[1]


def main() -> int:
    cxx = shutil.which("aarch64-linux-gnu-g++")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if not cxx or not qemu:
        print(
            "check-metalsim-arm64 needs an AArch64 cross compiler and qemu-user: "
            "apt-get install qemu-user g++-aarch64-linux-gnu",
            file=sys.stderr,
        )
        return 2
    import metalsim  # the installed package (pyproject.toml), this checkout's src/metalsim

    lib = metalsim.Library.from_files([HERE / "kernels.metal"])
    translation = Path(lib.path[: -len(".so")] + ".0.cpp")
    if not translation.exists():
        print(f"metalsim left no translation next to {lib.path}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "metalsim_arm64"
        objs = []
        # Kernels are compiled as metalsim compiles them (checks on), the driver plainly.
<<<<<<< HEAD
        checks = ["-fsanitize=thread,alignment", "-g1"]
        for src, extra in [(translation, checks), (HERE / "driver.cpp", [])]:
=======
        for src, extra in [
            (translation, ["-fsanitize=thread,alignment", "-g1"]),
            (HERE / "driver.cpp", []),
        ]:
>>>>>>> main
            obj = Path(tmp) / (src.stem + ".o")
            cmd = [cxx, "-std=c++17", "-O2", "-pthread", "-fno-strict-aliasing", "-w"]
            cmd += extra + [f"-I{METALSIM / 'runtime'}", f"-I{METALSIM / 'include'}"]
            cmd += [f"-I{HERE}", "-c", str(src), "-o", str(obj)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            objs.append(str(obj))
        link = [cxx, "-pthread", *objs, "-o", str(exe), "-static"]
        print("$", " ".join(link), flush=True)
        subprocess.run(link, check=True)
        print(f"$ {qemu} {exe}", flush=True)
        return subprocess.run([qemu, str(exe)], timeout=600).returncode


if __name__ == "__main__":
    sys.exit(main())
