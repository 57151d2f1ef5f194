"""Measurement (docs/design.md §6): one timing function, peak memory, the copy bandwidth and the launch floor.

GPU: a CUDA event pair around each call on the current stream, with a write of ≥ 2× the L2 size between
calls (outside the events) so every call starts with a cold cache. CPU: `time.perf_counter` around each
call. Both first estimate the cost of a call, turn the `warmup_ms` / `rep_ms` budgets into counts (at least
one warm-up call, at least `min_reps` timed, at most `max_reps`), and keep every sample; `leetbench.stats`
summarises them (median, p20, p80 as triton's do_bench reports, and an interval of the median).
Before every call a `between` hook runs untimed: the harness flips input signs there (leetbench.inputs).
On the GPU two more things are kept per timed call: the host's time inside it (its enqueue time), and whether
the GPU had already reached the call's start when the host finished issuing it — then the GPU waited for the
host inside the event pair and the sample measures the host (`results.host_bound`). The host time alone
cannot say which side waited: a GPU-bound loop that fills the launch queue also makes the host wait.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    max_reps: int = 1000


@dataclass
class Timing:
    """The timed samples of one measurement, and the result of the last timed call (kept so the harness can
    check it outside the timed region)."""

    samples_ms: list[float]
    last_result: object = None
    # GPU: the host's time inside each timed call (perf_counter around the enqueue, no synchronize), and
    # whether the GPU had reached the call's start event when the host was done issuing it (it waited for the
    # host); both empty on the CPU, whose samples are host time already
    host_samples_ms: list[float] = field(default_factory=list)
    gpu_waited: list[bool] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def reps(self) -> int:
        return len(self.samples_ms)


def _counts(estimate_ms: float, cfg: TimingConfig) -> tuple[int, int]:
    """Warm-up and timed calls for calls of about `estimate_ms`."""
    est = max(estimate_ms, 1e-4)
    warmup = max(1, int(cfg.warmup_ms / est))
    reps = max(cfg.min_reps, math.ceil(cfg.rep_ms / est))
    return min(warmup, cfg.max_reps), min(reps, cfg.max_reps)


def l2_flush_bytes(device: torch.device) -> int:
    """At least 2× the L2 cache, and never under 256 MB (triton's do_bench default)."""
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    return max(2 * l2, 256 * 1024 * 1024)


def _nothing() -> None:
    return None


class _CudaClock:
    """CUDA events on the current stream; `between` runs untimed before each call, then the L2 is flushed
    (after `between`, which may have touched the inputs)."""

    def __init__(self, device: torch.device, between: Callable[[], None], before_last: Callable[[], None]) -> None:
        self.device, self.between, self.before_last = device, between, before_last
        self.flush = torch.empty(l2_flush_bytes(device) // 4, dtype=torch.int32, device=device)
        self.stream = torch.cuda.current_stream(device)

    def estimate(self, fn: Callable[[], object], n: int) -> float:
        """Mean ms of n calls, each timed on its own."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        total = 0.0
        for _ in range(n):
            self.between()
            self.flush.zero_()
            start.record(self.stream)
            fn()
            end.record(self.stream)
            torch.cuda.synchronize(self.device)
            total += start.elapsed_time(end)
        return max(total / n, 1e-4)

    def run(self, fn: Callable[[], object], warmup: int, reps: int) -> Timing:
        for _ in range(warmup):
            self.between()
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        result, host, waited = None, [], []
        for i in range(reps):
            (self.before_last if i == reps - 1 else self.between)()
            self.flush.zero_()
            result = None  # the previous output's memory may serve this call
            starts[i].record(self.stream)
            t0 = time.perf_counter()  # inside the event pair: only the call's own enqueue is host time
            result = fn()
            t1 = time.perf_counter()
            ends[i].record(self.stream)
            host.append((t1 - t0) * 1e3)
            waited.append(starts[i].query())  # outside the pair; True: the GPU was already on this call
        torch.cuda.synchronize(self.device)
        return Timing([s.elapsed_time(e) for s, e in zip(starts, ends)], result, host, waited)


class _CpuClock:
    def __init__(self, between: Callable[[], None], before_last: Callable[[], None]) -> None:
        self.between, self.before_last = between, before_last

    def estimate(self, fn: Callable[[], object], n: int) -> float:
        total = 0.0
        for _ in range(n):
            self.between()
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
        return total * 1e3 / n

    def run(self, fn: Callable[[], object], warmup: int, reps: int) -> Timing:
        for _ in range(warmup):
            self.between()
            fn()
        samples, result = [], None
        for i in range(reps):
            (self.before_last if i == reps - 1 else self.between)()
            result = None
            t0 = time.perf_counter()
            result = fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return Timing(samples, result)


# A call slower than this is estimated from the caller's first call alone: re-estimating it would add
# nothing but time (its compilation and caches were settled by that first call).
SLOW_CALL_MS = 100.0


def measure(fn: Callable[[], object], device: torch.device | str, cfg: TimingConfig,
            first_call_ms: float | None = None, between: Callable[[], None] = _nothing,
            before_last: Callable[[], None] | None = None) -> Timing:
    """Time `fn()` in ms per call, keeping every sample. Call `fn` once beforehand (compilation) and pass how
    long that took as `first_call_ms`, so slow methods are not called more than they need. `between` runs
    untimed before every call, `before_last` (default: `between`) instead of it before the last timed one."""
    device = torch.device(device)
    last = before_last or between
    if device.type == "cuda":
        with torch.cuda.device(device):
            return _measure(_CudaClock(device, between, last), fn, cfg, first_call_ms)
    return _measure(_CpuClock(between, last), fn, cfg, first_call_ms)


def _measure(clock: _CudaClock | _CpuClock, fn: Callable[[], object], cfg: TimingConfig,
             first_call_ms: float | None) -> Timing:
    if first_call_ms is not None and first_call_ms > SLOW_CALL_MS:
        estimate = first_call_ms
    else:
        estimate = clock.estimate(fn, 1)
        if estimate < 10.0:  # cheap calls: a steadier estimate from five
            estimate = clock.estimate(fn, 5)
    warmup, reps = _counts(estimate, cfg)
    return clock.run(fn, warmup, reps)


def launch_floor_ms(device: torch.device | str) -> float:
    """The median time of an empty timed region on this device: no call doing real work is at or below it."""
    return measure(_nothing, device, TimingConfig(warmup_ms=1, rep_ms=5, min_reps=20, max_reps=200)).median_ms


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
    if nbytes is None:  # several times the last-level cache: device memory, not a cache, is measured
        nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    cfg = TimingConfig(warmup_ms=10, rep_ms=50, min_reps=5, max_reps=200)
    t = measure(lambda: dst.copy_(src), device, cfg)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9
