"""GPU tests of leetbench's own CUDA kernels (cupy_recurrent, cupy_chunked).

Accuracy against the float64 reference over awkward shapes (B = 1 with long N, the seed library's failure
case; N = 1, prime N, chunk tails; D ≠ E from 16 to 256; λ = 1, λ = 1e-6 and the per-head profiles; with and
without an initial state; the final state checked too), for the default plans through the registry and for
every launch variant directly (E slice, pipeline depth, kernel options, sequence-parallel segments), plus
compute-sanitizer memcheck / racecheck / synccheck runs on small shapes. Everything here skips cleanly
without CuPy or a CUDA device (the CPU-only CI machine); the sequence-parallel orchestration itself is
tested on the CPU in test_segments.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from leetbench import load_methods  # noqa: E402
from leetbench.cuda_kernels import device_limits, kernel, ops  # noqa: E402
from leetbench.cuda_kernels import segments as sp  # noqa: E402
from leetbench.execute import verify  # noqa: E402
from leetbench.problem import Inputs, Problem, decay_profile  # noqa: E402
from leetbench.reference import reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# What our kernels reach (well inside the tolerances of docs/design.md §4, which `verify` applies as well).
# float32: generation 2 sums float16 pieces in wgmma's float32 accumulators, 1.7-3.2e-6 on an H200 (generation 1,
# 3xTF32: below 2e-6); the harness's tolerance for the class is 1e-5
EXPECTED = {"float32": 5e-6, "float16": 2e-3, "bfloat16": 1.2e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def registry():
    return load_methods(entry_points=False)


def _poison() -> None:
    """Leave NaN in torch's cached blocks, so an output element a kernel never writes shows up as NaN."""
    x = torch.full((32 << 20,), float("nan"), device="cuda")
    del x


def _check(registry, name: str, problem: Problem) -> None:
    method = registry[name]
    reason = method.why_not(problem)
    assert reason is None, reason
    _poison()
    out = verify(method, problem)
    assert out.status == "ok", f"{problem.label()}: {out.status} {out.error} (rel_err {out.rel_err:.3g})"
    bound = EXPECTED[problem.dtype]
    assert out.rel_err <= bound, f"{problem.label()}: rel_err {out.rel_err:.3g} > {bound}"
    assert out.state_rel_err <= bound, f"{problem.label()}: state rel_err {out.state_rel_err:.3g} > {bound}"


def P(B, H, N, D, E=None, decay="multiscale", dtype="bfloat16", s0=False, mode="prefill", steps=0):
    return Problem(batch=B, heads=H, length=N, dim=D, dim_v=E, decay=decay, dtype=dtype, device="cuda",
                   initial_state=s0, mode=mode, steps=steps, seed=N + D + 7 * H)


HALF = ("bfloat16", "float16")
ALL = ("float32", "bfloat16", "float16")

# ---- cupy_chunked through the registry (default plans) -----------------------------------------------------
CHUNKED = (
    # B = 1, long N (the seed library's CUDA kernel failed exactly here); sequence parallel on an H200
    [P(1, 32, 16384, 128, dtype=dt) for dt in HALF]
    + [P(1, 4, 65536, 128, decay="retnet", s0=True)]
    # D ≠ E, 16 … 256, prime N, initial state
    + [P(2, 3, 997, D, E, decay="alibi", dtype=dt, s0=True)
       for (D, E) in ((16, 16), (32, 64), (64, 32), (128, 128), (256, 256), (16, 256), (256, 16), (128, 64),
                      (64, 128), (32, 32), (192, 96))
       for dt in HALF]
    # chunk tails and tiny N, λ = 1 and tiny λ
    + [P(1, 2, N, 64, decay=lam, dtype=dt, s0=True)
       for N in (1, 2, 63, 64, 65, 127, 128, 1000) for lam in (1.0, 1e-6) for dt in HALF]
    # per-head profiles, odd B and H
    + [P(3, 5, 4099, 128, 64, decay=d, dtype=dt) for d in ("retnet", "multiscale", "alibi", 0.5) for dt in HALF]
    # float32 (3xTF32): float32 accuracy, D ≤ 128
    + [P(1, 8, 16384, 128, dtype="float32", s0=True), P(1, 2, 65536, 64, decay=1.0, dtype="float32")]
    + [P(2, 3, 997, D, E, decay=d, dtype="float32", s0=True)
       for (D, E) in ((16, 16), (32, 64), (64, 32), (128, 128), (16, 128), (128, 16))
       for d in ("alibi", 1e-6)]
    + [P(1, 2, N, 64, decay=1.0, dtype="float32") for N in (1, 63, 65)]
)


@pytest.fixture(scope="module")
def compiled() -> None:
    """Every chunked.cu instance this module launches, compiled up front in parallel NVRTC calls."""
    names = [n for p in CHUNKED for n in ops.chunk_kernel_names(p.batch, p.heads, p.length, p.dim, p.E, p.dtype)]
    names += [n for dt in DTYPES for (B, H, N, D, E, _, _, segs) in SEGMENTED if not ops.chunked_supports(D, E, dt)
              for n in ops.chunk_kernel_names(B, H, N, D, E, dt, 0, segs)]
    names += [p.name for _, _, _, p in _variants()]
    ops.precompile_chunked(names, 0, jobs=min(16, os.cpu_count() or 1))


@pytest.mark.parametrize("problem", CHUNKED, ids=lambda p: p.label())
def test_cupy_chunked(registry, compiled, problem):
    _check(registry, "cupy_chunked", problem)


# ---- cupy_chunked called directly: forced paths and launch variants ----------------------------------------

def _worst(a: torch.Tensor, b: torch.Tensor) -> float:
    """Worst (batch, head) relative error of a against the float64 b."""
    num = torch.linalg.vector_norm((a.double() - b).flatten(2), dim=-1)
    den = torch.linalg.vector_norm(b.flatten(2), dim=-1)
    err = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, torch.inf, 0.0))
    return float(err.max())


