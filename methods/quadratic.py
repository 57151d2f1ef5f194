"""Quadratic masked parallel form.

    O = c · ((Q Kᵀ) ⊙ M) V + c · diag(λ^(t+1)) Q S0,    M[t, s] = λ^(t-s) for s ≤ t, else 0

Row blocks of `block` queries are taken one at a time: each forms its [block, t_end] slice of the decayed
score matrix (with `leetbench.decay` helpers, never λ^(-s)), so memory stays O(block · N) rather than
O(N²), and no N×N mask is ever built. The final state is λ^N S0 + Σ_s λ^(N-1-s) k_sᵀ v_s.

Complexity: O(N² · (D + E)) time, O(block · N) extra memory.
Source: the parallel form of retention (Sun et al., "Retentive Network", 2023, eq. 5); LeetDecoding's
`linear_attn` ("vanilla").
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.decay import compute_dtype, decay_powers, log_decay


@register(name="quadratic", family="quadratic", complexity="O(N²·D)", differentiable=True)
def quadratic(q, k, v, decay, *, scale, initial_state=None, block: int = 256):
    """Masked parallel form, one block of query rows at a time."""
    B, H, N, D = q.shape
    acc = compute_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    log_lam = log_decay(decay).to(q.device)
    out = torch.empty(B, H, N, v.shape[-1], dtype=acc, device=q.device)
    pos = torch.arange(N, device=q.device, dtype=torch.float64)
    for t0 in range(0, N, block):
        t1 = min(N, t0 + block)
        diff = pos[t0:t1, None] - pos[None, :t1]  # t - s, for s < t1
        weight = torch.exp(log_lam[:, None, None] * diff.clamp(min=0)) * (diff >= 0)
        scores = (qa[:, :, t0:t1] @ ka[:, :, :t1].transpose(-1, -2)) * weight.to(acc)
        out[:, :, t0:t1] = scores @ va[:, :, :t1]
    reach = decay_powers(log_lam, N, reverse=True, dtype=acc)  # λ^(N-1-s)
    state = (ka * reach[None, :, :, None]).transpose(-1, -2) @ va
    if initial_state is not None:
        s0 = initial_state.to(acc)
        into = decay_powers(log_lam, N, start=1, dtype=acc)  # λ^(t+1)
        out += into[None, :, :, None] * (qa @ s0)
        state = state + torch.exp(log_lam * N).to(acc)[None, :, None, None] * s0
    return (out * scale).to(v.dtype), state
