"""Chunked decay attention on tensor cores (CuPy, inline PTX), one pass or sequence parallel.

    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t,    final state S_N

Per chunk of C = 64 tokens, with S_in the D×E state carried into it:

    O     = c · [((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in],    M[i, j] = λ^(i-j) for j ≤ i, else 0
    S_out = λ^C S_in + Σ_i λ^(C-1-i) k_iᵀ v_i

One pass: one CTA per (b, h, slice of E) streams the chunks in order with its state slice in float32
registers, so the state never leaves the chip and q, k, v are read from HBM once and o written once (the
bytes floor; the E slices of a head re-read its Q and K rows from L2). A producer warp keeps the next chunks
in flight (16-byte cp.async into shared tiles, mbarrier pipeline) while the consumers compute. Two kernel
generations, chosen per device and shape (ops.chunk_plan):

- generation 2 (chunked_wg.cu, chunked_wg32.cu; compute capability 9.0, D ∈ {64, 128}, E a multiple of 32):
  consumer warpgroups issue Hopper's warpgroup products (wgmma) on swizzled shared tiles — Q Kᵀ, Q S_in,
  Kᵀ Ṽ into the float32 state registers, and P V with the masked scores P taken from registers; where one
  CTA holds an SM, two warpgroups split the work (one keeps the state chain S = λ^C S + Kᵀ Ṽ and hands a
  16-bit copy of each S_in over, the other forms the outputs), else one does all of it;
- generation 1 (chunked.cu; any card since sm_80, every supported shape): four consumer warps, each compiled
  for its own rows (causal bounds at compile time), run `mma.sync.m16n8k16`; two CTAs share an SM when the
  grid is large enough.

The 16-bit copy of the state that Q·S_in reads is scaled by a power of two for float16 (undone exactly), so
it never overflows. float32 inputs keep float32 accuracy (≈ 1e-6 and below) on the tensor cores: generation
2 splits every operand into two float16 pieces, x = 2^s (hi + lo) with powers of two chosen per tile (per
row for P) so that no piece overflows, and forms a·b ≈ hi·hi' + hi·lo' + lo·hi' (22 significant bits;
scripts/fp32_split_study.py); generation 1 uses 3xTF32 (hi rounded to TF32, lo = x − hi exact). In float32
each chunk's Kᵀ Ṽ goes into a fresh accumulator and is added to the state with IEEE float32 operations: the
tensor cores' own accumulation truncates, which over thousands of chunks at λ = 1 would bias the state.

Sequence parallel (when B·H·(E slices) CTAs leave SMs idle, or — generation 2 — would need E slices
narrower than 64 columns to fill them, and N is long; ops.seq_plan): N is cut into P
segments of L tokens, (1) a state-only kernel computes every earlier piece's own end state
Σ_j λ^(L'-1-j) k_jᵀ v_j in parallel, (2) a decayed scan S ← λ^L' S + local (float64 carry) gives the state
entering every segment, (3) the one-pass kernel runs all segments at once from those states; the last
segment's end state is S_N. It reads k and v once more for the first P-1 segments and fills the GPU.

Powers of λ come from a per-head table λ^j (j ≤ C) and λ^L' ≤ 1, formed in float64 from log λ, so no
negative power is ever formed; λ = 1 and λ = 1e-6 are exact cases of the same code.

Complexity: O(N · C · (D + E) + N · D · E) work; N/C sequential steps per CTA in one pass, N/(C·P) + P
sequential steps with P segments; B·H·E/ES CTAs per segment.
Source: the chunkwise form of RetNet (Sun et al., 2023) / Lightning Attention-2 (Qin et al., 2024) and
fla's chunk_simple_gla; FlashAttention-2's register reuse of scores as the A operand of P·V (and
FlashAttention-3's for wgmma); the segment scan is the chunked form's inter-chunk recurrence applied one level
up (to segments of chunks).
"""

from __future__ import annotations

from leetbench import register
from leetbench import cuda_kernels
from leetbench.cuda_kernels import ops, segments

SOURCES = tuple(cuda_kernels.KERNEL_DIR / f for f in ops.CHUNKED_FILES) + (ops, segments, cuda_kernels)


def _supports(problem) -> str | None:
    return ops.chunked_supports(problem.dim, problem.E, problem.dtype)


@register(name="cupy_chunked", family="chunked", complexity="O(N·C·(D+E) + N·D·E)", devices=("cuda",),
          dtypes=("float32", "float16", "bfloat16"), supports=_supports, setup=ops.setup_chunked,
          requires=("cupy",), sources=SOURCES)
def cupy_chunked(q, k, v, decay, *, scale, initial_state=None):
    """Chunks of 64 on tensor cores, state in registers; sequence parallel when the GPU would sit idle."""
    return ops.chunked(q, k, v, decay, scale=scale, initial_state=initial_state)