def _inputs(B, H, N, D, E, dtype: str, decay, s0: bool, seed: int = 0) -> Inputs:
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = DTYPES[dtype]
    q, k = (torch.randn(B, H, N, D, device="cuda", generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, N, E, device="cuda", generator=g).to(dt)
    st = torch.randn(B, H, D, E, device="cuda", generator=g) * D ** -0.5 if s0 else None
    return Inputs(q, k, v, decay_profile(decay, H).cuda(), D ** -0.5, st)


def _direct(x: Inputs, bound: float, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.chunked on x with keyword overrides, checked against the float64 reference (worst head)."""
    ref_o, ref_s = reference(x)
    _poison()
    o, s = ops.chunked(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state, **kw)
    torch.cuda.synchronize()
    eo, es = _worst(o, ref_o), _worst(s, ref_s)
    assert eo <= bound and es <= bound, f"{kw}: o_err {eo:.3g}, state_err {es:.3g} > {bound}"
    return o, s


SEGMENTED = (  # (B, H, N, D, E, decay, s0, segments): forced sequence parallelism, tails, odd shapes
    [(1, 4, 16384, 128, 128, "multiscale", True, 2), (1, 2, 5000, 128, 128, "retnet", False, 3),
     (2, 3, 997, 64, 32, "alibi", True, 4), (1, 2, 1000, 64, 64, 1.0, True, 3),
     (1, 2, 1000, 64, 64, 1e-6, True, 3), (3, 5, 4099, 128, 64, 0.5, False, 5), (1, 3, 129, 32, 64, 0.9, True, 2)]
    + [(1, 2, 1500, D, E, "multiscale", True, 3)
       for (D, E) in ((16, 16), (32, 64), (256, 256), (64, 256), (192, 96), (16, 256), (256, 16))]
)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("B,H,N,D,E,decay,s0,segments", SEGMENTED)
def test_segmented(compiled, dtype, B, H, N, D, E, decay, s0, segments):
    if ops.chunked_supports(D, E, dtype):
        pytest.skip(ops.chunked_supports(D, E, dtype))
    x = _inputs(B, H, N, D, E, dtype, decay, s0, seed=N + segments)
    seq = ops.seq_plan(B, H, N, D, E, dtype, 0, segments)
    assert seq is not None and seq.seg.count >= 2, "the forced path must be the segmented one"
    _direct(x, EXPECTED[dtype], segments=segments)


def test_segmented_torch_scan_and_rule():
    """The torch scan (fallback) gives the CUDA scan's answer; the rule takes segments at B=1, H=32 on a big GPU."""
    x = _inputs(1, 4, 9000, 64, 64, "bfloat16", "retnet", True, seed=3)
    o1, s1 = _direct(x, EXPECTED["bfloat16"], segments=3)
    o2, s2 = _direct(x, EXPECTED["bfloat16"], segments=3, scan="torch")
    assert _worst(o1, o2.double()) < 1e-5 and _worst(s1, s2.double()) < 1e-6
    if device_limits(0).sm_count >= 128:
        assert ops.seq_plan(1, 32, 16384, 128, 128, "bfloat16", 0) is not None


def test_segment_scan_kernel():
    B, H, D, E = 2, 3, 16, 32
    seg = sp.Segments(n=64 * 12, length=64 * 4, count=3, sub=2)
    g = torch.Generator(device="cuda").manual_seed(1)
    local = torch.randn(B, H, seg.pieces, D, E, device="cuda", generator=g)
    s0 = torch.randn(B, H, D, E, device="cuda", generator=g)
    lam = torch.tensor([1.0, 1e-6, 0.99], dtype=torch.float64, device="cuda")
    for init in (None, s0):
        got = ops._scan_cuda(local, lam, seg, init)
        want = sp.scan_states(local, lam, seg, init)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def _variants() -> list[tuple[str, int, int, ops.ChunkPlan]]:
    """Every E slice at the shallowest and deepest pipeline, and both consumer-loop options (dtype, D, E, plan)."""
    out = []
    lim = device_limits(0)
    for dtype in DTYPES:
        f32, bf16 = dtype == "float32", dtype == "bfloat16"
        shapes = ((128, 128), (64, 32), (16, 16), (32, 64)) if f32 else (
            (128, 128), (64, 32), (16, 16), (32, 64), (256, 256), (16, 256))
        for (D, E) in shapes:
            if dtype == "float16" and D not in (128, 16):
                continue
            for es in ops._es_options(D, E, f32, 0):
                kind = "f32" if f32 else "half"
                stages = [s for s in (2, 3, 4) if lim.blocks_fit(ops.smem_bytes(kind, D, es, s, 0), 1)]
                for st in sorted({stages[0], stages[-1]}):
                    minb = 2 if st == 2 and D <= 128 and not f32 else 1
                    for opt in {ops.default_opt(f32, bf16), 0 if D == E == 128 else ops.default_opt(f32, bf16)}:
                        out.append((dtype, D, E, ops.ChunkPlan(es=es, cl=E // es, stages=st, bf16=bf16, D=D,
                                                               f32=f32, minb=minb, opt=opt)))
    return out


@pytest.fixture(scope="module")
def variants(compiled):
    return _variants()


def test_chunk_variants(variants):
    """Each variant on a tail with an initial state, and on λ = 1 with B, H > 1; one pass with that plan."""
    bad = []
    for dtype, D, E, plan in variants:
        for (B, H, N, decay, s0) in ((1, 2, 1000, "multiscale", True), (2, 3, 131, 1.0, False)):
            try:
                _direct(_inputs(B, H, N, D, E, dtype, decay, s0, seed=N + D + E), EXPECTED[dtype], plan=plan)
            except AssertionError as exc:
                bad.append(f"{plan.name} B{B} H{H} N{N}: {exc}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_one_loop_matches_four_loops(dtype):
    """OPT_ONELOOP changes where the warps meet, not the arithmetic."""
    f32, bf16 = dtype == "float32", dtype == "bfloat16"
    x = _inputs(1, 4, 3000, 128, 128, dtype, "multiscale", True, seed=5)
    base = ops.chunk_plan(1, 4, 128, 128, dtype, 0, gen=1)
    legacy = ops.default_opt(f32, bf16) & ~ops.OPT_ONELOOP
    o1, s1 = _direct(x, EXPECTED[dtype], plan=base)
    o2, s2 = _direct(x, EXPECTED[dtype], plan=replace(base, opt=legacy))
    assert _worst(o1, o2.double()) < 1e-5 and _worst(s1, s2.double()) < 1e-5


@pytest.mark.parametrize("segments", [1, 3])
def test_fp16_state_beyond_65504(segments):
    """λ = 1 with mean-shifted k, v: |S| ≈ N > 65504. The float16 state copy must not overflow (it did)."""
    B, H, N, D, E = 1, 2, 98304, 64, 64
    g = torch.Generator(device="cuda").manual_seed(7)
    k = (torch.randn(B, H, N, D, device="cuda", generator=g) + 1).half()
    v = (torch.randn(B, H, N, E, device="cuda", generator=g) + 1).half()
    q = (0.01 * torch.randn(B, H, N, D, device="cuda", generator=g)).half()  # outputs stay in float16 range
    x = Inputs(q, k, v, torch.ones(H, dtype=torch.float64, device="cuda"), D ** -0.5, None)
    ref_o, ref_s = reference(x)
    assert ref_s.abs().max() > 65504 and ref_o.abs().max() < 30000
    o, s = _direct(x, EXPECTED["float16"], segments=segments)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    if ops.device_gen(0) == 2:  # two consumer warpgroups, two state copies, two slices: each copy scaled alike
        base = ops.chunk_plan(B, H, D, E, "float16", 0, gen=2, wgs=1)
        for other in (ops.split_plan(base, 0), ops.pipe_plan(ops.split_plan(base, 0)), ops.two_output_plan(base, 0),
                      ops.two_copy_plan(base, 0), ops.shared_scores_plan(base, 0),
                      ops.early_plan(ops.shared_scores_plan(base, 0, qstage=True)),
                      ops.wide_plan(ops.shared_scores_plan(base, 0)),  # WIDE: each slice's own copy scale
                      ops.transposed_state_plan(  # TST: Sᵀ's copy scaled; and with Q in registers
                          ops.split_plan(ops.chunk_plan(B, H, D, E, "float16", 0, es=64, gen=2, wgs=1), 0)),
                      ops.register_q_plan(ops.split_plan(base, 0)), ops.bulk_store_plan(ops.split_plan(base, 0)),
                      ops.direct_store_plan(ops.split_plan(base, 0)),  # DIRECT: the outputs from the accumulators
                      ops.direct_store_plan(ops.wide_plan(ops.shared_scores_plan(base, 0)))):
            _direct(x, EXPECTED["float16"], plan=other, **({"segments": segments} if segments > 1 else {}))
    if segments == 1:  # the unscaled copy (the old kernel) overflows on this input: the test has teeth
        plan = ops.chunk_plan(B, H, D, E, "float16", 0, gen=1)
        o_old, _ = ops.chunked(x.q, x.k, x.v, x.decay, scale=x.scale,
                               plan=replace(plan, opt=ops.OPT_ONELOOP))
        assert not torch.isfinite(o_old).all()


# ---- generation 2 (chunked_wg.cu: wgmma, Hopper only) -----------------------------------------------------
needs_wg = pytest.mark.skipif(not torch.cuda.is_available() or ops.device_gen(0) != 2,
                              reason="generation 2 runs on compute capability 9.0 only")


_PDL_PROBE = r"""
extern "C" __global__ void pdl_primary(volatile unsigned* flag, long long spin_ns) {
  griddep_launch_dependents();
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); while (t - t0 < spin_ns);
  if (threadIdx.x == 0) *flag = 1u;
}
extern "C" __global__ void pdl_dependent(const volatile unsigned* flag, unsigned* before, unsigned* after) {
  if (threadIdx.x == 0) before[blockIdx.x] = *flag;
  griddep_wait();
  if (threadIdx.x == 0) after[blockIdx.x] = *flag;
}
"""


@pytest.mark.alone  # beside other processes' kernels the GPU time-slices and the dependent starts late (seen: -n 8)
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability(0) < (9, 0),
                    reason="programmatic dependent launch needs compute capability 9.0")
def test_dependent_launch_overlaps_and_waits():
    """Kernel(dependent=True) really launches early — its CTAs run while the kernel before spins, which let them be
    launched at its start — and griddep_wait (common.cuh) returns only once that kernel's write is visible; an
    ordinary launch starts after it."""
    import cupy as cp
    import numpy as np

    from leetbench.cuda_kernels import Kernel, source

    module = cp.RawModule(code=source("common.cuh") + _PDL_PROBE)
    primary, dependent = (Kernel(module.get_function(n), n, 0) for n in ("pdl_primary", "pdl_dependent"))
    for early in (True, False):
        flag = torch.zeros(1, dtype=torch.int32, device="cuda")
        before, after = (torch.full((8,), 7, dtype=torch.int32, device="cuda") for _ in range(2))
        primary(1, 32, (flag.data_ptr(), np.int64(2_000_000)))  # spins 2 ms, then writes 1
        dependent(8, 32, (flag.data_ptr(), before.data_ptr(), after.data_ptr()), 0, early)
        torch.cuda.synchronize()
        assert after.tolist() == [1] * 8, f"dependent={early}: read {after.tolist()} after its wait"
        assert before.tolist() == ([0] * 8 if early else [1] * 8), f"dependent={early}: read {before.tolist()} first"


@pytest.mark.alone  # (so that the passes do overlap: see test_dependent_launch_overlaps_and_waits)
@needs_wg
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_overlapped_passes_match_serial_ones(dtype):
    """The sequence-parallel passes launched as dependents (the default on compute capability 9.0: the scan and the
    outputs taking the SMs the pass before leaves) give the serial launches' outputs and final state bit for bit —
    an output kernel reading s_in before the scan wrote it would read the poisoned NaN; overlap=True is refused by
    name on a card without it (not here)."""
    x = _inputs(1, 8, 8192, 128, 128, dtype, "multiscale", True, seed=5)
    got = {}
    for overlap in (True, False):
        _poison()
        got[overlap] = ops.chunked(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state,
                                   segments=2, overlap=overlap)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got[True], got[False]))
    assert not any(t.isnan().any() for t in got[True])


