"""Measurement: quantiles, repetition budgets, CPU timing, peak memory, errors, tolerances, statuses."""

from __future__ import annotations

import math
import time

import pytest
import torch

from leetbench.execute import classify
from leetbench.metrics import Errors, errors, judge, tolerance
from leetbench.timing import TimingConfig, _counts, measure, summarize, watch


def test_summarize_reports_median_and_quantiles() -> None:
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_ms, t.p20_ms, t.p80_ms, t.reps) == (3.0, 1.8, 4.2, 5)


def test_budgets_become_counts() -> None:
    cfg = TimingConfig(warmup_ms=25, rep_ms=100, min_reps=5, max_reps=1000)
    assert _counts(1.0, cfg) == (25, 100)  # 1 ms calls: 25 warm-up, 100 timed
    assert _counts(50.0, cfg) == (1, 5)  # slow calls: at least one warm-up and min_reps
    assert _counts(1e-6, cfg) == (1000, 1000)  # capped


def test_cpu_timing_measures_what_the_call_takes() -> None:
    t = measure(lambda: time.sleep(0.004), "cpu", TimingConfig(warmup_ms=1, rep_ms=30, min_reps=3))
    assert 3.5 < t.median_ms < 30 and t.p20_ms <= t.median_ms <= t.p80_ms and t.reps >= 3


def test_cpu_peak_memory_sees_an_allocation() -> None:
    def alloc() -> None:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        x += 1

    peak = watch(alloc, "cpu").peak_mem_mb
    assert math.isnan(peak) or 40 < peak < 200


def test_errors_and_verdicts() -> None:
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    e = errors(torch.tensor([3.0, 4.5]), ref)
    assert e.rel_err == pytest.approx(0.1) and e.max_err == pytest.approx(0.125)
    assert judge(e, 0.2) == "ok" and judge(e, 0.05) == "inaccurate"
    nan = errors(torch.tensor([float("nan"), 4.0]), ref)
    assert not nan.finite and judge(nan, 1.0) == "inaccurate"
    inf = errors(torch.tensor([float("inf"), 4.0]), ref)
    assert judge(inf, 1.0) == "inaccurate"
    assert judge(Errors(1e-7, 1e-7), 1e-5, state_errs=Errors(1e-3, 1e-3)) == "inaccurate"
    assert errors(torch.zeros(2), torch.zeros(2, dtype=torch.float64)).rel_err == 0.0


def test_tolerances() -> None:
    assert tolerance("float64") == 1e-10 and tolerance("float32") == 1e-5 and tolerance("float32", tf32=True) == 5e-3
    assert tolerance("float16") == 5e-3 and tolerance("bfloat16") == 2e-2
    assert tolerance("float32", overrides={"float32": 1e-4}) == 1e-4


@pytest.mark.parametrize("exc, status", [
    (MemoryError(), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 PB"), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "crashed"),
    (ValueError("bad"), "error"),
])
def test_exceptions_become_statuses(exc: BaseException, status: str) -> None:
    assert classify(exc)[0] == status
