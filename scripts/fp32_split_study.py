"""CPU study: how accurate is float32 decay attention when every product runs on 16-bit tensor cores from
split operands? Decides the number format of a float32 path for generation 2 (wgmma takes tf32 only from
K-major tiles, which costs transposed copies; 16-bit operands take any layout).

    python scripts/fp32_split_study.py [N] [--heads 8]

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
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from leetbench.inputs import make_inputs  # noqa: E402
from leetbench.problem import Problem  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("length", type=int, nargs="?", default=4096)
    ap.add_argument("--heads", type=int, default=8)
    args = ap.parse_args()
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