def _wg_plans(B: int, H: int, D: int, E: int, dtype: str) -> list[ops.ChunkPlan]:
    """Every E slice generation 2 allows for E, at the shallowest and deepest pipeline that fit, one and two
    CTAs per SM where two fit, with two consumer warpgroups (their output warps also pipelined, with Q in
    registers or storing by bulk copies; at ES = 64 also their state held transposed), with two output
    warpgroups, with two E slices a CTA sharing their scores (their output products over both slices at once;
    at D = 128 also staged in Q, announced early), chunk_wg2's early producer, and with two state copies
    (float32: each count of producer warps, with and without their split of the chunk, and the state chain apart
    where its second state copy fits)."""
    lim = device_limits(0)
    out = []
    for es in (64, 32):
        if E % es:
            continue
        if dtype == "float32":  # chunk_wg32: one CTA per SM, one staging slot; one, two or four producer warps,
            if lim.blocks_fit(ops.smem_bytes("wg32", D, es, 1, 0), 1):  # splitting the chunk or not
                plan = ops.chunk_plan(B, H, D, E, dtype, 0, es=es, gen=2)
                out += [replace(plan, producers=p, psplit=ps) for p in (1, 2, 4) for ps in (False, True)]
                if lim.blocks_fit(ops.smem_bytes("wg32x2", D, es, 1, 0), 1):  # chunk_wg32x2, with one producer too
                    out += [ops.float32_split_plan(replace(plan, producers=p)) for p in (1, 4)]
            continue
        for minb in (1, 2):
            fits = [st for st in (2, 3, 4) if lim.blocks_fit(ops.smem_bytes("wg", D, es, st, 0), minb)]
            for st in sorted({fits[0], fits[-1]} if fits else set()):
                out.append(ops.chunk_plan(B, H, D, E, dtype, 0, es=es, stages=st, minb=minb, gen=2))
        # two consumer warpgroups (chunk_wg2) at their deepest pipeline and at two stages, and two CTAs per SM
        base = ops.chunk_plan(B, H, D, E, dtype, 0, es=es, gen=2, wgs=1)
        split, crowded = ops.split_plan(base, 0), ops.split_plan(base, 0, ctas=1 << 20)
        shallow = replace(split, stages=2, smem=0)
        out += [split, shallow, ops.pipe_plan(split), ops.pipe_plan(shallow)]  # and its output warps pipelined
        out += [ops.early_plan(split), ops.early_plan(shallow)]  # and its producer announcing early (the rule's)
        # its state held transposed, Ṽᵀ in registers (TST, at ES = 64), also with the output warps pipelined; and Q
        # in the output warps' registers (QREG), with the state held either way
        tst = [ops.transposed_state_plan(p) for p in (ops.early_plan(split), shallow, ops.pipe_plan(split))] \
            if es == 64 else []
        qreg = [ops.register_q_plan(p) for p in tst[:1] + [ops.early_plan(shallow)]]
        out += tst + qreg
        # and its output rows stored by bulk copies (BULK): after QREG (and TST), pipelined, two CTAs per SM; or
        # straight from the accumulators (DIRECT): the rule's form (TST after EARLY), pipelined, two CTAs per SM
        out += [ops.bulk_store_plan(p) for p in (qreg[0], ops.pipe_plan(shallow), crowded)]
        out += [ops.direct_store_plan(p) for p in (tst[0] if tst else ops.early_plan(split), ops.pipe_plan(shallow),
                                                   crowded)]
        # and (ES = 64) its producer loading through tensor maps (chunk_wg2_tma): the rule's form, and plain at two
        # stages
        out += [ops.tma_load_plan(ops.direct_store_plan(ops.pipe_plan(tst[0]))), ops.tma_load_plan(shallow)] \
            if es == 64 else []
        three = ops.two_output_plan(base, 0)  # two output warpgroups (chunk_wg3), deepest and two stages
        out += [three, replace(three, stages=2, smem=0)]
        if base.cl % 2 == 0:  # two E slices a CTA sharing their scores (chunk_wg4), deepest and two stages
            pair = ops.shared_scores_plan(base, 0)  # and its output products over both slices at once (WIDE)
            out += [pair, ops.wide_plan(pair)] + ([replace(pair, stages=2, smem=0)] if pair.stages > 2 else [])
            if D == 128:  # and, where the rule takes it, its outputs staged in Q and the early producer
                staged = ops.shared_scores_plan(base, 0, qstage=True)
                out += [staged, ops.early_plan(pair), ops.early_plan(staged), ops.wide_plan(staged)]
            # and its outputs straight from the accumulators (DIRECT), with WIDE and without
            out += [ops.direct_store_plan(pair), ops.direct_store_plan(ops.wide_plan(pair))]
        out += [crowded] if crowded.minb == 2 else []
        # chunk_wg with two state copies, at one and (where both fit) two CTAs per SM
        for minb in (1, 2):
            copies = ops.two_copy_plan(replace(base, minb=minb), 0)
            out += [copies] if copies not in out else []
    return out


