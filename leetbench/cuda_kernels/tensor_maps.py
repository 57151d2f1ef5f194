"""Tensor maps for the TMA loads of chunk_wg2_tma (cp.async.bulk.tensor), encoded by the driver.

A tensor map describes a tensor in global memory and the box one copy moves: here a [B, H, N, C] 16-bit tensor as
three dimensions (C, N, B·H), innermost first, and boxes of 64 tokens × 64 columns (128-byte rows) laid into shared
memory with the 128-byte swizzle — the layout the kernels' wgmma descriptors read (hopper.cuh's `swz<128>`).
Elements past the bounds (tokens from N on) arrive as zeros. The map is 128 opaque bytes (`CUtensorMap`), passed
by value as a kernel parameter (so the launch goes through the driver: dependent_launch.launch). Encoded through
`cuTensorMapEncodeTiled` with ctypes, as cuda.h declares it.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

MAP_BYTES = 128
BOX_TOKENS = 64
BOX_COLUMNS = 64  # 128 bytes of 16-bit elements: the widest row the 128-byte swizzle takes

# cuda.h's enumerations (CUtensorMapDataType, …Interleave, …Swizzle, …L2promotion, …FloatOOBfill)
_UINT16 = 1  # the copies move bits: bfloat16 and float16 alike
_INTERLEAVE_NONE = 0
_SWIZZLE_128B = 3
_L2_PROMOTION_256B = 3
_OOB_FILL_ZEROS = 0


@functools.lru_cache(maxsize=1)
def _encoder() -> Any:
    fn = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
    u32p, u64p = ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def token_map(t: torch.Tensor) -> bytes:
    """The tensor map of `t` ([B, H, N, C], contiguous, 16-bit, C a multiple of 64) for boxes of 64 tokens × 64
    columns at coordinates (column, token, b·H + h); ValueError naming what a map cannot take."""
    if t.dim() != 4 or t.element_size() != 2 or not t.is_contiguous():
        raise ValueError(f"a tensor map takes a contiguous [B, H, N, C] 16-bit tensor (got {tuple(t.shape)}, "
                         f"{t.dtype}, contiguous={t.is_contiguous()})")
    B, H, N, C = t.shape
    if C % BOX_COLUMNS:
        raise ValueError(f"a tensor map's boxes are {BOX_COLUMNS} columns: C={C} is not a multiple of {BOX_COLUMNS}")
    return _encoded(t.data_ptr(), B * H, N, C, str(t.dtype))


@functools.lru_cache(maxsize=256)
def _encoded(address: int, BH: int, N: int, C: int, dtype: str) -> bytes:
    """The map of a [BH, N, C] 16-bit tensor at `address`, encoded once: a map is its address and shape alone, so
    a tensor allocated where another of its shape was shares its map (timed loops call with the same tensors)."""
    dims = (ctypes.c_uint64 * 3)(C, N, BH)
    strides = (ctypes.c_uint64 * 2)(C * 2, N * C * 2)  # bytes, of every dimension but the innermost
    box = (ctypes.c_uint32 * 3)(BOX_COLUMNS, BOX_TOKENS, 1)
    steps = (ctypes.c_uint32 * 3)(1, 1, 1)
    out = (ctypes.c_ubyte * (MAP_BYTES + 64))()  # CUtensorMap is 64-byte aligned: place it so inside
    at = (ctypes.addressof(out) + 63) & ~63
    rc = _encoder()(at, _UINT16, 3, address, dims, strides, box, steps, _INTERLEAVE_NONE, _SWIZZLE_128B,
                    _L2_PROMOTION_256B, _OOB_FILL_ZEROS)
    if rc != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled refused a map of {BH} × {N} × {C} {dtype}: CUresult {rc}")
    return ctypes.string_at(at, MAP_BYTES)
