"""Toeplitz convolution by FFT: every state entry is a causal convolution with the kernel λ^n.

The decay mask is the causal Toeplitz matrix of h_n = λ^n (n ≥ 0), so for every pair (d, e)

    S_t[d, e] = Σ_{s ≤ t} λ^(t-s) k_s[d] v_s[e] = (h ∗ x_de)_t,    x_de[s] = k_s[d]·v_s[e]   (t, s = 0..N-1)
    o_t       = c · (q_t S_t + λ^(t+1) q_t S0),    final state S_{N-1} + λ^N S0

and each convolution is a product of spectra: irfft(rfft(h, L) · rfft(x_de, L)) with L ≥ 2N−1 (no
wrap-around). The kernel λ^n only underflows to true zeros; it is never inverted. Pairs (d, e) go in
rectangles of ranks × values sized to bound the working set (B·H·pairs·L numbers).

Precision: FFT convolution error is relative to ‖h‖·‖x_de‖, not to each output. On the harness's random
inputs float32 transforms give rel_err ≈ 3e-7 up to N = 65536 (λ = 1 included), but where the sum cancels
(e.g. v alternating in sign, λ = 1) a float32 transform's error grows like ε·N (3.5e-3 at N = 65536),
so float32 inputs are transformed in float64 by default (`precise=False`: in float32, faster, for the
harness's inputs only). float64 transforms of such cancelling inputs reach 7e-12 at N = 65536 and would
pass the float64 tolerance (1e-10) only up to N ≈ 10⁶. float16/bfloat16 inputs are transformed in float32.

Complexity: O(N·log N·D·E) time; O(B·H·group·N) extra memory per rectangle of `group` pairs.
Source: the convolutional view of a linear time-invariant recurrence, computed with FFTs (Gu et al.,
"Efficiently Modeling Long Sequences with Structured State Spaces", 2022, §2.4); Cooley & Tukey, 1965.
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import group_size, inter, start_state
from leetbench.decay import block_decay, compute_dtype, decay_powers, log_decay

def transform_dtype(dtype: torch.dtype, precise: bool = True) -> torch.dtype:
    """The FFT's dtype: float64 for float64 inputs, and for float32 ones when `precise` (see Precision)."""
    return torch.float64 if dtype == torch.float64 or (precise and dtype == torch.float32) else torch.float32


def fft_length(n: int) -> int:
    """The power of two ≥ 2n−1: linear (not circular) convolution of two length-n sequences."""
    return 1 << max(0, (2 * n - 2).bit_length())


@register(name="fft_toeplitz", family="fft", complexity="O(N·log N·D·E)", differentiable=True)
def fft_toeplitz(q, k, v, decay, *, scale, initial_state=None, group: int | None = None, precise: bool = True):
    """S_t[d, e] = (λ^n ∗ k[:, d]·v[:, e])_t by rfft / irfft, then o_t = c·q_t S_t."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    fdt = transform_dtype(q.dtype, precise)
    L = fft_length(N)
    log_lam = log_decay(decay).to(q.device)
    kernel = torch.fft.rfft(decay_powers(log_lam, N, dtype=fdt), n=L)  # [H, L/2+1]: spectrum of λ^n
    kernel = kernel[None, :, None, None]
    qt, kt, vt = (x.to(fdt).transpose(-1, -2) for x in (q, k, v))  # [B, H, ·, N]: time last for the FFT
    pairs = group or group_size(B * H * L, D * E, q.device)  # (d, e) pairs at once
    ev = min(E, pairs)  # values per rectangle, then as many ranks as fit
    dr = max(1, min(D, pairs // ev))
    out = torch.zeros(B, H, E, N, dtype=fdt, device=q.device)
    final = torch.empty(B, H, D, E, dtype=fdt, device=q.device)
    for e0 in range(0, E, ev):
        e1 = min(E, e0 + ev)
        for d0 in range(0, D, dr):
            d1 = min(D, d0 + dr)
            x = kt[:, :, d0:d1, None, :] * vt[:, :, None, e0:e1, :]  # [B, H, dr, ev, N]
            s = torch.fft.irfft(torch.fft.rfft(x, n=L) * kernel, n=L)[..., :N]  # S_t[d, e] for all t
            out[:, :, e0:e1] += (qt[:, :, d0:d1, None, :] * s).sum(dim=2)  # Σ_d q_t[d]·S_t[d, e]
            final[:, :, d0:d1, e0:e1] = s[..., N - 1]
    out = out.transpose(-1, -2)
    if initial_state is not None:
        s0 = start_state(initial_state, k, v, fdt)
        out = out + inter(q.to(fdt), s0, decay_powers(log_lam, N, start=1, dtype=fdt))
        final = final + block_decay(log_lam, N, fdt)[None, :, None, None] * s0
    return (out * scale).to(v.dtype), final.to(compute_dtype(q.dtype))
