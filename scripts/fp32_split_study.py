"""CPU study: how accurate is float32 decay attention when every product runs on 16-bit tensor cores from
split operands? Decides the number format of a float32 path for generation 2 (wgmma takes tf32 only from
K-major tiles, which costs transposed copies; 16-bit operands take any layout).

    python scripts/fp32_split_study.py [N] [--heads 8]
    python scripts/fp32_split_study.py --kernel       # chunk_wg32's own scales, inputs at 2^±24

Emulates the chunked algorithm of chunked_wg.cu (chunks of 64: O = ((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in,
S_out = λ^n S_in + Kᵀ Ṽ) with each of the four products formed as the tensor cores would from split operands
— each piece rounded to its format, pieces multiplied exactly and summed (float64), the sum rounded to the
float32 accumulator — and everything between products in float32. Formats: `fp32` (exact float32 products,
the baseline), `3xtf32` (x = hi + lo, hi the tf32 truncation the tensor core reads from a float32 word;
hi·hi + hi·lo + lo·hi), `bf16x3` (the same with bfloat16 pieces), `fp16x3` (float16 pieces, each operand
first scaled by a power of two so that its largest element is at most 2^14: no overflow, and exact). Prints
the harness's errors (leetbench.verdict.errors) against the float64 reference for several decays and input
offsets. Measured (N = 4096 and 32768, H = 8, D = E = 128): fp16x3 is within 1.1× of float32 (2.5e-7 –
3.6e-7), 3xtf32 6.5e-7, bf16x3 6.3e-6 — under the float32 tolerance (1e-5) by 1.6× only.

`--kernel` emulates chunked_wg32.cu's bookkeeping instead: one power-of-two scale per chunk for each of the
Q, K, V and Ṽ tiles and per (b, h) for the state copy, one per row of P, undone as the kernel undoes them
(Q Kᵀ with the mask, Q S_in and P V on the output rows, Kᵀ Ṽ by dividing the state first), on inputs scaled
by powers of two far outside float16's range. Measured: 0.5–1.4e-7 worst head for every input range (the
errors do not move with the scales, as exact scaling should leave them).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from leetbench.inputs import make_inputs  # noqa: E402
from leetbench.problem import Inputs, Problem  # noqa: E402
from leetbench.reference import reference  # noqa: E402
from leetbench.verdict import errors  # noqa: E402

F64, F32 = torch.float64, torch.float32
FORMATS = ("fp32", "3xtf32", "bf16x3", "fp16x3")
CASES = (("multiscale", 0.0), (1.0, 0.0), (1.0, 0.5), (1e-6, 0.0), ("retnet", 2.0))  # (decay, input offset)


def tf32(x: torch.Tensor) -> torch.Tensor:
    """The tf32 value a tensor core reads from a float32 word (low 13 mantissa bits dropped)."""
    return (x.to(F32).view(torch.int32) & ~0x1FFF).view(F32).to(F64)


def pieces(x: torch.Tensor, fmt: str) -> list[torch.Tensor]:
    """x (float32 values) as the pieces of `fmt`, each exactly representable in its format, in float64."""
    x = x.to(F32).to(F64)
    if fmt == "fp32":
        return [x]
    if fmt == "3xtf32":
        hi = tf32(x)
        return [hi, tf32(x - hi)]
    if fmt == "bf16x3":
        hi = x.to(torch.bfloat16).to(F64)
        return [hi, (x - hi).to(torch.bfloat16).to(F64)]
    m = float(x.abs().max())
    s = 2.0 ** math.ceil(math.log2(m / 2 ** 14)) if m > 0 else 1.0  # fp16x3: a power of two, exact
    hi = (x / s).to(torch.float16).to(F64)
    return [hi * s, (x / s - hi).to(torch.float16).to(F64) * s]


def product(a: torch.Tensor, b: torch.Tensor, fmt: str) -> torch.Tensor:
    """a @ b as `fmt` forms it on tensor cores, rounded to the float32 accumulator."""
    pa, pb = pieces(a, fmt), pieces(b, fmt)
    if fmt == "fp32":
        return (pa[0] @ pb[0]).to(F32)
    return (pa[0] @ pb[0] + pa[0] @ pb[1] + pa[1] @ pb[0]).to(F32)


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float, fmt: str,
            C: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    E = v.shape[-1]
    q, k, v = (x.to(F32) for x in (q, k, v))
    out = torch.empty(B, H, N, E, dtype=F32)
    S = torch.zeros(B, H, D, E, dtype=F32)
    tab = torch.exp(torch.log(lam.to(F64))[:, None] * torch.arange(C + 1, dtype=F64)).to(F32)  # [H, C+1] λ^j
    i = torch.arange(C)
    lag = i[:, None] - i[None, :]
    for c0 in range(0, N, C):
        n = min(C, N - c0)
        Q, K, V = q[:, :, c0:c0 + n], k[:, :, c0:c0 + n], v[:, :, c0:c0 + n]
        d = lag[:n, :n]
        mask = torch.where(d >= 0, scale * tab[:, d.clamp(min=0)], torch.zeros((), dtype=F32))  # [H, n, n]
        P = product(Q, K.transpose(-1, -2), fmt) * mask
        out[:, :, c0:c0 + n] = product(P, V, fmt) + (scale * tab[:, 1:n + 1])[..., None] * product(Q, S, fmt)
        decayed = V * tab[:, :n].flip(-1)[..., None]  # Ṽ_j = λ^(n-1-j) v_j
        S = tab[:, n][:, None, None] * S + product(K.transpose(-1, -2), decayed, fmt)
    return out, S


def pow2(s: torch.Tensor) -> torch.Tensor:
    return torch.pow(torch.tensor(2.0, dtype=F64), s.to(F64)).to(F32)


def piece_exp(m: torch.Tensor) -> torch.Tensor:
    """chunked_wg32.cu's piece_exp: s with m·2^-s in [2^13, 2^14), 0 for m = 0, within ±126."""
    e = ((m.to(F32).view(torch.int32) >> 23) & 0xFF).to(torch.int64)
    return torch.where(e == 0, torch.zeros_like(e), (e - 140).clamp(-126, 126))


