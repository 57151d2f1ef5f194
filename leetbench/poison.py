"""Fill the memory an output is likely to be given with NaN before the checked call, so an output element a
method never writes shows up as NaN instead of passing as a stale or zero value (docs/design.md §4).

GPU: a block of the free memory is taken from torch's caching allocator, filled with NaN and released to
that allocator's cache, where the method's next allocations (torch's, and CuPy's routed through torch) find
it. CPU: glibc serves allocations below its mmap threshold (raised to its 32 MB maximum here) from its heap,
so a NaN-filled block released to that heap is what the next similar allocation gets; larger CPU outputs
come from fresh zero pages, and the per-head max_err check (verdict.py) catches unwritten parts there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

_GLIBC_MMAP_MAX = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.lru_cache(maxsize=1)
def _keep_heap() -> bool:
    """Ask glibc to serve allocations up to 32 MB from its heap and not to hand freed memory back."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_MAX)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def poison(device: torch.device, nbytes: int) -> None:
    """Leave about `nbytes` of NaN where the next allocations on `device` will come from."""
    if nbytes <= 0:
        return
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        size = min(int(nbytes), int(free * 0.9)) // 4
        if size > 0:
            torch.full((size,), float("nan"), dtype=torch.float32, device=device)
        return
    if _keep_heap():
        # several blocks of a few sizes, so allocations of different sizes each find a NaN-filled one
        blocks = [torch.full((max(1, min(nbytes, _GLIBC_MMAP_MAX - 4096) // 4 // d),), float("nan"))
                  for d in (1, 1, 2, 4)]
        del blocks
