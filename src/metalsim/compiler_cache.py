"""A compiler cache for the CMake builds of metalsim.build: object files kept by what they
are compiled from, so that a build compiles each translation unit once, whichever folder it is
built in.

    python src/metalsim/compiler_cache.py <compiler> <arguments...>

metalsim.build.cmake_build makes CMake run every C++ compile through it
(CMAKE_CXX_COMPILER_LAUNCHER; by its path, as it imports nothing but the standard library:
a build folder has a folder named metalsim that `python -m` would take for the package).
It preprocesses the source first (which also writes the
dependency file ninja reads), then looks up a key made of
  - the compiler (its path, size and modification time),
  - the arguments that act after preprocessing (-O2, -fPIC, -std=..., -W..., ...),
  - the preprocessed text without its line markers,
and copies the object kept under that key, or compiles and keeps what the compiler made. The
paths of the source, of the object and of the include folders, and the -D definitions, are not
part of the key: their effect is in the preprocessed text, and without debug information (the
builds are Release) the object does not depend on them otherwise. Two copies of one tree in
two folders, or two extensions that compile the same simulator and bindings, share objects.

The objects live in the kernel cache's folder (METALSIM_CACHE_DIR, else
$XDG_CACHE_HOME/metalsim, else ~/.cache/metalsim), under objects/; deleting it is always safe.
METALSIM_COMPILER_CACHE=0 compiles everything as if this cache did not exist.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = b"metalsim compiler cache 1\n"

# Arguments that only steer the preprocessor or name files, each followed by a value.
_WITH_VALUE = {"-o", "-MF", "-MT", "-MQ", "-I", "-isystem", "-iquote", "-idirafter", "-D", "-U"}
_WITH_VALUE |= {"-include", "-imacros", "-x"}
# ... and those that hold their value in the same word (-Ifoo, -DNAME=1), or have none.
_JOINED_PREFIXES = ("-I", "-D", "-U", "-isystem", "-iquote", "-idirafter")
_NO_VALUE = {"-MD", "-MMD", "-MP", "-c"}
_LINE_MARKER = re.compile(rb"^#(?: \d+| line \d+)[^\n]*\n", re.M)


def cache_dir() -> Path:
    """Where the objects are kept (the folder of metalsim's kernel cache, objects/)."""
    if os.environ.get("METALSIM_CACHE_DIR"):
        base = Path(os.environ["METALSIM_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "metalsim"
    else:
        base = Path.home() / ".cache" / "metalsim"
    return base / "objects"


def _split(args: list[str]) -> tuple[list[str], str | None, str | None]:
    """(the arguments that act after preprocessing, the source, the object), or a None where
    the command is not one compile of one source into one object."""
    key_args, sources, output = [], [], None
    i = 0
    while i < len(args):
        a = args[i]
        if a in _WITH_VALUE and i + 1 < len(args):
            if a == "-o":
                output = args[i + 1]
            elif a == "-x":  # the language is part of what is compiled
                key_args += [a, args[i + 1]]
            i += 2
            continue
        if a in _NO_VALUE or a.startswith(_JOINED_PREFIXES):
            pass
        elif a.startswith("-"):
            key_args.append(a)
        else:
            sources.append(a)
        i += 1
    if "-c" not in args or len(sources) != 1 or output is None:
        return key_args, None, None
    if any(a in ("-E", "-S", "-M", "-MM") or a.startswith("-fdump") for a in args):
        return key_args, None, None
    return key_args, sources[0], output


def _compiler_identity(compiler: str) -> bytes:
    path = shutil.which(compiler) or compiler
    st = Path(path).resolve().stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode()


def _compile(cmd: list[str]) -> int:
    return subprocess.call(cmd)


def run(cmd: list[str]) -> int:
    """Run the compile `cmd` (compiler first), from the cache where it can."""
    if os.environ.get("METALSIM_COMPILER_CACHE") == "0" or len(cmd) < 2:
        return _compile(cmd)
    compiler, args = cmd[0], cmd[1:]
    key_args, source, output = _split(args)
    if source is None or output is None:
        return _compile(cmd)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="tmp-") as tmp:
        # The preprocessor with every argument but -c and -o: it writes the dependency file
        # (-MD -MF) as the compile would.
        pre_args, i = [], 0
        while i < len(args):
            if args[i] == "-o":
                i += 2
                continue
            if args[i] != "-c":
                pre_args.append(args[i])
            i += 1
        text_file = Path(tmp) / "source.i"
        pre = subprocess.run([compiler, *pre_args, "-E", "-o", str(text_file)], capture_output=True)
        if pre.returncode != 0:  # the compile says what is wrong
            return _compile(cmd)
        h = hashlib.sha256(VERSION)
        h.update(_compiler_identity(compiler))
        h.update("\0".join(key_args).encode() + b"\n")
        h.update(_LINE_MARKER.sub(b"", text_file.read_bytes()))
        key = h.hexdigest()
        kept = folder / key[:2] / f"{key}.o"
        if kept.is_file():
            shutil.copyfile(kept, output)  # a fresh modification time: ninja relinks
            return 0
        result = subprocess.run(cmd, stderr=subprocess.PIPE)
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        # An object with warnings is not kept, so that a later build shows them again.
        if result.returncode == 0 and not result.stderr.strip() and Path(output).is_file():
            kept.parent.mkdir(exist_ok=True)
            part = Path(tmp) / "object.o"
            shutil.copyfile(output, part)
            os.replace(part, kept)  # whole or not at all, for builds running side by side
        return result.returncode


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