def halves(x: torch.Tensor) -> list[torch.Tensor]:
    """float16 hi and lo of float32 values already scaled into range (an Inf would be a scale bug)."""
    hi = x.to(F32).to(torch.float16)
    lo = (x.to(F32) - hi.to(F32)).to(torch.float16)
    assert torch.isfinite(hi).all(), "a float16 piece overflowed"
    return [hi.to(F64), lo.to(F64)]


def product16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    (ah, al), (bh, bl) = halves(a), halves(b)
    return (al @ bh + ah @ bl + ah @ bh).to(F32)


def chunked_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float,
                   s0: torch.Tensor | None, C: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked algorithm with chunk_wg32's scales (module docstring); chunks zero-filled past N."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    out = torch.empty(B, H, N, E, dtype=F32)
    S = torch.zeros(B, H, D, E, dtype=F32) if s0 is None else s0.to(F32).clone()
    tab = torch.exp(torch.log(lam.to(F64))[:, None] * torch.arange(C + 1, dtype=F64)).to(F32)
    i = torch.arange(C)
    lag = i[:, None] - i[None, :]
    mask = torch.where(lag >= 0, scale * tab[:, lag.clamp(min=0)], torch.zeros((), dtype=F32))  # [H, C, C]
    f = (scale * tab[:, 1:C + 1])[..., None]

    def tile_exp(x: torch.Tensor) -> torch.Tensor:  # one scale per (b, h) tile
        return piece_exp(x.abs().amax(dim=(-2, -1)))[..., None, None]

    for c0 in range(0, N, C):
        n = min(C, N - c0)
        Q, K = (torch.zeros(B, H, C, D, dtype=F32) for _ in range(2))
        V = torch.zeros(B, H, C, E, dtype=F32)
        Q[:, :, :n], K[:, :, :n], V[:, :, :n] = (x[:, :, c0:c0 + n].to(F32) for x in (q, k, v))
        w = torch.zeros(H, C, dtype=F32)
        w[:, :n] = tab[:, :n].flip(-1)  # λ^(n-1-j)
        W = V * w[..., None]
        sq, sk, sv, sw, ss = (tile_exp(x) for x in (Q, K, V, W, S))
        Qs, Ks, Vs, Ws = Q * pow2(-sq), K * pow2(-sk), V * pow2(-sv), W * pow2(-sw)
        acc_a = product16(Qs, Ks.transpose(-1, -2))
        acc_o = product16(Qs, S * pow2(-ss))
        S = S * (tab[:, n][:, None, None] * pow2(-sk) * pow2(-sw)) + product16(Ks.transpose(-1, -2), Ws)
        P = acc_a * mask * (pow2(sq) * pow2(sk))
        p = piece_exp(P.abs().amax(-1, keepdim=True))  # per row
        acc_o = acc_o * (f * pow2(ss) * pow2(sq) * pow2(-p) * pow2(-sv)) + product16(P * pow2(-p), Vs)
        out[:, :, c0:c0 + n] = (acc_o * pow2(p) * pow2(sv))[:, :, :n]
        S = S * pow2(sk) * pow2(sw)
    return out, S