WG_SHAPES = ((64, 64), (64, 128), (128, 128), (128, 64), (64, 32), (128, 32), (128, 96), (64, 256), (128, 256))


@needs_wg
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("D, E", WG_SHAPES)
def test_wg_plans(dtype, D, E):
    """Each generation-2 plan on a chunk tail with an initial state, on λ = 1 and λ = 1e-6 with B, H > 1, and
    through the sequence-parallel passes."""
    bad = []
    for plan in _wg_plans(2, 3, D, E, dtype):
        for (B, H, N, decay, s0) in ((1, 2, 1000, "multiscale", True), (2, 3, 131, 1.0, False),
                                     (2, 3, 200, 1e-6, True)):
            try:
                _direct(_inputs(B, H, N, D, E, dtype, decay, s0, seed=N + D + E), EXPECTED[dtype], plan=plan)
            except AssertionError as exc:
                bad.append(f"{plan.name} B{B} H{H} N{N}: {exc}")
        try:
            _direct(_inputs(1, 2, 1100, D, E, dtype, "retnet", True, seed=D), EXPECTED[dtype], plan=plan, segments=3)
        except AssertionError as exc:
            bad.append(f"{plan.name} segments=3: {exc}")
    assert not bad, "\n".join(bad)


@needs_wg
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("D, E", [(128, 128), (64, 64), (64, 256), (128, 192)])
def test_lookback(dtype, D, E):
    """The look-back kernel (chunk_wg2lb) against float64: pieces of one chunk to many, a piece cut short at the
    sequence's end and a sequence shorter than one piece, an initial state, λ = 1 and λ = 1e-6, B, H > 1, and far
    more work items than SMs (each CTA taking many tickets, each pair a long chain of look-backs)."""
    bad = []
    cases = [((1, 2, 1000, "multiscale", True), (64, 128, 192, 2048)), ((2, 3, 131, 1.0, False), (64, 128)),
             ((2, 3, 200, 1e-6, True), (64, 192)), ((1, 4, 8192, "retnet", True), (64, 512)),
             ((3, 5, 4099, 0.5, False), (256,))]
    for (B, H, N, decay, s0), pieces in cases:
        x = _inputs(B, H, N, D, E, dtype, decay, s0, seed=N + D + E)
        for L in pieces:
            try:
                _direct(x, EXPECTED[dtype], lookback=L)
            except AssertionError as exc:
                bad.append(f"B{B} H{H} N{N} L{L}: {exc}")
    assert not bad, "\n".join(bad)


@needs_wg
def test_lookback_refuses_what_it_cannot_take():
    """lookback: a one-line ValueError naming the bad value (float32, E not a multiple of 64, a piece that is not a
    positive multiple of 64 tokens, a plan or segments beside it)."""
    x = _inputs(1, 2, 256, 64, 64, "bfloat16", "multiscale", False)
    for kw, words in (({"lookback": 100}, "lookback=100"), ({"lookback": 0}, "lookback=0"),
                      ({"lookback": 64, "segments": 2}, "segments")):
        with pytest.raises(ValueError, match=words):
            ops.chunked(x.q, x.k, x.v, x.decay, scale=x.scale, **kw)
    with pytest.raises(ValueError, match="E=96"):
        ops.chunked(x.q, x.k, x.v[..., :32].repeat(1, 1, 1, 3), x.decay, scale=x.scale, lookback=64)
    f = _inputs(1, 2, 256, 64, 64, "float32", "multiscale", False)
    with pytest.raises(ValueError, match="float32"):
        ops.chunked(f.q, f.k, f.v, f.decay, scale=f.scale, lookback=64)


@needs_wg
@pytest.mark.parametrize("es", [64, 32])
@pytest.mark.parametrize("dtype", ALL)
def test_wg_each_product(dtype, es):
    """The four warpgroup products one at a time, so a wrong layout names itself: Q S_in alone (k = v = 0),
    Q Kᵀ and P V alone (one chunk, no initial state), Kᵀ Ṽ alone (q = 0: only the final state is non-zero)."""
    B, H, E = 1, 2, 128
    D = 64 if dtype == "float32" and es == 64 else 128  # float32 tiles of ES = 64 fit at D = 64 only
    forms = (1,) if dtype == "float32" else (1, 2, 3)  # 16-bit: chunk_wg, chunk_wg2, chunk_wg3
    plans = [ops.chunk_plan(B, H, D, E, dtype, 0, gen=2, es=es, wgs=w) for w in forms]
    plans += [ops.pipe_plan(plans[1])] if dtype != "float32" else []  # chunk_wg2 with pipelined output warps
    plans += [ops.float32_split_plan(plans[0])] if dtype == "float32" else []  # float32's state chain apart
    x = _inputs(B, H, 192, D, E, dtype, "multiscale", True, seed=11)
    zero = torch.zeros_like
    cases = {
        "Q S_in": Inputs(x.q, zero(x.k), zero(x.v), x.decay, x.scale, x.initial_state),
        "Q Kᵀ, P V": Inputs(x.q[:, :, :64], x.k[:, :, :64], x.v[:, :, :64], x.decay, x.scale, None),
        "Kᵀ Ṽ": Inputs(zero(x.q), x.k, x.v, x.decay, x.scale, None),
    }
    bad = []
    for plan, (what, xi) in itertools.product(plans, cases.items()):
        ref_o, ref_s = reference(xi)
        o, s = ops.chunked(xi.q, xi.k, xi.v, xi.decay, scale=xi.scale, initial_state=xi.initial_state, plan=plan)
        torch.cuda.synchronize()
        err_o = _worst(o, ref_o) if ref_o.abs().max() > 0 else float(o.abs().max())
        err_s = _worst(s, ref_s) if ref_s.abs().max() > 0 else float(s.abs().max())
        if not (err_o <= EXPECTED[dtype] and err_s <= EXPECTED[dtype]):
            bad.append(f"{plan.name} {what}: o_err {err_o:.3g}, state_err {err_s:.3g}")
    assert not bad, "; ".join(bad)


def _same_bits(x: Inputs, a: ops.ChunkPlan, b: ops.ChunkPlan) -> bool:
    """Whether plans a and b give the same outputs and final state bit for bit over three segments, b's without a
    NaN (the buffers poisoned with NaN before each call: a row left unwritten shows)."""
    got = []
    for plan in (a, b):
        _poison()
        got.append(ops.chunked(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state, plan=plan,
                               segments=3))
    torch.cuda.synchronize()
    return all(torch.equal(u, w) for u, w in zip(*got)) and not got[1][0].isnan().any()


