"""fla (flash-linear-attention, package fla-core 0.6.0): its simple-GLA kernels with a per-head constant gate.

    S_t = exp(g_h) · S_{t-1} + k_tᵀ v_t,    o_t = scale · q_t S_t,    g_h = g_gamma[h] = log λ_h

Routes, all Triton, from `fla.ops.simple_gla`:
- `chunk_simple_gla` (fla_chunk): chunks of 64 tokens; one kernel carries the D×E state across chunks
  (stored per chunk in the input dtype), a second forms the outputs. O(N·(C·D + D·E)), C = 64.
- `fused_chunk_simple_gla` (fla_fused_chunk): one kernel walks the chunks with the state in registers.
  O(N·(C·D + D·E)), C = 64.
- `fused_recurrent_simple_gla` (fla_fused_recurrent): token by token, float32 state, no matrix units; also
  the decode step (one token, state in and out). O(N·D·E). It multiplies the state by exp(g_gamma), an
  approximate float32 exp, at every token, so at float32 an ulp-level error of that factor compounds over a
  head's memory (≈ 4096 tokens for λ = 1 − 2^-12): rel_err ≈ 6e-5 on multiscale decays, 1e-7 per step.
- `parallel_simple_gla` (fla_parallel): the masked parallel form in blocks, with a per-token gate g [B,T,H]
  (here log λ broadcast); it takes no initial state and returns no final state. O(N²·(D + E)).

Conventions converted here: fla's layout is [B, T, H, D] and its decay is g_gamma = log λ (float32 [H],
computed from float64 λ). fla users hold [B, T, H, D] tensors, so the transposed copies of q, k, v (and the
per-token gate of the parallel route) are made once per input tensor by `leetbench.adapters` (cached while
the tensor is unchanged), outside the timed calls; the output goes back as a transposed view, no copy.
The state layout [B, H, D, E] is fla's [N, H, K, V]; the final state comes back in float32.

TF32: `tl.dot` on float32 operands defaults to TF32 in Triton and fla passes no `input_precision` (it forces
IEEE only on pre-Ampere cards, by TRITON_F32_DEFAULT), so the chunk, fused-chunk and parallel routes are
TF32 routes for float32 inputs; fused_recurrent uses no dot product and is true float32.

Source: https://github.com/fla-org/flash-linear-attention (fla/ops/simple_gla/*.py, fla/ops/common/*.py);
Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training", 2024.
"""

from __future__ import annotations

import importlib

from leetbench import register
from leetbench.adapters import log_decay_as, per_token_log_decay, prepare_time_major, time_major, warm_up

# fla's autotuners key on head sizes, not on B or N: tune at every problem's shape (adapters.forget_autotuning)
RETUNE = ("fla",)
_COMMON = dict(family="peer:fla", devices=("cuda",), dtypes=("float32", "float16", "bfloat16"),
               requires=("fla", "triton"))


def _prepare_parallel(q, k, v, decay, *, scale, initial_state=None) -> None:
    prepare_time_major(q, k, v, decay, scale=scale, initial_state=initial_state)
    per_token_log_decay(decay, q.shape[0], q.shape[2])


def _route(name: str):
    return getattr(importlib.import_module("fla.ops.simple_gla"), name)


def _with_state(route: str, q, k, v, decay, scale, initial_state):
    """Call a route that takes g_gamma, initial_state and output_final_state; back in our layout."""
    o, state = _route(route)(
        q=time_major(q), k=time_major(k), v=time_major(v), g_gamma=log_decay_as(decay), scale=scale,
        initial_state=initial_state, output_final_state=True,
    )
    return o.transpose(1, 2), state


def _no_initial_state(problem) -> str | None:
    if problem.has_initial_state:
        return "takes no initial state (parallel_simple_gla has no initial_state argument)"
    return None


@register(name="fla_chunk", complexity="O(N·(C·D + D·E)), C=64", tf32=True,
          setup=warm_up(lambda: fla_chunk, retune=RETUNE),
          differentiable=True, prepare=prepare_time_major,
          **_COMMON)
def fla_chunk(q, k, v, decay, *, scale, initial_state=None):
    """fla chunk_simple_gla: chunked, state per chunk (Triton)."""
    return _with_state("chunk_simple_gla", q, k, v, decay, scale, initial_state)


@register(name="fla_fused_chunk", complexity="O(N·(C·D + D·E)), C=64", tf32=True, differentiable=True,
          setup=warm_up(lambda: fla_fused_chunk, retune=RETUNE),
          prepare=prepare_time_major, **_COMMON)
def fla_fused_chunk(q, k, v, decay, *, scale, initial_state=None):
    """fla fused_chunk_simple_gla: one kernel over the chunks, state in registers (Triton)."""
    return _with_state("fused_chunk_simple_gla", q, k, v, decay, scale, initial_state)


@register(name="fla_fused_recurrent", complexity="O(N·D·E)", modes=("prefill", "decode"), differentiable=True,
          setup=warm_up(lambda: fla_fused_recurrent, retune=RETUNE),
          prepare=prepare_time_major, **_COMMON)
def fla_fused_recurrent(q, k, v, decay, *, scale, initial_state=None):
    """fla fused_recurrent_simple_gla: token by token, float32 state (Triton); also the decode step."""
    return _with_state("fused_recurrent_simple_gla", q, k, v, decay, scale, initial_state)


@register(name="fla_parallel", complexity="O(N²·(D + E))", tf32=True, supports=_no_initial_state,
          differentiable=True, setup=warm_up(lambda: fla_parallel, retune=RETUNE),
          prepare=_prepare_parallel, **_COMMON)
def fla_parallel(q, k, v, decay, *, scale, initial_state=None):
    """fla parallel_simple_gla: masked parallel form in blocks, per-token gate (Triton); no state."""
    B, _, N, _ = q.shape
    o, _ = _route("parallel_simple_gla")(
        q=time_major(q), k=time_major(k), v=time_major(v), g=per_token_log_decay(decay, B, N), scale=scale,
    )
    return o.transpose(1, 2)
