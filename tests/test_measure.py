"""Measurement: quantiles, repetition budgets, CPU timing, host time and host-bound rows (GPU timing on a GPU),
peak memory, errors, tolerances, statuses."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from leetbench.config import RunSettings
from leetbench.discovery import Catalog, MethodInfo
from leetbench.execute import build_reference, classify, run_method
from leetbench.inputs import make_inputs
from leetbench.problem import Inputs, Problem
from leetbench.protocol import Outcome, decode, encode
from leetbench.reference import reference
from leetbench.registry import Method
from leetbench.results import HOST_BOUND, host_bound
from leetbench.runner import Runner, combine
from leetbench.stats import compare_samples, median_ci, median_ci_one, summarize
from leetbench.timing import TimingConfig, _counts, measure, watch
from leetbench.verdict import MAX_ERR_FACTOR, Errors, errors, judge, tolerance


def test_summarize_reports_median_quantiles_and_an_interval() -> None:
    t = summarize([[5.0, 1.0, 3.0, 2.0, 4.0]])
    assert (t.median_ms, t.p20_ms, t.p80_ms, t.reps, t.rounds) == (3.0, 1.8, 4.2, 5, 1)
    assert (t.lo_ms, t.hi_ms) == (1.0, 5.0)  # five samples: the order-statistic interval is the range


def test_median_interval_covers_the_median_and_narrows_with_samples() -> None:
    lo, hi = median_ci_one(list(range(1, 101)))
    assert lo < 50.5 < hi and hi - lo < 25
    assert median_ci_one([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == (2.0, 9.0)  # the textbook pair
    # rounds that disagree (an autotuner's choice per process) widen the interval past each round's own
    one_round = median_ci([[1.0, 1.01, 1.02] * 10])
    rounds = median_ci([[1.0, 1.01, 1.02] * 10, [1.5, 1.51, 1.52] * 10, [1.0, 1.01] * 10])
    assert rounds[1] - rounds[0] > 10 * (one_round[1] - one_round[0])


def test_a_change_is_called_only_past_the_threshold_and_the_noise() -> None:
    rng = torch.Generator().manual_seed(0)
    base = (1 + 0.05 * torch.randn(40, generator=rng)).tolist()
    same = (1 + 0.05 * torch.randn(40, generator=rng)).tolist()
    assert compare_samples(base, same).verdict == "same"
    assert compare_samples(base, [5 * x for x in same]).verdict == "slower"
    assert compare_samples(base, [x / 5 for x in same]).verdict == "faster"
    assert compare_samples(base, [1.05 * x for x in same]).verdict == "same"  # 5%: under the 10% threshold


def test_budgets_become_counts() -> None:
    cfg = TimingConfig(warmup_ms=25, rep_ms=100, min_reps=10, max_reps=1000)
    assert _counts(1.0, cfg) == (25, 100)  # 1 ms calls: 25 warm-up, 100 timed
    assert _counts(50.0, cfg) == (1, 10)  # slow calls: still one untimed call after the checked one, min_reps
    assert _counts(1e-6, cfg) == (1000, 1000)  # capped
    assert TimingConfig().min_reps >= 10


def test_cpu_timing_measures_what_the_call_takes_and_runs_between_untimed() -> None:
    calls = []
    t = measure(lambda: time.sleep(0.004), "cpu", TimingConfig(warmup_ms=1, rep_ms=30, min_reps=3),
                between=lambda: (calls.append(1), time.sleep(0.02)))
    assert 3.5 < t.median_ms < 15 and t.reps >= 3 and len(t.samples_ms) == t.reps  # the 20 ms never counted
    assert len(calls) >= t.reps + 1  # before every timed call and the warm-up
    assert t.host_samples_ms == []  # on the CPU the samples are host time already


@pytest.mark.parametrize("gpu_waited, bound", [
    (1.0, True), (HOST_BOUND, True), (0.9, True),  # the GPU waited for the host in most calls
    (0.0, False), (0.49, False),  # the host issued the calls ahead of the GPU
    (math.nan, False), (None, False), ("", False),  # the CPU, rows from before the column
])
def test_host_bound(gpu_waited: float, bound: bool) -> None:
    assert host_bound(gpu_waited) is bound


def test_a_rows_host_ms_is_the_median_of_every_rounds_host_samples(tmp_path: Path) -> None:
    """Host samples travel the worker protocol, are pooled over rounds, and their median is the row's host_ms."""
    rounds = [Outcome("ok", samples_ms=[1.0] * 3, host_samples_ms=[0.2, 0.3, 0.4], gpu_waited=[True, False, False]),
              Outcome("ok", samples_ms=[1.1] * 2, host_samples_ms=[0.9, 1.0], gpu_waited=[True, True])]
    rounds = [decode(encode(o)) for o in rounds]
    catalog = Catalog(methods={"m": MethodInfo("m", "f", "O(N)", False, "m.py", "abc")})
    runner = Runner([], ["m"], catalog, RunSettings(out=tmp_path, device="cpu"), SimpleNamespace(ready=None))
    row = runner._row("m", Problem(1, 2, 64, 16), combine(rounds), [o.samples_ms for o in rounds])
    assert row.host_ms == 0.4 and row.gpu_waited == 0.6 and row.rounds == 2 and row.reps == 5
    cpu = runner._row("m", Problem(1, 2, 64, 16), combine([Outcome("ok", samples_ms=[1.0])]), [[1.0]])
    assert math.isnan(cpu.host_ms) and math.isnan(cpu.gpu_waited) and cpu.time_ms == 1.0


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
    assert judge(e, 0.2).status == "ok" and judge(e, 0.05).status == "inaccurate"
    assert errors(torch.tensor([-3.0, -4.5]), ref, sign=-1).rel_err == pytest.approx(0.1)  # against −ref
    nan = errors(torch.tensor([float("nan"), 4.0]), ref)
    assert not nan.finite and judge(nan, 1.0).status == "inaccurate" and "NaN" in judge(nan, 1.0).message
    inf = errors(torch.tensor([float("inf"), 4.0]), ref)
    assert judge(inf, 1.0).status == "inaccurate"
    ok, bad = Errors(1e-7, 1e-7, 1e-7, 1e-7), Errors(1e-3, 1e-3, 1e-3, 1e-3)
    assert judge(ok, 1e-5, state=bad).status == "inaccurate" and "final state" in judge(ok, 1e-5, state=bad).message
    assert errors(torch.zeros(2), torch.zeros(2, dtype=torch.float64)).rel_err == 0.0


