"""Course check: the student tree can be completed, i.e. the reference solution fits into it.

Copies the repository (the files git knows) into a scratch folder, puts the reference solution
into the student's files (refsol/tiny_attn_ref/*.py -> src/tiny_attn/, refsol/extensions_ref/
src/* -> src/extensions/src/), and runs `pdm run test` there: every graded test must pass. This
catches a stub with the wrong signature, a student extension whose build or bindings differ
from the reference's, or a test that only the reference's package layout can pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The folders that hold the course's packages (pyproject.toml installs them from there). The
# scratch copy's come first on the import path, so its packages are the ones imported.
PACKAGE_FOLDERS = ["src", "src/extensions", "refsol", "refsol/extensions_ref", "tools"]


def transplant(work: Path) -> int:
    """Copy the reference's course files over the student's; return how many."""
    count = 0
    for src in sorted((work / "refsol" / "tiny_attn_ref").glob("*.py")):
        if src.name == "__init__.py":
            continue
        shutil.copyfile(src, work / "src" / "tiny_attn" / src.name)
        count += 1
    for src in sorted((work / "refsol" / "extensions_ref" / "src").iterdir()):
        if src.is_file():
            shutil.copyfile(src, work / "src" / "extensions" / "src" / src.name)
            count += 1
    return count


def main() -> int:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    with tempfile.TemporaryDirectory(prefix="tiny-attn-solvable-") as tmp:
        work = Path(tmp)
        for name in filter(None, files):
            rel = Path(name.decode())
            if not (ROOT / rel).is_file():
                continue
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, work / rel)
        n = transplant(work)
        print(
            f"[check-solvable] the reference put into the student tree ({n} files); "
            "running every graded test against it ...",
            flush=True,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(str(work / d) for d in PACKAGE_FOLDERS)
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "tiny_attn_tools.run_tests",
                "--student",
                "--",
                "-q",
                "-p",
                "no:cacheprovider",
                "-x",
            ],
            cwd=work,
            env=env,
        )
    if rc != 0:
        print("[check-solvable] FAILED: the reference solution does not pass in the student tree")
        return 1
    print("[check-solvable] ok: the student tree, completed with the reference, passes every test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
