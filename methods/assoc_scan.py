"""Parallel associative scan of the state recurrence.

The recurrence S_t = λ S_{t-1} + k_tᵀ v_t is the prefix of pairs (a_t, X_t) = (λ, k_tᵀ v_t) under

    (a₁, X₁) ∘ (a₂, X₂) = (a₁·a₂,  a₂·X₁ + X₂)        (associative; (1, 0) is its identity)

so S_t is the X of (1, S0) ∘ (a_0, X_0) ∘ … ∘ (a_t, X_t), and o_t = c·q_t S_t. Materialising a D×E X per
token for the whole sequence is O(N·D·E) memory, so it runs in three phases over chunks of C tokens:

    1. reduce each chunk to its total (A_g, T_g) by a pairwise tree (Blelloch's up-sweep, log₂ C levels);
    2. scan the totals, with (1, S0) in front, by Hillis-Steele (log₂ G levels): the state entering every
       chunk and, last, the final state;
    3. scan each chunk (Hillis-Steele, log₂ C levels) and combine it with its incoming state.

Phases 1 and 3 take chunks in groups sized to bound memory. The a-products are products of λ ≤ 1, never
divided, so nothing overflows; the sequence is padded to whole chunks with the identity (1, 0), so a
padded tail changes neither outputs nor the final state.

Complexity: O(N·D·E·log N) time (Hillis-Steele does n·log n combines), log-depth in N;
O(group·C·D·E + (N/C)·D·E) extra memory.
Source: Blelloch, "Prefix Sums and Their Applications", 1990; Hillis & Steele, "Data Parallel Algorithms",
1986; Martin & Cundy, "Parallelizing Linear Recurrent Neural Nets over Sequence Length", 2018, §2.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import from_blocks, group_size, start_state, to_blocks
from leetbench.decay import compute_dtype

Pair = tuple[torch.Tensor, torch.Tensor]


def combine(first: Pair, second: Pair) -> Pair:
    """(a₁, X₁) ∘ (a₂, X₂) = (a₁·a₂, a₂·X₁ + X₂): `first` covers the earlier tokens."""
    (a1, x1), (a2, x2) = first, second
    return a1 * a2, torch.addcmul(x2, a2.to(x2.dtype), x1)


def reduce(a: torch.Tensor, x: torch.Tensor, dim: int) -> Pair:
    """The ∘-product of all elements along `dim` (kept, length 1), by a pairwise tree in order."""
    while x.shape[dim] > 1:
        n = x.shape[dim] // 2 * 2
        pa, px = (t.narrow(dim, 0, n).unflatten(dim, (n // 2, 2)) for t in (a, x))  # elements (2i, 2i+1)
        ra, rx = combine((pa.select(dim + 1, 0), px.select(dim + 1, 0)),
                         (pa.select(dim + 1, 1), px.select(dim + 1, 1)))
        if n < x.shape[dim]:  # an odd element out stays last
            ra, rx = torch.cat([ra, a.narrow(dim, n, 1)], dim), torch.cat([rx, x.narrow(dim, n, 1)], dim)
        a, x = ra, rx
    return a, x


def scan(a: torch.Tensor, x: torch.Tensor, dim: int) -> Pair:
    """Inclusive ∘-scan along `dim` by Hillis-Steele: element t becomes (a_0…a_t, X of the prefix)."""
    n, d = x.shape[dim], 1
    while d < n:
        na, nx = combine((a.narrow(dim, 0, n - d), x.narrow(dim, 0, n - d)),
                         (a.narrow(dim, d, n - d), x.narrow(dim, d, n - d)))
        a = torch.cat([a.narrow(dim, 0, d), na], dim)
        x = torch.cat([x.narrow(dim, 0, d), nx], dim)
        d *= 2
    return a, x


@register(name="assoc_scan", family="scan", complexity="O(N·log N·D·E)", differentiable=True)
def assoc_scan(q, k, v, decay, *, scale, initial_state=None, chunk: int = 32):
    """Tree-reduce chunks, Hillis-Steele scan of chunk totals, Hillis-Steele scan inside chunks."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)
    C = min(chunk, N)
    qc, kc, vc = (to_blocks(x.to(acc), C) for x in (q, k, v))  # [B, H, G, C, ·]
    G = qc.shape[2]
    # a_t = λ for real tokens, 1 (the identity's a) for the padding of the last chunk. The a's stay float64:
    # a float32 λ near 1 is a wrong λ, and its error would compound through the products.
    real = (torch.arange(G * C, device=q.device) < N).reshape(G, C)
    lam = decay.to(device=q.device, dtype=torch.float64)
    a = torch.where(real, lam[:, None, None], torch.ones((), dtype=torch.float64, device=q.device))
    a = a[None, :, :, :, None, None]  # [1, H, G, C, 1, 1]
    group = group_size(B * H * C * D * E, G, q.device)  # chunks at once

    def outer(g0: int, g1: int) -> torch.Tensor:  # X_t = k_tᵀ v_t for chunks g0..g1-1: [B, H, g, C, D, E]
        return kc[:, :, g0:g1, :, :, None] * vc[:, :, g0:g1, :, None, :]

    # 1. each chunk's total (A_g, T_g)
    totals = [reduce(a[:, :, g0:g0 + group], outer(g0, g0 + group), dim=3) for g0 in range(0, G, group)]
    a_tot = torch.cat([t[0] for t in totals], dim=2)[:, :, :, 0]  # [1, H, G, 1, 1]
    x_tot = torch.cat([t[1] for t in totals], dim=2)[:, :, :, 0]  # [B, H, G, D, E]
    # 2. (1, S0) ∘ totals, scanned: element g is the state entering chunk g, element G the final state
    s0 = start_state(initial_state, k, v, acc)[:, :, None]
    a_all = torch.cat([torch.ones_like(a_tot[:, :, :1]), a_tot], dim=2)
    _, states = scan(a_all, torch.cat([s0, x_tot], dim=2), dim=2)
    # 3. inside every chunk: S_t = (1, S_in) ∘ scan(chunk)_t, o_t = q_t S_t
    out = torch.empty(B, H, G, C, E, dtype=acc, device=q.device)
    for g0 in range(0, G, group):
        g1 = min(G, g0 + group)
        a_in, x_in = scan(a[:, :, g0:g1], outer(g0, g1), dim=3)
        _, s = combine((torch.ones_like(a_in), states[:, :, g0:g1, None]), (a_in, x_in))
        out[:, :, g0:g1] = (qc[:, :, g0:g1, :, None, :] @ s).squeeze(-2)
    return (from_blocks(out, N) * scale).to(v.dtype), states[:, :, G]
