"""Make the course environment match pdm.lock before every `pdm run`.

pdm creates the virtual environment on first use; this script (the `pre_run` hook in
pyproject.toml) installs the locked packages when pdm.lock or pyproject.toml changed since
the last sync, and puts the course's source folders on the environment's import path.
It uses the standard library only, because it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folders whose packages the course imports: the student tree, the reference tree,
# the two extensions' Python packages, the simulator and the shared test helpers.
IMPORT_ROOTS = [
    "src",
    "src/extensions",
    "refsol",
    "refsol/extensions_ref",
    "tools",
]


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pdm.lock", "pyproject.toml"):
        p = ROOT / name
        if p.exists():
            h.update(p.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def _pdm_command() -> list[str]:
    exe = os.environ.get("PDM_EXE") or shutil.which("pdm")
    if exe:
        return [exe]
    return [sys.executable, "-m", "pdm"]


def main() -> int:
    if os.environ.get("TINY_ATTN_SKIP_BOOTSTRAP"):
        return 0
    site = Path(sysconfig.get_paths()["purelib"])
    stamp = Path(sys.prefix) / ".tiny-attn-synced"
    want = _fingerprint()
    if not stamp.exists() or stamp.read_text().strip() != want:
        print(
            "[tiny-attn] installing the course's packages from pdm.lock (first run only) ...",
            flush=True,
        )
        rc = subprocess.call(_pdm_command() + ["sync", "--no-self"], cwd=ROOT)
        if rc != 0:
            print("[tiny-attn] `pdm sync` failed; see the messages above.", file=sys.stderr)
            return rc
        stamp.write_text(want + "\n")
    pth = site / "tiny_attn_course.pth"
    lines = "".join(f"{ROOT / d}\n" for d in IMPORT_ROOTS)
    if not pth.exists() or pth.read_text() != lines:
        pth.write_text(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
