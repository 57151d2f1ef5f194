"""Token-by-token recurrence as one CUDA kernel (CuPy RawModule), the state kept on chip.

    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t,    final state S_N

One block per (b, h, 32 columns of E) streams the N tokens in order with its slice of the D×E state in
registers (float32; λ carried as a float64-exact hi + lo pair for float32 problems so the per-step decay does
not compound λ's rounding). A decode step (N = 1, state in and out) has its own kernel: it is bound by
reading and writing the float32 state, so it moves 16-byte rows with every load issued before the first use;
`step=` launches it on [B, H, D] tensors directly (the dispatcher's decode step makes no views).

Complexity: O(N · D · E) work and N sequential steps per block; B·H·⌈E/32⌉ blocks. The right tool for short
N and for decoding; the chunked kernels (`cupy_chunked`) take over for long prefills.
Source: RetNet's recurrent form (Sun et al., 2023, eq. 6); the decode layout follows fla's
fused_recurrent_simple_gla (one program per state tile).
"""

from __future__ import annotations

from leetbench import register
from leetbench import cuda_kernels
from leetbench.cuda_kernels import ops

SOURCES = (cuda_kernels.KERNEL_DIR / "common.cuh", cuda_kernels.KERNEL_DIR / "recurrent.cu", ops, cuda_kernels)


def _supports(problem) -> str | None:
    return ops.recurrent_supports(problem.dim, problem.E)


@register(name="cupy_recurrent", family="recurrent", complexity="O(N·D·E)", devices=("cuda",),
          dtypes=("float32", "float16", "bfloat16"), supports=_supports, setup=ops.setup_recurrent,
          requires=("cupy",), sources=SOURCES, modes=("prefill", "decode"),
          step=ops.recurrent_step)
def cupy_recurrent(q, k, v, decay, *, scale, initial_state=None):
    """Recurrence with the state in registers; dedicated decode-step kernel at N = 1."""
    return ops.recurrent(q, k, v, decay, scale=scale, initial_state=initial_state)