@needs_wg
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_direct_stores_equal_staged_ones(dtype):
    """DIRECT (each output warp's rows stored from its accumulator through one shuffle a word pair) writes the 16-bit
    values the staged store writes, bit for bit, every row of a tail and none past it (the buffers poisoned with
    NaN first): chunk_wg2 in the rule's form at ES = 64, pipelined, at two CTAs per SM in 32-column slices, and
    chunk_wg4 (in QSTAGE's layout; the rule's WIDE pair) — over three segments with an initial state."""
    bad = []
    for D, E, es, N in ((128, 128, 64, 1000), (64, 64, 32, 131), (64, 256, 32, 200)):
        x = _inputs(2, 3, N, D, E, dtype, "multiscale", True, seed=3)
        base = ops.chunk_plan(2, 3, D, E, dtype, 0, es=es, gen=2, wgs=1)
        split = ops.early_plan(ops.split_plan(base, 0))
        staged = [split, ops.pipe_plan(split), ops.split_plan(base, 0, ctas=1 << 20),
                  ops.wide_plan(ops.shared_scores_plan(base, 0))]
        staged += [ops.transposed_state_plan(split)] if es == 64 else []
        bad += [f"{ops.direct_store_plan(p, 0).name} at D={D}, E={E}, N={N}" for p in staged
                if not _same_bits(x, p, ops.direct_store_plan(p, 0))]
    assert not bad, "; ".join(bad)


@needs_wg
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tma_loads_equal_cp_async_ones(dtype):
    """chunk_wg2_tma (its producer's lane 0 loading each chunk through tensor maps, the slot's barrier completed by
    the bytes landing) gives the outputs and final state of the same chunk_wg2 form loading with cp.async, bit for
    bit: at D=E=128 in the rule's form (TST, PIPE, DIRECT) and plain at two stages, at D=64 with E=64 and 256 — on
    tails (the boxes past N arrive as zeros), three segments (each from its token offset) and an initial state,
    the buffers poisoned with NaN first."""
    bad = []
    for D, E, N in ((128, 128, 1000), (64, 64, 131), (64, 256, 200), (128, 128, 64)):
        x = _inputs(2, 3, N, D, E, dtype, "multiscale", True, seed=4)
        split = ops.split_plan(ops.chunk_plan(2, 3, D, E, dtype, 0, es=64, gen=2, wgs=1), 0)
        rule = ops.direct_store_plan(ops.pipe_plan(ops.transposed_state_plan(ops.early_plan(split))))
        bad += [f"{ops.tma_load_plan(p).name} at D={D}, E={E}, N={N}" for p in (rule, replace(split, stages=2, smem=0))
                if not _same_bits(x, p, ops.tma_load_plan(p))]
    assert not bad, "; ".join(bad)


@needs_wg
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tma_state_pass_equals_cp_async_one(dtype):
    """chunk_wg_state_tma (the state pass's producer loading K and V through tensor maps, no Q) gives every piece's
    local state bit for bit as chunk_wg_state copying by cp.async, and leaves no entry unwritten (NaN poisoned
    first): at D=E=128 with the state held transposed (the rule's form), D=64, E=64 with Ṽ through shared memory and
    D=64, E=256 in four slices, over the pieces of three segments (pieces starting inside the sequence)."""
    bad = []
    for D, E, N, tst in ((128, 128, 3000, True), (64, 64, 1500, False), (64, 256, 1100, True)):
        x = _inputs(2, 3, N, D, E, dtype, "multiscale", False, seed=6)
        seg = sp.split(N, 3, 2, min_piece=64)
        plain = ops.state_plan(D, E, dtype, 0, tstate=tst)
        got = []
        for plan in (plain, ops.tma_state_pass(plain)):
            _poison()
            got.append(ops._local_states(plan, 0, x.k, x.v, x.decay, seg))
        torch.cuda.synchronize()
        if seg.pieces < 2 or got[1].isnan().any() or not torch.equal(got[0], got[1]):
            bad.append(f"{ops.tma_state_pass(plain).name} at N={N}, {seg.pieces} pieces")
    assert not bad, "; ".join(bad)


@needs_wg
def test_no_tokens_through_the_tensor_map_rule_hand_the_initial_state_back():
    """N = 0 where the rule loads through tensor maps (which have no empty dimension: chunked launches nothing
    there): no output rows, the final state S0 as given, or 0 without one; and one token after, as the reference
    has it."""
    B, H, D, E = 4, 32, 64, 64
    assert ops.chunk_plan(B, H, D, E, "bfloat16").tma
    s0 = torch.randn(B, H, D, E, device="cuda")
    empty = torch.zeros(B, H, 0, D, dtype=torch.bfloat16, device="cuda")
    lam = decay_profile("multiscale", H).cuda()
    o, sN = ops.chunked(empty, empty, empty, lam, scale=D ** -0.5, initial_state=s0)
    assert o.shape == (B, H, 0, E) and torch.equal(sN, s0)
    assert not ops.chunked(empty, empty, empty, lam, scale=D ** -0.5)[1].any()
    _direct(_inputs(B, H, 1, D, E, "bfloat16", "multiscale", True, seed=5), EXPECTED["bfloat16"])


@needs_wg
@pytest.mark.parametrize("qs, ks, vs", [(2.0 ** 20, 1.0, 1.0), (1.0, 2.0 ** -20, 2.0 ** 18), (2.0 ** -24, 2.0 ** -24, 1.0),
                                        (2.0 ** 12, 2.0 ** 12, 2.0 ** 12)])
def test_wg_float32_pieces_follow_the_inputs_range(qs, ks, vs):
    """chunk_wg32 splits float32 into float16 pieces: the powers of two it scales tiles and rows by keep them
    in range, so inputs far outside float16's (2^±24, products up to 2^36; λ = 1 with an offset grows the
    state) give float32's accuracy. The input scales are powers of two, so the reference is exact for them. Also
    with the state chain apart (chunk_wg32x2: its copies' scales in two buffers)."""
    bad = []
    plans = (ops.chunk_plan(1, 2, 128, 64, "float32", 0, gen=2),
             ops.float32_split_plan(ops.chunk_plan(1, 2, 128, 64, "float32", 0, gen=2, es=32)))
    for (decay, offset), plan in itertools.product((("multiscale", 0.0), (1.0, 0.5)), plans):
        x = _inputs(1, 2, 700, 128, 64, "float32", decay, True, seed=5)
        x = Inputs((x.q + offset) * qs, (x.k + offset) * ks, (x.v + offset) * vs, x.decay, x.scale,
                   x.initial_state * (ks * vs))
        try:
            _direct(x, EXPECTED["float32"], plan=plan)
        except AssertionError as exc:
            bad.append(f"{plan.name} λ={decay} offset={offset}: {exc}")
    assert not bad, "; ".join(bad)


