"""Mamba-2's SSD kernel (package mamba-ssm 2.3.2.post1): `mamba_chunk_scan_combined`, pure Triton.

In Mamba's convention, per batch b and head h (state h_t of shape [headdim P, dstate N]):

    h_t = exp(dt_t · A_h) · h_{t-1} + dt_t · x_tᵀ B_t,    y_t = h_t C_t    (+ D_h · x_t, gated by z: unused)

Ours is S_t = λ_h S_{t-1} + k_tᵀ v_t, o_t = c · q_t S_t, so with

    dt = 1,  A_h = log λ_h,  x = v (P = E),  B = k,  C = c · q (N = D),  ngroups = H (B and C per head),

Mamba's state is h = Sᵀ ([B, H, E, D]): the initial state goes in transposed and the final state comes back
transposed (a view). Mamba sums the decay in log space (cumsum of dt·A per chunk, float32) and only forms
exp of non-positive differences, so λ = 1 (A = 0) and tiny λ are safe.

Algorithm (state space duality), five Triton launches: per chunk of C tokens (C = 128 here by default, the
fastest of 64 / 128 / 256 measured; `mamba2_ssd_c64` and `mamba2_ssd_c256` are the others) the cumulative sums of dt·A
(float32); each chunk's own E×D state (float32); a sequential pass carrying the state across chunks (float32,
kept for the output pass in the input dtype); the C×C scores C Bᵀ (float32: B·N·H·C elements in all); the
outputs, decay-masked scores times x plus C times the carried state. Dots are `tl.dot` at Triton's default
precision, TF32 for float32 inputs (no `input_precision` anywhere): `tf32=True`.
Complexity O(N · (C·(D + E) + D·E)).
It has an autograd backward (`MambaChunkScanCombinedFn.backward`).

Conversions, made once per input tensor by `leetbench.adapters` in `prepare` (untimed; the call only hits the
cache): x, B, C time-major ([B, N, H, ·], contiguous, as Mamba's users hold them), C = q·c rounded once to q's
dtype (a model folds c into its projection), dt = ones [B, N, H] float32, A = log λ float32 [H] (from float64
λ), S0ᵀ contiguous (the kernel reads it as float32). The output [B, N, H, E] in v's dtype goes back as a
transposed view; the final state is float32.

Limits: mamba-ssm 2.3.2's kernels compute pointer offsets in 32 bits (program id × stride, no int64 cast;
state-spaces/mamba#1015, open, reports silently wrong outputs or illegal memory accesses past 2^31), so a
problem is refused when a buffer exceeds 2^31 elements: the largest are the scores, B·⌈N/C⌉·H·C², or the
chunk states, B·⌈N/C⌉·H·E·D (B=8, H=32, N=65536, D=E=128: C=128 fits exactly, C=64 and 256 do not). Any D,
E and N otherwise (masked tiles; the last chunk may be partial). Prefill only. Memory: the chunk states in
float32 and the passed states in the input dtype are alive together, B·⌈N/C⌉·H·E·D·(4 + itemsize) bytes —
16 GiB in float32 at B=8, H=32, N=65536, D=E=128 (that row's peak on an H200, inputs included: 25.9 GB).

Install: `pip install wheel` then `MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install
--no-build-isolation --no-deps mamba-ssm==2.3.2.post1` (no compiled extensions; needs torch, triton, einops).
Source: https://github.com/state-spaces/mamba (mamba_ssm/ops/triton/ssd_combined.py, ssd_chunk_state.py,
ssd_state_passing.py, ssd_bmm.py, ssd_chunk_scan.py); Dao & Gu, "Transformers are SSMs", ICML 2024.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from types import ModuleType
from typing import Any, Callable

import torch

from leetbench import register
from leetbench.adapters import INT32_MAX, cached, log_decay_as, time_major, warm_up

KERNEL_MODULE = "mamba_ssm.ops.triton.ssd_combined"
# mamba_chunk_scan_combined has no default and Mamba2 modules use chunk_size=256, but 128 was the fastest of
# 64 / 128 / 256 on an H200 (bf16, H=32, D=E=128, B=1/8, N=1k–64k: 6 of 8 shapes, 7% ahead of 256 from
# N=16k, and the only one of the three under the 2^31-element limit at B=8, N=65536; commit 8f64f14,
# results/gpu-NVIDIA-H200/mamba/), so it is the default here.
DEFAULT_CHUNK = 128
OTHER_CHUNKS = (64, 256)  # measured beside the default, as mamba2_ssd_c64 / _c256
RETUNE = ("mamba_ssm",)  # its autotuners key on chunk and head sizes, not B or N: tune at every shape
INT32_ELEMENTS = INT32_MAX + 1  # offsets 0 … 2^31 − 1 fit the kernels' 32-bit pointer arithmetic


# ---- the Triton module, without mamba_ssm/__init__.py --------------------------------------------------

def ssd_module() -> ModuleType:
    """`mamba_ssm.ops.triton.ssd_combined`, importable without mamba-ssm's compiled extensions.

    The package's `__init__` imports `selective_scan_cuda` (a CUDA extension) and the model classes; a build
    with MAMBA_SKIP_CUDA_BUILD has no extension, so that import fails although the SSD kernel needs none of
    it. Then a bare package module (the package's path, its `__init__` not run) stands in for `mamba_ssm`.
    """
    try:
        return importlib.import_module(KERNEL_MODULE)
    except ImportError:
        if "mamba_ssm" in sys.modules:  # the package imported: the failure is the kernel module's own
            raise
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise
    sys.modules["mamba_ssm"] = importlib.util.module_from_spec(spec)  # sets __path__, executes nothing
    try:
        return importlib.import_module(KERNEL_MODULE)
    except BaseException:
        sys.modules.pop("mamba_ssm", None)
        raise


# ---- conversions (cached per input tensor; see leetbench.adapters) -------------------------------------

def _scaled_time_major(q: torch.Tensor, scale: float) -> torch.Tensor:
    # Scale first (q's layout, one rounding as `prescaled`), then one transposed copy: never aliases q.
    return (q * scale).transpose(1, 2).contiguous()


def _query(q: torch.Tensor, scale: float) -> torch.Tensor:
    """C = c·q as [B, N, H, D], rounded once to q's dtype."""
    return time_major(q) if scale == 1.0 else cached(q, _scaled_time_major, float(scale))


def _unit_steps(decay: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    return torch.ones(batch, length, decay.shape[0], dtype=torch.float32, device=decay.device)


def _transposed(state: torch.Tensor) -> torch.Tensor:
    return state.transpose(-1, -2).contiguous()


def _arguments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
               initial_state: torch.Tensor | None) -> dict[str, Any]:
    """Mamba's arguments for our inputs, each from the conversion cache (converted there on a miss)."""
    B, _, N, _ = q.shape
    return dict(x=time_major(v), dt=cached(decay, _unit_steps, B, N), A=log_decay_as(decay, torch.float32),
                B=time_major(k), C=_query(q, scale),
                initial_states=None if initial_state is None else cached(initial_state, _transposed))


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
            initial_state: torch.Tensor | None = None) -> None:
    """Untimed, before every call: make the conversions the call will find in the cache."""
    _arguments(q, k, v, decay, scale, initial_state)


