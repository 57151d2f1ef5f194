"""Numerically safe pieces shared by the reference and every method.

Decay attention needs powers of λ. Forming λ^t for large t underflows and λ^(-s) overflows, so every helper
here works with log λ ≤ 0 and only ever exponentiates a non-positive number: λ^(t-s) for s ≤ t inside a
block, or λ^(i+1) / λ^(C-1-i) for positions i inside a block of length C. λ = 1 gives log λ = 0 exactly
(plain causal linear attention), and a tiny λ (1e-6) simply gives zeros where the weight underflows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_decay(decay: torch.Tensor) -> torch.Tensor:
    """log λ per head, in float64 (≤ 0). Keeps full precision: a rounded λ near 1 is a wrong λ."""
    return torch.log(decay.to(torch.float64)).clamp(max=0.0)


def decay_mask(log_lam: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """M[h, t, s] = λ_h^(t-s) for s ≤ t, else 0, shape [H, n, n].

    The exponent is masked before exp, so no inf·0 ever appears.
    """
    idx = torch.arange(n, device=log_lam.device, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    causal = diff >= 0
    expo = log_lam.to(torch.float64)[:, None, None] * diff.clamp(min=0)[None]
    return torch.where(causal[None], torch.exp(expo), torch.zeros((), dtype=torch.float64,
                                                                   device=log_lam.device)).to(dtype)


def decay_powers(log_lam: torch.Tensor, n: int, start: int = 0, dtype: torch.dtype = torch.float64,
                 reverse: bool = False) -> torch.Tensor:
    """λ_h^(start + i) for i = 0..n-1, shape [H, n]; with `reverse`, λ_h^(start + n-1-i).

    Inside a block of length C: `decay_powers(ll, C, start=1)` are the weights λ^(i+1) of the state carried
    into position i; `decay_powers(ll, C, reverse=True)` are the weights λ^(C-1-i) with which key i reaches
    the state at the block's end.
    """
    if start < 0:
        raise ValueError("decay_powers: start must be ≥ 0 (a negative power of λ can overflow)")
    i = torch.arange(n, device=log_lam.device, dtype=torch.float64)
    if reverse:
        i = (n - 1) - i
    return torch.exp(log_lam.to(torch.float64)[:, None] * (i + start)[None]).to(dtype)


def block_decay(log_lam: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """λ_h^n per head, shape [H]: the decay a state suffers across a block of n tokens."""
    return torch.exp(log_lam.to(torch.float64) * n).to(dtype)


def split_hi_lo(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 x as hi + lo in `dtype` (hi = x rounded, lo = what rounding lost; lo = 0 for float64).

    A decay applied many times in float32 must not be a rounded decay: λ = 1 − 2^-12 stored in float32 is off
    by up to 2^-24 relative, and over 1/(1 − λ) steps that grows to ~2^-12 relative error. Multiplying by hi
    and adding lo·x keeps the product as accurate as one float32 rounding.
    """
    hi = x.to(dtype)
    return hi, (x - hi.to(x.dtype)).to(dtype)


def pad_length(x: torch.Tensor, multiple: int, dim: int = 2) -> torch.Tensor:
    """Zero-pad `x` along `dim` to a multiple of `multiple` (at the end).

    Zero keys and values add nothing to a state, and outputs of padded queries are dropped, but padded
    tokens would still decay a carried state: callers take the final state from the true length.
    """
    n = x.shape[dim]
    extra = (-n) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra]
    return F.pad(x, pad)


def to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, H, N, X] with N a multiple of `chunk` → [B, H, N/chunk, chunk, X] (a view)."""
    B, H, N, X = x.shape
    return x.reshape(B, H, N // chunk, chunk, X)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for an input dtype: float32 for float16/bfloat16, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