@needs_wg
@pytest.mark.parametrize("form", ["plain", "two sets", "transposed"])
@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("D, E", [(128, 128), (64, 32), (128, 96), (64, 256)])
def test_wg_state_pass(dtype, D, E, form):
    """The generation-2 state pass alone (chunk_wg_state; chunk_wg32_state in float32): every piece's own end
    state Σ λ^(end-1-t) k_tᵀ v_t (from zero) against float64, on E slices of 64 and 32 columns (E = 96: 32
    only) and both D, pieces of 8 chunks; float32 also with two sets of pieces and stagings (DBUF), 16-bit at
    ES = 64 with the state held transposed (TST), both there with pieces of 1, 2 and 3 chunks too (DBUF's
    copies run two chunks ahead)."""
    from leetbench.cuda_kernels import segments as sp

    B, H, N = 2, 3, 1500
    x = _inputs(B, H, N, D, E, dtype, "multiscale", False, seed=D + E)
    cuts = [sp.split(N, 3, 2)]
    if (form == "two sets") != (dtype == "float32") and form != "plain":
        pytest.skip(f"{form}: the {'float32' if form == 'two sets' else '16-bit'} state pass's form")
    if form == "transposed" and E % 64:
        pytest.skip("the transposed state is 64 columns of E")
    plan = ops.state_plan(D, E, dtype, 0, gen=2, dbuf=(form == "two sets") if dtype == "float32" else None,
                          tstate=(form == "transposed") if dtype != "float32" else None)
    assert plan.name.startswith("chunk_wg32_state<" if dtype == "float32" else "chunk_wg_state<")
    assert plan.name.endswith(",true>") == (form != "plain")
    if form != "plain":
        cuts += [sp.Segments(n=N, length=L, count=-(-N // L)) for L in (64, 128, 192)]
    lam = x.decay.double().cuda()[None, :, None]
    for seg in cuts:
        local = ops._local_states(plan, 0, x.k, x.v, x.decay.double(), seg)
        torch.cuda.synchronize()
        want = []
        for j in range(seg.pieces):
            a, b = seg.piece_bounds(j)
            w = lam ** torch.arange(b - a - 1, -1, -1, device="cuda", dtype=torch.float64)  # λ^(end-1-t)
            k, v = x.k[:, :, a:b].double(), x.v[:, :, a:b].double() * w[..., None]
            want.append(k.transpose(-1, -2) @ v)
        assert _worst(local, torch.stack(want, 2)) <= EXPECTED[dtype], f"pieces of {seg.piece} tokens"


@needs_wg
def test_wg_products_are_not_serialised():
    """ptxas serialises every wgmma of a kernel, correct but without the overlap the kernel is built for, when
    the accumulators cannot stay in registers across the asynchronous products (C7511, seen once when P V
    accumulated into a slice of another product's accumulator), when a product is issued after a wait on a
    divergent path (C7519: an mbarrier spin between two products, KERNEL_NOTES v15) or when products stay in
    flight across a loop's back edge while other registers are read (C7514, v20). Every generation-2 plan the
    tests run and every default is read from the compiler's log each kernel keeps (also from the cache)."""
    names = {ops.chunk_plan(B, 32, D, E, dt, 0).name for B in (1, 8) for (D, E) in WG_SHAPES for dt in ALL}
    names |= {p.name for D, E in WG_SHAPES for dt in ALL for p in _wg_plans(2, 3, D, E, dt)}
    names |= {ops.state_plan(D, E, dt, 0).name for D, E in WG_SHAPES for dt in ALL}
    names = {n for n in names if n.startswith("chunk_wg")}
    ops.precompile_chunked(names, 0, jobs=8)
    logs = {n: kernel(ops.kernel_files(n), n, 0).log for n in sorted(names)}
    marks = ("C7511", "C7514", "C7519", "serializ")
    drew = {n: log.strip()[:300] for n, log in logs.items() if any(w in log for w in marks)}
    assert not drew, drew


@needs_wg
def test_wg_cubins_are_loaded_from_the_disk_cache(monkeypatch, tmp_path):
    """A later process loads a generation-2 instance compiled before without running NVRTC, and it runs."""
    from cupy_backends.cuda.libs import nvrtc

    from leetbench import cuda_kernels

    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    plan = ops.chunk_plan(1, 2, 64, 64, "bfloat16", 0, gen=2, es=32, stages=2, minb=1)
    key = (ops.kernel_files(plan.name), plan.name, 0, ())  # kernel()'s in-process cache key: no macros defined
    monkeypatch.delitem(cuda_kernels._kernels, key, raising=False)  # (compiled before by another test)
    kernel(*key)                                              # compiled, and stored
    assert list((tmp_path / "leetbench").glob("*.cubin"))
    monkeypatch.delitem(cuda_kernels._kernels, key)           # as in a new process
    monkeypatch.setattr(nvrtc, "compileProgram", lambda *a: pytest.fail("NVRTC ran although the cubin was cached"))
    kernel(*key)
    _direct(_inputs(1, 2, 300, 64, 64, "bfloat16", "retnet", True, seed=3), EXPECTED["bfloat16"], plan=plan)


@needs_wg
def test_wg_is_the_default_on_hopper():
    """Generation 2 where it applies, generation 1 for the rest (D ∉ {64, 128}, E not a multiple of 32)."""
    assert ops.chunk_plan(1, 32, 128, 128, "bfloat16", 0).gen == 2
    assert ops.chunk_plan(8, 32, 64, 256, "float16", 0).gen == 2
    assert ops.chunk_plan(1, 32, 128, 128, "float32", 0).name == "chunk_wg32<128,32,4,4>"
    assert ops.chunk_plan(1, 32, 16, 64, "float32", 0).gen == 1
    assert ops.chunk_plan(1, 32, 256, 256, "bfloat16", 0).gen == 1
    assert ops.chunk_plan(1, 32, 64, 48, "bfloat16", 0).gen == 1


def test_layouts_and_limits():
    lim = device_limits(0)
    assert lim.sm_count > 0 and lim.smem_block >= 48 * 1024 and lim.smem_sm >= lim.smem_block
    # values of the layouts before they were read back (16-bit D = E = 128, ES = 32; float32 D = 64, ES = 32)
    assert ops.smem_bytes("half", 128, 32, 2, 0) == 106240
    if ops.device_gen(0) == 2:  # tests/test_segments.py plans with these formulas (_stub_wg_smem, _stub_wg32_smem)
        assert ops.smem_bytes("wg", 128, 64, 2, 0) == 1024 + 2 * (32768 + 8192) + 8192 + 16384 + 64 * 72 * 2 + 1024
        assert ops.smem_bytes("wg32", 128, 32, 1, 0) == 1024 + (4 * 2 * 8192 + 4 * 4096 + 2 * 8192) \
            + 2 * 64 * 132 * 4 + 64 * 36 * 4 + 2 * 4 * 16 + 16 + 1024
        assert ops.smem_bytes("wgstate", 128, 64, 2, 0) == 1024 + 2 * (16384 + 8192) + 8192 + 1024
        assert ops.smem_bytes("wg32s", 128, 64, 1, 0) == 1024 + 2 * (2 * 16384 + 2 * 8192) \
            + 2 * (64 * 132 * 4 + 64 * 68 * 4) + 2 * 4 * 16 + 2 * 16 + 1024      # _stub_wg32_state_smem
        assert ops.smem_bytes("wg32x2", 128, 32, 1, 0) == 194560 == \
            -(-(ops.smem_bytes("wg32", 128, 32, 1, 0) - 1024) // 1024) * 1024 + 2 * 128 * 64 + 1024  # _stub_wg32x2
        assert ops.smem_bytes("wg2", 128, 64, 3, 0) == ops.smem_bytes("wg", 128, 64, 3, 0) + 128 * 2 * 64
        assert ops.smem_bytes("wg3", 128, 64, 4, 0) == ops.smem_bytes("wg2", 128, 64, 4, 0) + 64 * 72 * 2
        assert ops.smem_bytes("wg4", 128, 64, 2, 0) == 200704                 # _stub_wg4_smem
        assert ops.smem_bytes("wg4q", 128, 64, 3, 0) == 231424 == ops.smem_bytes("wg4", 128, 64, 3, 0) - 2 * 64 * 72 * 2
        assert ops.smem_bytes("wglb", 128, 64, 3, 0) == 217984                 # _stub_wglb_smem
    assert ops.smem_bytes("f32", 64, 32, 2, 0) == 768 + 2 * 2 * 64 * 72 * 4 + 2 * 64 * 40 * 4 + 2 * 32 * 72 * 4 \
        + 4 * 16 * 36 * 4


# ---- cupy_recurrent (prefill and decode) -------------------------------------------------------------------
RECURRENT = (
    [P(1, 4, 2048, 128, dtype=dt, s0=True) for dt in ALL]
    + [P(2, 3, 97, D, E, decay="alibi", dtype=dt, s0=True)
       for (D, E) in ((16, 16), (32, 64), (256, 128), (128, 256), (24, 10), (256, 256)) for dt in ALL]
    + [P(1, 2, N, 64, decay=lam, dtype=dt) for N in (1, 2, 33, 65) for lam in (1.0, 1e-6) for dt in ALL]
    + [P(2, 2, 300, 256, 128, decay=1.0, dtype=dt) for dt in ALL]
    + [P(4, 8, 1, 256, 256, dtype=dt, s0=True) for dt in ALL] + [P(1, 2, 1, 24, 10, decay=0.9, s0=True)]
    # decode: a prefix of `length` tokens folded into the float32 state, then `steps` single-token calls
    + [P(B, 8, 100, 128, decay="multiscale", dtype=dt, mode="decode", steps=3) for B in (1, 4) for dt in ALL]
    + [P(2, 3, 50, D, E, decay=lam, dtype=dt, mode="decode", steps=2)
       for (D, E) in ((16, 32), (256, 64), (24, 10)) for lam in (1.0, 1e-6, "retnet") for dt in ALL]
)


@pytest.mark.parametrize("problem", RECURRENT, ids=lambda p: p.label())
def test_cupy_recurrent(registry, problem):
    _check(registry, "cupy_recurrent", problem)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D, E", [(128, 128), (24, 10)])
def test_decode_step_entry_is_the_function_at_one_token(dtype, D, E):
    """`step=` (what the dispatcher calls on [B,H,D] tensors) equals the function on [B,H,1,D] bit for bit;
    the harness times the function and checks the step (decode rows above)."""
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k = (torch.randn(3, 4, D, device="cuda", generator=g).to(dtype) for _ in range(2))
    v = torch.randn(3, 4, E, device="cuda", generator=g).to(dtype)
    s0 = torch.randn(3, 4, D, E, device="cuda", generator=g)
    lam = decay_profile("retnet", 4).cuda()
    o, s = ops.recurrent_step(q, k, v, lam, scale=0.3, state=s0)
    o4, s4 = ops.recurrent(q[:, :, None], k[:, :, None], v[:, :, None], lam, scale=0.3, initial_state=s0)
    assert o.shape == (3, 4, E) and torch.equal(o, o4[:, :, 0]) and torch.equal(s, s4)


def test_refuses_honestly(registry):
    assert "D ≤ 256" in registry["cupy_recurrent"].why_not(P(1, 1, 8, 512))
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 48)) is not None
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 64, 24)) is not None
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 256, dtype="float32")) is not None
    assert "float64" in registry["cupy_chunked"].why_not(P(1, 1, 8, 64, dtype="float64"))


