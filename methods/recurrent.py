"""Token-by-token recurrence.

    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t,    final state S_N

The literal recurrent form, one token per step with the D×E state carried (in float32 for half-precision
inputs, as models keep it). It is the decode step of a language model applied N times, so it also serves
`decode` problems; `recurrent_step` is that step on [B, H, D] tensors (the dispatcher's decode route on the CPU).

Complexity: O(N · D · E) time, O(D · E) state; N sequential steps (no parallelism over the sequence).
Source: RetNet's recurrent form (Sun et al., 2023, eq. 6); LeetDecoding's `causal_dot_product_torch`.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import start_state
from leetbench.decay import compute_dtype, split_hi_lo


def _advance(state, lam, lam_lo, k_t, v_t):
    """S ← λ·S + k_tᵀ v_t, with λ = lam + lam_lo (k_t [B,H,D], v_t [B,H,E] in the state's dtype)."""
    return torch.addcmul(torch.addcmul(lam_lo * state, lam, state), k_t[..., :, None], v_t[..., None, :])


def _decay_parts(decay: torch.Tensor, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # λ as hi + lo: a rounded float32 λ near 1, applied N times, would be a different decay
    lam, lam_lo = split_hi_lo(decay.to(device, torch.float64), acc)
    return lam[None, :, None, None], lam_lo[None, :, None, None]


def recurrent_step(q, k, v, decay, *, scale, state):
    """One decode token: q, k [B,H,D], v [B,H,E], state [B,H,D,E] → (o [B,H,E], new state)."""
    acc = compute_dtype(q.dtype)
    lam, lam_lo = _decay_parts(decay, q.device, acc)
    new = _advance(state.to(acc), lam, lam_lo, k.to(acc), v.to(acc))
    o = (q.to(acc)[..., None, :] @ new).squeeze(-2)
    return (o * scale).to(v.dtype), new


@register(name="recurrent", family="recurrent", complexity="O(N·D·E)", modes=("prefill", "decode"),
          differentiable=True, step=recurrent_step)
def recurrent(q, k, v, decay, *, scale, initial_state=None):
    """One token at a time, state carried."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)
    lam, lam_lo = _decay_parts(decay, q.device, acc)
    state = start_state(initial_state, k, v, acc)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    out = torch.empty(B, H, N, E, dtype=acc, device=q.device)
    for t in range(N):
        state = _advance(state, lam, lam_lo, ka[:, :, t], va[:, :, t])
        out[:, :, t] = (qa[:, :, t, None, :] @ state).squeeze(-2)
    return (out * scale).to(v.dtype), state
