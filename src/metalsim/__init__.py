"""metalsim: run Metal compute kernels on the CPU, with the semantics of an Apple GPU.

    import numpy as np
    import metalsim

    lib = metalsim.Library.from_source('''
        #include <metal_stdlib>
        using namespace metal;
        kernel void add_one(device float* x [[buffer(0)]],
                            uint i [[thread_position_in_grid]]) {
            x[i] += 1.0f;
        }
    ''')
    x = np.zeros(64, dtype=np.float32)
    lib.dispatch("add_one", grid=(2, 1, 1), threadgroup=(32, 1, 1), buffers={0: x})
    # x is now all ones: NumPy arrays are read and written in place.

`grid` counts threadgroups (Metal's dispatchThreadgroups); `dispatch_threads` takes a grid of
threads instead (dispatchThreads: edge threadgroups are cut to the grid). Every failure is a
`metalsim.Error` subclass naming the kernel and what went wrong. See book/src/metalsim.md.

The compiled Python module (`metalsim._core`) is built on first use with CMake and Ninja from
the Python environment (metalsim/build.py; `python -m metalsim build` does it with its output):
importing metalsim builds nothing, so that a project can use metalsim.build alone.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .build import HOME, BuildError, cmake_build, ensure_built, load_core

# The runtime headers the kernel compiler includes are in this folder.
os.environ.setdefault("METALSIM_HOME", str(HOME))

__all__ = [
    "BindingError",
    "BuildError",
    "CompileError",
    "DeadlockError",
    "DispatchError",
    "Error",
    "KernelNotFoundError",
    "Library",
    "Pipeline",
    "bfloat16",
    "LimitError",
    "MetalWarning",
    "MemoryAccessError",
    "RaceError",
    "TimeoutError",
    "InterruptedError",
    "cache_dir",
    "cmake_build",
    "compiler_runs",
    "ensure_built",
]


# What metalsim._core defines, read from it on first use (PEP 562): the exceptions of the host
# library, each a subclass of metalsim.Error.
_FROM_CORE = {
    "Error",
    "CompileError",
    "KernelNotFoundError",
    "BindingError",
    "LimitError",
    "DeadlockError",
    "DispatchError",
    "RaceError",
    "MemoryAccessError",
    "TimeoutError",  # a dispatch past its deadline
    "InterruptedError",  # a dispatch stopped by Ctrl-C
}


def __getattr__(name: str) -> Any:
    if name == "_core":
        return _host()
    if name in _FROM_CORE:
        return getattr(_host(), name)
    raise AttributeError(f"module 'metalsim' has no attribute {name!r}")


_core_module: Any = None


def _host() -> Any:
    """metalsim._core, built on first use."""
    global _core_module
    if _core_module is None:
        _core_module = load_core()
    return _core_module


@functools.cache
def _dtype_codes() -> dict[Any, int]:
    """NumPy dtype -> the code of that element type in metalsim's ABI (metalsim/abi.h, the
    one place the codes are written), for the dtypes NumPy has."""
    codes = {}
    for name, code in _host().dtype_codes.items():
        try:
            codes[np.dtype(name)] = code
        except TypeError:  # bfloat16, untyped bytes: NumPy has no such dtype
            pass
    return codes


def cache_dir() -> str:
    """Where compiled kernel libraries are cached."""
    return _host().cache_dir()


def compiler_runs() -> int:
    """How many times this process has run the C++ compiler on kernel sources.

    A library found in the cache does not run it, and neither does a source whose compile already
    failed in this process: that raises the same CompileError again at once.
    """
    return _host().compiler_runs()


# More OS threads than this only adds switching: threadgroups are queued to the workers.
_MAX_WORKERS = 1024


def _size3(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        dims = [int(value)]
    else:
        try:
            dims = [int(v) for v in value]
        except TypeError:
            raise TypeError(
                f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}"
            ) from None
    if not 1 <= len(dims) <= 3 or any(d < 0 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 non-negative ints, got {value!r}")
    dims += [1] * (3 - len(dims))
    return dims[0], dims[1], dims[2]


class bfloat16:  # noqa: N801  (named after the Metal type it stands for)
    """A uint16 NumPy array holding bfloat16 bit patterns, bound as Metal `bfloat` elements.

    NumPy has no bfloat16: `buffers={0: metalsim.bfloat16(bits)}` where `bits` is a uint16 array
    (e.g. `(f32.view(np.uint32) >> 16).astype(np.uint16)`, which truncates).
    """

    def __init__(self, bits: np.ndarray) -> None:
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
            raise TypeError("metalsim.bfloat16 takes a uint16 NumPy array of bfloat16 bit patterns")
        self.bits = bits


def _binding(index: int, value: Any) -> tuple[tuple[int, int, int, int, bool, bool, int], Any]:
    """(index, address, size, dtype code, is_bytes, read_only, bytes before the address) of one
    buffer, and the object to keep alive."""
    if not isinstance(index, (int, np.integer)) or not 0 <= int(index) <= 30:
        raise ValueError(f"buffers: index {index!r} is not a buffer index (0 to 30)")
    if isinstance(value, bfloat16):
        spec, obj = _binding(index, value.bits)
        bf16 = _host().dtype_codes["bfloat16"]
        return (spec[0], spec[1], spec[2], bf16, False, spec[5], spec[6]), obj
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(
                f"buffers[{index}]: the array must be C-contiguous (use np.ascontiguousarray)"
            )
        code = _dtype_codes().get(value.dtype, 0)
        addr = value.__array_interface__["data"][0]
        # Each array is a buffer of its own (a view too): the kernel runs on a copy that starts
        # at a page, as a Metal buffer does.
        read_only = not value.flags.writeable
        return (int(index), addr, value.nbytes, code, False, read_only, 0), value
    if isinstance(value, np.generic):
        arr = np.array(value)
        code = _dtype_codes().get(arr.dtype, 0)
        return (
            int(index),
            arr.__array_interface__["data"][0],
            arr.nbytes,
            code,
            True,
            False,
            0,
        ), arr
    if isinstance(value, (bytes, bytearray)):
        arr = np.frombuffer(bytes(value), dtype=np.uint8)
        return (int(index), arr.__array_interface__["data"][0], arr.nbytes, 0, True, False, 0), arr
    raise TypeError(
        f"buffers[{index}]: expected a NumPy array, a NumPy scalar (e.g. np.uint32(n)) or bytes, "
        f"got {type(value).__name__} (a Python int/float has no Metal type: say which one)"
    )


def _constant(index: Any, value: Any) -> tuple[int, int, int, float]:
    """(index, dtype code, int value, float value) of one function constant."""
    if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < 65536:
        raise ValueError(
            f"function_constants: key {index!r} is not a function constant index (0 to 65535)"
        )
    # A Python int is an int64, a Python float a float64.
    codes = _dtype_codes()
    if isinstance(value, (bool, np.bool_)):
        return int(index), codes[np.dtype(np.bool_)], int(bool(value)), 0.0
    if isinstance(value, (int, np.integer)):
        code = codes[np.dtype(type(value) if isinstance(value, np.integer) else np.int64)]
        return int(index), code, int(value), 0.0
    if isinstance(value, (float, np.floating)):
        dtype = np.dtype(type(value) if isinstance(value, np.floating) else np.float64)
        code = codes.get(dtype, codes[np.dtype(np.float64)])
        return int(index), code, 0, float(value)
    raise TypeError(
        f"function_constants[{index}]: expected a bool, int or float, got {type(value).__name__}"
    )


class MetalWarning(UserWarning):
    """Kernel code that runs on metalsim but that Apple's Metal compiler refuses (printf)."""