# ---- compute-sanitizer -------------------------------------------------------------------------------------
_SANITIZE = textwrap.dedent("""
    import os, torch
    from leetbench.cuda_kernels import ops
    from leetbench.cuda_kernels import segments as sp
    from leetbench.problem import decay_profile
    GEN = int(os.environ["LEETBENCH_SANITIZE_GEN"])
    torch.manual_seed(0)
    def run(fn, B, H, N, D, E, dtype, s0, **kw):
        q = torch.randn(B, H, N, D, device="cuda").to(dtype)
        k = torch.randn(B, H, N, D, device="cuda").to(dtype)
        v = torch.randn(B, H, N, E, device="cuda").to(dtype)
        st = torch.randn(B, H, D, E, device="cuda") if s0 else None
        lam = decay_profile("multiscale", H).cuda()
        o, s = fn(q, k, v, lam, scale=D ** -0.5, initial_state=st, **kw)
        torch.cuda.synchronize()
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
    def plan(B, H, D, E, dt, **kw):
        return ops.chunk_plan(B, H, D, E, str(dt).removeprefix("torch."), 0, gen=GEN, **kw)
    def state_pass(state, B, H, N, D, E, dt):  # pass 1 alone over the pieces of three segments
        k = torch.randn(B, H, N, D, device="cuda").to(dt)
        v = torch.randn(B, H, N, E, device="cuda").to(dt)
        lam = decay_profile("multiscale", H).cuda()
        local = ops._local_states(state, 0, k, v, lam, sp.split(N, 3, 2, min_piece=64))
        torch.cuda.synchronize()
        assert torch.isfinite(local).all()
    for dt in (torch.bfloat16, torch.float16) if GEN else ():
        run(ops.chunked, 1, 2, 131, 64, 64, dt, True, plan=plan(1, 2, 64, 64, dt))      # E slices, tail
        run(ops.chunked, 2, 1, 70, 64, 64, dt, False, plan=plan(2, 1, 64, 64, dt, es=32, stages=2))
        run(ops.chunked, 1, 2, 1100, 64, 64, dt, True, plan=plan(1, 2, 64, 64, dt), segments=3)  # segments
        if GEN == 1:
            run(ops.chunked, 1, 1, 40, 16, 16, dt, True, plan=plan(1, 1, 16, 16, dt))  # idle state warps
        else:
            run(ops.chunked, 1, 2, 200, 128, 128, dt, True, plan=plan(1, 2, 128, 128, dt, es=64, wgs=1))
            run(ops.chunked, 1, 2, 333, 128, 96, dt, True, plan=plan(1, 2, 128, 96, dt, es=32, stages=2))
            # two consumer warpgroups (chunk_wg2): the state copy's double buffer, eight warps releasing a slot
            split = plan(1, 2, 128, 128, dt, es=64, wgs=2)
            run(ops.chunked, 1, 2, 333, 128, 128, dt, True, plan=split)
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=split, segments=3)
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=ops.pipe_plan(split), segments=3)  # PIPE, tails
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=ops.transposed_state_plan(split), segments=3)  # TST
            run(ops.chunked, 1, 2, 131, 64, 64, dt, True,
                plan=ops.transposed_state_plan(plan(1, 2, 64, 64, dt, es=64, wgs=2)))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True,  # QREG, with TST and without
                plan=ops.register_q_plan(ops.transposed_state_plan(split)), segments=3)
            run(ops.chunked, 1, 2, 333, 128, 96, dt, True, plan=ops.register_q_plan(plan(1, 2, 128, 96, dt, es=32,
                                                                                            wgs=2)))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, segments=3,  # BULK: tails, segments, PIPE
                plan=ops.bulk_store_plan(ops.register_q_plan(ops.transposed_state_plan(split))))
            run(ops.chunked, 1, 2, 131, 64, 64, dt, True, plan=ops.bulk_store_plan(ops.pipe_plan(plan(1, 2, 64, 64,
                                                                                                      dt, wgs=2))))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, segments=3,  # DIRECT: tails, segments, PIPE, the pair
                plan=ops.direct_store_plan(ops.transposed_state_plan(split)))
            run(ops.chunked, 1, 2, 131, 64, 64, dt, True, plan=ops.direct_store_plan(ops.pipe_plan(plan(1, 2, 64, 64,
                                                                                                        dt, wgs=2))))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, segments=3,
                plan=ops.direct_store_plan(plan(1, 2, 128, 128, dt, pair=True)))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, segments=3,  # TMA loads: tails, segments, the rule's form
                plan=ops.tma_load_plan(ops.direct_store_plan(ops.pipe_plan(ops.transposed_state_plan(split)))))
            run(ops.chunked, 2, 1, 131, 64, 256, dt, False, plan=ops.tma_load_plan(plan(2, 1, 64, 256, dt, es=64,
                                                                                       wgs=2)))
            name = str(dt).removeprefix("torch.")  # the state pass loading through tensor maps, TST and not
            state_pass(ops.tma_state_pass(ops.state_plan(128, 128, name, 0)), 1, 2, 1100, 128, 128, dt)
            state_pass(ops.tma_state_pass(ops.state_plan(64, 256, name, 0, tstate=False)), 2, 1, 700, 64, 256, dt)
            run(ops.chunked, 1, 2, 131, 64, 64, dt, True, plan=ops.pipe_plan(plan(1, 2, 64, 64, dt, wgs=2)))
            three = plan(1, 2, 128, 128, dt, es=64, wgs=3)  # two output warpgroups (chunk_wg3): odd and even chunks
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=three, segments=3)
            run(ops.chunked, 1, 2, 131, 64, 64, dt, True, plan=plan(1, 2, 64, 64, dt, wgs=3))
            pair = ops.shared_scores_plan(plan(1, 2, 128, 128, dt, es=64, wgs=1))  # chunk_wg4: two slices, one P
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=pair, segments=3)
            both = ops.early_plan(ops.shared_scores_plan(plan(1, 2, 128, 128, dt, es=64, wgs=1), qstage=True))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=both, segments=3)  # staged in Q, announced early
            wide = ops.wide_plan(ops.shared_scores_plan(plan(1, 2, 128, 128, dt, es=64, wgs=1), qstage=True))
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=wide, segments=3)  # both slices' products at once
            run(ops.chunked, 2, 1, 131, 64, 64, dt, True, plan=ops.shared_scores_plan(plan(2, 1, 64, 64, dt, es=32)))
            copies = ops.two_copy_plan(plan(1, 2, 128, 128, dt, es=64, wgs=1))  # chunk_wg, two state copies
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, plan=copies, segments=3)
            run(ops.chunked, 1, 2, 1100, 128, 128, dt, True, lookback=128)  # chunk_wg2lb: look-backs, tails
            run(ops.chunked, 2, 1, 131, 64, 64, dt, False, lookback=64)
    f32 = torch.float32
    if GEN == 1:
        run(ops.chunked, 1, 2, 131, 64, 64, f32, True, plan=plan(1, 2, 64, 64, f32))  # 3xTF32 path
        run(ops.chunked, 1, 2, 700, 64, 32, f32, True, segments=2, gen=1)
    if GEN == 2:  # float16 pieces (chunk_wg32)
        run(ops.chunked, 1, 2, 131, 128, 64, f32, True, plan=plan(1, 2, 128, 64, f32))
        run(ops.chunked, 1, 2, 1100, 64, 64, f32, True, plan=plan(1, 2, 64, 64, f32, es=64), segments=3)
        run(ops.chunked, 1, 2, 1100, 128, 64, f32, True, plan=ops.producer_split_plan(plan(1, 2, 128, 64, f32)),
            segments=3)  # the producers split the chunk (PSPLIT)
        apart = ops.float32_split_plan(plan(1, 2, 128, 64, f32, es=32))  # the state chain apart (chunk_wg32x2)
        run(ops.chunked, 1, 2, 1100, 128, 64, f32, True, plan=apart, segments=3)
        run(ops.chunked, 1, 2, 131, 64, 64, f32, True, plan=ops.float32_split_plan(plan(1, 2, 64, 64, f32, es=64)))
        # the state pass with two sets of pieces (DBUF): pieces of 1, 2, 3 and 8 chunks
        from leetbench.cuda_kernels import segments as sp
        k, v = (torch.randn(1, 2, 1100, 128, device="cuda") for _ in range(2))
        # and the 16-bit one with its state held transposed (TST)
        lam2 = decay_profile("multiscale", 2).cuda().double()
        forms = [(ops.state_plan(128, 128, "float32", 0, dbuf=True), torch.float32)]
        forms += [(ops.transposed_state_pass(ops.state_plan(128, 128, str(d).removeprefix("torch."), 0)), d)
                  for d in (torch.bfloat16, torch.float16)]
        for pass1, d in forms:
            for L in (64, 128, 192, 512):
                local = ops._local_states(pass1, 0, k.to(d), v.to(d), lam2,
                                          sp.Segments(n=1100, length=L, count=-(-1100 // L)))
                torch.cuda.synchronize()
                assert torch.isfinite(local).all()
    if GEN == 0:  # the kernels without a producer warp: recurrence and decode
        for dt in (torch.float32, torch.bfloat16):
            run(ops.recurrent, 2, 2, 37, 64, 40, dt, True)
            run(ops.recurrent, 2, 2, 1, 128, 64, dt, True)                      # decode step
    print("SANITIZE-OK")
""")


