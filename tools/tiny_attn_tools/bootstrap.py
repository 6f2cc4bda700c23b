"""Make the course environment match pdm.lock before every `pdm run`.

pdm creates the virtual environment on first use; this script (the `pre_run` hook in
pyproject.toml) runs `pdm sync` when pdm.lock or pyproject.toml changed since the last sync:
it installs the locked packages and the course's own packages (tiny_attn, tiny_attn_ref, their
extensions, metalsim, tiny_attn_tools), editable, as pyproject.toml lists them.
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

ROOT = Path(__file__).resolve().parents[2]
# What an earlier layout of the course left in the environment: a path file that put whole
# folders on the import path. Removed, so that only the installed packages are importable.
STALE_PATH_FILE = "tiny_attn_course.pth"


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
        rc = subprocess.call(_pdm_command() + ["sync"], cwd=ROOT)
        if rc != 0:
            print("[tiny-attn] `pdm sync` failed; see the messages above.", file=sys.stderr)
            return rc
        stamp.write_text(want + "\n")
    (site / STALE_PATH_FILE).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
