"""Sequence parallelism for the chunked kernels: cut N into P segments, run them side by side.

When B·H·(E slices) CTAs cannot fill the GPU, the one-pass kernel leaves SMs idle (B=1, H=32: 128 CTAs on
132 SMs, one each, while two per SM run 1.25× the chunks per second). With the sequence cut into P segments
of L tokens (L a multiple of the 64-token chunk, only the last segment shorter):

    pass 1  local[j] = Σ_{t in piece j} λ^(end_j - t) k_tᵀ v_t     every piece's own end state, all in parallel
            (pieces: the first P-1 segments cut into R pieces of L/R tokens each, to fill the GPU)
    pass 2  S ← λ^(L/R) S + local[j] over the pieces (S_0 = S0 or 0); the S before piece p·R enters segment p
    pass 3  the output kernel on every segment from its entering state; the last one's end state is S_N

Only λ^(L/R) ≤ 1 is ever formed (in float64, from log λ), so λ = 1 and λ = 1e-6 are exact cases, and no
negative power appears. This module is the host side: the plan (`split`, `choose_*`) and the orchestration
(`run`) with the three passes as arguments, so that the tests drive it on the CPU with torch stand-ins for the
two kernels (tests/test_segments.py) and ops.py with the CUDA kernels. `scan_states` is pass 2 in torch (the
reference for the CUDA `segment_scan`, and its fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from leetbench.decay import log_decay

CHUNK = 64
# Shortest segment worth a second pass over k, v and two more launches (~5 µs): 4096 tokens are 64 chunks,
# ~0.1 ms of one CTA's work (H200, bf16, D = E = 128).
MIN_SEGMENT = 4096
# Shortest piece of the state pass (its pipeline fill and state store cost ~2 chunks).
MIN_PIECE = 512


@dataclass(frozen=True)
class Segments:
    """N tokens as `count` segments of `length` tokens (the last one 1..length), each cut into `sub` pieces."""

    n: int
    length: int  # L, a multiple of CHUNK·sub
    count: int   # P
    sub: int = 1  # R: pieces per segment in the state pass

    @property
    def piece(self) -> int:
        """Tokens per piece of the state pass (L/R)."""
        return self.length // self.sub

    @property
    def pieces(self) -> int:
        """Pieces whose end states pass 1 computes: every piece before the last segment."""
        return (self.count - 1) * self.sub

    def bounds(self, p: int) -> tuple[int, int]:
        """Token range [start, stop) of segment p (the kernels' Seg: tokens p·L .. min((p+1)·L, N) - 1)."""
        return p * self.length, min((p + 1) * self.length, self.n)

    def piece_bounds(self, j: int) -> tuple[int, int]:
        return j * self.piece, (j + 1) * self.piece


def split(n: int, count: int, sub: int = 1, chunk: int = CHUNK, min_piece: int = MIN_PIECE) -> Segments:
    """`count` segments (fewer if n is short: every segment but the last is full, the last holds ≥ 1 token),
    each cut into at most `sub` pieces of ≥ min_piece tokens (at least one)."""
    count = max(1, count)
    per = -(-n // count)  # tokens per segment before rounding
    sub = max(1, min(sub, per // max(min_piece, chunk)))
    unit = chunk * sub
    length = max(unit, -(-per // unit) * unit)
    count = max(1, -(-n // length))
    return Segments(n=n, length=length, count=count, sub=sub)


def choose_count(n: int, groups: int, sm_count: int, per_sm: int, min_segment: int = MIN_SEGMENT) -> int:
    """How many segments: the most whose CTAs (`groups` per segment, `per_sm` resident per SM) run in one
    wave, at most n / min_segment; 1 means one pass. A second wave would double the time of the first."""
    if groups <= 0 or sm_count <= 0:
        return 1
    return max(1, min((per_sm * sm_count) // groups, n // max(1, min_segment)))


def choose_sub(count: int, groups: int, sm_count: int, per_sm: int) -> int:
    """Pieces per segment for the state pass: the most whose CTAs (`groups` per piece) fit one wave."""
    if count <= 1 or groups <= 0:
        return 1
    return max(1, (per_sm * sm_count) // (groups * (count - 1)))


def scan_states(local: torch.Tensor, decay: torch.Tensor, seg: Segments,
                initial_state: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pass 2 in torch: the state entering every segment, [B, H, P, D, E] in local's dtype.

    local [B, H, seg.pieces, D, E]: the pieces' own end states. Carried in float64 with λ^(L/R) ≤ 1 formed
    once from log λ, so the P·R steps add no error beyond the final rounding.
    """
    B, H, PS, D, E = local.shape
    a = torch.exp(log_decay(decay).to(local.device) * seg.piece)[None, :, None, None]  # [1, H, 1, 1]
    s = (torch.zeros(B, H, D, E, dtype=torch.float64, device=local.device) if initial_state is None
         else initial_state.to(device=local.device, dtype=torch.float64))
    out = torch.empty(B, H, seg.count, D, E, dtype=local.dtype, device=local.device)
    for j in range(PS):
        if j % seg.sub == 0:
            out[:, :, j // seg.sub] = s
        s = a * s + local[:, :, j].to(torch.float64)
    out[:, :, seg.count - 1] = s
    return out


# Pass 1: (k, v, decay, seg) → local [B, H, seg.pieces, D, E].
# Pass 3: (q, k, v, decay, scale, s_in, seg) → (o, S_N). Pass 2 (Scan): (local, decay, seg, S0) → s_in.
LocalStates = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Segments], torch.Tensor]
Outputs = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor, Segments],
                   tuple[torch.Tensor, torch.Tensor]]
Scan = Callable[[torch.Tensor, torch.Tensor, Segments, Optional[torch.Tensor]], torch.Tensor]


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
        initial_state: Optional[torch.Tensor], seg: Segments, local_states: LocalStates, outputs: Outputs,
        scan: Scan = scan_states) -> tuple[torch.Tensor, torch.Tensor]:
    """The three passes: (o [B, H, N, E], final state [B, H, D, E])."""
    if q.shape[2] != seg.n:
        raise ValueError(f"segments are for N = {seg.n}, got N = {q.shape[2]}")
    local = local_states(k, v, decay, seg)
    s_in = scan(local, decay, seg, initial_state)
    return outputs(q, k, v, decay, scale, s_in, seg)
