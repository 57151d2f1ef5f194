"""Launchers of leetbench's CUDA kernels: shape checks, launch plans, outputs allocated by torch.

Each operator takes the method contract's arguments (q, k [B,H,N,D]; v [B,H,N,E]; λ [H] float64; scale;
optional float32 initial state [B,H,D,E]) and returns (o, final_state) with o in v's dtype and the state in
float32. A plan (which template instance, grid, shared memory) depends only on shapes, dtype and the device,
so it is cached; `setup_*` compile a problem's kernels ahead of the timed calls. Device limits (SM count,
shared memory) are read from the device, and the kernels' shared-memory sizes from the compiled module
(`chunk_layout`), so chunked.cu is the one definition of its layouts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from leetbench.cuda_kernels import cupy_available, device_limits, kernel, precompile, use_torch_allocator
from leetbench.cuda_kernels import segments as sp
from leetbench.cuda_kernels.tensor_maps import token_map

_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_DT_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHUNK = sp.CHUNK


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
    return _recurrent_launch(q, k, v, decay, scale, s0, torch.empty(B, H, N, v.shape[-1], dtype=v.dtype,
                                                                     device=v.device), N)


def recurrent_step(q, k, v, decay, *, scale, state):
    """One decode token on q, k [B,H,D], v [B,H,E] and the float32 state [B,H,D,E]: (o [B,H,E], new state).
    The kernels read raw pointers, so these are the N = 1 tensors without the token axis (no views made)."""
    q, k, v, decay, s0 = _prepare(q, k, v, decay, state)
    B, H, D = q.shape
    return _recurrent_launch(q, k, v, decay, scale, s0, torch.empty(B, H, v.shape[-1], dtype=v.dtype,
                                                                     device=v.device), 1)


def _recurrent_launch(q, k, v, decay, scale: float, s0, o, N: int):
    B, H, D, E = q.shape[0], q.shape[1], q.shape[-1], v.shape[-1]
    plan = _recurrent_plan(B, H, N, D, E, _DT[q.dtype])
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
_WG_FILES = ("common.cuh", "chunked.cu", "hopper.cuh", "chunked_wg.cu", "chunked_wg32.cu", "chunked_wg4.cu",
             "chunked_wglb.cu")  # gen 2
CHUNKED_FILES = tuple(dict.fromkeys(_CHUNK_FILES + _WG_FILES))  # every source a chunked kernel compiles from
OPT_SCALE16 = 1  # chunked.cu OPT bit: float16 state copy scaled by powers of two (never Inf)
OPT_ONELOOP = 2  # chunked.cu OPT bit: one consumer loop, one bar.sync (compute-sanitizer synccheck passes)
_LAYOUT_KIND = {"f32": 0, "half": 1, "state16": 2, "state32": 3}  # chunk_layout's KIND
_ES_ALL = (128, 64, 32, 16)
_STAGES = (2, 3, 4)
_SCAN = "segment_scan<4>"
_layouts: dict[tuple[str, int, int, int, int], int] = {}


def smem_bytes(kind: str, D: int, es: int, stages: int, dev: int) -> int:
    """Dynamic shared memory of a kernel instance (kind: f32, half, state16, state32 in chunked.cu; wg in
    chunked_wg.cu with its two- and three-warpgroup forms wg2, wg3 and its state pass wgstate, wg32 in
    chunked_wg32.cu, whose one staging slot makes `stages` 1, wg32s, its state pass with two sets of pieces
    and stagings, and wg32x2, its state chain apart with two state copies), as the compiled module defines it
    (chunk_layout, chunk_wg_layout, chunk_wg2_layout, chunk_wg3_layout, chunk_wg_state_layout, chunk_wg32_layout,
    chunk_wg32x2_layout; wg4: chunk_wg4_layout, two E slices of `es` columns per CTA in chunked_wg4.cu; wglb:
    chunk_wg2lb_layout in chunked_wglb.cu, `es` 64)."""
    key = (kind, D, es, stages, dev)
    if key not in _layouts:
        if kind in ("wg", "wg2", "wg3", "wg4", "wg4q", "wg32", "wg32s", "wg32x2", "wgstate", "wglb"):
            _read_wg_layouts(dev)
        else:
            _read_layouts(dev)
    return _layouts[key]


_LAYOUT_D = (16, 32, 64, 128, 192, 256)  # every D chunked_supports admits


def _read_back(files: tuple[str, ...], names: list[str], dev: int) -> list[int]:
    """The int each one-thread layout kernel `names` writes: one compile, one launch each, one sync."""
    precompile(files, names, dev)
    out = torch.zeros(len(names), dtype=torch.int32, device=torch.device("cuda", dev))
    for i, name in enumerate(names):
        kernel(files, name, dev)(1, 1, (out[i:].data_ptr(),))
    return [int(x) for x in out.tolist()]


def _read_layouts(dev: int) -> None:
    """Every chunked.cu layout (kind, D, ES, stages), from chunk_layout."""
    combos = [(kind, D, es, st) for kind in _LAYOUT_KIND for D in _LAYOUT_D for es in _ES_ALL for st in _STAGES]
    names = [f"chunk_layout<{_LAYOUT_KIND[kind]},{D},{es},{st}>" for kind, D, es, st in combos]
    for (kind, D, es, st), nbytes in zip(combos, _read_back(_CHUNK_FILES, names, dev)):
        _layouts[(kind, D, es, st, dev)] = nbytes


_WG_D = (64, 128)
_WG_ES = (64, 32)
_WG32_PRODUCERS = 4  # chunk_wg32's producer warps: the chunk's copies and its maxima split four ways


def _read_wg_layouts(dev: int) -> None:
    """Every generation-2 layout: 16-bit (D, ES, stages) from chunk_wg_layout, chunk_wg2_layout, chunk_wg3_layout,
    chunk_wg4_layout, chunk_wg_state_layout and chunk_wg2lb_layout (ES = 64), float32 (D, ES) from
    chunk_wg32_layout, chunk_wg32_state_layout and chunk_wg32x2_layout."""
    combos = [(kind, D, es, st) for kind in ("wg", "wg2", "wg3", "wg4", "wgstate") for D in _WG_D for es in _WG_ES
              for st in _STAGES]
    combos += [("wg4q", D, es, st) for D in _WG_D for es in _WG_ES for st in _STAGES]  # (no output staging)
    combos += [(kind, D, es, 1) for kind in ("wg32", "wg32s", "wg32x2") for D in _WG_D for es in _WG_ES]
    combos += [("wglb", D, 64, st) for D in _WG_D for st in _STAGES]
    template = {"wg": "chunk_wg_layout<{},{},{}>", "wg2": "chunk_wg2_layout<{},{},{}>",
                "wg3": "chunk_wg3_layout<{},{},{}>", "wg4": "chunk_wg4_layout<{},{},{}>",
                "wg4q": "chunk_wg4_layout<{},{},{},true>",
                "wgstate": "chunk_wg_state_layout<{},{},{}>", "wg32": "chunk_wg32_layout<{},{}>",
                "wg32s": "chunk_wg32_state_layout<{},{}>", "wg32x2": "chunk_wg32x2_layout<{},{}>",
                "wglb": "chunk_wg2lb_layout<{0},{2}>"}
    names = [template[kind].format(D, es, st) for kind, D, es, st in combos]
    for (kind, D, es, st), nbytes in zip(combos, _read_back(_WG_FILES, names, dev)):
        _layouts[(kind, D, es, st, dev)] = nbytes


@functools.lru_cache(maxsize=None)
def device_gen(dev: int) -> int:
    """The newest chunked-kernel generation a device runs: 2 (wgmma, chunked_wg.cu) on compute capability
    9.0 (H100, H200: sm_90a code runs on exactly those), else 1 (chunked.cu, any card since sm_80)."""
    return 2 if torch.cuda.get_device_capability(dev) == (9, 0) else 1


def wg_supports(D: int, E: int, dtype: str) -> bool:
    """Shapes generation 2 handles, every dtype (others take generation 1 on every card)."""
    return D in _WG_D and E % 32 == 0


def _es_candidates(D: int, E: int) -> list[int]:
    # ES = 64 ran slower than ES = 32 at the same CTAs per SM wherever it was measured (H200, bf16, H=32,
    # N=32768): 3× per chunk at D = 128 (~255 registers), 1.2–2.2× at D = 64 with E = 64, 128, 256 and B = 1, 4
    # (scripts/KERNEL_NOTES.md, v7). So for D ≥ 64 it is kept only where no narrower slice is allowed (E = 512).
    fits = [es for es in (64, 32, 16) if E % es == 0 and E // es <= 8]
    narrow = [es for es in fits if es < 64]
    return narrow if D >= 64 and narrow else fits


def chunked_supports(D: int, E: int, dtype: str = "bfloat16") -> str | None:
    """Shape rules (no device needed); whether the tiles fit a device's shared memory is checked by the plan."""
    if D not in (16, 32) and not (D % 64 == 0 and D <= 256):
        return f"cupy_chunked needs D in 16, 32, 64, 128, 192, 256 (got {D})"
    if dtype == "float32" and D > 128:
        return f"cupy_chunked's float32 tiles fit shared memory for D ≤ 128 (got {D}); use cupy_recurrent"
    if E % 16 or not _es_candidates(D, E):
        return f"cupy_chunked needs E a multiple of 16 with E/16 ≤ 8 slices (got {E})"
    return None


