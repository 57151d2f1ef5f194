"""Seeded inputs of a problem (docs/design.md §2), and the sign flips that give timed calls known answers.

Where the draws happen:
- on a GPU, from a seeded generator on that device, in float32, rounded to the problem's dtype one batch
  element at a time: identical for every method of a problem and reproducible for a given seed on the same
  kind of GPU (torch's CUDA generator may lay numbers out differently on another model), and cheap enough to
  draw afresh for every method, so the harness never keeps a pristine copy;
- on the CPU, in float32 from a CPU generator (the same numbers on every machine), then rounded; these draws
  are kept (`Draws`) and every method gets inputs made from them.

q, k and v are unit normal (c·q·k is O(1)). A prefill initial state, when asked for, is normal with standard
deviation 1/sqrt(D). In decode mode the initial state is the exact float64 state that a seeded prefix of
`length` tokens leaves, rounded to the state dtype (float32, or float64 for float64 problems).

The operator is linear in q and jointly in (v, S0): negating q negates o; negating v and S0 negates o and the
final state. `Signs` walks the four sign states by negating one tensor in place between calls, so every
call's exact answer is ±reference while each call sees new contents in the same tensors (a method that skips
work, memoises, or caches by tensor identity returns the answer of another sign).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from leetbench.problem import Inputs, Problem
from leetbench.reference import prefix_state, working_bytes


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Models carry the state in float32 for low-precision inputs (float64 for float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_dtype(dtype: str) -> torch.dtype:
    """The stored reference output's dtype: float64, or float32 for 16-bit problems (its rounding, 6e-8, is 1e4×
    below their errors)."""
    return torch.float32 if dtype in ("float16", "bfloat16") else torch.float64


def _token_counts(p: Problem) -> tuple[int, int]:
    """(tokens with outputs, prefix tokens folded into the initial state)."""
    return (p.steps, p.length) if p.mode == "decode" else (p.length, 0)


@dataclass
class Draws:
    """Float32 draws of one problem's random numbers (the CPU path keeps them between methods)."""

    key: tuple
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def draw_key(p: Problem) -> tuple:
    """What the draws depend on: problems differing only in dtype or decay share them."""
    return (p.batch, p.heads, p.length, p.dim, p.E, p.seed, p.initial_state, p.mode, p.steps, p.device)


def _draw_cpu(p: Problem) -> Draws:
    gen = torch.Generator(device="cpu").manual_seed(p.seed)
    B, H, D, E = p.batch, p.heads, p.dim, p.E
    n, prefix = _token_counts(p)
    t = {"q": torch.randn(B, H, n, D, generator=gen), "k": torch.randn(B, H, n, D, generator=gen),
         "v": torch.randn(B, H, n, E, generator=gen)}
    if prefix:
        t["k_prefix"] = torch.randn(B, H, prefix, D, generator=gen)
        t["v_prefix"] = torch.randn(B, H, prefix, E, generator=gen)
    elif p.initial_state:
        t["s0"] = torch.randn(B, H, D, E, generator=gen) * (D ** -0.5)
    return Draws(draw_key(p), t)


