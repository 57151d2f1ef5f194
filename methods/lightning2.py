"""Lightning Attention-2 tiling: one pass over blocks, the KV state carried.

For blocks i = 1, 2, … of C tokens (the paper's B), KV the state before block i, Λ = diag(λ, λ², …, λ^C)
and M[s, t] = λ^(s-t) for t ≤ s, Algorithm 1 of the paper computes

    O_intra = ((Q_i K_iᵀ) ⊙ M) V_i
    O_inter = (Λ Q_i) KV
    O_i     = c · (O_intra + O_inter)
    KV      = λ^C KV + (λ^C Λ^(-1) K_i)ᵀ V_i

Its λ^C Λ^(-1) = diag(λ^(C-1-j)) is formed directly as in-block powers (`BlockDecay.reach`), never as
λ^(-j). A last block of m < C tokens uses the first m rows of M and Λ, λ^(m-1-j) and λ^m. Memory beyond
the inputs and output is one block's C×C scores and the D×E state.

Complexity: O(N·C·(D+E) + N·D·E) time, ⌈N/C⌉ sequential steps; O(C² + D·E) extra memory per head.
Source: Qin et al., "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large
Language Models", 2024 (arXiv 2401.04658), Algorithm 1; LeetDecoding's `lightningAttention2_torch`.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import BlockDecay, carry, inter, intra, start_state
from leetbench.decay import compute_dtype, log_decay


@register(name="lightning2", family="lightning", complexity="O(N·C·D + N·D·E)", differentiable=True)
def lightning2(q, k, v, decay, *, scale, initial_state=None, block: int = 128):
    """One pass over blocks: intra by masked matmul, inter through the carried KV state."""
    B, H, N, D = q.shape
    acc = compute_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    w = BlockDecay.of(log_decay(decay).to(q.device), min(block, N), acc)
    kv = start_state(initial_state, k, v, acc)
    out = torch.empty(B, H, N, v.shape[-1], dtype=acc, device=q.device)
    for s in range(0, N, w.size):
        e = min(N, s + w.size)
        wi = w.tail(e - s)
        qi, ki, vi = qa[:, :, s:e], ka[:, :, s:e], va[:, :, s:e]
        out[:, :, s:e] = intra(qi, ki, vi, wi.mask, plus=inter(qi, kv, wi.into))
        kv = carry(kv, ki, vi, wi)
    return (out * scale).to(v.dtype), kv