def _es_options(D: int, E: int, f32: bool, dev: int) -> list[int]:
    lim = device_limits(dev)
    kind = "f32" if f32 else "half"
    return [es for es in _es_candidates(D, E) if smem_bytes(kind, D, es, 2, dev) <= lim.smem_block]


def default_opt(f32: bool, bf16: bool) -> int:
    """chunked.cu options by default: the scaled state copy for float16; four consumer loops, one per warp.

    One shared loop (OPT_ONELOOP) meets at a single barrier instruction, so compute-sanitizer's synccheck
    passes, but it ran 1.25–1.9× slower on an H200 (bf16 B=1 N=16384: 0.910 ms against 0.486 ms; B=8
    N=65536: 13.84 against 11.11; scripts/KERNEL_NOTES.md, v6), so the four loops stay the default.
    """
    return 0 if f32 or bf16 else OPT_SCALE16


@dataclass(frozen=True)
class ChunkPlan:
    es: int       # columns of E per CTA
    cl: int       # E slices (CTAs per head and segment) = E / es
    stages: int   # chunks in flight
    bf16: bool
    D: int
    f32: bool = False
    minb: int = 1  # CTAs per SM the kernel is compiled for (registers ≤ 64K / (threads · minb))
    opt: int | None = None  # chunked.cu OPT bits; None: default_opt
    smem: int = 0  # dynamic shared memory (bytes); 0: read from the module at launch
    gen: int = 1   # 1: chunked.cu (mma.sync, four consumer warps); 2: chunked_wg.cu (wgmma, warpgroups)
    producers: int = 1  # producer warps (chunk_wg32's NPW; one in every other kernel)
    wgs: int = 1  # generation 2: consumer warpgroups (2: chunk_wg2, outputs and state apart; split_plan; float32
    #               chunk_wg32x2, float32_split_plan; 3: chunk_wg3, two output warpgroups taking alternate chunks;
    #               two_output_plan)
    copies: int = 1  # chunk_wg's 16-bit state copies (2: one written while the other is read; two_copy_plan)
    psplit: bool = False  # chunk_wg32: the producer warps split the chunk into pieces (producer_split_plan)
    pipe: bool = False  # chunk_wg2: the output warps issue chunk c + 1's products before storing c's (pipe_plan)
    pair: bool = False  # chunk_wg4: a CTA covers two E slices of `es` (cl = E / 2es), Q Kᵀ formed once for both
    #                     (wgs 3: one output warpgroup, a state warpgroup per slice; shared_scores_plan)
    qstage: bool = False  # chunk_wg4: outputs staged in the slot's Q tile (QSTAGE; a third stage at D = 128)
    early: bool = False  # chunk_wg2, chunk_wg4: the producer announces a chunk before it waits for a slot (EARLY;
    #                      early_plan)
    wide: bool = False  # chunk_wg4: the output warps' Q S_in and P V over both slices as one product each (WIDE;
    #                     wide_plan)
    tstate: bool = False  # chunk_wg2 at ES = 64: the state warps hold Sᵀ, Ṽᵀ formed in registers (TST;
    #                       transposed_state_plan)
    qreg: bool = False  # chunk_wg2: the output warps' Q products with Q loaded once into registers (QREG;
    #                     register_q_plan)
    bulk: bool = False  # chunk_wg2: the output rows stored by bulk copies from their staging (BULK; bulk_store_plan)
    direct: bool = False  # chunk_wg2, chunk_wg4: the output rows stored straight from the accumulators, no staging
    #                       (DIRECT; direct_store_plan)
    tma: bool = False  # chunk_wg2 at ES = 64: its producer loads through tensor maps (chunk_wg2_tma; tma_load_plan)

    @property
    def opts(self) -> int:
        return default_opt(self.f32, self.bf16) if self.opt is None else self.opt

    @property
    def wg2(self) -> bool:
        """Whether this is chunk_wg2 (16-bit, the state warpgroup apart), whose forms pipe_plan,
        transposed_state_plan, register_q_plan, bulk_store_plan and direct_store_plan take."""
        return self.gen == 2 and not self.f32 and self.wgs == 2 and not self.pair

    @property
    def threads(self) -> int:
        """Threads per CTA: the consumer warpgroups and the producer warps."""
        return 128 * self.wgs + 32 * self.producers

    @property
    def kind(self) -> str:
        """Its shared-memory layout: wg2 is chunked_wg.cu's with two state copies (chunk_wg2's, and chunk_wg's
        at two copies)."""
        if self.gen == 2:
            if self.f32:
                return "wg32x2" if self.wgs == 2 else "wg32"
            if self.pair:  # (DIRECT stages nowhere: QSTAGE's layout without its staging)
                return "wg4q" if self.qstage or self.direct else "wg4"
            return "wg3" if self.wgs == 3 else ("wg2" if self.wgs == 2 or self.copies == 2 else "wg")
        return "f32" if self.f32 else "half"

    @property
    def files(self) -> tuple[str, ...]:
        return _WG_FILES if self.gen == 2 else _CHUNK_FILES

    @property
    def name(self) -> str:
        if self.gen == 2 and self.f32:
            if self.wgs == 2:
                return f"chunk_wg32x2<{self.D},{self.es},{self.cl},{self.producers}>"
            psplit = ",true" if self.psplit else ""  # the kernel's PSPLIT, false by default
            return f"chunk_wg32<{self.D},{self.es},{self.cl},{self.producers}{psplit}>"
        if self.gen == 2:
            bf16 = "true" if self.bf16 else "false"
            if self.pair:  # the kernel's QSTAGE, EARLY, WIDE and DIRECT, false by default
                flags = _flags(self.qstage, self.early, self.wide, self.direct)
                return f"chunk_wg4<{self.D},{self.es},{self.cl},{self.stages},{bf16}{flags}>"
            if self.wgs == 3:
                return f"chunk_wg3<{self.D},{self.es},{self.cl},{self.stages},{bf16}>"
            if self.wgs == 2 and self.tma:  # the kernel's PIPE, TST and DIRECT, false by default
                return (f"chunk_wg2_tma<{self.D},{self.es},{self.cl},{self.stages},{bf16}"
                        f"{_flags(self.pipe, self.tstate, self.direct)}>")
            if self.wgs == 2:  # the kernel's PIPE, EARLY, TST, QREG, BULK and DIRECT, false by default
                return (f"chunk_wg2<{self.D},{self.es},{self.cl},{self.stages},{bf16},{self.minb}"
                        f"{_flags(self.pipe, self.early, self.tstate, self.qreg, self.bulk, self.direct)}>")
            copies = ",2" if self.copies == 2 else ""  # the kernel's COPIES, 1 by default
            return f"chunk_wg<{self.D},{self.es},{self.cl},{self.stages},{bf16},{self.minb}{copies}>"
        if self.f32:
            return f"chunk_f32<{self.D},{self.es},{self.cl},{self.stages},{self.opts}>"
        return (f"chunk_fwd<{self.D},{self.es},{self.cl},{self.stages},{'true' if self.bf16 else 'false'},"
                f"{self.minb},{self.opts}>")

    def sized(self, dev: int) -> "ChunkPlan":
        return self if self.smem else replace(self, smem=smem_bytes(self.kind, self.D, self.es, self.stages, dev))


# chunk_wg2's own forms (ChunkPlan's pipe, tstate, qreg, bulk, direct, tma) off: a plan another transform builds
# starts without them.
_WG2_FORMS_OFF = {"pipe": False, "tstate": False, "qreg": False, "bulk": False, "direct": False, "tma": False}


