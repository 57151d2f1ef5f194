"""Block-based route of LeetDecoding: sequential blocks, each split into a diagonal and an off-diagonal part.

The N×N decay-masked score matrix is a block lower-triangular matrix of C×C blocks. For block row g
(queries of block g), with u the state that blocks 0..g-1 leave and i, j positions inside a block:

    diagonal block:      ((Q_g K_gᵀ) ⊙ M) V_g,    M[i, j] = λ^(i-j), j ≤ i
    off-diagonal blocks: Σ_{p<g} ((Q_g K_pᵀ) ⊙ λ^(C(g-p)+i-j)) V_p = (Q_g ⊙ λ^(i+1)) u
    O_g = c · (diagonal + off-diagonal),   then   u ← λ^C u + (K_g ⊙ λ^(C-1-j))ᵀ V_g

since λ^(C(g-p)+i-j) = λ^(i+1) · λ^(C(g-p-1)) · λ^(C-1-j) factors through u = Σ_{p<g} λ^(C(g-p-1)) ·
(K_p ⊙ λ^(C-1-j))ᵀ V_p.

The sequence is zero-padded to whole blocks (zero keys and values add nothing; padded outputs are dropped);
the final state is carried over the last block's r real tokens only.

Compared with the seed (LeetDecoding `BlockBased.py`): it took its `gamma` as a rate λ = exp(-γ) while the
library's dispatcher sometimes passed λ itself (so exp(-λ) was used), accumulated the state in the input
dtype (float16), returned no final state and took no initial state; here λ is λ, the state is float32 or
float64, and S0 enters as the state before block 0.

Complexity: O(N·C·(D+E) + N·D·E) time, ⌈N/C⌉ sequential steps; O(C² + D·E) extra memory per head.
Source: Wang et al., "LeetDecoding: A PyTorch Library for Exponentially Decaying Causal Linear Attention
with CUDA Implementations", 2025 (arXiv 2501.02573), the block-based algorithm; LeetDecoding's `BlockBased`.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import BlockDecay, carry, from_blocks, inter, intra, start_state, tail_size, to_blocks
from leetbench.decay import compute_dtype, log_decay


@register(name="block_based", family="block", complexity="O(N·C·D + N·D·E)", differentiable=True)
def block_based(q, k, v, decay, *, scale, initial_state=None, block: int = 64):
    """Block rows one at a time: diagonal block by masked matmul, the blocks left of it through the state."""
    B, H, N, D = q.shape
    acc = compute_dtype(q.dtype)
    w = BlockDecay.of(log_decay(decay).to(q.device), min(block, N), acc)
    qb, kb, vb = (to_blocks(x.to(acc), w.size) for x in (q, k, v))  # [B, H, G, C, ·]
    G = qb.shape[2]
    u = start_state(initial_state, k, v, acc)
    out = torch.empty(B, H, G, w.size, v.shape[-1], dtype=acc, device=q.device)
    for g in range(G):
        qg, kg, vg = qb[:, :, g], kb[:, :, g], vb[:, :, g]
        out[:, :, g] = intra(qg, kg, vg, w.mask, plus=inter(qg, u, w.into))
        r = w.size if g < G - 1 else tail_size(N, w.size)  # the state sees only the last block's real tokens
        u = carry(u, kg[:, :, :r], vg[:, :, :r], w.tail(r))
    return (from_blocks(out, N) * scale).to(v.dtype), u
