"""Run one method on one problem (in the worker): set it up, call it once and check the output, time it,
then check the output of a timed call too (docs/design.md §4 and §6).

The checked call runs on inputs with NaN left where its output is likely to be allocated (leetbench.poison).
Every later call follows an untimed sign flip of q or of (v, S0) (leetbench.inputs.Signs), so each call has
a known exact answer, ±reference, though the tensors are the same objects; the last timed call's output is
compared with its answer. A method that skips work after its first call, memoises, or caches by tensor
identity returns another sign's answer and is `inaccurate`, with the call that disagreed named.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from leetbench.inputs import (CHECKED_TIMED_STATE, Signs, make_inputs, reference_dtype, reference_on_device,
                              state_dtype)
from leetbench.poison import poison
from leetbench.problem import Inputs, Problem
from leetbench.protocol import Outcome
from leetbench.reference import reference
from leetbench.registry import Method
from leetbench.results import Status
from leetbench.timing import TimingConfig, measure, watch
from leetbench.verdict import Errors, Verdict, errors, judge, tolerance


class OutputError(Exception):
    """A method returned something of the wrong shape, dtype, device or kind."""


@dataclass
class Reference:
    """What checking needs of a problem: its exact output (float64; float32 for 16-bit problems, whose errors
    are 1e4× that rounding; on the device, or in pinned host memory when large) and final state, and in
    decode mode the answer of the timed call (one token from the initial state)."""

    out: torch.Tensor
    state: torch.Tensor
    step_out: torch.Tensor | None = None
    step_state: torch.Tensor | None = None


def build_reference(problem: Problem, inputs: Inputs, device_bytes: float) -> Reference:
    B, H, T, E = inputs.v.shape
    keep = reference_dtype(problem.dtype)
    on_device = reference_on_device(problem, device_bytes)
    store = torch.empty(B, H, T, E, dtype=keep, device=inputs.v.device if on_device else "cpu",
                        pin_memory=not on_device and inputs.v.is_cuda)
    out, state = reference(inputs, out=store)
    ref = Reference(out, state)
    if problem.mode == "decode":
        one = Inputs(inputs.q[:, :, :1], inputs.k[:, :, :1], inputs.v[:, :, :1], inputs.decay, inputs.scale,
                     inputs.initial_state)
        ref.step_out, ref.step_state = reference(one)
    if inputs.v.is_cuda:
        torch.cuda.synchronize(inputs.v.device)
    return ref


def _split(result: Any, expected_o: tuple, expected_s: tuple, like: torch.Tensor,
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
    if o.dtype != like.dtype:
        raise OutputError(f"output dtype: expected {like.dtype}, got {o.dtype}")
    if o.device != like.device:
        raise OutputError(f"output device: expected {like.device}, got {o.device}")
    if state is not None:
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected_s:
            got = list(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise OutputError(f"final state: expected shape {list(expected_s)}, got {got}")
        if state.device != like.device:
            raise OutputError(f"final state device: expected {like.device}, got {state.device}")
    elif need_state:
        raise OutputError("decode mode needs (o, final_state) back, got o alone")
    return o, state


@dataclass
class Calls:
    """The three ways the harness calls a method on a problem's inputs."""

    checked: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]  # the whole problem, validated
    timed: Callable[[], Any]  # what is timed (prefill: the same call; decode: one token step)
    split_timed: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]]  # validate a timed call's result
    prepare: Callable[[], None]  # the method's untimed `prepare=` for the current inputs