def test_the_worst_head_decides_not_the_global_norm() -> None:
    """Heads whose energies differ 100×: one head off by 5e-5 hides at 5e-6 in the global norm."""
    ref = torch.randn(1, 4, 64, 8, dtype=torch.float64) * torch.tensor([1.0, 10.0, 10.0, 10.0],
                                                                        dtype=torch.float64)[None, :, None, None]
    out = ref.clone()
    out[:, 0] *= 1 + 5e-5
    e = errors(out.float(), ref)
    assert e.rel_err < 1e-5 < e.worst_head_rel_err == pytest.approx(5e-5, rel=0.05)
    assert judge(e, 1e-5).status == "inaccurate" and "worst (batch, head)" in judge(e, 1e-5).message


def test_a_few_far_off_elements_fail_by_max_err() -> None:
    """One zeroed token of 16384 at bf16 tolerance: its norm share is small, its max error is not."""
    ref = torch.randn(1, 1, 16384, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = ref.clone()
    out[:, :, -1] = 0
    e = errors(out, ref)
    assert e.worst_head_rel_err < tolerance("bfloat16") < e.worst_head_max_err / MAX_ERR_FACTOR
    assert judge(e, tolerance("bfloat16")).status == "inaccurate"


def test_tolerances() -> None:
    assert tolerance("float64") == 1e-10 and tolerance("float32") == 1e-5 and tolerance("float32", tf32=True) == 5e-3
    assert tolerance("float16") == 5e-3 and tolerance("bfloat16") == 2e-2
    assert tolerance("float32", overrides={"float32": 1e-4}) == 1e-4


QUICK = TimingConfig(warmup_ms=5, rep_ms=30, min_reps=10, max_reps=50)


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
           initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    o, state = reference(Inputs(q, k, v, decay, scale, initial_state))
    return o.to(v.dtype), state.to(torch.float32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_the_worker_reports_a_host_sample_per_timed_call_on_a_gpu_and_none_on_the_cpu(device: str) -> None:
    problem = Problem(1, 2, 64, 16, device=device)
    inputs = make_inputs(problem)
    ref = build_reference(problem, inputs, math.inf)
    out = run_method(Method("exact", _exact), problem, inputs, ref, TimingConfig(warmup_ms=1, rep_ms=5, max_reps=20))
    assert out.status == "ok" and len(out.samples_ms) >= 10, out.error
    expected = len(out.samples_ms) if device == "cuda" else 0
    assert len(out.host_samples_ms) == len(out.gpu_waited) == expected


def test_the_worker_makes_a_methods_inputs_after_its_setup(monkeypatch) -> None:
    """A warm-up in `setup=` holds a full set of inputs of its own: the harness's must not be alive beside it
    (B=8, N=65536, float32 ran out of memory in Mamba-2's warm-up that way)."""
    import leetbench.worker as worker_mod
    from leetbench.protocol import Prepare, Run

    problem, events = Problem(1, 2, 64, 16), []
    real = worker_mod.make_inputs
    monkeypatch.setattr(worker_mod, "make_inputs", lambda *a, **kw: (events.append("inputs"), real(*a, **kw))[1])
    w = worker_mod.Worker()
    w.registry = {"exact": Method("exact", _exact, setup=lambda p: events.append("setup"))}
    w.env.mem_total_bytes = 1e12
    w.prepare(Prepare(problem.as_dict()))
    events.clear()  # the reference's inputs
    out = w.run(Run("exact", dict(warmup_ms=1, rep_ms=5, max_reps=20)))
    assert events == ["setup", "inputs"] and out.status == "ok", (events, out.error)
    assert out.prepare_s >= 0 and out.setup_s >= 0
    made = make_inputs(problem)  # given made, run_method uses them as they are and times no making
    ref = build_reference(problem, make_inputs(problem), math.inf)
    assert math.isnan(run_method(Method("exact", _exact), problem, made, ref, None).prepare_s)


@pytest.mark.gpu
@pytest.mark.alone  # another process's kernels on the GPU delay its start events (waited 0.1 beside 8 others)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_call_the_host_holds_up_is_host_bound() -> None:
    """1 ms of host work before one tiny kernel: the GPU waits inside the event pair, the time is the host's."""
    x = torch.zeros(16, device="cuda")

    def call() -> torch.Tensor:
        time.sleep(1e-3)
        return x.add_(1)

    call()
    t = measure(call, "cuda", QUICK)
    waited = sum(t.gpu_waited) / len(t.gpu_waited)
    assert len(t.host_samples_ms) == len(t.gpu_waited) == t.reps >= 10 and min(t.host_samples_ms) >= 0.99
    assert host_bound(waited) and waited > 0.9, (t.median_ms, waited)


@pytest.mark.gpu
@pytest.mark.alone
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_bound_call_is_not_host_bound() -> None:
    """Four 4096² float32 matrix products (milliseconds of GPU): issuing them takes the host microseconds."""
    a = torch.randn(4096, 4096, device="cuda") / 64  # entries stay O(1/64) through the products

    def call() -> torch.Tensor:
        c = a @ a
        for _ in range(3):
            c = c @ a
        return c

    call()
    t = measure(call, "cuda", QUICK)
    host, waited = statistics.median(t.host_samples_ms), sum(t.gpu_waited) / len(t.gpu_waited)
    assert len(t.host_samples_ms) == t.reps and t.median_ms > 0.5
    assert host < 0.1 * t.median_ms and not host_bound(waited), (t.median_ms, host, waited)


@pytest.mark.gpu
@pytest.mark.alone
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_bound_call_that_fills_the_launch_queue_is_not_host_bound() -> None:
    """Many small kernels per call, many calls: the host runs ahead until the launch queue is full and then
    waits for the GPU, so its time per call approaches the GPU's — yet the GPU never waited for the host."""
    x = torch.randn(1 << 25, device="cuda")  # 128 MB: each product about 60 µs of GPU, 40 of them a call

    def call() -> torch.Tensor:
        y = x
        for _ in range(40):
            y = y * 1.0001
        return y

    call()
    t = measure(call, "cuda", TimingConfig(warmup_ms=5, rep_ms=300, min_reps=300, max_reps=600))
    waited = sum(t.gpu_waited) / len(t.gpu_waited)
    assert not host_bound(waited), (t.median_ms, statistics.median(t.host_samples_ms), waited)


@pytest.mark.parametrize("exc, status", [
    (MemoryError(), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 PB"), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "crashed"),
    (ValueError("bad"), "error"),
])
def test_exceptions_become_statuses(exc: BaseException, status: str) -> None:
    assert classify(exc)[0] == status
