"""Launchers of leetbench's CUDA kernels: shape checks, launch plans, outputs allocated by torch.

Each operator takes the method contract's arguments (q, k [B,H,N,D]; v [B,H,N,E]; λ [H] float64; scale;
optional float32 initial state [B,H,D,E]) and returns (o, final_state) with o in v's dtype and the state in
float32. A plan (which template instance, grid, shared memory) depends only on shapes and dtype, so it is
cached; `setup_*` compile a problem's kernels ahead of the timed calls.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from leetbench.cuda_kernels import cupy_available, device_properties, kernel, use_torch_allocator

_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_DT_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SMEM_PER_SM = 228 * 1024  # Hopper: 228 KB per SM, at most 227 KB per block
SMEM_PER_BLOCK = 227 * 1024
CHUNK = 64


# ---- common argument handling ------------------------------------------------------------------------------

def _prepare(q, k, v, decay, initial_state):
    if q.dtype not in _DT or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of float32/float16/bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_cuda:
        raise ValueError("CuPy kernels need CUDA tensors")
    q, k, v = (x if x.is_contiguous() else x.contiguous() for x in (q, k, v))
    if decay.dtype != torch.float64 or decay.device != q.device:
        decay = decay.to(device=q.device, dtype=torch.float64)
    decay = decay.contiguous()
    if initial_state is not None:
        if initial_state.dtype != torch.float32 or not initial_state.is_contiguous():
            initial_state = initial_state.to(torch.float32).contiguous()
    return q, k, v, decay, initial_state


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ---- recurrent prefill and decode --------------------------------------------------------------------------

def recurrent_supports(D: int, E: int) -> str | None:
    if D > 256:
        return "cupy_recurrent keeps at most 256 state rows per block (D ≤ 256)"
    return None


@dataclass(frozen=True)
class _RecPlan:
    name: str
    grid: int
    block: int
    smem: int
    T: int


@functools.lru_cache(maxsize=None)
def _recurrent_plan(B: int, H: int, N: int, D: int, E: int, dt: int) -> _RecPlan:
    etiles = (E + 31) // 32
    if N == 1 and E % 4 == 0:
        rpt2 = max(1, (D + 31) // 32)
        return _RecPlan(f"decode_step<{dt},{rpt2},{'true' if dt == 0 else 'false'}>", B * H * etiles, 256, 0, 1)
    rpt = 1
    while 8 * rpt < D:
        rpt *= 2
    T = 32 if rpt <= 16 else 16
    T = min(T, max(1, N))
    dp = 8 * rpt
    smem = 4 * T * (2 * dp + 32 + 8 * 33)
    return _RecPlan(f"recurrent_fwd<{dt},{rpt},{'true' if dt == 0 else 'false'}>", B * H * etiles, 256, smem, T)


_REC_FILES = ("common.cuh", "recurrent.cu")


def recurrent(q, k, v, decay, *, scale, initial_state=None):
    """Token-by-token recurrence (decode fast path at N = 1): (o, final_state float32)."""
    q, k, v, decay, s0 = _prepare(q, k, v, decay, initial_state)
    B, H, N, D = q.shape
    E = v.shape[-1]
    plan = _recurrent_plan(B, H, N, D, E, _DT[q.dtype])
    o = torch.empty(B, H, N, E, dtype=v.dtype, device=v.device)
    sN = torch.empty(B, H, D, E, dtype=torch.float32, device=v.device)
    kern = kernel(_REC_FILES, plan.name, q.device.index or 0)
    i32, f32 = np.int32, np.float32
    if plan.name.startswith("decode_step"):
        args = (_ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(s0), _ptr(sN), _ptr(decay),
                i32(H), i32(D), i32(E), f32(scale))
    else:
        args = (_ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(s0), _ptr(sN), _ptr(decay),
                i32(H), i32(N), i32(D), i32(E), f32(scale), i32(plan.T))
    kern(plan.grid, plan.block, args, plan.smem)
    return o, sN


def setup_recurrent(problem) -> None:
    """Compile the kernel a problem needs (outside the timed region)."""
    if not cupy_available():
        return
    use_torch_allocator()
    n = 1 if problem.mode == "decode" else problem.length
    plan = _recurrent_plan(problem.batch, problem.heads, n, problem.dim, problem.E, _DT[_DT_NAMES[problem.dtype]])
    kernel(_REC_FILES, plan.name, torch.device(problem.device).index or 0)


# ---- chunked, tensor cores ---------------------------------------------------------------------------------

_CHUNK_FILES = ("common.cuh", "chunked.cu")


def chunked_supports(D: int, E: int, dtype: str = "bfloat16") -> str | None:
    if D not in (16, 32) and not (D % 64 == 0 and D <= 256):
        return f"cupy_chunked needs D in 16, 32, 64, 128, 192, 256 (got {D})"
    if dtype == "float32" and D > 128:
        return f"cupy_chunked's float32 tiles fit shared memory for D ≤ 128 (got {D}); use cupy_recurrent"
    if E % 16 or not _es_options(D, E, dtype == "float32"):
        return f"cupy_chunked needs E a multiple of 16 with E/16 ≤ 8 slices (got {E})"
    return None


def _es_options(D: int, E: int, f32: bool = False) -> list[int]:
    # ES = 64 needs ~255 registers at D = 128 and ran 3× slower per chunk than ES = 32 (H200): only for D ≤ 64
    return [es for es in (64, 32, 16) if E % es == 0 and E // es <= 8
            and chunk_smem(D, es, 2, f32) <= SMEM_PER_BLOCK and not (es == 64 and D > 64)]


def chunk_smem(D: int, ES: int, stages: int, f32: bool = False) -> int:
    if f32:
        qp, vp, sp, op = D + 8, ES + 8, D + 8, ES + 4
        return (128 + 2 * 80 * 4 + 2 * stages * CHUNK * qp * 4 + stages * CHUNK * vp * 4 + 2 * ES * sp * 4
                + 4 * 16 * op * 4)
    qp, vp = D + 8, ES + 8
    return 128 + 2 * 80 * 4 + 2 * stages * CHUNK * qp * 2 + stages * CHUNK * vp * 2 + 2 * D * vp * 2 + 4 * 16 * vp * 2


@dataclass(frozen=True)
class ChunkPlan:
    es: int       # columns of E per CTA
    cl: int       # E slices (CTAs per head) = E / es
    stages: int   # chunks in flight
    bf16: bool
    D: int
    f32: bool = False
    minb: int = 1  # CTAs per SM the kernel is compiled for (registers ≤ 64K / (160 · minb))

    @property
    def name(self) -> str:
        if self.f32:
            return f"chunk_f32<{self.D},{self.es},{self.cl},{self.stages}>"
        return (f"chunk_fwd<{self.D},{self.es},{self.cl},{self.stages},{'true' if self.bf16 else 'false'},"
                f"{self.minb}>")

    @property
    def smem(self) -> int:
        return chunk_smem(self.D, self.es, self.stages, self.f32)


@functools.lru_cache(maxsize=None)
def chunk_plan(B: int, H: int, D: int, E: int, bf16: bool, sm_count: int, es: int | None = None,
               stages: int | None = None, f32: bool = False, minb: int | None = None) -> ChunkPlan:
    """The launch plan: columns per CTA (ES), pipeline depth, CTAs per SM. Overrides are for benchmarks.

    The consumers are latency-bound with one warp per scheduler, so two CTAs per SM (a 2-stage pipeline,
    ≤ 200 registers) are preferred whenever the grid fills twice the SMs; otherwise the widest E slice that
    still gives (nearly) every SM a CTA (wider slices repeat Q Kᵀ less), one CTA per SM, deepest pipeline.
    """
    options = _es_options(D, E, f32)
    two = [c for c in options if not f32 and 2 * (chunk_smem(D, c, 2) + 1024) <= SMEM_PER_SM]
    if es is None:
        es = options[-1]
        for cand in options:
            if B * H * (E // cand) >= 0.9 * sm_count:
                es = cand
                break
        if minb is None:  # (ES = 16 at two per SM ran 5 % slower than ES = 32 at one, B=1 H=32 E=128, H200)
            for cand in (c for c in two if c >= 32):
                if B * H * (E // cand) >= 1.8 * sm_count:
                    es, minb = cand, 2
                    break
    if minb is None:
        minb = 1
    if stages is None:
        fits = [s for s in (2, 3, 4) if minb * (chunk_smem(D, es, s, f32) + 1024) <= SMEM_PER_SM
                and chunk_smem(D, es, s, f32) <= SMEM_PER_BLOCK]
        stages = max(fits) if fits else 2
    return ChunkPlan(es=es, cl=E // es, stages=stages, bf16=bf16, D=D, f32=f32, minb=minb)


def chunked(q, k, v, decay, *, scale, initial_state=None, plan: ChunkPlan | None = None):
    """Chunked algorithm on tensor cores: (o, final_state float32).

    float16 / bfloat16: mma.m16n8k16 with float32 accumulation. float32: 3xTF32 (float32 accuracy).
    """
    q, k, v, decay, s0 = _prepare(q, k, v, decay, initial_state)
    B, H, N, D = q.shape
    E = v.shape[-1]
    dev = q.device.index or 0
    f32 = q.dtype == torch.float32
    if plan is None:
        plan = chunk_plan(B, H, D, E, q.dtype == torch.bfloat16, device_properties(dev).multi_processor_count,
                          f32=f32)
    for t in (q, k, v):
        if t.data_ptr() % 16:
            raise ValueError("chunked: q, k, v must be 16-byte aligned")
    o = torch.empty(B, H, N, E, dtype=v.dtype, device=v.device)
    sN = torch.empty(B, H, D, E, dtype=torch.float32, device=v.device)
    kern = kernel(_CHUNK_FILES, plan.name, dev)
    i32 = np.int32
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(s0), _ptr(sN), _ptr(decay),
            i32(H), i32(N), i32(E), np.float32(scale))
    kern(B * H * plan.cl, 160, args, plan.smem)
    return o, sN


def setup_chunked(problem) -> None:
    if not cupy_available():
        return
    use_torch_allocator()
    dev = torch.device(problem.device).index or 0
    plan = chunk_plan(problem.batch, problem.heads, problem.dim, problem.E, problem.dtype == "bfloat16",
                      device_properties(dev).multi_processor_count, f32=problem.dtype == "float32")
    kernel(_CHUNK_FILES, plan.name, dev)