def kernel_study() -> None:
    ranges = ((1.0, 1.0, 1.0), (2.0 ** 20, 1.0, 1.0), (1.0, 2.0 ** -20, 2.0 ** 18), (2.0 ** -24, 2.0 ** -24, 1.0),
              (2.0 ** 12, 2.0 ** 12, 2.0 ** 12))
    for qs, ks, vs in ranges:
        for decay, offset in (("multiscale", 0.0), (1.0, 0.5), (1e-6, 0.0)):
            p = Problem(batch=1, heads=2, length=700, dim=128, dim_v=64, decay=decay, dtype="float32",
                        initial_state=True)
            x = make_inputs(p)
            x = Inputs((x.q + offset) * qs, (x.k + offset) * ks, (x.v + offset) * vs, x.decay, x.scale,
                       x.initial_state * (ks * vs))
            ref_o, ref_s = reference(x)
            o, s = chunked_kernel(x.q, x.k, x.v, x.decay, x.scale, x.initial_state)
            e, es = errors(o, ref_o), errors(s.unsqueeze(2), ref_s.unsqueeze(2))
            print(f"q·{qs:.3g} k·{ks:.3g} v·{vs:.3g} λ={decay} offset={offset}: worst head {e.worst_head_rel_err:.2e} "
                  f"max_err {e.max_err:.2e} state {es.worst_head_rel_err:.2e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("length", type=int, nargs="?", default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kernel", action="store_true", help="chunk_wg32's scales on inputs far outside float16")
    args = ap.parse_args()
    if args.kernel:
        return kernel_study()
    for decay, offset in CASES:
        p = Problem(batch=1, heads=args.heads, length=args.length, dim=128, decay=decay, dtype="float32")
        x = make_inputs(p)
        for t in (x.q, x.k, x.v):
            t += offset
        ref_o, ref_s = reference(x)
        for fmt in FORMATS:
            o, s = chunked(x.q, x.k, x.v, x.decay, x.scale, fmt)
            e, es = errors(o, ref_o), errors(s.unsqueeze(2), ref_s.unsqueeze(2))
            print(f"N={args.length} λ={decay} offset={offset} {fmt:7s} rel_err {e.rel_err:.2e} worst head "
                  f"{e.worst_head_rel_err:.2e} max_err {e.max_err:.2e} state {es.rel_err:.2e}", flush=True)


if __name__ == "__main__":
    main()
