"""Run one method on one problem: call it, check its output against the reference, time it.

This is what a worker process does for each (method, problem); everything that can go wrong raises, and
`classify` turns an exception into a row status (`error`, `oom`, or `crashed` for a broken CUDA context).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

from leetbench.metrics import Errors, errors, judge, tolerance
from leetbench.problem import Inputs, Problem
from leetbench.registry import Method
from leetbench.timing import TimingConfig, measure, watch


class OutputError(Exception):
    """A method returned something of the wrong shape, dtype, device or kind."""


@dataclass
class Outcome:
    status: str
    rel_err: float = math.nan
    max_err: float = math.nan
    state_rel_err: float = math.nan
    state_max_err: float = math.nan
    time_ms: float = math.nan
    time_ms_p20: float = math.nan
    time_ms_p80: float = math.nan
    reps: int = 0
    peak_mem_mb: float = math.nan
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(result: Any, expected_o: tuple, expected_s: tuple, inputs: Inputs,
           need_state: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise OutputError(f"expected o or (o, final_state), got a {type(result).__name__} of {len(result)}")
        o, state = result
    else:
        o, state = result, None
    if not isinstance(o, torch.Tensor):
        raise OutputError(f"expected a torch.Tensor output, got {type(o).__name__}")
    if tuple(o.shape) != expected_o:
        raise OutputError(f"output shape: expected {list(expected_o)}, got {list(o.shape)}")
    if o.dtype != inputs.v.dtype:
        raise OutputError(f"output dtype: expected {inputs.v.dtype}, got {o.dtype}")
    if o.device != inputs.v.device:
        raise OutputError(f"output device: expected {inputs.v.device}, got {o.device}")
    if state is not None:
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected_s:
            got = list(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise OutputError(f"final state: expected shape {list(expected_s)}, got {got}")
        if state.device != inputs.v.device:
            raise OutputError(f"final state device: expected {inputs.v.device}, got {state.device}")
    elif need_state:
        raise OutputError("decode mode needs (o, final_state) back, got o alone")
    return o, state


def run_method(method: Method, problem: Problem, inputs: Inputs, ref: tuple[torch.Tensor, torch.Tensor],
               timing: TimingConfig | None, tolerances: Mapping[str, float] | None = None,
               on_setup_done: Callable[[], None] | None = None) -> Outcome:
    """Set up, call once and check, then time and take the peak memory of one method on one problem.

    `on_setup_done` is called once `setup=` has returned (it may compile or autotune kernels, so the runner
    gives it its own time limit). With `timing=None` only the check is done (tests use this).
    """
    device = inputs.q.device
    B, H, D, E = problem.batch, problem.heads, problem.dim, problem.E
    if method.setup is not None:
        method.setup(problem)
    if on_setup_done is not None:
        on_setup_done()
    decode = problem.mode == "decode"
    fn = method.fn

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s0: torch.Tensor | None) -> Any:
        return fn(q, k, v, inputs.decay, scale=inputs.scale, initial_state=s0)

    if decode:
        def checked() -> tuple[torch.Tensor, torch.Tensor | None]:
            outs, state = [], inputs.initial_state
            for t in range(problem.steps):
                o_t, state = _split(call(inputs.q[:, :, t:t + 1], inputs.k[:, :, t:t + 1], inputs.v[:, :, t:t + 1],
                                         state), (B, H, 1, E), (B, H, D, E), inputs, True)
                outs.append(o_t)
            return torch.cat(outs, dim=2), state

        q1, k1, v1 = inputs.q[:, :, :1], inputs.k[:, :, :1], inputs.v[:, :, :1]
        timed: Callable[[], Any] = lambda: call(q1, k1, v1, inputs.initial_state)  # noqa: E731 - one token
    else:
        def checked() -> tuple[torch.Tensor, torch.Tensor | None]:
            return _split(call(inputs.q, inputs.k, inputs.v, inputs.initial_state),
                          (B, H, problem.length, E), (B, H, D, E), inputs, False)

        timed = lambda: call(inputs.q, inputs.k, inputs.v, inputs.initial_state)  # noqa: E731
    # The checked call is also where the peak memory is taken (in decode: over all steps) and, for a slow
    # method, the estimate of its cost.
    first = watch(checked, device)
    o, state = first.result
    errs = errors(o, ref[0])
    state_errs: Errors | None = errors(state, ref[1]) if state is not None else None
    del o, state
    tol = tolerance(problem.dtype, method.tf32, tolerances)
    status = judge(errs, tol, state_errs)
    message = ""
    if status == "inaccurate":
        worst = errs if state_errs is None or errs.rel_err >= (state_errs.rel_err or 0) else state_errs
        what = "output" if worst is errs else "final state"
        message = (f"{what} rel_err {worst.rel_err:.3g} above tolerance {tol:.3g}" if worst.finite
                   else f"{what} has NaN or Inf")
    outcome = Outcome(
        status=status, rel_err=errs.rel_err, max_err=errs.max_err,
        state_rel_err=state_errs.rel_err if state_errs else math.nan,
        state_max_err=state_errs.max_err if state_errs else math.nan, error=message,
    )
    outcome.peak_mem_mb = first.peak_mem_mb
    if timing is not None:
        t = measure(timed, device, timing, first_call_ms=None if decode else first.wall_ms)
        outcome.time_ms, outcome.time_ms_p20, outcome.time_ms_p80, outcome.reps = t.median_ms, t.p20_ms, t.p80_ms, t.reps
    return outcome


def verify(method: Method, problem: Problem, tolerances: Mapping[str, float] | None = None) -> Outcome:
    """Check one method on one problem against a fresh float64 reference, without timing."""
    from leetbench.reference import reference

    inputs = problem.make_inputs()
    return run_method(method, problem, inputs, reference(inputs), None, tolerances)


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                "cuda_error_out_of_memory", "cudaerrormemoryallocation")
_CUDA_FATAL_MARKERS = ("illegal memory access", "illegal address", "misaligned address", "unspecified launch failure",
                       "device-side assert", "cuda_error_illegal", "cudaerrorillegaladdress", "launch failure",
                       "an illegal instruction", "cuda_error_launch_failed")


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while running a method."""
    text = f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split())[:500]
    low = text.lower()
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or any(m in low for m in _OOM_MARKERS):
        return "oom", line
    if any(m in low for m in _CUDA_FATAL_MARKERS):
        return "crashed", f"CUDA context lost: {line}"
    return "error", line
