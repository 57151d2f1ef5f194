"""<Name of the route>: one sentence on what it computes.

    <The recurrence or equation this file implements, e.g.>
    S_t = λ · S_{t-1} + k_tᵀ v_t,    o_t = c · q_t S_t

Complexity: <time and extra memory, e.g. O(N · C · (D + E)) time, O(C²) extra memory per head>.
Source: <paper, section and equation>.

Copy this file into `methods/` (or any folder passed as `methods_dirs=[...]`), rename the method, and
replace the body. It runs as it is: a chunked form built from leetbench's shared helpers.
Check it with:  leetbench methods=[my_method] dtypes=[float64,float32]   (accuracy is judged per row)
"""

from __future__ import annotations

import torch

from leetbench import register
from leetbench.chunking import start_state
from leetbench.decay import block_decay, compute_dtype, decay_mask, decay_powers, log_decay


def _fits(problem) -> str | None:
    """None when this method can run `problem`, else the reason (shown as a `skipped` row)."""
    return None


@register(name="my_method", family="chunked", complexity="O(N·C·D)", devices=("cpu", "cuda"),
          dtypes=("float64", "float32", "float16", "bfloat16"), supports=_fits)
def my_method(q, k, v, decay, *, scale, initial_state=None, chunk: int = 64):
    """Chunk by chunk: intra-chunk masked product plus the carried state."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    acc = compute_dtype(q.dtype)  # float32 accumulation for float16 / bfloat16 inputs
    log_lam = log_decay(decay).to(q.device)  # log λ ≤ 0: only powers of non-positive exponents are formed
    state = start_state(initial_state, k, v, acc)  # the given initial state, or zeros
    out = torch.empty(B, H, N, E, dtype=acc, device=q.device)
    for t0 in range(0, N, chunk):
        t1 = min(N, t0 + chunk)
        c = t1 - t0
        qc, kc, vc = q[:, :, t0:t1].to(acc), k[:, :, t0:t1].to(acc), v[:, :, t0:t1].to(acc)
        intra = ((qc @ kc.transpose(-1, -2)) * decay_mask(log_lam, c, acc)[None]) @ vc
        inter = decay_powers(log_lam, c, start=1, dtype=acc)[None, :, :, None] * (qc @ state)
        out[:, :, t0:t1] = intra + inter
        reach = decay_powers(log_lam, c, reverse=True, dtype=acc)[None, :, :, None]
        state = block_decay(log_lam, c, acc)[None, :, None, None] * state + (kc * reach).transpose(-1, -2) @ vc
    return (out * scale).to(v.dtype), state
