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
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)),
                ("num_attrs", ctypes.c_uint)]


# each argument's struct format by its exact type: what CuPy's launcher passes for it (a Python int: a device
# pointer, as `Tensor.data_ptr()` gives it, 64 bits)
_FORMATS = {np.int32: "i", np.uint32: "I", np.int64: "q", np.uint64: "Q", np.float32: "f", np.float64: "d", int: "Q"}
STRUCT_ALIGN = 64  # a struct by value is a CUtensorMap, which cuda.h aligns to 64 bytes


@dataclass(frozen=True)
class ParamLayout:
    """One host buffer for a launch's parameters: first the table of a pointer per parameter that the driver reads
    (`void **kernelParams`), then the values, each at its C alignment as the kernel's parameter space lays them out."""

    packer: struct.Struct  # the table and the values
    offsets: tuple[int, ...]  # each value's place in the buffer


@functools.lru_cache(maxsize=64)
def param_layout(types: tuple[type, ...], struct_sizes: tuple[int, ...] = ()) -> ParamLayout:
    """The layout of arguments of these exact types: numpy scalars by their dtype, a Python int as 64 bits, `bytes`
    (a struct by value, of the next size of `struct_sizes`) at a 64-byte boundary; TypeError naming an argument no
    kernel parameter can take."""
    table = 8 * max(1, len(types))
    table += -table % STRUCT_ALIGN  # (the values keep their alignment relative to the buffer's start too)
    gap = table - 8 * len(types)
    fmt, offsets, at, sizes = f"<{len(types)}Q" + (f"{gap}x" if gap else ""), [], table, iter(struct_sizes)
    for i, kind in enumerate(types):
        if kind is bytes:
            size = next(sizes)
            code, align = f"{size}s", STRUCT_ALIGN
        elif kind in _FORMATS:
            code = _FORMATS[kind]
            size = align = struct.calcsize(code)
        elif issubclass(kind, np.generic):
            raise TypeError(f"kernel argument {i}: dtype {np.dtype(kind).name} is not one of "
                            f"{sorted(np.dtype(t).name for t in _FORMATS if t is not int)}")
        else:
            raise TypeError(f"kernel argument {i}: {kind.__name__}; expected a numpy scalar, a Python int (a device "
                            "pointer) or bytes (a struct by value)")
        pad = -at % align
        fmt += f"{pad}x{code}" if pad else code
        offsets.append(at + pad)
        at += pad + size
    return ParamLayout(struct.Struct(fmt), tuple(offsets))


def packed_params(args: Sequence[Any]) -> Any:
    """The arguments packed into one buffer after the table of pointers to them (ParamLayout): its address is the
    launch's `kernelParams` (keep it alive until the launch returns). Per launch: a layout looked up by the
    arguments' types, one pack."""
    types = tuple(map(type, args))
    layout = param_layout(types, tuple(len(a) for a in args if type(a) is bytes) if bytes in types else ())
    buf = ctypes.create_string_buffer(layout.packer.size)
    base = ctypes.addressof(buf)
    layout.packer.pack_into(buf, 0, *[base + at for at in layout.offsets], *args)
    return buf


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
    fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # params: void **
    fn.restype = ctypes.c_int
    return fn


@functools.lru_cache(maxsize=256)
def _config(grid: tuple[int, ...], block: tuple[int, ...], shared_mem: int, stream: int, dependent: bool) -> Any:
    """The launch's CUlaunchConfig, made once per distinct launch (the driver only reads it): as a dependent, one
    attribute (programmatic stream serialization allowed), else none."""
    attrs = (_serialization(), 1) if dependent else (None, 0)
    return _LaunchConfig((*grid, 1, 1)[:3], (*block, 1, 1)[:3], shared_mem, stream, *attrs)


def launch(function: int, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int,
           stream: int, dependent: bool) -> None:
    """Launch the CUfunction `function` on `stream` (a CUstream handle), where `dependent` as a programmatic
    dependent of the kernel before it there; RuntimeError with the driver's code if the launch is refused."""
    params = packed_params(args)  # (alive until the call returns: the driver copies the values)
    rc = _driver()(ctypes.byref(_config(tuple(grid), tuple(block), shared_mem, stream, dependent)), function, params,
                   None)
    if rc != 0:
        what = "programmatic dependent launch" if dependent else "launch"
        raise RuntimeError(f"cuLaunchKernelEx ({what}) failed: CUresult {rc}")