def _flags(*flags: bool) -> str:
    """Trailing bool template arguments that default to false: each written up to the last true one."""
    last = max((i + 1 for i, f in enumerate(flags) if f), default=0)
    return "".join(f",{str(f).lower()}" for f in flags[:last])


@functools.lru_cache(maxsize=None)
def chunk_plan(B: int, H: int, D: int, E: int, dtype: str, dev: int = 0, es: int | None = None,
               stages: int | None = None, minb: int | None = None, opt: int | None = None,
               gen: int | None = None, wgs: int | None = None, pair: bool | None = None) -> ChunkPlan:
    """The one-pass launch plan (B·H·E/ES CTAs): kernel generation, columns per CTA (ES), pipeline depth,
    CTAs per SM. gen None: 2 where the device runs it and the shape is one it handles (wg_supports), else 1.
    wgs (generation 2): consumer warpgroups; None: the rule of _wg_plan where the caller pinned neither minb nor
    stages (a pinned chunk_wg shape stays one warpgroup), 1, 2 (split_plan; float32: float32_split_plan) or 3
    (two_output_plan, 16-bit).
    pair: two E slices a CTA (shared_scores_plan; its outputs staged in Q where that deepens the pipeline, its
    output products over both slices: _paired); None: the rule of _pairs where the caller pinned nothing.
    """
    if wgs not in (None, 1, 2, 3):
        raise ValueError(f"chunk_plan: wgs={wgs} consumer warpgroups (valid: 1, 2, 3 or None for the rule)")
    if gen is None:
        gen = 2 if device_gen(dev) == 2 and wg_supports(D, E, dtype) else 1
    early = False  # chunk_wg2's producer announcing early, where the rule (not the caller) took chunk_wg2
    if gen == 2:
        plan = _wg_plan(B, H, D, E, dtype, dev, es, stages, minb)
        if pair is None and wgs is None and es is None and minb is None and stages is None:
            pair = _pairs(plan, B * H, dev)
        if not pair and wgs is None and minb is None and stages is None and not plan.f32:
            # Two consumer warpgroups where chunk_wg would run one CTA per SM: the SM then has the output warps'
            # and the state chain's instructions to interleave. H200, bf16, H=32 (KERNEL_NOTES v19): D=E=128 at
            # B=8 1.821 → 1.776 ms (N=16384), 7.327 → 7.088 (65536), B=1 through P=2 0.308 → 0.284, 1.127 →
            # 1.059; D=64, E=256, B=1 0.328 → 0.315, 1.311 → 1.241. Where chunk_wg runs two CTAs per SM (D=64,
            # E=256, B=8) chunk_wg2 at one was 17% slower. Its producer announces early (KERNEL_NOTES v33: with
            # a chunk copied at ≈ 1 instruction per cp.async; bf16 B=1, D=E=128 through P=2 2-3% at N=16384 in
            # three runs, 0.237 → 0.231 ms; within the spread at N=65536, at B=4 and in fp16, never slower).
            # Its state warps hold Sᵀ where the slice is 64 columns (TST, KERNEL_NOTES v39: no Ṽ through shared
            # memory; H200, B=1, H=32, five interleaved rounds: D=E=128 through P=2 bf16 0.229 → 0.222 ms at
            # N=16384, 0.912 → 0.855 at 65536, fp16 0.266 → 0.247, 1.042 → 0.940; D=64, E=256 one pass bf16
            # level, fp16 0.303 → 0.260, 1.238 → 1.026). Its output warps store their rows straight from the
            # accumulators (DIRECT, KERNEL_NOTES v53: no staging through shared memory), and beside TST pipelined
            # behind the next chunk's products (PIPE). H200, B=1, H=32, D=E=128 through P=2, five interleaved
            # rounds: bf16 0.226 → 0.224 (DIRECT) → 0.217 ms (and PIPE) at N=16384, 0.903 → 0.899 → 0.867 at
            # 65536, fp16 0.253 → 0.246 → 0.245, 1.029 → 0.993 → 0.967; at ES = 32 (one pass at short N) PIPE is
            # slower: D=E=128, N=4096 0.067 (DIRECT) against 0.072 ms (and PIPE), D=128, E=64 0.065 against 0.070.
            # At ES = 64 its producer loads each chunk through tensor maps (chunk_wg2_tma, KERNEL_NOTES v54/v55:
            # one lane's D/32 + 1 tensor copies instead of the warp's ≈ 80 cp.async a lane). H200, B=1, H=32, five
            # interleaved rounds: D=E=128 through P=2 bf16 0.215 → 0.200 ms at N=16384, 0.852 → 0.763 at 65536,
            # fp16 0.248 → 0.227, 0.960 → 0.874; D=64, E=256 one pass bf16 0.262 → 0.220, 1.020 → 0.832; the
            # wider grid at N=32768 (three rounds) 3–20% faster but at D=128, E=64 (one slice a CTA, near the copy
            # bandwidth), where it was 1–4% slower in bf16 and fp16: B=8, H=32 1.550 → 1.587, B=4 0.787 → 0.804.
            wgs = 2 if plan.minb == 1 else 1
            early = wgs == 2
    else:
        plan = _mma_plan(B, H, D, E, dtype, dev, es, stages, minb, opt)
    if pair:
        if wgs is not None:
            raise ValueError(f"chunk_plan: pair=True is chunk_wg4 with its own warpgroups (got wgs={wgs})")
        return _paired(plan, dev)  # refused by name but for 16-bit gen 2
    if wgs == 3:
        return two_output_plan(plan, dev)
    if wgs != 2:
        return plan
    if plan.f32 and plan.gen == 2:
        return float32_split_plan(plan, dev)  # chunk_wg32x2 (named: not the rule)
    split = split_plan(plan, dev, B * H * plan.cl)  # refused by name but for 16-bit gen 2
    if not early:
        return split
    rule = direct_store_plan(early_plan(split), dev)
    if split.es != 64:
        return rule
    rule = transposed_state_plan(pipe_plan(rule))
    return rule if (D, E) == (128, 64) else tma_load_plan(rule)


def _pairs(plan: ChunkPlan, BH: int, dev: int) -> bool:
    """Whether the one-pass plan `plan` (for B·H = `BH`) runs as chunk_wg4, two of its E slices a CTA.

    At D = 128 where the halved grid still has a CTA for (nearly) every SM: the scores are formed once for two
    slices, 14% fewer products at E = 128. H200, bf16 (KERNEL_NOTES v26): D=E=128, N=32768 B=8 H=32 3.634 →
    3.343 ms, B=4 H=32 1.793 → 1.663, B=8 H=16 1.750 → 1.651; D=128, E=256 B=8 6.963 → 6.604; fp16 B=8, N=16384
    1.902 → 1.767. Slower with half the SMs idle (B=4, H=16, D=E=128: 0.869 → 1.655) and at D = 64 (B=8, H=16,
    E=256: 2.082 → 2.147; the products there are not what holds the kernel).
    """
    if plan.gen != 2 or plan.f32 or plan.D != 128 or plan.cl % 2:
        return False
    sms = device_limits(dev).sm_count
    return BH * plan.cl // 2 >= sms - sms // 16


def _paired(plan: ChunkPlan, dev: int) -> ChunkPlan:
    """chunk_plan's chunk_wg4: its outputs stored straight from the accumulators (DIRECT, KERNEL_NOTES v53), in
    the layout without output staging and its deepest pipeline — the third stage at D = 128 that staging the
    outputs in Q (QSTAGE) bought before (v28, H200, H=32, D=128 at ES=64, three stages instead of two: bf16
    D=E=128, N=32768 B=8 3.282 → 2.976 ms, B=4 1.648 → 1.464; D=128, E=256, N=32768 B=8 6.611 → 5.689), without
    the output warps meeting to stage in Q (v53, B=8, H=32, D=E=128, QSTAGE → DIRECT: bf16 1.369 → 1.306 ms at
    N=16384, 5.400 → 5.349 at 65536; fp16 1.616 → 1.370, 6.166 → 5.756). The output warps' products span both
    slices (WIDE; v31, bf16, N=32768, one run: D=E=128 B=4 1.465 → 1.417, B=8 2.942 → 2.869; E=256 B=4 2.864 →
    2.762, B=8 5.725 → 5.605)."""
    return wide_plan(direct_store_plan(shared_scores_plan(plan, dev), dev))