class Library:
    """A kernel library compiled from .metal sources (cached on disk between runs)."""

    def __init__(self, core: Any) -> None:
        self._core = core
        for message in core.warnings:
            warnings.warn(MetalWarning(message), stacklevel=3)

    @classmethod
    def from_source(
        cls,
        source: str,
        name: str = "source.metal",
        include_dirs: Sequence[str | os.PathLike[str]] = (),
    ) -> Library:
        """Compile `source`; diagnostics call it `name`."""
        if not isinstance(source, str):
            raise TypeError(f"source must be a str of Metal code, got {type(source).__name__}")
        return cls(_host().Library.from_source(source, name, [str(d) for d in include_dirs]))

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        include_dirs: Sequence[str | os.PathLike[str]] = (),
    ) -> Library:
        """Compile one or several .metal files into one library."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return cls(
            _host().Library.from_files([str(p) for p in paths], [str(d) for d in include_dirs])
        )

    @property
    def kernel_names(self) -> list[str]:
        return list(self._core.kernel_names)

    @property
    def path(self) -> str:
        """The compiled shared object."""
        return self._core.path

    @property
    def function_constants(self) -> dict[int, str]:
        """The library's [[function_constant(index)]] declarations: {index: name}."""
        return {index: name for index, name, _ in self._core.function_constants}

    def pipeline(
        self, kernel: str, function_constants: Mapping[int, bool | int | float] | None = None
    ) -> Pipeline:
        """`kernel` with its function constants set, as Metal creates a compute pipeline:
        function_constants={20: True, 26: 4} sets `[[function_constant(20)]]` and `(26)`.
        An index the library does not declare, or a value of the wrong kind, is an error now."""
        if not isinstance(kernel, str):
            raise TypeError(f"kernel must be a kernel name (str), got {type(kernel).__name__}")
        if function_constants is not None and not isinstance(function_constants, Mapping):
            raise TypeError(
                "function_constants must be a dict {index: bool | int | float}, got "
                f"{type(function_constants).__name__}"
            )
        consts = [_constant(i, v) for i, v in (function_constants or {}).items()]
        return Pipeline(self, self._core.pipeline(kernel, consts))

    def dispatch(
        self,
        kernel: str,
        grid: int | Sequence[int],
        threadgroup: int | Sequence[int],
        buffers: Mapping[int, Any] | None = None,
        threadgroup_memory: Mapping[int, int] | None = None,
        workers: int = 0,
    ) -> None:
        """Run `kernel` on `grid` threadgroups of `threadgroup` threads (dispatchThreadgroups).

        buffers: {index: array | NumPy scalar | bytes} for [[buffer(index)]]; what the kernel
        writes into an array appears in it (the kernel runs on a copy that starts at a page, as
        a Metal buffer does, with inaccessible memory around it; an access outside the array is
        a MemoryAccessError, and so is a write to a read-only array); scalars and bytes are
        copied like setBytes.
        threadgroup_memory: {index: bytes} for [[threadgroup(index)]] (multiples of 16).
        workers: OS threads for the threadgroups (0: one per core, METALSIM_THREADS overrides).
        """
        self._run(kernel, grid, threadgroup, buffers, threadgroup_memory, False, workers)

    def dispatch_threads(
        self,
        kernel: str,
        threads: int | Sequence[int],
        threadgroup: int | Sequence[int],
        buffers: Mapping[int, Any] | None = None,
        threadgroup_memory: Mapping[int, int] | None = None,
        workers: int = 0,
    ) -> None:
        """Run `kernel` on a grid of `threads` threads (dispatchThreads): the threadgroups at
        the edges are cut to the grid, and threads_per_threadgroup says how big each one is."""
        self._run(kernel, threads, threadgroup, buffers, threadgroup_memory, True, workers)

    def _run(
        self,
        kernel: str,
        grid: Any,
        group: Any,
        buffers: Mapping[int, Any] | None,
        tg: Mapping[int, int] | None,
        grid_is_threads: bool,
        workers: int,
        pipeline: Any = None,
    ) -> None:
        if not isinstance(kernel, str):
            raise TypeError(f"kernel must be a kernel name (str), got {type(kernel).__name__}")
        g = _size3(grid, "threads" if grid_is_threads else "grid")
        t = _size3(group, "threadgroup")
        if buffers is not None and not isinstance(buffers, Mapping):
            raise TypeError(
                f"buffers must be a dict {{index: array}}, got {type(buffers).__name__}"
            )
        if tg is not None and not isinstance(tg, Mapping):
            raise TypeError(
                f"threadgroup_memory must be a dict {{index: bytes}}, got {type(tg).__name__}"
            )
        if (
            isinstance(workers, bool)
            or not isinstance(workers, (int, np.integer))
            or not 0 <= workers <= _MAX_WORKERS
        ):
            raise ValueError(
                f"workers must be an int from 0 (one per core) to {_MAX_WORKERS}, got {workers!r}"
            )
        keep = []
        specs = []
        for index, value in (buffers or {}).items():
            spec, obj = _binding(index, value)
            specs.append(spec)
            keep.append(obj)
        tgs = []
        for index, length in (tg or {}).items():
            if not isinstance(index, (int, np.integer)) or not 0 <= int(index) <= 30:
                raise ValueError(f"threadgroup_memory: index {index!r} is not 0 to 30")
            if not isinstance(length, (int, np.integer)) or int(length) < 0:
                raise ValueError(
                    f"threadgroup_memory[{index}]: expected a byte count, got {length!r}"
                )
            tgs.append((int(index), int(length)))
        self._core.dispatch(kernel, g, t, specs, tgs, grid_is_threads, int(workers), pipeline)
        del keep


class Pipeline:
    """A kernel of a Library with its function constants set (see Library.pipeline)."""

    def __init__(self, library: Library, core: Any) -> None:
        self.library = library
        self._core = core

    @property
    def kernel(self) -> str:
        return self._core.kernel

    def dispatch(
        self,
        grid: int | Sequence[int],
        threadgroup: int | Sequence[int],
        buffers: Mapping[int, Any] | None = None,
        threadgroup_memory: Mapping[int, int] | None = None,
        workers: int = 0,
    ) -> None:
        """Library.dispatch for this pipeline's kernel and function constants."""
        self.library._run(
            self.kernel, grid, threadgroup, buffers, threadgroup_memory, False, workers, self._core
        )

    def dispatch_threads(
        self,
        threads: int | Sequence[int],
        threadgroup: int | Sequence[int],
        buffers: Mapping[int, Any] | None = None,
        threadgroup_memory: Mapping[int, int] | None = None,
        workers: int = 0,
    ) -> None:
        """Library.dispatch_threads for this pipeline's kernel and function constants."""
        self.library._run(
            self.kernel,
            threads,
            threadgroup,
            buffers,
            threadgroup_memory,
            True,
            workers,
            self._core,
        )