# racecheck reports hazards between the producer warp's cp.async writes and the consumers' reads of every
# pipelined kernel (chunk_fwd, chunk_state, chunk_wg): it does not take an mbarrier arrive/wait pair across
# warps as ordering them, the false positive FlashAttention documents for its bulk copies. It did point at one
# real race, fixed in chunk_wg (a warp rewrote the state copy while another's share of a product still read
# it). So racecheck must pass on the kernels without a pipeline (gen 0 below: recurrence, decode) and is
# expected to report on the pipelined ones (strict: a clean run there would be news).
_RACE_FP = pytest.mark.xfail(reason="racecheck does not model mbarrier ordering of cp.async pipelines", strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("gen, tool", [
    (0, "memcheck"),
    (0, "racecheck"),
    (1, "memcheck"),
    pytest.param(1, "racecheck", marks=_RACE_FP),
    # Generation 1 runs four consumer loops, which reach the named barrier from four bar.sync
    # instructions: synccheck reports divergent threads. The one-loop variant (OPT_ONELOOP) passes synccheck
    # (H200, 2026-11-29) but ran 1.25–1.9× slower, so it is not the default (ops.default_opt).
    pytest.param(1, "synccheck", marks=pytest.mark.xfail(reason="four consumer loops, kept for speed", strict=True)),
    (2, "memcheck"),
    pytest.param(2, "racecheck", marks=_RACE_FP),
    (2, "synccheck"),  # each consumer warpgroup's warps meet at each barrier through one instruction
])
def test_compute_sanitizer(gen, tool):
    """memcheck is clean on each generation's plans and the sequence-parallel path, synccheck on generation 2,
    racecheck on the kernels without a producer warp (gen 0)."""
    if gen == 2 and ops.device_gen(0) != 2:
        pytest.skip("generation 2 runs on compute capability 9.0 only")
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not on PATH")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["LEETBENCH_SANITIZE_GEN"] = str(gen)
    proc = subprocess.run([exe, "--tool", tool, "--error-exitcode", "9", sys.executable, "-c", _SANITIZE],
                          capture_output=True, text=True, env=env, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SANITIZE-OK" in text, text[-4000:]
    assert "ERROR SUMMARY: 0 errors" in text or "RACECHECK SUMMARY: 0 hazards" in text, text[-4000:]
