"""Decay attention as a drop-in operator for models, dispatched from the leaderboard.

Per batch b and head h, with q, k ∈ ℝ^{N×D}, v ∈ ℝ^{N×E}, a decay λ_h ∈ (0, 1] and a scale c (D^-½ by default):

    S_t = λ_h · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t        (t = 1..N, S_0 = initial state or 0)

`decay_attention` computes all N outputs (and the final state S_N on request); `decay_attention_step` is one
token of it with the state carried (the decode step of a language model). Both run the route that the
dispatch tables name fastest for the call's device, dtype, precision policy, state in/out, gradient need and
nearest measured shape; `explain` says which one and why (`leetbench.dispatch` has the rules). Without a
table for the device (a CPU, an unmeasured card) they run the PyTorch routes `chunked` and `recurrent`.

Gradients flow to q, k, v and the initial state (when any of them requires grad, only routes registered
`differentiable=True` are chosen); the decay is a constant of the operator and gets none.

Module state: `_default`, the `Dispatcher` used when no `dispatcher=` is given, is created on first use (the
methods and tables are loaded then) and is the only mutable state of this module. `default_dispatcher()`
returns it; `default_dispatcher().reload()` makes it read tables (e.g. after `leetbench tune`) and methods
again. Pass `dispatcher=Dispatcher(tables=[...], methods_dirs=[...])` for tables or routes of your own.
"""

from __future__ import annotations

from typing import Literal, overload

import torch

from leetbench.dispatch import Decision, Dispatcher

Decay = float | str | torch.Tensor  # a λ for every head, a profile name (retnet, multiscale, alibi), or λ [H]

_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The dispatcher behind calls without `dispatcher=`: created on first use, then kept (this module's
    only mutable state)."""
    global _default
    if _default is None:
        _default = Dispatcher()
    return _default


@overload
def decay_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Decay, *, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, output_final_state: Literal[False] = False,
                    allow_tf32: bool | None = None, dispatcher: Dispatcher | None = None) -> torch.Tensor: ...


@overload
def decay_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Decay, *, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, output_final_state: Literal[True],
                    allow_tf32: bool | None = None,
                    dispatcher: Dispatcher | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def decay_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Decay, *, scale: float | None = None,
                    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                    allow_tf32: bool | None = None,
                    dispatcher: Dispatcher | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decay attention over a whole sequence: S_t = λ_h·S_{t-1} + k_tᵀ v_t, o_t = c·q_t S_t.

    q, k: [B, H, N, D]; v: [B, H, N, E], one dtype (float64, float32, float16, bfloat16) on one device.
    decay: a float in (0, 1] for every head, a profile name (`retnet`, `multiscale`, `alibi`), or a float
    tensor [H] (kept on q's device, in float64, to spare a conversion per call; values are checked in (0, 1]
    only for CPU tensors: reading a GPU tensor would synchronize).
    scale: c, default D^-½. initial_state: S_0 [B, H, D, E] or None (zeros); any float dtype, used in float32
    (float64 for float64 inputs), as is the state of a decode step.
    allow_tf32: whether float32 calls may run TF32 routes; default torch.backends.cuda.matmul.allow_tf32.

    Returns o [B, H, N, E] in v's dtype, or with `output_final_state=True` (o, S_N [B, H, D, E]), the state in
    float64 for float64 inputs and float32 otherwise.
    """
    return (dispatcher or default_dispatcher()).attention(
        q, k, v, decay, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        allow_tf32=allow_tf32)


def decay_attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Decay,
                         state: torch.Tensor | None, *, scale: float | None = None, allow_tf32: bool | None = None,
                         dispatcher: Dispatcher | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of decay attention, the decode step: S = λ_h·S + kᵀ v, o = c·q S.

    q, k: [B, H, D]; v: [B, H, E]; state: [B, H, D, E] (None: zeros, the first token). Returns
    (o [B, H, E] in v's dtype, the new state [B, H, D, E], float64 for float64 inputs and float32 otherwise).
    N steps give what one `decay_attention` call over those N tokens gives.
    """
    return (dispatcher or default_dispatcher()).step(q, k, v, decay, state, scale=scale, allow_tf32=allow_tf32)


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Decay, *, scale: float | None = None,
            initial_state: torch.Tensor | None = None, output_final_state: bool = False,
            allow_tf32: bool | None = None, dispatcher: Dispatcher | None = None) -> Decision:
    """Which route a call with these arguments runs, and why: the table, its entry and the shape distance, the
    routes passed over with their reasons, or the fallback's reason. `print(explain(...))` reads as a report.

    4-D q, k, v explain `decay_attention`; 3-D ones explain `decay_attention_step` (`initial_state` is then
    the step's state). Nothing is computed; grad mode and `requires_grad` count as in the call.
    """
    return (dispatcher or default_dispatcher()).explain(
        q, k, v, decay, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        allow_tf32=allow_tf32)