def _wg_plan(B: int, H: int, D: int, E: int, dtype: str, dev: int, es: int | None, stages: int | None,
             minb: int | None) -> ChunkPlan:
    """Generation 2: ES = 64 (Q Kᵀ computed once per 64 columns of E) when that still gives nearly every SM a
    CTA, else 32; two CTAs per SM when there are more CTAs than SMs and two fit; deepest pipeline that fits.
    float32 (chunk_wg32, three float16 products per product): one CTA per SM, ES = 64 where its tiles fit."""
    if not wg_supports(D, E, dtype):
        raise ValueError(f"cupy_chunked generation 2 handles D in {_WG_D}, E a multiple of 32 "
                         f"(got D={D}, E={E}, {dtype})")
    lim = device_limits(dev)
    options = [c for c in _WG_ES if E % c == 0]
    if dtype == "float32":  # chunk_wg32: one CTA per SM, one staging slot; ES = 64 where its tiles fit
        options = [c for c in options if lim.blocks_fit(smem_bytes("wg32", D, c, 1, dev), 1)]
        if not options:
            raise ValueError(f"cupy_chunked generation 2, float32: no E slice of E={E} fits shared memory at D={D}")
        es = es or next((c for c in options if B * H * (E // c) >= 0.9 * lim.sm_count), options[-1])
        if es not in options:
            raise ValueError(f"cupy_chunked generation 2, float32: ES={es} is not a slice of E={E} whose tiles fit "
                             f"shared memory at D={D} (valid: {options})")
        return ChunkPlan(es=es, cl=E // es, stages=1, bf16=False, D=D, f32=True, minb=1, gen=2,
                         smem=smem_bytes("wg32", D, es, 1, dev), producers=_WG32_PRODUCERS)
    if es is None:
        es = next((c for c in options if B * H * (E // c) >= 0.9 * lim.sm_count), options[-1])
    ctas = B * H * (E // es)
    if minb is None:
        minb = 2 if ctas > lim.sm_count and lim.blocks_fit(smem_bytes("wg", D, es, 2, dev), 2) else 1
    if stages is None:
        fits = [s for s in _STAGES if lim.blocks_fit(smem_bytes("wg", D, es, s, dev), minb)]
        stages = max(fits) if fits else 2
    return ChunkPlan(es=es, cl=E // es, stages=stages, bf16=dtype == "bfloat16", D=D, minb=minb, gen=2,
                     smem=smem_bytes("wg", D, es, stages, dev))


def _depths(kind: str, plan: "ChunkPlan | LookbackPlan", dev: int, per_sm: int) -> list[int]:
    """Pipeline depths at which `plan`'s tiles in layout `kind` (wg2: two state copies, wg3: and a second output
    staging) fit `per_sm` CTAs on an SM."""
    lim = device_limits(dev)
    return [s for s in _STAGES if lim.blocks_fit(smem_bytes(kind, plan.D, plan.es, s, dev), per_sm)]


def _deepest(kind: str, plan: "ChunkPlan | LookbackPlan", dev: int, per_sm: int, form: str) -> dict:
    """The deepest pipeline of layout `kind` at `per_sm` CTAs per SM, as ChunkPlan fields (stages, smem, minb);
    ValueError naming the kernel `form` where none fits."""
    fits = _depths(kind, plan, dev, per_sm)
    if not fits:
        raise ValueError(f"{form}: no pipeline depth of D={plan.D}, ES={plan.es} fits shared memory")
    return {"stages": max(fits), "smem": smem_bytes(kind, plan.D, plan.es, max(fits), dev), "minb": per_sm}


def _wg16(plan: ChunkPlan, what: str) -> None:
    if plan.gen != 2 or plan.f32:
        raise ValueError(f"{what} are a generation-2 16-bit plan (got {plan.name})")


def two_copy_plan(plan: ChunkPlan, dev: int = 0) -> ChunkPlan:
    """`plan` (generation 2, 16-bit, one consumer warpgroup) with its state copy in two buffers (chunk_wg's
    COPIES = 2: chunk c + 1's copy written while chunk c's Q Kᵀ and Q S_in run): as many CTAs per SM where
    the second copy still fits two, the deepest pipeline that fits."""
    _wg16(plan, "two state copies")
    if plan.wgs != 1:
        raise ValueError(f"two state copies are chunk_wg's (got {plan.name})")
    minb = plan.minb if _depths("wg2", plan, dev, plan.minb) else 1
    return replace(plan, copies=2, **_WG2_FORMS_OFF,
                   **_deepest("wg2", plan, dev, minb, "chunk_wg with two state copies"))


def producer_split_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (generation 2, float32: chunk_wg32) with the producer warps splitting each chunk into its float16
    pieces, off the consumers' chain (PSPLIT; same shared memory)."""
    if plan.gen != 2 or not plan.f32:
        raise ValueError(f"the producers' split is chunk_wg32's, a generation-2 float32 plan (got {plan.name})")
    return replace(plan, psplit=True)


def float32_split_plan(plan: ChunkPlan, dev: int = 0) -> ChunkPlan:
    """`plan` (generation 2, float32: chunk_wg32) with its state chain apart (chunk_wg32x2, KERNEL_NOTES v45): four
    output warps splitting the chunk and forming the outputs, four state warps forming Kᵀ Ṽ, the float32 update
    and the state copy, double-buffered; the same producer warps. One CTA per SM; refused where the second state
    copy does not fit (D = 128 at ES = 64)."""
    if plan.gen != 2 or not plan.f32 or plan.psplit:
        raise ValueError(f"the float32 state chain apart is chunk_wg32's without PSPLIT (got {plan.name})")
    smem = smem_bytes("wg32x2", plan.D, plan.es, 1, dev)
    if not device_limits(dev).blocks_fit(smem, 1):
        raise ValueError(f"chunk_wg32x2 at D={plan.D}, ES={plan.es} needs {smem} bytes of shared memory, more than "
                         "a block may take (valid: ES=32 at D=128)")
    return replace(plan, wgs=2, smem=smem)


def split_plan(plan: ChunkPlan, dev: int = 0, ctas: int | None = None) -> ChunkPlan:
    """`plan` (generation 2, 16-bit) with two consumer warpgroups (chunk_wg2: the state chain apart from the
    outputs, CTAs of 288 threads): two CTAs per SM where the grid (`ctas`, default none) has more CTAs than SMs
    and two fit (≤ 96 registers a thread, as the compiler bounds 18 warps on four schedulers: ES = 32), else
    one; the deepest pipeline whose tiles and two state copies fit that; the plain producer (early_plan adds
    EARLY)."""
    _wg16(plan, "two consumer warpgroups")
    if plan.pair:
        raise ValueError(f"two consumer warpgroups take one E slice a CTA (got {plan.name})")
    small = plan.es == 32  # at the bound (sm_90a): ≤ 16 bytes of stack; D = 64 at ES = 64 would spill 80-88
    minb = 2 if small and ctas is not None and ctas > device_limits(dev).sm_count and _depths("wg2", plan, dev, 2) \
        else 1
    return replace(plan, wgs=2, copies=1, early=False, **_WG2_FORMS_OFF,
                   **_deepest("wg2", plan, dev, minb, "chunk_wg2"))


def two_output_plan(plan: ChunkPlan, dev: int = 0) -> ChunkPlan:
    """`plan` (generation 2, 16-bit) with chunk_wg2's roles and two output warpgroups taking alternate chunks
    (chunk_wg3: CTAs of 416 threads, one per SM), the deepest pipeline whose tiles, two state copies and two
    output stagings fit."""
    _wg16(plan, "two output warpgroups")
    if plan.pair or plan.early:
        raise ValueError(f"two output warpgroups take one E slice a CTA and the plain producer (got {plan.name})")
    return replace(plan, wgs=3, copies=1, **_WG2_FORMS_OFF, **_deepest("wg3", plan, dev, 1, "chunk_wg3"))


def _qstage_bytes(es: int) -> int:
    """chunk_wg4's four output warps' staging under QSTAGE: 16 rows each, pitch ES + 8 16-bit elements."""
    return 4 * 16 * (es + 8) * 2


def _q_tile_bytes(D: int) -> int:
    """One slot's Q tile: D/64 blocks of 64 tokens × 128 bytes."""
    return (D // 64) * 64 * 128


def _qstage_fits(D: int, es: int) -> bool:
    """Whether chunk_wg4's four output warps can stage their rows in a Q tile (QSTAGE)."""
    return _qstage_bytes(es) <= _q_tile_bytes(D)


def shared_scores_plan(plan: ChunkPlan, dev: int = 0, qstage: bool = False) -> ChunkPlan:
    """`plan` (generation 2, 16-bit) with each CTA covering two of its E slices and forming the chunk's scores
    P = (Q Kᵀ) ⊙ M once for both (chunk_wg4: one output warpgroup, a state warpgroup per slice, CTAs of 416
    threads, one per SM; half as many CTAs), the deepest pipeline whose tiles fit. qstage: the outputs staged in
    the slot's Q tile, no staging buffer (D=128: three stages instead of two; KERNEL_NOTES v27)."""
    _wg16(plan, "shared scores")
    if plan.pair or plan.cl % 2:
        raise ValueError(f"shared scores pair two E slices of a plan with an even number of them (got {plan.name}, "
                         f"{plan.cl} slice(s) of {plan.es} columns)")
    if qstage and not _qstage_fits(plan.D, plan.es):
        raise ValueError(f"shared scores: four warps' output staging ({_qstage_bytes(plan.es)} bytes at ES="
                         f"{plan.es}) does not fit a Q tile ({_q_tile_bytes(plan.D)} bytes at D={plan.D}); valid: "
                         f"D=128, or ES=32")
    return replace(plan, pair=True, qstage=qstage, wgs=3, copies=1, early=False, **_WG2_FORMS_OFF,
                   cl=plan.cl // 2,
                   **_deepest("wg4q" if qstage else "wg4", plan, dev, 1, "chunk_wg4"))


def early_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2 or chunk_wg4) with its producer announcing chunk c - 1 before it waits for the slot of
    chunk c, where that slot is not free yet (EARLY; KERNEL_NOTES v27): the same shared memory."""
    if plan.gen != 2 or plan.f32 or not (plan.wgs == 2 or plan.pair) or plan.tma:
        raise ValueError(f"the early producer is chunk_wg2's and chunk_wg4's, not chunk_wg2_tma's (got {plan.name})")
    return replace(plan, early=True)


def wide_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg4) with its output warps' Q S_in and P V formed for both slices by one product each, of
    2·ES columns (WIDE; KERNEL_NOTES v30): Q's tiles read once, half the wgmma instructions; the same shared
    memory and registers."""
    if not plan.pair:
        raise ValueError(f"the wide products are chunk_wg4's, two E slices a CTA (got {plan.name})")
    return replace(plan, wide=True)


def pipe_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2 at one CTA per SM) with its output warps pipelined: chunk c + 1's Q Kᵀ and Q S_in issued
    before chunk c's outputs are stored (PIPE; the same shared memory, a second output accumulator)."""
    if not plan.wg2 or plan.minb != 1:
        raise ValueError(f"the pipelined output warps are chunk_wg2's at one CTA per SM (got {plan.name})")
    if plan.qreg:
        raise ValueError(f"the pipelined output warps with Q in registers spill (got {plan.name})")
    return replace(plan, pipe=True)


def transposed_state_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2 at ES = 64) with its state warps holding Sᵀ and forming Ṽᵀ in registers (TST; KERNEL_NOTES
    v39): Sᵀ = λ^n Sᵀ + Ṽᵀ K, no Ṽ in shared memory, no barrier before the product; the same shared memory."""
    if not plan.wg2 or plan.es != 64:
        raise ValueError(f"the transposed state is chunk_wg2's at ES=64 (got {plan.name})")
    return replace(plan, tstate=True)


def register_q_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2) with its output warps loading their rows of each chunk's Q into registers once and forming
    Q Kᵀ and Q S_in from there (QREG; KERNEL_NOTES v40): Q read from shared memory once instead of twice; the same
    shared memory, 32 registers more a thread at D = 128 (at two CTAs per SM or with PIPE the build spills:
    refused)."""
    if not plan.wg2 or plan.tma:
        raise ValueError(f"Q in registers is chunk_wg2's, not chunk_wg2_tma's (got {plan.name})")
    if plan.minb != 1:
        raise ValueError(f"Q in registers needs chunk_wg2 at one CTA per SM: at two it spills (got {plan.name})")
    if plan.pipe:
        raise ValueError(f"Q in registers with the pipelined output warps spills (got {plan.name})")
    return replace(plan, qreg=True)


def bulk_store_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2) with its output warps' staged rows stored by bulk copies, a row a lane (BULK; KERNEL_NOTES
    v42): the read back of the staging and the global stores off the warps' chain; the same shared memory."""
    if not plan.wg2 or plan.tma:
        raise ValueError(f"the bulk output stores are chunk_wg2's, not chunk_wg2_tma's (got {plan.name})")
    if plan.direct:
        raise ValueError(f"the output rows leave one way: bulk copies or straight from registers (got {plan.name})")
    return replace(plan, bulk=True)


def direct_store_plan(plan: ChunkPlan, dev: int = 0) -> ChunkPlan:
    """`plan` (chunk_wg2 or chunk_wg4) with its output warps storing their rows straight from the accumulators
    (DIRECT; KERNEL_NOTES v53): a shuffle pairs each lane's words into 8-byte stores of whole sectors, no staging
    through shared memory. chunk_wg2 keeps its layout (the staging tile unused); chunk_wg4 takes QSTAGE's layout,
    which has none, instead of staging in Q, at its deepest pipeline (a third stage at D = 128)."""
    if not (plan.wg2 or plan.pair):
        raise ValueError(f"the direct output stores are chunk_wg2's and chunk_wg4's (got {plan.name})")
    if plan.bulk:
        raise ValueError(f"the output rows leave one way: bulk copies or straight from registers (got {plan.name})")
    if plan.pair:
        return replace(plan, direct=True, qstage=False, **_deepest("wg4q", plan, dev, 1, "chunk_wg4"))
    return replace(plan, direct=True)


def tma_load_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2 at ES = 64, one CTA per SM) with its producer loading each chunk through tensor maps
    (chunk_wg2_tma; KERNEL_NOTES v54): one lane issues D/32 + 1 tensor copies a chunk where the warp issued
    ≈ 80 16-byte copies a lane, and the slot's barrier completes as their bytes land; the same shared memory.
    Its kernel takes PIPE, TST and DIRECT; EARLY (the hand-made announcement) has no meaning there and is dropped."""
    if not plan.wg2 or plan.es != 64 or plan.minb != 1:
        raise ValueError(f"tensor-map loads are chunk_wg2's at ES=64, one CTA per SM (got {plan.name})")
    if plan.qreg or plan.bulk:
        raise ValueError(f"chunk_wg2_tma takes PIPE, TST and DIRECT, not QREG or BULK (got {plan.name})")
    return replace(plan, tma=True, early=False)


def cp_async_plan(plan: ChunkPlan) -> ChunkPlan:
    """`plan` (chunk_wg2_tma) with its producer copying each chunk by cp.async instead and announcing it early
    (EARLY): tma_load_plan undone, the rule's form before KERNEL_NOTES v55."""
    if not plan.tma:
        raise ValueError(f"the cp.async form is chunk_wg2_tma's undone (got {plan.name})")
    return early_plan(replace(plan, tma=False))


def _mma_plan(B: int, H: int, D: int, E: int, dtype: str, dev: int, es: int | None, stages: int | None,
              minb: int | None, opt: int | None) -> ChunkPlan:
    """Generation 1 (chunked.cu).

    The consumers are latency-bound with one warp per scheduler, so two CTAs per SM (a 2-stage pipeline,
    ≤ 168 registers) are taken whenever there are more CTAs than SMs (one per SM would need a second wave);
    otherwise the widest E slice that still gives (nearly) every SM a CTA (wider slices repeat Q Kᵀ less),
    one CTA per SM, deepest pipeline. Overrides are for benchmarks and tests.
    """
    lim = device_limits(dev)
    f32 = dtype == "float32"
    kind = "f32" if f32 else "half"
    options = _es_options(D, E, f32, dev)
    if not options:
        raise ValueError(f"cupy_chunked: no E slice of D={D}, E={E} fits {lim.smem_block} B of shared memory")
    two = [] if f32 else [c for c in options if lim.blocks_fit(smem_bytes(kind, D, c, 2, dev), 2)]

    def ctas(c: int) -> int:
        return B * H * (E // c)

    if es is None:
        es = next((c for c in options if ctas(c) >= 0.9 * lim.sm_count), options[-1])
        if minb is None:  # (ES = 16 at two per SM ran 5 % slower than ES = 32 at one, B=1 H=32 E=128, H200)
            wide = next((c for c in two if c >= 32 and ctas(c) > lim.sm_count), None)
            if wide is not None:
                es, minb = wide, 2
    if minb is None:
        minb = 2 if es in two and ctas(es) > lim.sm_count else 1
    if stages is None:
        fits = [s for s in _STAGES if lim.blocks_fit(smem_bytes(kind, D, es, s, dev), minb)]
        stages = max(fits) if fits else 2
    return ChunkPlan(es=es, cl=E // es, stages=stages, bf16=dtype == "bfloat16", D=D, f32=f32, minb=minb, opt=opt,
                     smem=smem_bytes(kind, D, es, stages, dev))


@dataclass(frozen=True)
class StatePlan:
    """Pass 1 of the sequence-parallel path: every piece's own end state (chunk_state, or on generation 2
    chunk_wg_state, and chunk_wg32_state in float32)."""

    es: int
    cl: int
    stages: int
    dt: int  # 0 float32, 1 float16, 2 bfloat16
    D: int
    smem: int
    gen: int = 1
    minb: int = 2  # CTAs per SM
    producers: int = 1  # producer warps (chunk_wg32_state's NPW; one in the others)
    dbuf: bool = False  # chunk_wg32_state: two sets of pieces and stagings (DBUF; double_buffered_state_plan)
    tstate: bool = False  # chunk_wg_state at ES = 64: Sᵀ held, Ṽᵀ formed in registers (TST; transposed_state_pass)
    tma: bool = False  # chunk_wg_state at ES = 64 loading through tensor maps (chunk_wg_state_tma; tma_state_pass)

    @property
    def threads(self) -> int:
        return 128 + 32 * self.producers

    @property
    def name(self) -> str:
        if self.gen == 2 and self.dt == _DT[torch.float32]:
            dbuf = ",true" if self.dbuf else ""  # the kernel's DBUF, false by default
            return f"chunk_wg32_state<{self.D},{self.es},{self.cl},{self.producers}{dbuf}>"
        if self.gen == 2:
            bf16 = "true" if self.dt == _DT[torch.bfloat16] else "false"
            tst = ",true" if self.tstate else ""  # the kernel's TST, false by default
            kernel = "chunk_wg_state_tma" if self.tma else "chunk_wg_state"
            return f"{kernel}<{self.D},{self.es},{self.cl},{self.stages},{bf16},{self.minb}{tst}>"
        return f"chunk_state<{self.D},{self.es},{self.cl},{self.stages},{self.dt}>"

    @property
    def files(self) -> tuple[str, ...]:
        return _WG_FILES if self.gen == 2 else _CHUNK_FILES


@functools.lru_cache(maxsize=None)
def state_plan(D: int, E: int, dtype: str, dev: int = 0, gen: int | None = None,
               dbuf: bool | None = None, tstate: bool | None = None) -> StatePlan:
    """Generation 1: the widest E slice whose state stays ≤ 64 floats per consumer lane (D·ES ≤ 8192; ≤ 168
    registers at D = E = 128), two CTAs per SM, deepest pipeline that fits them. Generation 2 (the shapes
    wg_supports): 16-bit, one warpgroup product per chunk, ES = 64 where E allows, two CTAs per SM where they
    fit, deepest pipeline that fits; float32 (chunk_wg32_state: three float16 products, split by the producer
    warps), one CTA per SM, ES = 64 where it fits, with two sets of pieces and stagings where they fit (dbuf
    None; False: chunk_wg32's layout, one set). H200, B=1, H=32, D=E=128, P=2 (KERNEL_NOTES v38): the state pass
    0.240 → 0.191 ms at N=16384, 0.915 → 0.739 at 65536. 16-bit at ES = 64 with its state held transposed (tstate
    None; False: Ṽ through shared memory; transposed_state_pass), KERNEL_NOTES v43: H200, B=1, H=32, D=E=128,
    P=2, five interleaved rounds, bf16 0.0517 → 0.0461 ms at N=16384, 0.1487 → 0.1414 at 65536; fp16 0.0514 →
    0.0471, 0.1571 → 0.1402. gen None: 2 where the device runs it and the shape allows."""
    lim = device_limits(dev)
    if gen is None:
        gen = 2 if device_gen(dev) == 2 and wg_supports(D, E, dtype) else 1
    if tstate and (gen != 2 or dtype == "float32"):
        raise ValueError(f"the transposed state pass is generation 2's in 16 bits (got gen={gen}, {dtype})")
    if gen == 2 and dtype == "float32":
        options = [c for c in _WG_ES if E % c == 0 and lim.blocks_fit(smem_bytes("wg32", D, c, 1, dev), 1)]
        if not options:
            raise ValueError(f"cupy_chunked generation 2, float32: no state-pass slice of E={E} fits at D={D}")
        one = StatePlan(es=options[0], cl=E // options[0], stages=1, dt=_DT[torch.float32], D=D,
                        smem=smem_bytes("wg32", D, options[0], 1, dev), gen=2, minb=1, producers=_WG32_PRODUCERS)
        two_fit = lim.blocks_fit(smem_bytes("wg32s", D, one.es, 1, dev), 1)
        return double_buffered_state_plan(one, dev) if (two_fit if dbuf is None else dbuf) else one
    if gen == 2:
        es = 64 if E % 64 == 0 else 32
        minb = 2 if lim.blocks_fit(smem_bytes("wgstate", D, es, 2, dev), 2) else 1
        fits = [s for s in _STAGES if lim.blocks_fit(smem_bytes("wgstate", D, es, s, dev), minb)]
        st = max(fits) if fits else 2
        plain = StatePlan(es=es, cl=E // es, stages=st, dt=_DT[_DT_NAMES[dtype]], D=D,
                          smem=smem_bytes("wgstate", D, es, st, dev), gen=2, minb=minb)
        return transposed_state_pass(plain) if (es == 64 if tstate is None else tstate) else plain
    kind = "state32" if dtype == "float32" else "state16"
    for es in _ES_ALL:
        if E % es or D * es > 8192:
            continue
        fits = [s for s in _STAGES if lim.blocks_fit(smem_bytes(kind, D, es, s, dev), 2)]
        if fits:
            st = max(fits)
            return StatePlan(es=es, cl=E // es, stages=st, dt=_DT[_DT_NAMES[dtype]], D=D,
                             smem=smem_bytes(kind, D, es, st, dev))
    raise ValueError(f"cupy_chunked: no state-pass slice of D={D}, E={E} fits two CTAs per SM")


def double_buffered_state_plan(plan: StatePlan, dev: int = 0) -> StatePlan:
    """`plan` (the float32 state pass on generation 2, chunk_wg32_state) with two sets of K and Ṽ pieces and two
    stagings, so that a chunk's copies, split and products overlap those of its neighbours (KERNEL_NOTES v37)."""
    if not (plan.gen == 2 and plan.dt == _DT[torch.float32]):
        raise ValueError(f"two sets of pieces are chunk_wg32_state's, a generation-2 float32 plan (got {plan.name})")
    smem = smem_bytes("wg32s", plan.D, plan.es, 1, dev)
    if not device_limits(dev).blocks_fit(smem, 1):
        raise ValueError(f"chunk_wg32_state with two sets at D={plan.D}, ES={plan.es} needs {smem} bytes of shared "
                         "memory, more than a block may take")
    return replace(plan, dbuf=True, smem=smem)


def transposed_state_pass(plan: StatePlan) -> StatePlan:
    """`plan` (the 16-bit state pass on generation 2, chunk_wg_state, at ES = 64) holding Sᵀ and forming Ṽᵀ in
    registers, as chunk_wg2's TST state warps do (KERNEL_NOTES v41): no Ṽ tile, no barrier of its warps; the same
    shared memory. state_plan's rule there (v43)."""
    if not (plan.gen == 2 and plan.dt != _DT[torch.float32] and plan.es == 64):
        raise ValueError(f"the transposed state pass is chunk_wg_state's at ES=64 (got {plan.name})")
    return replace(plan, tstate=True)


def tma_state_pass(plan: StatePlan) -> StatePlan:
    """`plan` (the 16-bit state pass on generation 2, chunk_wg_state, at ES = 64) with its producer loading each
    chunk's K and V slice through tensor maps (chunk_wg_state_tma, KERNEL_NOTES v56: one lane's D/64 + 1 tensor
    copies a chunk, as chunk_wg2_tma's producer without Q); the same shared memory. Not the rule: unmeasured."""
    if not (plan.gen == 2 and plan.dt != _DT[torch.float32] and plan.es == 64):
        raise ValueError(f"tensor-map loads in the state pass are chunk_wg_state's at ES=64 (got {plan.name})")
    return replace(plan, tma=True)


@dataclass(frozen=True)
class SeqPlan:
    seg: sp.Segments
    out: ChunkPlan   # pass 3, over B·H·P segments
    state: StatePlan  # pass 1, over B·H·(P-1)·R pieces


@functools.lru_cache(maxsize=None)
def seq_plan(B: int, H: int, N: int, D: int, E: int, dtype: str, dev: int = 0, segments: int | None = None,
             out: ChunkPlan | None = None, gen: int | None = None) -> SeqPlan | None:
    """The sequence-parallel plan, or None for one pass. segments: None = the rule, ≤ 1 = one pass, P = P.

    Rule: only when the one-pass plan has no more CTAs than SMs (generation 2: when it narrowed the E slice
    below 64 columns to fill the SMs, or leaves half of them idle); then (segments.choose_count), with G CTAs
    per segment at the ES used for large grids and `per_sm` of them resident per SM (that plan's minb),
    P = ⌊per_sm·SMs / G⌋ capped at N / MIN_SEGMENT, so the P·G CTAs of pass 3 run in one wave;
    P < 2 → one pass.
    """
    if segments is not None and segments <= 1:
        return None
    lim = device_limits(dev)
    one = chunk_plan(B, H, D, E, dtype, dev, gen=gen)
    if segments is None and one.gen == 2:
        # Generation 2: segments buy the 64-column E slice (Q Kᵀ once per 64 columns), or a CTA for the idle
        # half of the SMs. H200, B=1, H=32, N=65536: D=E=128 one pass at ES = 32 1.41 ms, P = 2 at ES = 64
        # 1.33 ms; D=64, E=256 one pass at ES = 64 1.32 ms, P = 2 1.72 ms (pass 1 re-reads k and v).
        # float32 alike since its state pass is chunk_wg32_state: D=E=128, B=1, one pass at ES = 32 1.17 ms
        # (N=16384) and 4.67 (65536), P = 2 at ES = 64 0.96 and 3.77 (KERNEL_NOTES v19).
        if (one.es == 64 or E % 64) and B * H * one.cl >= lim.sm_count // 2:
            return None
    elif segments is None and B * H * one.cl > lim.sm_count:
        return None  # one pass already has a CTA for every SM (or two)
    big = chunk_plan(B, H * 2 * lim.sm_count, D, E, dtype, dev, gen=gen, pair=False)  # ES, CTAs/SM of a full grid
    count = segments or sp.choose_count(N, B * H * big.cl, lim.sm_count, big.minb)
    if count < 2:
        return None
    state = state_plan(D, E, dtype, dev)
    seg = sp.split(N, count, sp.choose_sub(count, B * H * state.cl, lim.sm_count, state.minb))
    if seg.count < 2:
        return None
    out = out or chunk_plan(B, H * seg.count, D, E, dtype, dev, es=big.es, gen=gen)
    return SeqPlan(seg=seg, out=out, state=state)


def _output_buffers(q, v) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunked call's results, unwritten: o [B, H, N, E] in v's dtype and the final state [B, H, D, E] float32."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    return (torch.empty(B, H, N, E, dtype=v.dtype, device=v.device),
            torch.empty(B, H, D, E, dtype=torch.float32, device=v.device))


def _launch_out(plan: ChunkPlan, dev: int, q, k, v, o, s_in, sN, decay, scale: float, L: int, runs: int,
                defines: tuple[str, ...] = (), dependent: bool = False) -> None:
    """The output kernel over B·H·runs segments of L tokens (`defines`: a build with those macros; `dependent`: a
    programmatic dependent of the kernel before it, which wrote s_in)."""
    B, H, N, _ = q.shape
    i32 = np.int32
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(s_in), _ptr(sN), _ptr(decay),
            i32(H), i32(N), i32(v.shape[-1]), np.float32(scale), i32(L), i32(runs))
    if plan.tma:  # chunk_wg2_tma: q, k and v's tensor maps, by value
        args += tuple(token_map(t) for t in (q, k, v))
    kernel(plan.files, plan.name, dev, defines)(B * H * runs * plan.cl, plan.threads, args, plan.smem, dependent)


def _local_states(plan: StatePlan, dev: int, k, v, decay, seg: sp.Segments) -> torch.Tensor:
    """Pass 1 on the GPU: local [B, H, pieces, D, E] float32."""
    B, H, N, D = k.shape
    E = v.shape[-1]
    local = torch.empty(B, H, seg.pieces, D, E, dtype=torch.float32, device=k.device)
    if seg.pieces:
        i32 = np.int32
        args = (_ptr(k), _ptr(v), _ptr(local), _ptr(decay), i32(H), i32(N), i32(E), i32(seg.piece),
                i32(seg.pieces))
        if plan.tma:  # chunk_wg_state_tma: k and v's tensor maps, by value
            args += (token_map(k), token_map(v))
        kernel(plan.files, plan.name, dev)(B * H * seg.pieces * plan.cl, plan.threads, args, plan.smem)
    return local


def _scan_cuda(local: torch.Tensor, decay, seg: sp.Segments, initial_state, dependent: bool = False) -> torch.Tensor:
    """Pass 2 on the GPU (segment_scan; float64 carry): s_in [B, H, P, D, E] float32; `dependent`: launched as a
    programmatic dependent of pass 1, whose CTAs let it be resident while they run (dependent_launch.py)."""
    B, H, PS, D, E = local.shape
    s_in = torch.empty(B, H, seg.count, D, E, dtype=torch.float32, device=local.device)
    de4 = D * E // 4
    i32 = np.int32
    args = (_ptr(local), _ptr(initial_state), _ptr(s_in), _ptr(decay), i32(B * H), i32(H), i32(de4), i32(PS),
            i32(seg.sub), i32(seg.count), i32(seg.piece))
    kernel(_CHUNK_FILES, _SCAN, local.device.index or 0)(-(-B * H * de4 // 256), 256, args, 0, dependent)
    return s_in


def _outputs(plan: ChunkPlan, dev: int, q, k, v, decay, scale: float, s_in, seg: sp.Segments,
             dependent: bool = False):
    """Pass 3 on the GPU: every segment from its state; the last one's end state is the final state. `dependent`:
    launched as a programmatic dependent of the scan (its CTAs take the SMs pass 1 leaves and wait for s_in)."""
    o, sN = _output_buffers(q, v)
    _launch_out(plan, dev, q, k, v, o, s_in, sN, decay, scale, seg.length, seg.count, dependent=dependent)
    return o, sN


@dataclass(frozen=True)
class LookbackPlan:
    """chunk_wg2lb (chunked_wglb.cu): one persistent kernel over pieces of `piece` tokens of every (head, 64-column
    E slice), each piece's entering state handed over from the piece before by a look-back, meant to read k and v
    from DRAM once (KERNEL_NOTES v48-v50: its second walk still reads them from DRAM; not the rule)."""

    D: int
    cl: int      # E slices of 64 columns
    stages: int  # ring A's (walk 2: Q, K, V); ring B (walk 1: K, V) has two
    bf16: bool
    piece: int   # L: tokens per piece, a multiple of CHUNK
    smem: int

    @property
    def es(self) -> int:
        """Columns of E a work item covers (its state held transposed: wgmma's M)."""
        return 64

    @property
    def threads(self) -> int:
        """Four warpgroups: the outputs, the state chain, walk 1, the two producer warps (and two idle ones)."""
        return 512

    @property
    def files(self) -> tuple[str, ...]:
        return _WG_FILES

    @property
    def name(self) -> str:
        return f"chunk_wg2lb<{self.D},{self.cl},{self.stages},{str(self.bf16).lower()}>"


@functools.lru_cache(maxsize=None)
def lookback_plan(D: int, E: int, dtype: str, piece: int, dev: int = 0) -> LookbackPlan:
    """chunk_wg2lb's plan: 16-bit inputs on generation 2, D in (64, 128), E a multiple of 64, pieces of `piece`
    tokens (a positive multiple of 64); the deepest ring A that fits one CTA per SM. ValueError naming what is
    not so."""
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"the look-back kernel takes bfloat16 or float16 (got {dtype})")
    if D not in _WG_D or E % 64:
        raise ValueError(f"the look-back kernel needs D in {_WG_D} and E a multiple of 64 (got D={D}, E={E})")
    if piece <= 0 or piece % CHUNK:
        raise ValueError(f"lookback={piece}: pieces are a positive multiple of {CHUNK} tokens")
    if device_gen(dev) != 2:
        raise ValueError("the look-back kernel is generation 2's (compute capability 9.0)")
    plan = LookbackPlan(D=D, cl=E // 64, stages=0, bf16=dtype == "bfloat16", piece=piece, smem=0)
    deepest = _deepest("wglb", plan, dev, 1, "chunk_wg2lb")
    return replace(plan, stages=deepest["stages"], smem=deepest["smem"])


def _lookback(plan: LookbackPlan, dev: int, q, k, v, decay, scale: float, s0):
    """chunk_wg2lb over B·H·cl·⌈N / piece⌉ work items on min(SMs, items) CTAs: (o, final state)."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    runs = -(-N // plan.piece)
    pairs = B * H * plan.cl
    o, sN = _output_buffers(q, v)
    ring = torch.empty(pairs * 2 * D * plan.es, dtype=torch.float32, device=v.device)  # two published states a pair
    flags = torch.zeros(pairs * 2 + 1, dtype=torch.int32, device=v.device)  # and the ticket counter
    grid = min(device_limits(dev).sm_count, pairs * runs)
    scratch = torch.empty(grid * 2 * D * plan.es, dtype=torch.float32, device=v.device)  # each CTA's S_in hand-over
    i32 = np.int32
    args = (_ptr(q), _ptr(k), _ptr(v), _ptr(o), _ptr(s0), _ptr(sN), _ptr(decay), i32(H), i32(N), i32(E),
            np.float32(scale), i32(plan.piece), i32(runs), i32(B * H), _ptr(ring), _ptr(flags), _ptr(scratch))
    kernel(plan.files, plan.name, dev)(grid, plan.threads, args, plan.smem)
    return o, sN


def default_overlap(out: ChunkPlan, cc: tuple[int, int]) -> bool:
    """Whether chunked launches the sequence-parallel passes as programmatic dependents when its caller leaves it
    open: where the device has them (compute capability ≥ 9.0), but not before an output pass that loads through
    tensor maps (chunk_wg2_tma), which ran faster launched after the scan had ended. H200, B=1, H=32, D=E=128,
    bf16, N=16384, three alternating blocks of 20 calls: 0.204 ms as a dependent, 0.195 after; bench_kernels.py's
    interleaved rounds 0.201 / 0.199 and 0.202 / 0.198; fp16 level (0.221 / 0.221); at N=65536 the spread of the
    blocks (0.70–0.83 ms either way) hides any difference (KERNEL_NOTES v55)."""
    return cc >= (9, 0) and not out.tma


def chunked(q, k, v, decay, *, scale, initial_state=None, plan: ChunkPlan | None = None,
            segments: int | None = None, scan: str = "cuda", gen: int | None = None, lookback: int | None = None,
            overlap: bool | None = None):
    """Chunked algorithm on tensor cores: (o, final_state float32).

    Warpgroup products (wgmma) on compute capability 9.0 for D ∈ {64, 128}, E a multiple of 32 (generation
    2; float32 as three products of float16 pieces), else mma.m16n8k16 (generation 1; float32 as 3xTF32);
    float32 accumulation, float32 accuracy for float32 inputs.
    segments: None = sequence parallel when the plan's rule says so (seq_plan), 1 = one pass, P ≥ 2 = P
    segments; a `plan` without `segments` means one pass with that plan. scan: "cuda" or "torch" (pass 2).
    gen: the kernel generation of the default plans (None: the newest the device and shape allow).
    lookback: pieces of this many tokens through the look-back kernel (lookback_plan), instead of any of the above.
    overlap: the sequence-parallel passes' scan and outputs launched as programmatic dependents, each taking the SMs
    the pass before leaves (dependent_launch.py); None: default_overlap.
    """
    if overlap not in (None, True, False):
        raise ValueError(f"chunked: overlap={overlap!r}; valid: None (ops.default_overlap), True or False")
    q, k, v, decay, s0 = _prepare(q, k, v, decay, initial_state)
    B, H, N, D = q.shape
    E = v.shape[-1]
    dev = q.device.index or 0
    for t in (q, k, v):
        if t.data_ptr() % 16:
            raise ValueError("chunked: q, k, v must be 16-byte aligned")
    dtype = str(q.dtype).removeprefix("torch.")
    if lookback is not None:
        if plan is not None or segments is not None:
            raise ValueError("chunked: lookback is a plan of its own (got a plan or segments as well)")
        lb = lookback_plan(D, E, dtype, lookback, dev)
        if N:  # (no pieces at N = 0: S0 is handed back below)
            return _lookback(lb, dev, q, k, v, decay, scale, s0)
    seq = None if (plan is not None and segments is None) or N == 0 else seq_plan(
        B, H, N, D, E, dtype, dev, segments, plan, gen)
    if seq is None:
        plan = (plan or chunk_plan(B, H, D, E, dtype, dev, gen=gen)).sized(dev)
        o, sN = _output_buffers(q, v)
        if N == 0:  # no token: S0 (or 0) handed back, nothing launched (a tensor map has no empty dimension)
            return o, sN.copy_(s0) if s0 is not None else sN.zero_()
        _launch_out(plan, dev, q, k, v, o, s0, sN, decay, scale, N, 1)
        return o, sN
    cc = torch.cuda.get_device_capability(dev)
    if overlap and cc < (9, 0):
        raise ValueError(f"chunked: overlap=True needs compute capability ≥ 9.0 (got {cc[0]}.{cc[1]}); "
                         "valid: None or False")
    dep = default_overlap(seq.out, cc) if overlap is None else overlap
    return sp.run(q, k, v, decay, scale=scale, initial_state=s0, seg=seq.seg,
                  local_states=functools.partial(_local_states, seq.state, dev),
                  outputs=functools.partial(_outputs, seq.out.sized(dev), dev,
                                            dependent=dep and scan == "cuda"),  # (a dependent of the scan kernel)
                  scan=functools.partial(_scan_cuda, dependent=dep) if scan == "cuda" else sp.scan_states)


def chunk_kernel_names(B: int, H: int, N: int, D: int, E: int, dtype: str, dev: int = 0,
                       segments: int | None = None, gen: int | None = None) -> list[str]:
    """The template instances a call of `chunked` with these shapes launches."""
    seq = seq_plan(B, H, N, D, E, dtype, dev, segments, gen=gen) if N else None
    if seq is None:
        return [chunk_plan(B, H, D, E, dtype, dev, gen=gen).name]
    return [seq.out.name, seq.state.name, _SCAN]


def kernel_files(name: str) -> tuple[str, ...]:
    """The sources a chunked template instance (as named by chunk_kernel_names) is compiled from."""
    return _WG_FILES if name.startswith("chunk_wg") else _CHUNK_FILES


def precompile_chunked(names, dev: int, jobs: int) -> None:
    """Compile chunked instances side by side (NVRTC releases the GIL), each with its own sources."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in sorted(set(names)):
        groups.setdefault(kernel_files(name), []).append(name)
    for files, group in groups.items():
        precompile(files, group, dev, jobs=max(1, min(jobs, len(group))))


def setup_chunked(problem) -> None:
    if not cupy_available():
        return
    use_torch_allocator()
    dev = torch.device(problem.device).index or 0
    shape = (problem.batch, problem.heads)
    names = set(chunk_kernel_names(*shape, problem.length, problem.dim, problem.E, problem.dtype, dev))
    # The same shape at another length needs at most the one-pass and the sequence-parallel instances:
    # compiled side by side now (NVRTC releases the GIL), a sweep over N waits for the slowest compilation
    # once instead of for each in turn (issue 17: compilation was most of a cold GPU sweep's wall time).
    for n in (sp.CHUNK, 64 * sp.MIN_SEGMENT):
        names.update(chunk_kernel_names(*shape, n, problem.dim, problem.E, problem.dtype, dev))
    precompile_chunked(names, dev, jobs=len(names))
