"""The float64 reference every method is judged against, and the literal definitions that check it.

`reference` is exact and chunked: per chunk of C tokens it forms the C×C decay-masked product (intra-chunk)
and carries the D×E state between chunks (inter-chunk), so memory stays O(N·C) per head and no power of λ
beyond C is ever formed. `literal` (the O(N²) masked parallel form) and `recurrence` (token by token) are
the two textbook definitions, written as plainly as possible, used only in tests to check `reference`.
"""

from __future__ import annotations

import torch

from leetbench.decay import block_decay, decay_mask, decay_powers, log_decay
from leetbench.problem import Inputs

F64 = torch.float64
# Bound on the float64 intra-chunk products formed at once, in elements: on the CPU 4M (32 MB), so the
# reference's working set stays far below a problem's own tensors; on a GPU 32M (256 MB), enough work per
# launch to keep it busy (smaller segments made B=8, N=65536 launch-bound: thousands of tiny kernels).
SEGMENT_ELEMENTS = {"cpu": 4 << 20, "cuda": 32 << 20}


def working_bytes(device_type: str) -> int:
    """The most a segment's float64 temporaries (q, k, v upcast, scores, products, output) take at once."""
    return 8 * 8 * SEGMENT_ELEMENTS.get(device_type, SEGMENT_ELEMENTS["cuda"])


def _chunk_segment(q, k, v, log_lam, state, scale):
    """Outputs and new state for q, k, v of shape [B, H, G, c, ·]: G consecutive chunks of c tokens."""
    c = q.shape[3]
    mask = decay_mask(log_lam, c)[None, :, None]  # [1, H, 1, c, c]
    scores = torch.einsum("bhgtd,bhgsd->bhgts", q, k) * mask
    out = torch.einsum("bhgts,bhgse->bhgte", scores, v)
    into = decay_powers(log_lam, c, start=1)[None, :, :, None]  # λ^(i+1): carried state → position i
    reach = decay_powers(log_lam, c, reverse=True)[None, :, None, :, None]  # λ^(c-1-i): key i → chunk end
    local = torch.einsum("bhgsd,bhgse->bhgde", k * reach, v)  # each chunk's own contribution
    across = block_decay(log_lam, c)[None, :, None, None]
    for g in range(q.shape[2]):
        out[:, :, g] += torch.einsum("bhtd,bhde->bhte", q[:, :, g] * into, state)
        state = across * state + local[:, :, g]
    return out * scale, state


def reference(inputs: Inputs, chunk: int = 64, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact outputs [B, H, N, E] and float64 final state [B, H, D, E], computed in float64 on the inputs' device.

    Inputs are upcast one segment at a time. Each finished segment is copied into `out` (any dtype or device,
    e.g. float32 in pinned host memory: what the harness keeps for checking), or into a new float64 tensor on
    the inputs' device; so the extra memory on the device is one segment.
    """
    q, k, v = inputs.q, inputs.k, inputs.v
    B, H, N, D = q.shape
    E = v.shape[-1]
    log_lam = log_decay(inputs.decay.to(q.device))
    state = (torch.zeros(B, H, D, E, dtype=F64, device=q.device) if inputs.initial_state is None
             else inputs.initial_state.to(F64).clone())
    if out is None:
        out = torch.empty(B, H, N, E, dtype=F64, device=q.device)
    full = (N // chunk) * chunk
    per_chunk = max(1, B * H * chunk * max(chunk, D, E))
    budget = SEGMENT_ELEMENTS.get(q.device.type, SEGMENT_ELEMENTS["cuda"])
    group = max(1, budget // per_chunk) * chunk
    start = 0
    while start < N:
        stop = min(start + group, full) if start < full else N
        c = chunk if start < full else N - full
        seg = lambda x: x[:, :, start:stop].to(F64).reshape(B, H, (stop - start) // c, c, x.shape[-1])  # noqa: E731
        o, state = _chunk_segment(seg(q), seg(k), seg(v), log_lam, state, inputs.scale)
        out[:, :, start:stop].copy_(o.reshape(B, H, stop - start, E), non_blocking=True)
        start = stop
    return out, state


def prefix_state(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """The exact float64 state S_N = Σ_s λ^(N-1-s) k_sᵀ v_s that a prefix leaves (for decode problems)."""
    B, H, N, D = k.shape
    zeros_q = torch.zeros(B, H, N, D, dtype=F64, device=k.device)
    _, state = reference(Inputs(zeros_q, k.to(F64), v.to(F64), decay, 1.0, None))
    return state


# ---- the literal definitions (tests only) ------------------------------------------------------------

def literal(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """O = c·((QKᵀ) ⊙ M)V + c·diag(λ^t)QS0 with M[t,s] = λ^(t-s), s ≤ t; S_N = λ^N S0 + Σ λ^(N-s) k_sᵀv_s."""
    q, k, v = inputs.q.to(F64), inputs.k.to(F64), inputs.v.to(F64)
    N = q.shape[2]
    lam = inputs.decay.to(F64).to(q.device)[:, None, None]
    t = torch.arange(N, dtype=F64, device=q.device)
    diff = t[:, None] - t[None, :]
    mask = torch.where(diff >= 0, lam ** diff.clamp(min=0), torch.zeros((), dtype=F64, device=q.device))
    out = inputs.scale * (q @ k.transpose(-1, -2) * mask) @ v
    weights = (lam[:, :, 0] ** (N - 1 - t))[None, :, :, None]  # [1, H, N, 1]
    state = (k * weights).transpose(-1, -2) @ v
    if inputs.initial_state is not None:
        s0 = inputs.initial_state.to(F64)
        out = out + inputs.scale * (lam ** (t + 1)[:, None])[None] * (q @ s0)
        state = state + (lam[:, :, 0] ** N)[None, :, :, None] * s0
    return out, state


def recurrence(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = λ S_{t-1} + k_tᵀ v_t, o_t = c q_t S_t, one token at a time."""
    q, k, v = inputs.q.to(F64), inputs.k.to(F64), inputs.v.to(F64)
    B, H, N, D = q.shape
    E = v.shape[-1]
    lam = inputs.decay.to(F64).to(q.device)[None, :, None, None]
    state = (torch.zeros(B, H, D, E, dtype=F64, device=q.device) if inputs.initial_state is None
             else inputs.initial_state.to(F64).clone())
    out = torch.empty(B, H, N, E, dtype=F64, device=q.device)
    for t in range(N):
        state = lam * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = inputs.scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], state)
    return out, state
