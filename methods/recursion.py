"""Divide and conquer: split in halves, the cross term through the left half's decayed state.

For a segment split into a left half L and a right half R of s tokens each (i, j positions inside R):

    O_R  += (Q_R ⊙ λ^(i+1)) S_L                      (every key of L reaches every query of R)
    S_LR  = λ^s S_L + S_R                             (the segment's own state at its end)

recursing on both halves down to leaves of `leaf` tokens, where O = ((Q Kᵀ) ⊙ M) V and
S = Σ_j λ^(leaf-1-j) k_jᵀ v_j. The recursion is evaluated bottom-up, one level at a time for all segments
of the level at once (log₂(N/leaf) levels, no Python recursion over 2N/leaf nodes). The sequence is
right-aligned: zero tokens pad it at the front to whole leaves, and a zero segment is put in front of a
level with an odd count, so every split is into equal halves. The initial state is the left half of the
outermost split: O += (Q ⊙ λ^(t+1)) S0 and S_N = λ^N S0 + S.

Each level costs N/2 · D·E for the cross terms, hence O(N log N): not linear, as the LeetDecoding paper
shows for its recursion. The seed (`Recursion.py`) rebuilt each left state from its keys at every node and
did not pass `min_seq_len` to its recursive calls (below the top, leaves of 4 tokens, not the 32 asked for).

Complexity: O(N·log(N/L)·D·E + N·L·(D+E)) time for leaf size L; O(N·(D+E) + (N/L)·D·E) extra memory.
Source: Wang et al., "LeetDecoding", 2025 (arXiv 2501.02573), the recursion algorithm and its O(N log N)
analysis; LeetDecoding's `Recursion.recursive_infer_with_decay`.
"""

from __future__ import annotations

from leetbench import register
from leetbench.chunking import BlockDecay, inter, intra, local_state, pad_front, start_state, to_blocks
from leetbench.decay import block_decay, compute_dtype, decay_powers, log_decay


@register(name="recursion", family="divide_conquer", complexity="O(N·log N·D·E)", differentiable=True)
def recursion(q, k, v, decay, *, scale, initial_state=None, leaf: int = 64):
    """Halves merged level by level: right half += left state; state = λ^s·left + right."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)
    log_lam = log_decay(decay).to(q.device)
    size = min(leaf, N)
    w = BlockDecay.of(log_lam, size, acc)
    front = (-N) % size
    qs, ks, vs = (to_blocks(pad_front(x.to(acc), front), size) for x in (q, k, v))  # [B, H, G, L, ·]
    out = intra(qs, ks, vs, w.mask)  # the leaves
    state = local_state(ks, vs, w.reach)  # [B, H, G, D, E]: each segment's own state at its end
    while qs.shape[2] > 1:
        if qs.shape[2] % 2:  # an odd count: a zero segment in front keeps every split into equal halves
            qs, out, state = pad_front(qs, 1), pad_front(out, 1), pad_front(state, 1)
        G = qs.shape[2] // 2
        qs = qs.reshape(B, H, G, 2 * size, D)
        out = out.reshape(B, H, G, 2 * size, E)
        pair = state.reshape(B, H, G, 2, D, E)
        left, right = pair[:, :, :, 0], pair[:, :, :, 1]
        out[:, :, :, size:] += inter(qs[:, :, :, size:], left, decay_powers(log_lam, size, start=1, dtype=acc))
        state = block_decay(log_lam, size, acc)[None, :, None, None, None] * left + right
        size *= 2
    out = out.reshape(B, H, -1, E)[:, :, -N:]
    state = state[:, :, 0]
    if initial_state is not None:
        s0 = start_state(initial_state, k, v, acc)
        out = out + inter(q.to(acc), s0, decay_powers(log_lam, N, start=1, dtype=acc))
        state = block_decay(log_lam, N, acc)[None, :, None, None] * s0 + state
    return (out * scale).to(v.dtype), state
