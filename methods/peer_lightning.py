"""lightning-attn 0.0.5: Lightning Attention-2's forward kernel, `lightning_attn2(q, k, v, s)`.

    O = ((Q Kᵀ) ⊙ M) V,    M[t, u] = exp(−s_h · (t − u)) for u ≤ t,    s_h = −log λ_h

One Triton kernel per (batch·head, 32-wide slice of E) walks blocks of 64 tokens: intra-block scores with
the block's decay mask, plus the query block times the carried D×E state (float32), then the state
advances by the block's keys and values. Inputs of every dtype are loaded as float32 and multiplied with
`tl.dot` at Triton's default precision, TF32 (declared `tf32=True`).

Conventions converted here: the layout is ours ([B, H, N, D]); the decay is the rate s = −log λ (float32,
computed from float64 λ, shaped [H, 1, 1] as the library's slope tensors are); the kernel has no scale, so q
is given as q·c, made once per input tensor by `leetbench.adapters.prescaled` (cached while q is unchanged,
outside the timed calls, as a model folds c into its query projection). It takes no initial state and
returns no final state, so problems with an initial state (and decode) are refused.

Sizes: the kernel indexes D with `tl.arange(0, d)` and has no mask on E, so D must be a power of two in
[16, 128] (the library's `lightning_attn_func` splits D > 128 into 64-wide slices) and E a multiple of the
32-wide slice or a power of two ≥ 16. (That wrapper's own check, `assert 16 % d`, refuses D or E dividing
16 and pads E to a power of two; the adapter calls `lightning_attn2` directly.) The sequence length is a
compile-time constant of the kernel: each new N compiles once, in the untimed first call. A program's base
offsets are 32-bit (`off_bh * n * e`, program_id times int arguments, plus the columns of a row), so the last
program's row ends, ((B·H − 1)·N + 1)·max(D, E), must stay within 2^31: at B=8, H=32, N=65536, D=64, E=256
the kernel ended in an illegal address on an H200, which poisons the process's CUDA context, hence refused
beforehand.

Complexity: O(N · (C·D + D·E)), C = 64.
Source: https://github.com/OpenNLPLab/lightning-attention (lightning_attn/ops/triton/lightning_attn2.py);
Qin et al., "Lightning Attention-2", 2024.
"""

from __future__ import annotations

import importlib

import torch

from leetbench import register
from leetbench.adapters import INT32_MAX, is_power_of_two, prepare_prescaled, prescaled, rate_as, warm_up


def _supports(problem) -> str | None:
    if problem.has_initial_state:
        return "takes no initial state and returns no final state"
    D, E = problem.dim, problem.E
    if not (is_power_of_two(D) and 16 <= D <= 128):
        return f"D must be a power of two in [16, 128] (lightning_attn2 indexes D with tl.arange), got {D}"
    if not (E >= 16 and (E % 32 == 0 or is_power_of_two(E))):
        return f"E must be a multiple of 32 or a power of two ≥ 16 (no mask on E), got {E}"
    return offsets_over_int32(problem.batch, problem.heads, problem.length, D, E)


def offsets_over_int32(B: int, H: int, N: int, D: int, E: int) -> str | None:
    """Why the kernel's 32-bit offsets would overflow at this size (the last program's first row ends at
    ((B·H − 1)·N + 1)·max(D, E)), or None."""
    end = ((B * H - 1) * N + 1) * max(D, E)
    if end > INT32_MAX + 1:
        return (f"its 32-bit offsets overflow: ((B·H − 1)·N + 1)·max(D, E) = {end} > 2^31 "
                f"(B={B}, H={H}, N={N}, D={D}, E={E})")
    return None


def _kernel():
    return importlib.import_module("lightning_attn.ops").lightning_attn2


@register(name="lightning_attn2", family="peer:lightning", complexity="O(N·(C·D + D·E)), C=64",
          devices=("cuda",), dtypes=("float32", "float16", "bfloat16"), tf32=True, differentiable=True,
          requires=("lightning_attn", "triton"), supports=_supports, setup=warm_up(lambda: lightning_attn2),
          prepare=prepare_prescaled)
def lightning_attn2(q, k, v, decay, *, scale, initial_state=None):
    """lightning-attn lightning_attn2: blocks of 64, float32 state (Triton, TF32 dots)."""
    s = rate_as(decay, torch.float32).view(-1, 1, 1)
    return _kernel()(prescaled(q, scale), k, v, s)