def _randn_as(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
              scale: float = 1.0) -> torch.Tensor:
    """Unit normal float32 numbers rounded to `dtype`, drawn one leading slice at a time (bounded scratch)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    for b in range(shape[0]):
        x = torch.randn(shape[1:], generator=gen, device=device, dtype=torch.float32)
        out[b] = x.mul_(scale) if scale != 1.0 else x
    return out


def _device_inputs(p: Problem, device: torch.device) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(p.seed)
    B, H, D, E = p.batch, p.heads, p.dim, p.E
    n, prefix = _token_counts(p)
    dt = p.torch_dtype
    q, k, v = (_randn_as(gen, (B, H, n, x), dt, device) for x in (D, D, E))
    decay = p.decay_values(device)
    s0 = None
    if prefix:
        kp, vp = (_randn_as(gen, (B, H, prefix, x), dt, device) for x in (D, E))
        s0 = prefix_state(kp, vp, decay).to(state_dtype(dt))
    elif p.initial_state:
        s0 = _randn_as(gen, (B, H, D, E), torch.float32, device, D ** -0.5).to(state_dtype(dt))
    return Inputs(q, k, v, decay, p.scale, s0)


def _inputs_from(p: Problem, draws: Draws, device: torch.device) -> Inputs:
    dt = p.torch_dtype
    # a copy always (never the kept draw itself: the harness changes inputs in place)
    to = lambda t: t.to(dtype=dt, copy=True).to(device)  # noqa: E731 - round on the CPU, then move
    d = draws.tensors
    decay = p.decay_values(device)
    s0 = d.get("s0")
    if "k_prefix" in d:
        s0 = prefix_state(to(d["k_prefix"]), to(d["v_prefix"]), decay)
    return Inputs(q=to(d["q"]), k=to(d["k"]), v=to(d["v"]), decay=decay, scale=p.scale,
                  initial_state=None if s0 is None else s0.to(dtype=state_dtype(dt), copy=True).to(device))


def make_inputs(p: Problem, device: str | torch.device | None = None, draws: Draws | None = None) -> Inputs:
    """The problem's seeded inputs on `device` (default: the problem's). On the CPU, `draws` (from `draw`,
    same `draw_key`) saves drawing again."""
    dev = torch.device(device or p.device)
    if dev.type != "cpu":
        return _device_inputs(p, dev)
    if draws is None or draws.key != draw_key(p):
        draws = draw(p)
    return _inputs_from(p, draws, dev)


def draw(p: Problem) -> Draws:
    """The CPU path's float32 draws of a problem (kept by the worker across the problem's methods)."""
    return _draw_cpu(p)


# ---- sign flips ---------------------------------------------------------------------------------------

# The four sign states of (q, v and S0), in the order calls walk them; each step negates one tensor. The
# checked call runs in state 0; the last timed call in `CHECKED_TIMED_STATE`, whose output and final state
# are both negated, so a method returning its first answer again (memoised, cached, or skipping work) is caught.
SIGN_CYCLE = ((1, 1), (1, -1), (-1, -1), (-1, 1))
CHECKED_TIMED_STATE = 1


@dataclass
class Signs:
    """Where a call's inputs stand in the sign cycle; `advance` negates one input tensor in place."""

    inputs: Inputs
    step: int = 0

    @property
    def q_sign(self) -> int:
        return SIGN_CYCLE[self.step % 4][0]

    @property
    def v_sign(self) -> int:
        return SIGN_CYCLE[self.step % 4][1]

    @property
    def output_sign(self) -> int:
        return self.q_sign * self.v_sign

    def describe(self) -> str:
        return f"inputs ({'-' if self.q_sign < 0 else ''}q, k, {'-' if self.v_sign < 0 else ''}v)"

    def advance(self) -> None:
        before = SIGN_CYCLE[self.step % 4]
        self.step += 1
        after = SIGN_CYCLE[self.step % 4]
        x = self.inputs
        if before[0] != after[0]:
            x.q.neg_()
        else:
            x.v.neg_()
            if x.initial_state is not None:
                x.initial_state.neg_()

    def goto(self, state: int) -> None:
        """Move to sign state `state` (an index of SIGN_CYCLE), negating what differs."""
        want = SIGN_CYCLE[state % 4]
        if self.q_sign != want[0]:
            self.inputs.q.neg_()
        if self.v_sign != want[1]:
            self.inputs.v.neg_()
            if self.inputs.initial_state is not None:
                self.inputs.initial_state.neg_()
        self.step = state % 4


# ---- what the harness holds ---------------------------------------------------------------------------

def reference_on_device(p: Problem, device_bytes: float) -> bool:
    """Keep the stored reference on the GPU while it is under a tenth of the card (else pinned host memory,
    whose allocation and streaming cost seconds: B=8, N=65536 (8.6 GB) stays on a 141 GB card)."""
    return p.device == "cpu" or reference_bytes(p) <= 0.10 * device_bytes


def reference_bytes(p: Problem) -> int:
    """The stored reference output (`reference_dtype`) plus the float64 final state."""
    n, _ = _token_counts(p)
    item = reference_dtype(p.dtype).itemsize
    return p.batch * p.heads * (n * p.E * item + 2 * p.dim * p.E * 8)


def input_bytes(p: Problem) -> int:
    n, _ = _token_counts(p)
    item = torch.empty((), dtype=p.torch_dtype).element_size()
    s0 = p.batch * p.heads * p.dim * p.E * (8 if p.dtype == "float64" else 4) if p.has_initial_state else 0
    return p.batch * p.heads * n * (2 * p.dim + p.E) * item + s0


def harness_bytes(p: Problem, device_bytes: float) -> int:
    """The most the harness holds on the problem's device at once (`tests/test_inputs.py` checks it against a
    worker's real allocations): while the reference is made, the inputs, the stored reference and the
    reference's float64 working set; while a method runs, its inputs, the stored reference (when on that
    device) and one output. On the CPU the kept float32 draws are held throughout."""
    n, prefix = _token_counts(p)
    item = torch.empty((), dtype=p.torch_dtype).element_size()
    inputs, ref = input_bytes(p), reference_bytes(p) if reference_on_device(p, device_bytes) else 0
    output = p.batch * p.heads * n * p.E * item
    draws = 0
    if p.device == "cpu":
        draws = 4 * p.batch * p.heads * ((n + prefix) * (p.dim + p.E) + n * p.dim)
        draws += 4 * p.batch * p.heads * p.dim * p.E if p.initial_state else 0
    making_reference = inputs + ref + min(working_bytes(p.device.split(':')[0]), 8 * 3 * inputs)
    running = inputs + ref + output
    return draws + max(making_reference, running)
