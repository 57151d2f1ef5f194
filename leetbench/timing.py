"""Measurement (DESIGN.md §6): one timing function, peak memory, and the device's copy bandwidth.

GPU: a CUDA event pair around each call on the current stream, with a write of ≥ 2× the L2 size between
calls (outside the events) so every call starts with a cold cache. CPU: `time.perf_counter` around each
call. Both first estimate the cost of a call, turn the `warmup_ms` / `rep_ms` budgets into counts, and run
until both `min_reps` and `rep_ms` are met (capped at `max_reps`); the result is the median and the 20th
and 80th percentiles, as triton's do_bench reports them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 5
    max_reps: int = 1000


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _quantile(sorted_ms: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted samples (numpy's default)."""
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    pos = q * (len(sorted_ms) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> Timing:
    s = sorted(samples_ms)
    return Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), len(s))


def _counts(estimate_ms: float, cfg: TimingConfig) -> tuple[int, int]:
    est = max(estimate_ms, 1e-4)
    warmup = max(1, int(cfg.warmup_ms / est))
    reps = max(cfg.min_reps, math.ceil(cfg.rep_ms / est))
    return min(warmup, cfg.max_reps), min(reps, cfg.max_reps)


def l2_flush_bytes(device: torch.device) -> int:
    """At least 2× the L2 cache, and never under 256 MB (triton's do_bench default)."""
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    return max(2 * l2, 256 * 1024 * 1024)


def time_cuda(fn: Callable[[], object], device: torch.device, cfg: TimingConfig,
              estimate_ms: float | None = None) -> Timing:
    flush = torch.empty(l2_flush_bytes(device) // 4, dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device)

    def cold_calls(n: int) -> float:
        """Mean ms of n calls, each after a cache flush (the flush's own time taken out)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record(stream)
        for _ in range(n):
            flush.zero_()
            fn()
        end.record(stream)
        torch.cuda.synchronize(device)
        return max((start.elapsed_time(end) - n * _time_flush(flush, stream, device)) / n, 1e-4)

    if estimate_ms is None:
        estimate = cold_calls(1)
        if estimate < 10.0:  # cheap calls: a steadier estimate from five
            estimate = cold_calls(5)
        warmup, reps = _counts(estimate, cfg)
    else:
        warmup, reps = 0, _counts(estimate_ms, cfg)[1]
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        starts[i].record(stream)
        fn()
        ends[i].record(stream)
    torch.cuda.synchronize(device)
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


def _time_flush(flush: torch.Tensor, stream, device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    flush.zero_()
    end.record(stream)
    torch.cuda.synchronize(device)
    return start.elapsed_time(end)


def time_cpu(fn: Callable[[], object], cfg: TimingConfig, estimate_ms: float | None = None) -> Timing:
    if estimate_ms is None:
        t0 = time.perf_counter()
        fn()
        estimate_ms = (time.perf_counter() - t0) * 1e3
        warmup, reps = _counts(estimate_ms, cfg)
    else:
        warmup, reps = 0, _counts(estimate_ms, cfg)[1]
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


# A call slower than this is estimated from the caller's first call alone and gets no warm-up: repeating it
# would add nothing but time (its compilation and caches were settled by that first call).
SLOW_CALL_MS = 100.0


def measure(fn: Callable[[], object], device: torch.device | str, cfg: TimingConfig,
            first_call_ms: float | None = None) -> Timing:
    """Median, p20 and p80 of `fn()` in milliseconds. Call `fn` once beforehand (compilation), and pass
    how long that call took as `first_call_ms` so slow methods are not called more than they need."""
    device = torch.device(device)
    slow = first_call_ms is not None and first_call_ms > SLOW_CALL_MS
    if device.type == "cuda":
        with torch.cuda.device(device):
            return time_cuda(fn, device, cfg, first_call_ms if slow else None)
    return time_cpu(fn, cfg, first_call_ms if slow else None)


# ---- peak memory -----------------------------------------------------------------------------------

def _rss_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset the process's resident high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Watched:
    """What `watch` saw of one call: its result, its wall time and the memory it took at its peak."""

    result: object
    wall_ms: float
    peak_mem_mb: float


def watch(fn: Callable[[], object], device: torch.device | str) -> Watched:
    """Call `fn` once (synchronised) and measure its wall time and peak memory above what was allocated
    before it (NaN if unknown).

    GPU: torch's allocator peak (CuPy kernels allocate through torch's allocator, so they count).
    CPU: the rise of the process's resident high-water mark over the call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        wall = (time.perf_counter() - t0) * 1e3
        return Watched(result, wall, max(0, torch.cuda.max_memory_allocated(device) - base) / 1e6)
    reset = _reset_cpu_peak()
    base = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    wall = (time.perf_counter() - t0) * 1e3
    peak = _rss_bytes("VmHWM")
    if not reset or base is None or peak is None:
        return Watched(result, wall, math.nan)
    return Watched(result, wall, max(0, peak - base) / 1e6)



# ---- the device's copy bandwidth --------------------------------------------------------------------

def copy_bandwidth_gbps(device: torch.device | str, nbytes: int | None = None) -> float:
    """Measured device-memory copy bandwidth in GB/s, counting bytes read plus bytes written."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    cfg = TimingConfig(warmup_ms=10, rep_ms=50 if device.type == "cuda" else 200, min_reps=5, max_reps=200)
    t = measure(lambda: dst.copy_(src), device, cfg)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9
