"""FleetAttention: the output as a sum over key ranks of discounted cumulative sums.

Column r of q and k turns the masked product into D rank-one terms (diag(x) is the diagonal matrix of x):

    O = c · Σ_r diag(Q[:, r]) · M · diag(K[:, r]) · V = c · Σ_r Q[:, r] ⊙ Y_r,
    Y_r[t] = λ·Y_r[t-1] + K[t, r]·V[t],    Y_r[-1] = S0[r]

so every rank is a discounted cumulative sum along t of K[:, r] ⊙ V (an N×E array), and Y_r[N-1] is row r
of the final state. The discounted cumsum runs in blocks (`leetbench.chunking.decayed_cumsum`): an R×R
decay mask inside a block and the same recurrence over block ends, so only in-block powers of λ appear.
Ranks go in groups sized to bound the N×group×E working set. The seed computed the cumsum as
exp(p + logcumsumexp(log x − p)) with p_t = t·log λ: the log of products k·v, negative half the time,
gave NaN, and even for x > 0 the round trip through t·log λ loses about log₁₀(t·|log λ|) digits.

Complexity: O(N·R·D·E) time for cumsum block R (O(N·D·E) for fixed R); O(N·group·E) extra memory.
Source: Wang et al., "LeetDecoding", 2025 (arXiv 2501.02573), FleetAttention; LeetDecoding's
`FleetAttention.py` (torch) and `FleetAttention_triton.py`.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import decayed_cumsum, group_size, start_state
from leetbench.decay import compute_dtype, log_decay

@register(name="fleet_lowrank", family="lowrank", complexity="O(N·R·D·E)", differentiable=True)
def fleet_lowrank(q, k, v, decay, *, scale, initial_state=None, block: int = 16, group: int | None = None):
    """Σ_r q[:, r] ⊙ discounted-cumsum_t(k[:, r] ⊙ v), ranks in groups."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    log_lam = log_decay(decay).to(q.device)
    s0 = start_state(initial_state, k, v, acc)
    group = group or group_size(B * H * N * E, D, q.device)  # ranks at once
    out = torch.zeros(B, H, N, E, dtype=acc, device=q.device)
    final = torch.empty(B, H, D, E, dtype=acc, device=q.device)
    for r0 in range(0, D, group):
        r1 = min(D, r0 + group)
        x = ka[:, :, :, r0:r1, None] * va[:, :, :, None, :]  # [B, H, N, g, E]: K[:, r] ⊙ V per rank
        y = decayed_cumsum(x.reshape(B, H, N, -1), log_lam, s0[:, :, r0:r1].reshape(B, H, -1), block)
        y = y.reshape(B, H, N, r1 - r0, E)
        out += (qa[:, :, :, r0:r1, None] * y).sum(dim=3)
        final[:, :, r0:r1] = y[:, :, -1]
    return (out * scale).to(v.dtype), final
