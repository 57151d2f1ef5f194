"""Chunked two-pass form (chunkwise retention, as fla's chunk_simple_gla computes it).

With the sequence cut into G chunks of C tokens, S_in[g] the state entering chunk g and i, j positions
inside a chunk:

    local[g] = Σ_j λ^(C-1-j) k_jᵀ v_j                          (every chunk's own state, all at once)
    S_in[g]  = λ^C S_in[g-1] + local[g-1],   S_in[0] = S0       (exclusive decayed scan over chunks)
    O[g]     = c · ( ((Q Kᵀ) ⊙ M) V  +  (Q ⊙ λ^(i+1)) S_in[g] ),   M[i, j] = λ^(i-j), j ≤ i

All chunks are computed at once; only the scan crosses chunks, and it runs in blocks of chunks
(`leetbench.chunking.incoming_states`), so it forms only λ^C, λ^(C·R), … ≤ 1 and takes log_R(G) levels
instead of G sequential steps. The final state is λ^r S_in[G-1] plus the last chunk's r real tokens.

Complexity: O(N·C·(D+E) + N·D·E) time; O(N·C + (N/C)·D·E) extra memory (scores and chunk states).
Source: Sun et al., "Retentive Network", 2023, eq. 7 (chunkwise recurrent form); Yang et al., "Gated Linear
Attention Transformers with Hardware-Efficient Training", 2024, §3.2 (the chunk form fla implements).
"""

from __future__ import annotations

from leetbench import register
from leetbench.chunking import (BlockDecay, carry, from_blocks, incoming_states, inter, intra, local_state,
                                tail_size, to_blocks)
from leetbench.decay import compute_dtype, log_decay


@register(name="chunked", family="chunked", complexity="O(N·C·D + N·D·E)", differentiable=True)
def chunked(q, k, v, decay, *, scale, initial_state=None, chunk: int = 64):
    """All chunks at once: chunk states, a blocked decayed scan across chunks, then intra + inter."""
    B, H, N, D = q.shape
    acc = compute_dtype(q.dtype)
    C = min(chunk, N)
    log_lam = log_decay(decay).to(q.device)
    w = BlockDecay.of(log_lam, C, acc)
    qc, kc, vc = (to_blocks(x.to(acc), C) for x in (q, k, v))  # [B, H, G, C, ·]
    local = local_state(kc, vc, w.reach)  # [B, H, G, D, E]
    s_in = incoming_states(local, log_lam, C, initial_state)  # [B, H, G, D, E]
    out = intra(qc, kc, vc, w.mask, plus=inter(qc, s_in, w.into))
    # The last chunk may hold r < C real tokens: its state is carried over those r only.
    r = tail_size(N, C)
    final = carry(s_in[:, :, -1], kc[:, :, -1, :r], vc[:, :, -1, :r], w.tail(r))
    return (from_blocks(out, N) * scale).to(v.dtype), final