def _calls(method: Method, problem: Problem, x: Inputs) -> Calls:
    B, H, D, E = problem.batch, problem.heads, problem.dim, problem.E

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s0: torch.Tensor | None) -> Any:
        return method.fn(q, k, v, x.decay, scale=x.scale, initial_state=s0)

    def prepare() -> None:
        if method.prepare is not None:
            method.prepare(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state)

    if problem.mode != "decode":
        split = lambda r: _split(r, (B, H, problem.length, E), (B, H, D, E), x.v, False)  # noqa: E731
        return Calls(lambda: split(call(x.q, x.k, x.v, x.initial_state)),
                     lambda: call(x.q, x.k, x.v, x.initial_state), split, prepare)

    def token(t: int, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if method.step is None:
            return _split(call(x.q[:, :, t:t + 1], x.k[:, :, t:t + 1], x.v[:, :, t:t + 1], state),
                          (B, H, 1, E), (B, H, D, E), x.v, True)
        if state is None:
            state = torch.zeros(B, H, D, E, dtype=state_dtype(x.v.dtype), device=x.v.device)
        o_t, state = _split(method.step(x.q[:, :, t], x.k[:, :, t], x.v[:, :, t], x.decay, scale=x.scale,
                                        state=state), (B, H, E), (B, H, D, E), x.v, True)
        return o_t.unsqueeze(2), state

    def checked() -> tuple[torch.Tensor, torch.Tensor | None]:
        # with a `step=`, the whole check runs through it (what the dispatcher calls); the timed call is `fn`
        outs, state = [], x.initial_state
        for t in range(problem.steps):
            o_t, state = token(t, state)
            outs.append(o_t)
        return torch.cat(outs, dim=2), state

    q1, k1, v1 = x.q[:, :, :1], x.k[:, :, :1], x.v[:, :, :1]  # views: sign flips of q, v reach them
    split_step = lambda r: _split(r, (B, H, 1, E), (B, H, D, E), x.v, True)  # noqa: E731
    return Calls(checked, lambda: call(q1, k1, v1, x.initial_state), split_step, prepare)


def _check(o: torch.Tensor, state: torch.Tensor | None, ref_o: torch.Tensor, ref_s: torch.Tensor,
           signs: tuple[int, int], tol: float, call: str = "") -> tuple[Verdict, Errors, Errors | None]:
    out_errs = errors(o, ref_o, signs[0])
    state_errs = errors(state, ref_s, signs[1]) if state is not None else None
    return judge(out_errs, tol, state_errs, call), out_errs, state_errs


def _record(outcome: Outcome, out_errs: Errors, state_errs: Errors | None) -> None:
    outcome.rel_err, outcome.max_err = out_errs.rel_err, out_errs.max_err
    outcome.worst_head_rel_err, outcome.worst_head_max_err = out_errs.worst_head_rel_err, out_errs.worst_head_max_err
    if state_errs is not None:
        outcome.state_rel_err, outcome.state_max_err = state_errs.rel_err, state_errs.max_err
        outcome.state_worst_head_rel_err = state_errs.worst_head_rel_err


def run_method(method: Method, problem: Problem, inputs: Inputs | Callable[[], Inputs], ref: Reference,
               timing: TimingConfig | None, tolerances: Mapping[str, float] | None = None,
               on_setup_done: Callable[[], None] | None = None) -> Outcome:
    """Set up, call once and check, then time (keeping every sample) and check the last timed call.

    `inputs` are the method's own: they are changed in place. Given as a function, they are made after the
    method's `setup=` (timed as `prepare_s`): a warm-up call there allocates a full set of inputs of its own,
    and with ours alive beside it a large problem runs out of memory that the method's own calls never need
    (B=8, N=65536, float32: 26 GB more). With `timing=None` only the check is done.
    """
    t0 = time.perf_counter()
    if method.setup is not None:
        method.setup(problem)
    if on_setup_done is not None:
        on_setup_done()
    outcome = Outcome(status=str(Status.OK), setup_s=time.perf_counter() - t0)
    if callable(inputs):
        t0 = time.perf_counter()
        inputs = inputs()
        outcome.prepare_s = time.perf_counter() - t0
    device = inputs.q.device
    calls = _calls(method, problem, inputs)
    tol = tolerance(problem.dtype, method.tf32, tolerances)
    t1 = time.perf_counter()
    calls.prepare()
    poison(device, 2 * inputs.v.numel() * inputs.v.element_size() + (64 << 20))
    first = watch(calls.checked, device)  # also the peak memory and, for slow methods, the cost estimate
    o, state = first.result
    verdict, out_errs, state_errs = _check(o, state, ref.out, ref.state, (1, 1), tol)
    del o, state, first.result
    _record(outcome, out_errs, state_errs)
    outcome.status, outcome.error = str(verdict.status), verdict.message
    outcome.peak_mem_mb, outcome.check_s = first.peak_mem_mb, time.perf_counter() - t1
    if timing is not None:
        _time_and_recheck(outcome, calls, problem, inputs, ref, timing, tol, first.wall_ms)
    return outcome


def _time_and_recheck(outcome: Outcome, calls: Calls, problem: Problem, inputs: Inputs, ref: Reference,
                      timing: TimingConfig, tol: float, first_ms: float) -> None:
    signs = Signs(inputs)

    def between() -> None:
        signs.advance()
        calls.prepare()

    def before_last() -> None:
        signs.goto(CHECKED_TIMED_STATE)
        calls.prepare()

    t0 = time.perf_counter()
    t = measure(calls.timed, inputs.q.device, timing, None if problem.mode == "decode" else first_ms, between,
                before_last)
    outcome.timing_s = time.perf_counter() - t0
    outcome.samples_ms, outcome.measured_s = list(t.samples_ms), sum(t.samples_ms) / 1e3
    outcome.host_samples_ms, outcome.gpu_waited = list(t.host_samples_ms), list(t.gpu_waited)
    o, state = calls.split_timed(t.last_result)
    t.last_result = None
    decode = problem.mode == "decode"
    ref_o, ref_s = (ref.step_out, ref.step_state) if decode else (ref.out, ref.state)
    verdict, _, _ = _check(o, state, ref_o, ref_s, (signs.output_sign, signs.v_sign), tol,
                           call=f"timed call {t.reps} of {t.reps} on {signs.describe()}: ")
    if verdict.status != Status.OK and outcome.status == Status.OK:
        outcome.status, outcome.error = str(verdict.status), (
            verdict.message + " — its first call passed: it skips work, memoises or caches by tensor identity")


def verify(method: Method, problem: Problem, tolerances: Mapping[str, float] | None = None,
           inputs: Inputs | None = None) -> Outcome:
    """Check one method on one problem against a fresh float64 reference, without timing; on the problem's
    seeded inputs, or on `inputs` when given (the reference is computed from a copy of them)."""
    if inputs is None:
        inputs = make_inputs(problem)
    mine = Inputs(inputs.q.clone(), inputs.k.clone(), inputs.v.clone(), inputs.decay.clone(), inputs.scale,
                  None if inputs.initial_state is None else inputs.initial_state.clone())
    ref = build_reference(problem, inputs, math.inf)
    return run_method(method, problem, mine, ref, None, tolerances)


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                "cuda_error_out_of_memory", "cudaerrormemoryallocation")
_CUDA_FATAL_MARKERS = ("illegal memory access", "illegal address", "misaligned address", "unspecified launch failure",
                       "device-side assert", "cuda_error_illegal", "cudaerrorillegaladdress", "launch failure",
                       "an illegal instruction", "cuda_error_launch_failed")


def classify(exc: BaseException) -> tuple[Status, str]:
    """(status, one-line message) for an exception raised while running a method."""
    text = f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split())[:500]
    low = text.lower()
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or any(m in low for m in _OOM_MARKERS):
        return Status.OOM, line
    if any(m in low for m in _CUDA_FATAL_MARKERS):
        return Status.CRASHED, f"CUDA context lost: {line}"
    return Status.ERROR, line