# ---- what the kernel can run ----------------------------------------------------------------------------

def buffers(problem: Any, chunk: int) -> dict[str, int]:
    """Elements of the largest tensors the kernels index, by name (for the 32-bit offset limit)."""
    B, H, N, D, E = problem.batch, problem.heads, problem.length, problem.dim, problem.E
    chunks = math.ceil(N / chunk)
    return {"x and the output, B·N·H·E": B * N * H * E, "B and C, B·N·H·D": B * N * H * D,
            "C·Bᵀ scores, B·⌈N/C⌉·H·C²": B * chunks * H * chunk * chunk,
            "chunk states, B·⌈N/C⌉·H·E·D": B * chunks * H * E * D}


def supports_for(chunk: int) -> Callable[[Any], str | None]:
    """`supports=` of the route with chunks of `chunk`: None, or why its buffers are too large."""

    def supports(problem: Any) -> str | None:
        name, n = max(buffers(problem, chunk).items(), key=lambda item: item[1])
        if n > INT32_ELEMENTS:
            return (f"{name} = {n} elements exceeds 2^31 = {INT32_ELEMENTS}: mamba-ssm 2.3.2's Triton kernels "
                    f"use 32-bit offsets (state-spaces/mamba#1015)")
        return None

    return supports


# ---- the methods ------------------------------------------------------------------------------------------

def _route(chunk: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def mamba2_ssd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
                   initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, final = ssd_module().mamba_chunk_scan_combined(
            **_arguments(q, k, v, decay, scale, initial_state), chunk_size=chunk, return_final_states=True)
        return out.transpose(1, 2), final.transpose(-1, -2)

    mamba2_ssd.__doc__ = (f"mamba-ssm mamba_chunk_scan_combined (Mamba-2 SSD): chunks of {chunk}, float32 state "
                          "(Triton, TF32 dots).")
    return mamba2_ssd


def _register(name: str, chunk: int) -> None:
    fn = _route(chunk)
    fn.__name__ = fn.__qualname__ = name
    register(name=name, family="peer:mamba2", complexity=f"O(N·(C·(D + E) + D·E)), C={chunk}", devices=("cuda",),
             dtypes=("float32", "float16", "bfloat16"), tf32=True, requires=("mamba_ssm", "triton", "einops"),
             supports=supports_for(chunk), setup=warm_up(lambda: fn, retune=RETUNE), prepare=prepare,
             differentiable=True)(fn)


_register("mamba2_ssd", DEFAULT_CHUNK)
for _chunk in OTHER_CHUNKS:
    _register(f"mamba2_ssd_c{_chunk}", _chunk)
