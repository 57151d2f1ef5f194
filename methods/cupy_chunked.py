"""Chunked decay attention on tensor cores, one pass over the inputs (CuPy RawModule, inline PTX mma).

Per chunk of C = 64 tokens, with S_in the D×E state carried into it:

    O     = c · [((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in],    M[i, j] = λ^(i-j) for j ≤ i, else 0
    S_out = λ^C S_in + Σ_i λ^(C-1-i) k_iᵀ v_i

One CTA per (b, h, slice of E) streams the chunks in order with its state slice in float32 registers, so
the state never leaves the chip and q, k, v are read from HBM once and o written once (the bytes floor;
the E slices of a head re-read its Q and K rows from L2). A producer warp keeps the next chunks in flight
(16-byte cp.async into padded shared rows, mbarrier pipeline) while four consumer warps, each compiled for
its own rows (causal bounds at compile time), run `mma.sync.m16n8k16` with bf16/fp16 operands and float32
accumulation; two CTAs share an SM when the grid is large enough. float32 inputs take the same pipeline
with 3xTF32 products (x = hi + lo, hi rounded to TF32, lo = x − hi exact; a·b ≈ hi·hi + hi·lo + lo·hi) and
the chunk's state contribution added with IEEE adds, which keeps float32 accuracy (≈ 1e-6, no TF32-level
error) on the tensor cores. Powers of λ come from a per-head table λ^j (j ≤ C) formed in float64 from
log λ, so no negative power is ever formed; λ = 1 and λ = 1e-6 are exact cases of the same code.

Complexity: O(N · C · (D + E) + N · D · E) work, N/C sequential steps per CTA; B·H·E/ES CTAs.
Source: the chunkwise form of RetNet (Sun et al., 2023) / Lightning Attention-2 (Qin et al., 2024) and
fla's chunk_simple_gla; FlashAttention-2's register reuse of scores as the A operand of P·V.
"""

from __future__ import annotations

from leetbench import register
from leetbench import cuda_kernels
from leetbench.cuda_kernels import ops

SOURCES = (cuda_kernels.KERNEL_DIR / "common.cuh", cuda_kernels.KERNEL_DIR / "chunked.cu", ops, cuda_kernels)


def _supports(problem) -> str | None:
    return ops.chunked_supports(problem.dim, problem.E, problem.dtype)


@register(name="cupy_chunked", family="chunked", complexity="O(N·C·(D+E) + N·D·E)", devices=("cuda",),
          dtypes=("float32", "float16", "bfloat16"), supports=_supports, setup=ops.setup_chunked,
          requires=("cupy",), sources=SOURCES)
def cupy_chunked(q, k, v, decay, *, scale, initial_state=None):
    """Chunks of 64 on tensor cores, one pass over the inputs, state in registers."""
    return ops.chunked(q, k, v, decay, scale=scale, initial_state=initial_state)
