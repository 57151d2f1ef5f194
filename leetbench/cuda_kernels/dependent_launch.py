"""Launches through the driver's `cuLaunchKernelEx`: programmatic dependents (compute capability ≥ 9.0), and kernels
whose parameters CuPy cannot pass (a struct by value: chunk_wg2_tma's tensor maps).

A kernel launched this way may begin before the kernel ahead of it on the stream has ended: its CTAs become resident
as that kernel's leave the SMs (or at once, where it has triggered `griddepcontrol.launch_dependents`) and run up
to their `griddepcontrol.wait`, which returns once that kernel has completed and its writes are visible. Both
instructions are no-ops in a kernel launched the ordinary way, so one build serves both launches. CuPy launches
through `cuLaunchKernel`, which takes no launch attributes; hence this thin ctypes call (the driver's structures as
cuda.h declares them).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Sequence

import numpy as np

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)),
                ("num_attrs", ctypes.c_uint)]


_C_TYPES = {np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32, np.int64: ctypes.c_int64,
            np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float, np.float64: ctypes.c_double,
            int: ctypes.c_uint64}  # (a Python int: a device pointer, as `Tensor.data_ptr()` gives it)


def c_argument(a: Any) -> Any:
    """A kernel argument as the C value the kernel's parameter holds: numpy scalars by their dtype, a Python int
    (a device pointer) as 64 bits — what CuPy's launcher passes for each — and `bytes` as a struct passed by value
    (a tensor map's 128 bytes). (By exact type: this runs per launch.)"""
    ctype = _C_TYPES.get(type(a))
    if ctype is not None:
        return ctype(a)
    if type(a) is bytes:
        return (ctypes.c_ubyte * len(a)).from_buffer_copy(a)
    if isinstance(a, np.generic):
        raise TypeError(f"kernel argument {a!r}: dtype {a.dtype} is not one of "
                        f"{sorted(np.dtype(t).name for t in _C_TYPES if t is not int)}")
    raise TypeError(f"kernel argument {a!r}: expected a numpy scalar, a Python int (a device pointer) or bytes (a "
                    "struct by value)")


@functools.lru_cache(maxsize=1)
def _serialization() -> Any:
    """The one launch attribute, made once (the driver only reads it): programmaticStreamSerializationAllowed = 1."""
    attr = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1
    return ctypes.pointer(attr)


@functools.lru_cache(maxsize=1)
def _driver() -> Any:
    lib = ctypes.CDLL("libcuda.so.1")
    fn = lib.cuLaunchKernelEx
    fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def launch(function: int, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int,
           stream: int, dependent: bool) -> None:
    """Launch the CUfunction `function` on `stream` (a CUstream handle), where `dependent` as a programmatic
    dependent of the kernel before it there; RuntimeError with the driver's code if the launch is refused."""
    values = [c_argument(a) for a in args]  # (alive until the call returns: the driver copies them)
    params = (ctypes.c_void_p * max(1, len(values)))(*map(ctypes.addressof, values))
    attrs = (_serialization(), 1) if dependent else (None, 0)
    config = _LaunchConfig((*grid, 1, 1)[:3], (*block, 1, 1)[:3], shared_mem, stream, *attrs)
    rc = _driver()(ctypes.byref(config), function, params, None)
    if rc != 0:
        what = "programmatic dependent launch" if dependent else "launch"
        raise RuntimeError(f"cuLaunchKernelEx ({what}) failed: CUresult {rc}")
