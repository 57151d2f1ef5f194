"""Token-by-token recurrence.

    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t,    final state S_N

The literal recurrent form, one token per step with the D×E state carried (in float32 for half-precision
inputs, as models keep it). It is the decode step of a language model applied N times, so it also serves
`decode` problems.

Complexity: O(N · D · E) time, O(D · E) state; N sequential steps (no parallelism over the sequence).
Source: RetNet's recurrent form (Sun et al., 2023, eq. 6); LeetDecoding's `causal_dot_product_torch`.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import start_state
from leetbench.decay import compute_dtype, split_hi_lo


@register(name="recurrent", family="recurrent", complexity="O(N·D·E)", modes=("prefill", "decode"),
          differentiable=True)
def recurrent(q, k, v, decay, *, scale, initial_state=None):
    """One token at a time, state carried."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)
    # λ as hi + lo: a rounded float32 λ near 1, applied N times, would be a different decay
    lam, lam_lo = (x[None, :, None, None] for x in split_hi_lo(decay.to(q.device, torch.float64), acc))
    state = start_state(initial_state, k, v, acc)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    out = torch.empty(B, H, N, E, dtype=acc, device=q.device)
    for t in range(N):
        state = torch.addcmul(torch.addcmul(lam_lo * state, lam, state), ka[:, :, t, :, None], va[:, :, t, None, :])
        out[:, :, t] = (qa[:, :, t, None, :] @ state).squeeze(-2)
    return (out * scale).to(v.dtype), state
