"""Sequence parallelism of cupy_chunked, on the CPU: the segment plan, the scan across segments and the
three-pass orchestration (leetbench.cuda_kernels.segments), with torch stand-ins for the two CUDA passes.

The stand-ins do what the kernels do, through the same token arithmetic (segment p of (b, h) is tokens
p·L .. min((p+1)·L, N) - 1 of rows b·H + h of the flattened [B·H·N, ·] inputs), in float64, so the whole
decomposition must reproduce the float64 reference to rounding. The plan rules of ops.py are checked with
H200 limits and stub layout sizes (no device). Fast: well under 5 s.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from leetbench.cuda_kernels import Limits, ops
from leetbench.cuda_kernels import segments as sp
from leetbench.problem import Inputs, decay_profile
from leetbench.reference import reference

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only contend (10-100× slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, X] as the kernels see it: [B·H, N, X] token rows."""
    B, H, N, X = x.shape
    return x.reshape(B * H, N, X)


def local_states(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, seg: sp.Segments) -> torch.Tensor:
    """Pass 1 stand-in: each piece's own end state from zero (reference with q = 0)."""
    B, H, N, D = k.shape
    E = v.shape[-1]
    out = torch.empty(B * H, seg.pieces, D, E, dtype=F64)
    kr, vr = _rows(k), _rows(v)
    for j in range(seg.pieces):
        a, b = seg.piece_bounds(j)
        assert b <= N, "a state piece ran past the sequence"
        zeros = torch.zeros(1, B * H, b - a, D, dtype=F64)
        _, s = reference(Inputs(zeros, kr[None, :, a:b], vr[None, :, a:b], decay.repeat(B), 1.0, None))
        out[:, j] = s[0]
    return out.reshape(B, H, seg.pieces, D, E)


def outputs(q, k, v, decay, scale: float, s_in: torch.Tensor, seg: sp.Segments):
    """Pass 3 stand-in: every segment from its entering state; the last segment's end state is S_N."""
    B, H, N, D = q.shape
    E = v.shape[-1]
    o = torch.full((B * H, N, E), float("nan"), dtype=F64)
    sin = s_in.reshape(B * H, seg.count, D, E)
    final = None
    for p in range(seg.count):
        a, b = seg.bounds(p)
        assert a < b, "an empty segment"
        o_p, s_p = reference(Inputs(_rows(q)[None, :, a:b], _rows(k)[None, :, a:b], _rows(v)[None, :, a:b],
                                    decay.repeat(B), scale, sin[None, :, p]))
        o[:, a:b] = o_p[0]
        final = s_p[0]
    return o.reshape(B, H, N, E), final.reshape(B, H, D, E)


def _inputs(B: int, H: int, N: int, D: int, E: int, decay, s0: bool, seed: int) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(B, H, N, E, generator=g, dtype=F64)
    st = torch.randn(B, H, D, E, generator=g, dtype=F64) if s0 else None
    return Inputs(q, k, v, decay_profile(decay, H), D ** -0.5, st)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Worst (batch, head) relative error."""
    num = torch.linalg.vector_norm((a - b).flatten(2), dim=-1)
    den = torch.linalg.vector_norm(b.flatten(2), dim=-1).clamp_min(1e-300)
    return float((num / den).max())


CASES = [  # (B, H, N, count, sub, decay, initial state)
    (1, 2, 500, 3, 1, "multiscale", True),    # N not a multiple of L (the last segment short)
    (2, 3, 700, 4, 2, "retnet", False),       # pieces inside segments
    (1, 2, 640, 5, 1, 1.0, True),             # λ = 1, N a multiple of L
    (1, 2, 700, 3, 2, 1e-6, True),            # tiny λ: the entering state is the last piece only
    (1, 3, 333, 2, 3, "alibi", False),        # sub clamped to whole chunks
    (2, 2, 65, 2, 1, 0.9, True),              # one token in the last segment
    (1, 2, 40, 4, 2, "multiscale", True),     # N < L: one segment, no pieces
    (1, 1, 1, 3, 1, 1.0, True),               # a single token
]


@pytest.mark.parametrize("B,H,N,count,sub,decay,s0", CASES)
def test_segmented_matches_reference(B, H, N, count, sub, decay, s0):
    x = _inputs(B, H, N, 8, 4, decay, s0, seed=N + count)
    seg = sp.split(N, count, sub, min_piece=64)
    assert (seg.count - 1) * seg.length < N <= seg.count * seg.length
    assert seg.length % (sp.CHUNK * seg.sub) == 0
    o, s = sp.run(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state, seg=seg,
                  local_states=local_states, outputs=outputs)
    ref_o, ref_s = reference(x)
    assert torch.isfinite(o).all()
    assert _rel(o, ref_o) < 1e-12 and _rel(s, ref_s) < 1e-12, (seg, _rel(o, ref_o), _rel(s, ref_s))


def test_scan_exact_cases():
    """λ = 1: entering states are plain prefix sums; λ = 1e-6 (pieces of 64): the previous piece alone."""
    seg = sp.Segments(n=64 * 6, length=128, count=3, sub=2)
    g = torch.Generator().manual_seed(0)
    local = torch.randn(2, 2, seg.pieces, 3, 4, generator=g, dtype=F64)
    s0 = torch.randn(2, 2, 3, 4, generator=g, dtype=F64)
    ones = sp.scan_states(local, torch.ones(2, dtype=F64), seg, s0)
    assert torch.equal(ones[:, :, 0], s0)
    assert torch.allclose(ones[:, :, 2], s0 + local.sum(2), rtol=0, atol=1e-12)
    tiny = sp.scan_states(local, torch.full((2,), 1e-6, dtype=F64), seg, s0)
    assert torch.equal(tiny[:, :, 1], local[:, :, 1]) and torch.equal(tiny[:, :, 2], local[:, :, 3])


def test_scan_float32_keeps_float64_carry():
    """float32 pieces, λ close to 1 over many pieces: the carry adds no error beyond the final rounding."""
    seg = sp.Segments(n=64 * 400, length=64 * 200, count=2, sub=200)
    local = torch.full((1, 1, seg.pieces, 1, 1), 1.0, dtype=torch.float32)
    lam = torch.tensor([1.0 - 2.0 ** -16], dtype=F64)
    got = sp.scan_states(local, lam, seg)[0, 0, 1, 0, 0].item()
    a = float(torch.exp(torch.log(lam) * 64))
    want = sum(a ** j for j in range(seg.pieces))
    assert abs(got - want) / want < 1e-7


def test_split_and_rules():
    for n in (1, 63, 64, 65, 1000, 4096, 65536, 100_000):
        for count in (1, 2, 3, 7):
            for sub in (1, 4):
                seg = sp.split(n, count, sub)
                assert 1 <= seg.count <= max(1, count) and seg.length % (sp.CHUNK * seg.sub) == 0
                assert (seg.count - 1) * seg.length < n <= seg.count * seg.length
                assert seg.sub == 1 or seg.piece >= sp.MIN_PIECE
    assert sp.choose_count(65536, 128, 132, 2) == 2       # B=1, H=32, E/ES=4: two per SM in one wave
    assert sp.choose_count(65536, 32, 132, 2) == 8
    assert sp.choose_count(2048, 128, 132, 2) == 1        # too short to pay for the extra passes
    assert sp.choose_count(65536, 256, 132, 2) == 1       # the GPU is full already
    assert sp.choose_sub(2, 64, 132, 2) == 4 and sp.choose_sub(1, 64, 132, 2) == 1


# ---- ops.py's plans with an H200's limits (stub layout sizes: the real ones come from the module) ----------

def _stub_smem(kind: str, D: int, es: int, stages: int, dev: int) -> int:
    eb = 4 if kind in ("f32", "state32") else 2
    tiles = stages * 64 * ((D + 8) * (1 if kind.startswith("state") else 2) + es + 8) * eb
    extra = 0 if kind.startswith("state") else 2 * D * (es + 8) * eb + 4 * 16 * (es + 8) * eb
    return 768 + tiles + extra


@pytest.fixture
def h200(monkeypatch):
    for fn in (ops.chunk_plan, ops.state_plan, ops.seq_plan, ops.lookback_plan):
        fn.cache_clear()
    monkeypatch.setattr(ops, "device_limits", lambda dev: Limits(132, 232448, 233472, 1024))
    monkeypatch.setattr(ops, "smem_bytes", _stub_smem)
    monkeypatch.setattr(ops, "device_gen", lambda dev: 1)  # the rules of generation 1 (chunked.cu)
    yield
    for fn in (ops.chunk_plan, ops.state_plan, ops.seq_plan, ops.lookback_plan):
        fn.cache_clear()


def _stub_wg_smem(D: int, es: int, stages: int) -> int:
    """chunked_wg.cu's WgSmem::ALLOC: tiles of Q, K (64 × 128 B per 64 columns of D), V, Ṽ, one state copy,
    output staging, behind a 1 KB head, plus 1 KB to align the base."""
    vt = 64 * 2 * es
    return 1024 + stages * (2 * (D // 64) * 8192 + vt) + vt + D * 2 * es + 64 * (es + 8) * 2 + 1024


def _stub_wg2_smem(D: int, es: int, stages: int) -> int:
    """chunked_wg.cu's Wg2Smem::ALLOC: WgSmem's, then a second 16-bit state copy (D × ES)."""
    return _stub_wg_smem(D, es, stages) + D * 2 * es


def _stub_wg3_smem(D: int, es: int, stages: int) -> int:
    """chunked_wg.cu's Wg3Smem::ALLOC: Wg2Smem's, then the odd chunks' output staging (64 rows of ES + 8)."""
    return _stub_wg2_smem(D, es, stages) + 64 * (es + 8) * 2


def _stub_wg4_smem(D: int, es: int, stages: int, qstage: bool = False) -> int:
    """chunked_wg4.cu's Wg4Smem::ALLOC: Q and K tiles once per stage, V tiles, Ṽ, two state copies and output
    staging for each of two slices (QSTAGE: none, the outputs staged in a Q tile), behind a 1 KB head, plus 1 KB
    to align the base."""
    vt = 64 * 2 * es
    staging = 0 if qstage else 2 * 64 * (es + 8) * 2
    return 1024 + stages * (2 * (D // 64) * 8192 + 2 * vt) + 2 * vt + 4 * D * 2 * es + staging + 1024


def _stub_wg32_smem(D: int, es: int) -> int:
    """chunked_wg32.cu's Wg32Smem::ALLOC: float16 hi and lo tiles of Q, K, V, Ṽ and the state copy, float32
    staging of one chunk's Q, K, V rows (pitches D + 4, ES + 4), four maxima per producer warp (up to four) twice,
    four scale exponents; no output staging."""
    tiles = 4 * (D // 64) * 8192 + 4 * 64 * 2 * es + 2 * D * 2 * es
    return 1024 + tiles + 2 * 64 * (D + 4) * 4 + 64 * (es + 4) * 4 + 2 * 64 + 16 + 1024


def _stub_wg32x2_smem(D: int, es: int) -> int:
    """chunked_wg32.cu's Wg32x2Smem::ALLOC: Wg32Smem's bytes up to a 1024-byte boundary, then a second state copy
    (hi and lo)."""
    return -(-(_stub_wg32_smem(D, es) - 1024) // 1024) * 1024 + 2 * D * 2 * es + 1024


def _stub_wg32_state_smem(D: int, es: int) -> int:
    """chunked_wg32.cu's Wg32StateSmem::ALLOC (DBUF): two sets of float16 hi and lo tiles of K and Ṽ, two float32
    stagings of K and V rows (pitches D + 4, ES + 4), four maxima per producer warp (up to four) twice, four scale
    exponents per set."""
    tiles = 2 * (D // 64) * 8192 + 2 * 64 * 2 * es
    return 1024 + 2 * tiles + 2 * (64 * (D + 4) * 4 + 64 * (es + 4) * 4) + 2 * 4 * 16 + 2 * 16 + 1024


def _stub_wglb_smem(D: int, stages: int) -> int:
    """chunked_wglb.cu's WgLbSmem::ALLOC at ES = 64: ring A's Q, K and V tiles (`stages`), ring B's K and V tiles
    (two), two state copies, output staging and three more λ tables (2·80 floats each), behind a 1 KB head, plus
    1 KB to align."""
    kt, vt = (D // 64) * 8192, 8192
    return 1024 + stages * (2 * kt + vt) + 2 * (kt + vt) + 2 * D * 128 + 64 * 72 * 2 + 3 * 2 * 80 * 4 + 1024


def _stub_wgstate_smem(D: int, es: int, stages: int) -> int:
    """chunked_wg.cu's WgStateSmem::ALLOC: K and V tiles per stage, Ṽ, behind a 1 KB head, plus 1 KB to align."""
    vt = 64 * 2 * es
    return 1024 + stages * ((D // 64) * 8192 + vt) + vt + 1024


@pytest.fixture
def h200_gen2(h200, monkeypatch):
    real = ops.smem_bytes
    stubs = {"wg": lambda D, es, st: _stub_wg_smem(D, es, st), "wg2": lambda D, es, st: _stub_wg2_smem(D, es, st),
             "wg3": lambda D, es, st: _stub_wg3_smem(D, es, st), "wg4": lambda D, es, st: _stub_wg4_smem(D, es, st),
             "wg4q": lambda D, es, st: _stub_wg4_smem(D, es, st, qstage=True),
             "wg32": lambda D, es, st: _stub_wg32_smem(D, es),
             "wg32s": lambda D, es, st: _stub_wg32_state_smem(D, es),
             "wg32x2": lambda D, es, st: _stub_wg32x2_smem(D, es),
             "wgstate": lambda D, es, st: _stub_wgstate_smem(D, es, st),
             "wglb": lambda D, es, st: _stub_wglb_smem(D, st)}
    monkeypatch.setattr(ops, "smem_bytes", lambda kind, D, es, st, dev: stubs[kind](D, es, st) if kind in stubs
                        else real(kind, D, es, st, dev))
    monkeypatch.setattr(ops, "device_gen", lambda dev: 2)
    yield


def test_generation_two_plans(h200_gen2):
    """Generation 2 where the device runs it and the shape is one it handles; ES = 64 once the grid fills the
    SMs; two CTAs per SM where they fit; segments only to win the 64-column slice or fill idle SMs."""
    f32 = ops.chunk_plan(1, 32, 128, 128, "float32")                    # float32: float16 pieces, ES = 32
    assert (f32.gen, f32.es, f32.minb, f32.stages, f32.name) == (2, 32, 1, 1, "chunk_wg32<128,32,4,4>")
    assert ops.chunk_plan(8, 32, 128, 128, "float32").es == 64           # ES = 64 fits without output staging
    assert ops.chunk_plan(8, 32, 64, 128, "float32").es == 64
    with pytest.raises(ValueError, match=r"ES=16 is not a slice of E=128"):    # an ES it cannot take, by name
        ops.chunk_plan(1, 32, 128, 128, "float32", es=16, gen=2)
    assert ops.chunk_plan(1, 32, 128, 48, "float32").gen == 1            # E not a multiple of 32
    assert ops.chunk_plan(1, 32, 256, 256, "bfloat16").gen == 1         # D = 256: generation 1
    assert ops.chunk_plan(1, 32, 64, 48, "bfloat16").gen == 1           # E not a multiple of 32
    b8 = ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=False)        # one CTA per SM: two warpgroups, the
    assert (b8.gen, b8.es, b8.minb, b8.stages) == (2, 64, 1, 4)          # state held transposed (v39), the output
    assert b8.name == "chunk_wg2_tma<128,64,2,4,true,true,true,true>"  # rows stored from the accumulators,
    one = ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1)          # pipelined (v53), loads through tensor
    assert one.name == "chunk_wg<128,64,2,4,true,1>"                  # maps (v55)
    assert ops.tma_load_plan(ops.direct_store_plan(ops.pipe_plan(ops.transposed_state_plan(ops.early_plan(
        ops.split_plan(one, ctas=512)))))) == b8
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=2).name == "chunk_wg2<128,64,2,4,true,1>"  # as pinned
    d64 = ops.chunk_plan(8, 32, 64, 256, "bfloat16")                   # D = 64: two CTAs fit an SM, one warpgroup
    assert (d64.minb, d64.wgs) == (2, 1)
    assert ops.chunk_plan(1, 32, 64, 256, "bfloat16").name == \
        "chunk_wg2_tma<64,64,4,4,true,true,true,true>"  # 128 CTAs
    pinned = ops.chunk_plan(8, 32, 128, 128, "bfloat16", stages=2)     # a pinned chunk_wg shape stays chunk_wg
    assert (pinned.wgs, pinned.stages) == (1, 2) and ops.chunk_plan(1, 32, 128, 128, "bfloat16", minb=1).wgs == 1
    b1 = ops.chunk_plan(1, 32, 128, 128, "bfloat16")
    assert (b1.es, b1.cl, b1.wgs) == (32, 4, 2)                         # 128 CTAs: nearly every SM
    narrow = ops.chunk_plan(4, 32, 64, 128, "float16", es=32)
    assert narrow.minb == 2                                             # 1024 CTAs, two fit an SM
    sq = ops.seq_plan(1, 32, 65536, 128, 128, "bfloat16")              # one pass would need ES = 32
    assert sq is not None and sq.seg.count == 2 and sq.out.es == 64 and sq.out.gen == 2 and sq.out.wgs == 2
    assert sq.state.name == "chunk_wg_state<128,64,2,4,true,2,true>"   # the state pass: one product a chunk, Sᵀ
    f32_state = ops.state_plan(128, 128, "float32")                    # float32: two sets of pieces (DBUF), NPW = 4
    assert (f32_state.name, f32_state.threads, f32_state.smem) == ("chunk_wg32_state<128,64,2,4,true>", 256, 202912)
    one = ops.state_plan(128, 128, "float32", dbuf=False)                # one set: chunk_wg32's layout
    assert (one.name, one.threads) == ("chunk_wg32_state<128,64,2,4>", 256)
    assert ops.double_buffered_state_plan(one) == f32_state
    with pytest.raises(ValueError, match="chunk_wg32_state's, a generation-2 float32 plan"):
        ops.double_buffered_state_plan(sq.state)
    assert ops.state_plan(128, 128, "float32", gen=1).name.startswith("chunk_state<")
    f32_seq = ops.seq_plan(1, 32, 65536, 128, 128, "float32")            # float32 alike: P = 2 buys ES = 64
    assert f32_seq.seg.count == 2 and f32_seq.out.name == "chunk_wg32<128,64,2,4>"
    assert f32_seq.state.name == "chunk_wg32_state<128,64,2,4,true>"
    assert ops.seq_plan(8, 32, 65536, 128, 128, "float32") is None
    assert ops.seq_plan(1, 8, 65536, 128, 128, "float32").seg.count >= 2  # 32 CTAs: most SMs idle
    assert ops.state_plan(64, 48, "bfloat16").gen == 1
    assert ops.seq_plan(1, 32, 65536, 64, 256, "bfloat16") is None      # ES = 64 already fills the SMs
    assert ops.seq_plan(8, 32, 65536, 128, 128, "bfloat16") is None
    few = ops.seq_plan(1, 8, 65536, 128, 128, "bfloat16")               # 32 CTAs: most SMs idle
    assert few is not None and few.seg.count >= 4
    assert ops.chunk_kernel_names(1, 32, 65536, 128, 128, "bfloat16")[0].startswith("chunk_wg2_tma<")
    assert ops.chunk_kernel_names(1, 32, 65536, 128, 128, "bfloat16", gen=1)[0].startswith("chunk_fwd<")


def test_float32_state_pass_takes_one_set_where_two_do_not_fit(h200_gen2, monkeypatch):
    """The float32 state pass keeps chunk_wg32's one set of pieces where two sets exceed a block's shared memory,
    and refuses two sets asked for by name there."""
    stubbed = ops.smem_bytes
    monkeypatch.setattr(ops, "smem_bytes", lambda kind, D, es, st, dev: 300_000 if kind == "wg32s"
                        else stubbed(kind, D, es, st, dev))
    assert ops.state_plan(128, 128, "float32").name == "chunk_wg32_state<128,64,2,4>"
    with pytest.raises(ValueError, match="needs 300000 bytes of shared memory"):
        ops.state_plan(128, 128, "float32", dbuf=True)


def test_float32_split_plan(h200_gen2):
    """The float32 state chain apart (chunk_wg32x2): chunk_wg32's plan with a second consumer warpgroup, its layout
    with a second state copy, one CTA per SM; refused by name where that copy does not fit (D = 128 at ES = 64), with
    PSPLIT, and in 16 bits. Not the rule."""
    narrow = ops.chunk_plan(1, 32, 128, 128, "float32", es=32)
    apart = ops.float32_split_plan(narrow)
    assert (apart.name, apart.threads, apart.kind, apart.minb) == ("chunk_wg32x2<128,32,4,4>", 384, "wg32x2", 1)
    assert apart.smem == _stub_wg32x2_smem(128, 32) == 194560 and apart.sized(0) == apart
    assert ops.float32_split_plan(ops.chunk_plan(1, 32, 64, 128, "float32", es=64)).name == "chunk_wg32x2<64,64,2,4>"
    assert ops.chunk_plan(1, 32, 128, 128, "float32").wgs == 1  # the rule: chunk_wg32
    assert ops.chunk_plan(1, 32, 128, 128, "float32", es=32, wgs=2) == apart  # or by name
    with pytest.raises(ValueError, match=r"chunk_wg32x2 at D=128, ES=64 needs 251904 bytes .* \(valid: ES=32"):
        ops.float32_split_plan(ops.chunk_plan(8, 32, 128, 128, "float32", es=64))
    for other in (ops.producer_split_plan(narrow), ops.chunk_plan(1, 32, 128, 128, "bfloat16")):
        with pytest.raises(ValueError, match=r"the float32 state chain apart is chunk_wg32's without PSPLIT \(got"):
            ops.float32_split_plan(other)
    wide = ops.float32_split_plan(ops.chunk_plan(1, 32, 64, 128, "float32", es=64))
    for form in (ops.pipe_plan, ops.transposed_state_plan, ops.register_q_plan, ops.bulk_store_plan,
                 ops.direct_store_plan):
        with pytest.raises(ValueError, match=r"chunk_wg2's.*\(got chunk_wg32x2<"):  # chunk_wg2's forms, 16-bit
            form(wide)


def test_split_plan(h200_gen2):
    """Two consumer warpgroups: one CTA per SM of 288 threads, the deepest pipeline whose tiles and both state
    copies fit; two per SM where the grid has a second wave and both fit; 16-bit generation 2 only, refused by
    name else."""
    split = ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), ctas=512)
    assert (split.name, split.threads, split.minb, split.kind) == ("chunk_wg2<128,64,2,4,true,1>", 288, 1, "wg2")
    assert split.smem == _stub_wg2_smem(128, 64, 4) == 216064                  # 156 registers: one per SM
    assert ops.split_plan(ops.chunk_plan(1, 32, 64, 256, "float16")).name == "chunk_wg2<64,64,4,4,false,1>"
    two = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)  # ES=32: ≤ 96 registers
    assert (two.minb, two.stages) == (2, 4) and 2 * (two.smem + 1024) <= 233472
    assert ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16"), ctas=512).minb == 1  # ES=64: would spill
    assert ops.split_plan(ops.chunk_plan(1, 32, 64, 256, "float16"), ctas=128).minb == 1  # no second wave"
    assert ops.chunk_plan(8, 32, 64, 256, "bfloat16").threads == 160      # two chunk_wg per SM: one warpgroup
    with pytest.raises(ValueError, match=r"generation-2 16-bit plan \(got chunk_wg32"):
        ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "float32"))
    with pytest.raises(ValueError, match=r"got chunk_fwd"):
        ops.split_plan(ops.chunk_plan(1, 32, 256, 256, "bfloat16"))


def test_transposed_state_plan(h200_gen2):
    """chunk_wg2's state held transposed (TST): the kernel's ninth template argument after PIPE and EARLY, the same
    layout; the rule's wherever it takes chunk_wg2 at ES = 64 (not at 32); chunk_wg2 at ES = 64 only, refused by
    name else; the plans built from another form do not inherit it."""
    split = ops.early_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), ctas=512))
    t = ops.transposed_state_plan(split)
    assert (t.name, t.smem, t.threads) == ("chunk_wg2<128,64,2,4,true,1,false,true,true>", split.smem, 288)
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=False) == ops.tma_load_plan(  # the rule (TMA: v55)
        ops.direct_store_plan(ops.pipe_plan(t)))
    assert ops.seq_plan(1, 32, 65536, 128, 128, "float16").out.tstate                       # through segments too
    assert ops.chunk_plan(1, 32, 128, 128, "bfloat16").name == \
        "chunk_wg2<128,32,4,4,true,1,false,true,false,false,false,true>"  # ES = 32: no TST, no PIPE
    assert not ops.split_plan(t).tstate and not ops.shared_scores_plan(t).tstate
    plain = ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "float16", wgs=1), ctas=512)
    assert ops.transposed_state_plan(plain).name == "chunk_wg2<128,64,2,4,false,1,false,false,true>"
    narrow = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)
    for other in (narrow, ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), ops.chunk_plan(8, 32, 128, 128,
                                                                                             "bfloat16")):
        with pytest.raises(ValueError, match=r"the transposed state is chunk_wg2's at ES=64 \(got chunk_wg"):
            ops.transposed_state_plan(other)


def test_transposed_state_pass(h200_gen2):
    """The 16-bit state pass with its state held transposed (TST): chunk_wg_state's seventh template argument, the
    same layout; the rule at ES = 64 (tstate=False names Ṽ through shared memory); 16-bit generation 2 at ES = 64
    only, refused by name else."""
    rule = ops.state_plan(128, 128, "bfloat16")
    plain = ops.state_plan(128, 128, "bfloat16", tstate=False)
    assert (rule.name, rule.smem, rule.threads) == ("chunk_wg_state<128,64,2,4,true,2,true>", plain.smem, 160)
    assert plain.name == "chunk_wg_state<128,64,2,4,true,2>" and ops.transposed_state_pass(plain) == rule
    assert ops.state_plan(64, 256, "float16").tstate and not ops.state_plan(128, 96, "float16").tstate  # ES = 32
    for other in (ops.state_plan(128, 96, "float16"), ops.state_plan(128, 128, "float32"),
                  ops.state_plan(128, 128, "bfloat16", gen=1)):
        with pytest.raises(ValueError, match=r"the transposed state pass is chunk_wg_state's at ES=64 \(got chunk_"):
            ops.transposed_state_pass(other)
    with pytest.raises(ValueError, match=r"the transposed state pass is chunk_wg_state's at ES=64 \(got chunk_"):
        ops.state_plan(128, 96, "bfloat16", tstate=True)
    for dtype, gen in (("float32", None), ("bfloat16", 1)):
        with pytest.raises(ValueError, match="the transposed state pass is generation 2's in 16 bits \\(got gen="):
            ops.state_plan(128, 128, dtype, gen=gen, tstate=True)


def test_register_q_plan(h200_gen2):
    """chunk_wg2 with Q in the output warps' registers (QREG): the kernel's tenth template argument, the same layout;
    chunk_wg2 only and not with the pipelined output warps (that build spills), refused by name else; the plans
    built from another form do not inherit it."""
    rule = ops.transposed_state_plan(ops.early_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1),
                                                                    ctas=512)))  # the rule's form before v53
    q = ops.register_q_plan(rule)
    assert (q.name, q.smem, q.threads) == ("chunk_wg2<128,64,2,4,true,1,false,true,true,true>", rule.smem, 288)
    es32 = ops.early_plan(ops.split_plan(ops.chunk_plan(1, 32, 128, 128, "bfloat16", wgs=1)))
    assert ops.register_q_plan(es32).name == \
        "chunk_wg2<128,32,4,4,true,1,false,true,false,true>"                    # ES = 32, the state not transposed
    narrow = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)  # two CTAs per SM
    with pytest.raises(ValueError, match=r"one CTA per SM: at two it spills \(got chunk_wg2<64,32,8,4,false,2>"):
        ops.register_q_plan(narrow)
    piped = ops.pipe_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), ctas=512))
    with pytest.raises(ValueError, match=r"Q in registers with the pipelined output warps spills \(got chunk_wg2"):
        ops.register_q_plan(piped)
    with pytest.raises(ValueError, match=r"the pipelined output warps with Q in registers spill \(got chunk_wg2"):
        ops.pipe_plan(q)
    with pytest.raises(ValueError, match=r"Q in registers is chunk_wg2's, not chunk_wg2_tma's \(got chunk_wg4"):
        ops.register_q_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16"))
    assert not ops.split_plan(q).qreg and not ops.shared_scores_plan(q).qreg


def test_bulk_store_plan(h200_gen2):
    """chunk_wg2 with its output rows stored by bulk copies (BULK): the kernel's eleventh template argument, the same
    layout, with every other chunk_wg2 form; refused by name for the other kernels; not inherited."""
    rule = ops.transposed_state_plan(ops.early_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1),
                                                                    ctas=512)))  # the rule's form before v53
    b = ops.bulk_store_plan(ops.register_q_plan(rule))
    assert (b.name, b.smem) == ("chunk_wg2<128,64,2,4,true,1,false,true,true,true,true>", rule.smem)
    crowded = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)
    assert ops.bulk_store_plan(crowded).name == "chunk_wg2<64,32,8,4,false,2,false,false,false,false,true>"
    with pytest.raises(ValueError, match=r"the bulk output stores are chunk_wg2's, not chunk_wg2_tma's "
                                         r"\(got chunk_wg4"):
        ops.bulk_store_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16"))
    assert not ops.split_plan(b).bulk and not ops.shared_scores_plan(b).bulk


def test_direct_store_plan(h200_gen2):
    """The output rows straight from the accumulators (DIRECT): chunk_wg2's twelfth template argument in its own
    layout; chunk_wg4's ninth in QSTAGE's layout (no staging), at that layout's deepest pipeline, QSTAGE itself
    off; refused by name for the other kernels and beside BULK; not inherited by a plan of another kernel."""
    rule = ops.transposed_state_plan(ops.early_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1),
                                                                    ctas=512)))  # chunk_wg2 at ES = 64, staged
    d = ops.direct_store_plan(rule)
    assert (d.name, d.smem, d.kind) == ("chunk_wg2<128,64,2,4,true,1,false,true,true,false,false,true>", rule.smem,
                                        "wg2")
    crowded = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)
    assert ops.direct_store_plan(crowded).name == \
        "chunk_wg2<64,32,8,4,false,2,false,false,false,false,false,true>"
    pair = ops.wide_plan(ops.shared_scores_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), qstage=True))
    dp = ops.direct_store_plan(pair)  # the pair before v53 (WIDE, staged in Q, three stages), and now the rule's
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16") == dp
    assert (dp.name, dp.kind, dp.stages, dp.smem) == ("chunk_wg4<128,64,1,3,true,false,false,true,true>", "wg4q", 3,
                                                      pair.smem)
    narrow = ops.direct_store_plan(ops.shared_scores_plan(ops.chunk_plan(8, 32, 64, 256, "bfloat16", es=64, wgs=1)))
    assert narrow.kind == "wg4q" and narrow.stages == 4  # D = 64, ES = 64: no staging, where QSTAGE's does not fit
    plain = ops.shared_scores_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1))  # two stages with staging,
    assert (plain.stages, ops.direct_store_plan(plain).stages) == (2, 3)                # three without
    for other in (ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1), ops.chunk_plan(8, 32, 128, 128, "float32")):
        with pytest.raises(ValueError, match=r"the direct output stores are chunk_wg2's and chunk_wg4's "
                                             r"\(got chunk_wg"):
            ops.direct_store_plan(other)
    with pytest.raises(ValueError, match=r"the output rows leave one way: bulk copies or straight from registers"):
        ops.direct_store_plan(ops.bulk_store_plan(rule))
    with pytest.raises(ValueError, match=r"the output rows leave one way"):
        ops.bulk_store_plan(d)
    assert not ops.split_plan(d).direct and not ops.shared_scores_plan(d).direct
    assert ops.early_plan(ops.direct_store_plan(plain)).direct and ops.wide_plan(dp).direct
    b1 = _bench_module().gen_variants(1, 32, 128, 128, "bfloat16")  # bench_kernels.py's `…d` variants
    assert b1["v2P2wg2etd"] == {"plan": ops.direct_store_plan(b1["v2P2wg2et"]["plan"]), "segments": 2}
    assert _bench_module().gen_variants(8, 32, 128, 128, "bfloat16")["v2pairwd"]["plan"].name == dp.name
    earlier = _bench_module().earlier_rules(1, 32, 16384, 128, 128, "bfloat16")  # v2staged: the rule before v53
    assert earlier["v2staged"] == {"plan": ops.early_plan(ops.transposed_state_plan(ops.split_plan(ops.chunk_plan(
        1, 64, 128, 128, "bfloat16", es=64, wgs=1)))), "segments": 2}
    assert _bench_module().earlier_rules(8, 32, 16384, 128, 128, "bfloat16") == {
        "v2staged": {"plan": pair, "segments": 1}}  # (the pair loads by cp.async: no v2cpasync)
    assert _bench_module().earlier_rules(8, 32, 16384, 128, 128, "float32") == {}


def test_tma_load_plan(h200_gen2):
    """chunk_wg2 with its producer loading through tensor maps: a kernel of its own (chunk_wg2_tma, whose template
    takes PIPE, TST and DIRECT) in the same layout, EARLY dropped; refused by name off 64-column chunk_wg2 at one CTA
    per SM and beside QREG or BULK, and the producer's and the output warps' other forms refuse it; not inherited;
    bench_kernels.py's `…m` variants."""
    rule = ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=False)  # TST, PIPE, DIRECT and (since v55) TMA
    t = ops.tma_load_plan(ops.early_plan(replace(rule, tma=False)))
    assert (t.name, t.smem, t.threads, t.kind, t.early) == ("chunk_wg2_tma<128,64,2,4,true,true,true,true>",
                                                              rule.smem, 288, "wg2", False)
    plain = ops.split_plan(ops.chunk_plan(8, 32, 64, 256, "float16", es=64, wgs=1))
    assert ops.tma_load_plan(plain).name == "chunk_wg2_tma<64,64,4,4,false>"
    narrow = ops.split_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32), ctas=1024)
    for other in (narrow, ops.chunk_plan(8, 32, 128, 128, "bfloat16"), ops.chunk_plan(8, 32, 128, 128, "float32")):
        with pytest.raises(ValueError, match=r"tensor-map loads are chunk_wg2's at ES=64, one CTA per SM \(got chunk"):
            ops.tma_load_plan(other)
    with pytest.raises(ValueError, match=r"chunk_wg2_tma takes PIPE, TST and DIRECT, not QREG or BULK \(got"):
        ops.tma_load_plan(ops.register_q_plan(plain))
    for form in (ops.early_plan, ops.register_q_plan, ops.bulk_store_plan):
        with pytest.raises(ValueError, match=r"not chunk_wg2_tma's \(got chunk_wg2_tma<"):
            form(t)
    assert not ops.split_plan(t).tma and not ops.shared_scores_plan(t).tma
    b1 = _bench_module().gen_variants(1, 32, 128, 128, "bfloat16")
    assert b1["v2P2wg2eptdm"] == {"plan": ops.tma_load_plan(b1["v2P2wg2eptd"]["plan"]), "segments": 2}
    assert "v2wg2eptdm" not in b1  # one pass at B=1 is 32-column slices
    assert rule == t  # the rule's chunk_wg2 at ES = 64 (KERNEL_NOTES v55) …
    earlier = _bench_module().earlier_rules(1, 32, 16384, 128, 128, "bfloat16")  # … and v2cpasync, the rule before
    assert earlier["v2cpasync"]["plan"] == ops.early_plan(replace(ops.seq_plan(1, 32, 16384, 128, 128, "bfloat16").out,
                                                                  tma=False))
    assert earlier["v2cpasync"]["plan"].name.startswith("chunk_wg2<") and earlier["v2cpasync"]["segments"] == 2
    near_copy = ops.chunk_plan(8, 32, 128, 64, "bfloat16")  # D=128, E=64: the rule's form by cp.async (slower, v55)
    assert near_copy.name.startswith("chunk_wg2<") and near_copy.early and near_copy.tstate
    assert ops.chunk_plan(4, 32, 64, 64, "bfloat16").tma  # (D=64, E=64: faster, v55)
    seq = ops.seq_plan(1, 32, 16384, 128, 128, "bfloat16")  # its passes launched serially unless asked (v55)
    assert not ops.default_overlap(seq.out, (9, 0)) and ops.default_overlap(earlier["v2cpasync"]["plan"], (9, 0))
    assert not ops.default_overlap(earlier["v2cpasync"]["plan"], (8, 0))  # no programmatic dependents before 9.0
    assert ops.cp_async_plan(rule) == ops.early_plan(replace(rule, tma=False))  # tma_load_plan undone
    with pytest.raises(ValueError, match=r"the cp.async form is chunk_wg2_tma's undone \(got chunk_wg2<"):
        ops.cp_async_plan(near_copy)
    narrow_rule = ops.chunk_plan(1, 32, 128, 128, "float16")  # one pass at ES = 32: cp.async
    assert not narrow_rule.tma and narrow_rule.early


def test_tma_state_pass(h200_gen2):
    """The state pass with its producer loading through tensor maps: a kernel of its own (chunk_wg_state_tma, the same
    template arguments, TST kept) in the same layout; refused by name off 16-bit generation 2 at ES = 64; not the
    rule (unmeasured)."""
    rule = ops.state_plan(128, 128, "bfloat16")
    t = ops.tma_state_pass(rule)
    assert (t.name, t.smem, t.threads, t.minb) == ("chunk_wg_state_tma<128,64,2,4,true,2,true>", rule.smem, 160, 2)
    assert ops.tma_state_pass(ops.state_plan(64, 64, "float16", tstate=False)).name == \
        "chunk_wg_state_tma<64,64,1,4,false,2>"
    assert not rule.tma and not ops.seq_plan(1, 32, 16384, 128, 128, "bfloat16").state.tma
    for other in (ops.state_plan(128, 96, "bfloat16"), ops.state_plan(128, 128, "float32"),
                  ops.state_plan(128, 128, "bfloat16", gen=1)):
        with pytest.raises(ValueError, match=r"tensor-map loads in the state pass are chunk_wg_state's at ES=64 "
                                             r"\(got chunk_"):
            ops.tma_state_pass(other)


def test_two_output_plan(h200_gen2):
    """chunk_wg3: chunk_wg2's roles with two output warpgroups, 416 threads, one CTA per SM, the deepest pipeline
    whose layout (a second output staging) fits; chunk_plan(wgs=3) gives it; 16-bit generation 2 only."""
    three = ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=3)
    assert (three.name, three.threads, three.minb, three.kind) == ("chunk_wg3<128,64,2,4,true>", 416, 1, "wg3")
    assert three.smem == _stub_wg3_smem(128, 64, 4) == 225280 and three.smem + 1024 <= 233472
    assert ops.two_output_plan(ops.chunk_plan(4, 32, 64, 256, "float16", es=32)).name == "chunk_wg3<64,32,8,4,false>"
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=False).wgs == 2      # not the rule's
    with pytest.raises(ValueError, match=r"two output warpgroups are a generation-2 16-bit plan \(got chunk_wg32"):
        ops.chunk_plan(8, 32, 128, 128, "float32", wgs=3)
    with pytest.raises(ValueError, match=r"wgs=4 consumer warpgroups \(valid: 1, 2, 3 or None"):
        ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=4)


def test_shared_scores_plan(h200_gen2):
    """chunk_wg4: two E slices per CTA, the scores formed once for both, 416 threads, one CTA per SM, half the
    CTAs, the deepest pipeline whose layout (per slice V, Ṽ, two copies, staging) fits; an even number of slices
    and 16-bit generation 2 only."""
    base = ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1)
    pair = ops.shared_scores_plan(base)
    assert (pair.name, pair.threads, pair.minb, pair.kind, pair.cl) == ("chunk_wg4<128,64,1,2,true>", 416, 1, "wg4", 1)
    assert pair.smem == _stub_wg4_smem(128, 64, 2) == 200704                  # three stages would not fit
    assert ops.shared_scores_plan(ops.chunk_plan(1, 32, 64, 256, "float16")).name == "chunk_wg4<64,64,2,4,false>"
    assert ops.shared_scores_plan(ops.chunk_plan(1, 32, 128, 64, "bfloat16", es=32)).name == \
        "chunk_wg4<128,32,1,4,true>"
    with pytest.raises(ValueError, match=r"even number of them \(got chunk_wg<128,64,1,4,true,1>, 1 slice\(s\) of 64"):
        ops.shared_scores_plan(ops.chunk_plan(1, 32, 128, 64, "bfloat16", es=64, wgs=1))
    for other in (ops.shared_scores_plan, ops.split_plan, ops.two_output_plan, ops.two_copy_plan, ops.pipe_plan):
        with pytest.raises(ValueError, match=r"got chunk_wg4<128,64,1,2,true>"):  # no other form of a pair
            other(pair)
    with pytest.raises(ValueError, match=r"shared scores are a generation-2 16-bit plan \(got chunk_wg32"):
        ops.shared_scores_plan(ops.chunk_plan(8, 32, 128, 128, "float32"))


def test_staged_in_q_and_announced_early(h200_gen2):
    """chunk_wg4's QSTAGE (outputs staged in the slot's Q tile: 18 KB fewer, a third stage at D = 128) and
    chunk_wg2's and chunk_wg4's EARLY (the producer announces a chunk before it waits for a slot) are named
    template arguments; QSTAGE is refused by name where four warps' staging does not fit a Q tile (D = 64 at
    ES = 64), EARLY for the other kernels; the rule's pair takes QSTAGE where it buys a stage (KERNEL_NOTES
    v28) and not EARLY (measured no faster), the rule's chunk_wg2 takes EARLY (v33)."""
    base = ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1)
    staged = ops.shared_scores_plan(base, qstage=True)
    assert (staged.name, staged.kind, staged.stages) == ("chunk_wg4<128,64,1,3,true,true>", "wg4q", 3)
    assert staged.smem == _stub_wg4_smem(128, 64, 3, qstage=True) == 231424 <= 232448  # three stages fit
    early = ops.early_plan(ops.shared_scores_plan(base))
    assert (early.name, early.stages, early.smem) == ("chunk_wg4<128,64,1,2,true,false,true>", 2, 200704)
    assert ops.early_plan(staged).name == "chunk_wg4<128,64,1,3,true,true,true>"
    split = ops.split_plan(base)                                              # chunk_wg2: EARLY after PIPE
    assert ops.early_plan(split).name == "chunk_wg2<128,64,2,4,true,1,false,true>"
    assert ops.early_plan(ops.pipe_plan(split)).name == "chunk_wg2<128,64,2,4,true,1,true,true>"
    for other in (base, ops.chunk_plan(8, 32, 128, 128, "float32"), ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=3)):
        with pytest.raises(ValueError, match=r"the early producer is chunk_wg2's and chunk_wg4's, not chunk_wg2_tma's "
                                             r"\(got chunk_wg"):
            ops.early_plan(other)
    with pytest.raises(ValueError, match=r"the plain producer \(got chunk_wg2<128,64,2,4,true,1,false,true>"):
        ops.two_output_plan(ops.early_plan(split))
    assert ops.shared_scores_plan(ops.chunk_plan(1, 32, 64, 64, "float16", es=32, wgs=1), qstage=True).name == \
        "chunk_wg4<64,32,1,4,false,true>"                                      # ES = 32: 5120 bytes fit 8192
    with pytest.raises(ValueError, match=r"staging \(9216 bytes at ES=64\) does not fit a Q tile \(8192 bytes at D=64"):
        ops.shared_scores_plan(ops.chunk_plan(8, 32, 64, 256, "bfloat16", wgs=1), qstage=True)
    rule = ops.chunk_plan(8, 32, 128, 128, "bfloat16")                       # (v53: QSTAGE's layout, DIRECT)
    assert rule == ops.direct_store_plan(ops.wide_plan(staged)) and not rule.early  # three stages against two
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=True) == rule
    narrow = ops.chunk_plan(8, 32, 128, 128, "bfloat16", es=32, wgs=1)       # ES = 32: four stages either way
    assert ops.shared_scores_plan(narrow, qstage=True).stages == ops.shared_scores_plan(narrow).stages == 4
    assert not ops.chunk_plan(8, 32, 128, 128, "bfloat16", es=32, pair=True).qstage
    assert ops.chunk_plan(1, 32, 128, 128, "bfloat16").early                 # the rule's chunk_wg2 takes EARLY (v33)


def test_shared_scores_rule(h200_gen2):
    """chunk_plan's rule takes chunk_wg4 at D = 128 where the halved grid leaves at most 1/16 of the SMs idle
    (KERNEL_NOTES v26), never at D = 64, in float32, where the caller pinned the plan, or for segments."""
    for dtype in ("bfloat16", "float16"):
        rule = ops.chunk_plan(8, 32, 128, 128, dtype)
        staged = ops.shared_scores_plan(ops.chunk_plan(8, 32, 128, 128, dtype, wgs=1), qstage=True)
        assert rule == ops.direct_store_plan(ops.wide_plan(staged)) == ops.chunk_plan(8, 32, 128, 128, dtype, pair=True)
    assert ops.chunk_plan(4, 16, 128, 256, "bfloat16").name == \
        "chunk_wg4<128,64,2,3,true,false,false,true,true>"  # 128 CTAs
    assert ops.chunk_plan(1, 124, 128, 128, "bfloat16").pair                  # 124 CTAs of 132 SMs
    wg2 = "chunk_wg2_tma<128,64,2,4,true,true,true,true>"
    assert ops.chunk_plan(1, 123, 128, 128, "bfloat16").name == wg2           # 123
    assert ops.chunk_plan(4, 16, 128, 128, "bfloat16").name == wg2           # half the SMs idle
    assert not ops.chunk_plan(1, 32, 128, 256, "bfloat16").pair               # 64 CTAs
    assert not ops.chunk_plan(8, 16, 64, 256, "bfloat16").pair                # D = 64: slower measured
    assert not ops.chunk_plan(8, 32, 128, 128, "float32").pair
    assert not ops.chunk_plan(8, 32, 128, 128, "bfloat16", es=64).pair        # pinned: as asked
    assert not ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=2).pair
    assert ops.seq_plan(8, 32, 65536, 128, 128, "bfloat16") is None           # one pass, the pair
    assert ops.chunk_kernel_names(8, 32, 65536, 128, 128, "bfloat16") == [
        "chunk_wg4<128,64,1,3,true,false,false,true,true>"]
    assert not ops.seq_plan(1, 32, 65536, 128, 128, "bfloat16").out.pair      # segments: one slice a CTA
    with pytest.raises(ValueError, match=r"pair=True is chunk_wg4 with its own warpgroups \(got wgs=2\)"):
        ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=True, wgs=2)
    with pytest.raises(ValueError, match=r"shared scores are a generation-2 16-bit plan \(got chunk_wg32"):
        ops.chunk_plan(8, 32, 128, 128, "float32", pair=True)


def test_pipe_plan(h200_gen2):
    """chunk_wg2 with pipelined output warps: the same plan and shared memory, named by PIPE; refused by name
    for anything but chunk_wg2 at one CTA per SM."""
    split = ops.chunk_plan(8, 32, 128, 128, "bfloat16", pair=False, wgs=2)
    piped = ops.pipe_plan(split)
    assert (piped.name, piped.smem, piped.threads) == ("chunk_wg2<128,64,2,4,true,1,true>", split.smem, 288)
    assert split.name == "chunk_wg2<128,64,2,4,true,1>"                  # the default: not pipelined
    with pytest.raises(ValueError, match=r"chunk_wg2's at one CTA per SM \(got chunk_wg<"):
        ops.pipe_plan(ops.chunk_plan(8, 32, 64, 256, "bfloat16"))
    two = ops.chunk_plan(4, 32, 64, 256, "float16", es=32, wgs=2)            # ES = 32, two per SM
    with pytest.raises(ValueError, match=r"got chunk_wg2<64,32,8,4,false,2>"):
        ops.pipe_plan(two)


def test_two_copy_plan(h200_gen2):
    """chunk_wg with two state copies: its layout is chunk_wg2's (the second copy behind the tiles), the CTAs per
    SM kept where the larger layout still fits them, the deepest pipeline that fits; one warpgroup, 16-bit."""
    b8 = ops.two_copy_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1))
    assert (b8.name, b8.threads, b8.kind, b8.stages) == ("chunk_wg<128,64,2,4,true,1,2>", 160, "wg2", 4)
    assert b8.smem == _stub_wg2_smem(128, 64, 4)
    d64 = ops.two_copy_plan(ops.chunk_plan(4, 32, 64, 256, "float16"))       # two CTAs per SM still fit
    assert (d64.minb, d64.stages, d64.name) == (2, 3, "chunk_wg<64,64,4,3,false,2,2>")
    assert ops.chunk_plan(8, 32, 64, 256, "bfloat16").copies == 1     # the default: one copy
    with pytest.raises(ValueError, match=r"two state copies are a generation-2 16-bit plan \(got chunk_wg32"):
        ops.two_copy_plan(ops.chunk_plan(8, 32, 128, 128, "float32"))
    with pytest.raises(ValueError, match=r"two state copies are chunk_wg's \(got chunk_wg2"):
        ops.two_copy_plan(ops.split_plan(ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1)))


def test_producer_split_plan(h200_gen2):
    """chunk_wg32 with the producers splitting the chunk: the same plan and shared memory, named by PSPLIT;
    refused by name for anything but chunk_wg32."""
    f32 = ops.chunk_plan(1, 32, 128, 128, "float32")
    ps = ops.producer_split_plan(f32)
    assert (ps.name, ps.smem, ps.threads) == ("chunk_wg32<128,32,4,4,true>", f32.smem, f32.threads)
    assert f32.name == "chunk_wg32<128,32,4,4>"                        # the default: the consumers split
    with pytest.raises(ValueError, match=r"chunk_wg32's, a generation-2 float32 plan \(got chunk_wg2<"):
        ops.producer_split_plan(ops.chunk_plan(1, 32, 128, 128, "bfloat16"))


def test_seq_plan_rule(h200):
    sq = ops.seq_plan(1, 32, 65536, 128, 128, "bfloat16")
    assert sq is not None and sq.seg.count == 2 and sq.out.minb == 2 and sq.out.es == 32
    assert 1 * 32 * sq.seg.pieces * sq.state.cl <= 2 * 132            # pass 1 in one wave
    assert ops.seq_plan(1, 32, 2048, 128, 128, "bfloat16") is None     # short
    assert ops.seq_plan(8, 32, 65536, 128, 128, "bfloat16") is None    # full GPU
    assert ops.seq_plan(4, 16, 32768, 128, 128, "bfloat16") is None
    assert ops.seq_plan(1, 32, 65536, 128, 128, "float32") is None     # float32: one CTA per SM already
    assert ops.seq_plan(1, 8, 65536, 128, 128, "float32").seg.count == 4
    assert ops.seq_plan(1, 32, 65536, 128, 128, "bfloat16", segments=1) is None
    forced = ops.seq_plan(8, 32, 1000, 64, 64, "float16", segments=3)
    assert forced is not None and forced.seg.count == 3
    assert ops.chunk_kernel_names(1, 32, 65536, 128, 128, "bfloat16")[-1] == "segment_scan<4>"


def test_e_slice_rule(h200):
    """ES = 64 only where nothing narrower is allowed once D ≥ 64 (it measured 1.2–3× slower per chunk)."""
    assert ops._es_candidates(64, 128) == [32, 16] and ops._es_candidates(128, 256) == [32]
    assert ops._es_candidates(64, 512) == [64]          # still supported, through the one slice that fits
    assert 64 in ops._es_candidates(32, 128)           # small D: unchanged (not measured otherwise)
    wide = ops.chunk_plan(4, 32, 64, 128, "bfloat16")    # B=4, D=64, E=128: 512 CTAs → ES 32, two per SM
    assert (wide.es, wide.minb) == (32, 2)
    sq = ops.seq_plan(1, 32, 32768, 64, 128, "bfloat16")
    assert sq is not None and sq.out.es == 32 and sq.seg.count == 2


def test_wide_products_are_named_and_refused_off_the_pair(h200_gen2):
    """chunk_wg4's WIDE (the output warps' Q S_in and P V over both slices as one product each, KERNEL_NOTES v30)
    is its eighth template argument, the same shared memory; refused by name for any kernel but chunk_wg4; the
    rule's pair takes it (measured faster, v31), the one-slice plans cannot."""
    base = ops.chunk_plan(8, 32, 128, 128, "bfloat16", wgs=1)
    staged = ops.shared_scores_plan(base, qstage=True)
    wide = ops.wide_plan(staged)
    assert (wide.name, wide.smem, wide.stages) == ("chunk_wg4<128,64,1,3,true,true,false,true>", staged.smem, 3)
    assert ops.wide_plan(ops.shared_scores_plan(base)).name == "chunk_wg4<128,64,1,2,true,false,false,true>"
    for other in (base, ops.split_plan(base), ops.chunk_plan(8, 32, 128, 128, "float32")):
        with pytest.raises(ValueError, match=r"the wide products are chunk_wg4's, two E slices a CTA \(got chunk_wg"):
            ops.wide_plan(other)
    assert ops.chunk_plan(8, 32, 128, 128, "bfloat16") == ops.direct_store_plan(wide)  # (v53: DIRECT, not QSTAGE)
    assert not ops.chunk_plan(4, 16, 128, 128, "bfloat16").wide                # chunk_wg2: one slice a CTA
    variants = _bench_module().gen_variants(8, 32, 128, 128, "bfloat16")
    assert variants["v2pairqw"]["plan"] == wide and variants["v2P4pairqw"]["segments"] == 4


def test_bench_times_the_variants_asked_for(h200_gen2):
    """bench_kernels.py --variants keeps the variants matching its globs in every shape, and refuses a glob that
    matches none, naming the variants there are."""
    bench = _bench_module()
    shapes = {("bf16", 1, 32, 16384, 128, 128): bench.gen_variants(1, 32, 128, 128, "bfloat16"),
              ("fp32", 1, 32, 16384, 128, 128): bench.gen_variants(1, 32, 128, 128, "float32")}
    kept = bench.select_variants(shapes, "v2,v2P2pair*")
    assert list(kept[("bf16", 1, 32, 16384, 128, 128)]) == ["v2", "v2P2pair", "v2P2pairq", "v2P2pair32"]
    assert list(kept[("fp32", 1, 32, 16384, 128, 128)]) == ["v2"]           # no pairs in float32
    assert bench.select_variants(shapes, None) is shapes
    with pytest.raises(ValueError, match=r"--variants: v9 matches no variant \(valid: v1, v1one, v2, "):
        bench.select_variants(shapes, "v2,v9")


def test_bench_times_the_float32_state_chain_apart(h200_gen2, capsys):
    """bench_kernels.py --gen times chunk_wg32x2 in float32 where its layout fits: one pass at ES = 32 and P = 2 at
    ES = 32, not at D = 128, ES = 64 (said why); none in 16 bits."""
    bench = _bench_module()
    kws = bench.gen_variants(1, 32, 128, 128, "float32")
    assert kws["v2sa32"] == {"plan": ops.float32_split_plan(ops.chunk_plan(1, 32, 128, 128, "float32", es=32))}
    assert kws["v2P2sa32"]["plan"].name == "chunk_wg32x2<128,32,4,4>" and kws["v2P2sa32"]["segments"] == 2
    assert "v2P2sa" not in kws and "v2P2sa: chunk_wg32x2 at D=128, ES=64 needs" in capsys.readouterr().out
    assert not any("sa" in name for name in bench.gen_variants(1, 32, 128, 128, "bfloat16"))
    assert bench.variant_products(1, 32, 16384, 128, 128, "float32", kws["v2sa32"]) == 3 * (64 * 128 * 4 + 64 * 128
                                                                                           + 2 * 128 * 128)


def test_bench_counts_each_variants_products(h200_gen2):
    """bench_kernels.py counts the multiply-adds a variant issues per token and head (KERNEL_NOTES v29) and
    prints their rate beside the bandwidth: the pair forms Q Kᵀ once for its two slices (49152 at D=E=128),
    one-slice CTAs once each (57344), two segments add half a state pass (D·E / 2), float32 three of each."""
    bench = _bench_module()
    kws = bench.gen_variants(8, 32, 128, 128, "bfloat16")
    count = lambda B, kw, dtype="bfloat16": bench.variant_products(B, 32, 65536, 128, 128, dtype, kw)  # noqa: E731
    assert count(8, kws["v2"]) == 64 * 128 + 64 * 128 + 2 * 128 * 128 == 49152        # the rule: the pair
    assert count(8, kws["v2wg2"]) == 2 * 64 * 128 + 64 * 128 + 2 * 128 * 128 == 57344  # two slices, two Q Kᵀ
    assert count(1, {"gen": 2}) == 57344 + 128 * 128 / 2                                # B=1: P=2, one slice
    assert count(8, {"gen": 2}, "float32") == 3 * 57344
    assert count(8, {"gen": 1}) is None                                               # generation 1: not counted
    row = {"dtype": "bf16", "B": 8, "H": 32, "N": 65536, "D": 128, "E": 128, "bw_gbps": 4240.0,
           "floor_bytes": 8 * 32 * 65536 * 1024, "segments_auto": 1, "ms_v2": 5.536, "macs_v2": 49152.0,
           "ms_fla": 12.0}
    assert bench.line(row).startswith("bf16 B8 H32 N65536 D128 E128 P=1: v2=5.536*(73%, 298 TF) fla=12.000(34%)")


def test_bench_prints_the_stream_beside_the_variants():
    """bench_kernels.py --stream's elementwise kernel (the floor bytes, nothing computed) is printed after the
    variants with its share of the copy bandwidth, and is neither a variant nor the fastest."""
    bench = _bench_module()
    row = {"dtype": "bf16", "B": 1, "H": 32, "N": 16384, "D": 128, "E": 128, "bw_gbps": 4240.0,
           "floor_bytes": 32 * 16384 * 1024, "segments_auto": 2, "ms_v2": 0.221, "stream_ms": 0.15}
    assert bench.line(row) == "bf16 B1 H32 N16384 D128 E128 P=2: v2=0.221*(57%)  [stream=0.1500(84%)]"


def test_bench_times_the_lookback_kernel(h200_gen2):
    """bench_kernels.py --gen times chunk_wg2lb in 16 bits at E a multiple of 64 over pieces of 256 … 2048 tokens,
    names its instance with the piece and counts its state products over every token; none in float32 or at
    E = 32."""
    bench = _bench_module()
    kws = bench.gen_variants(1, 32, 128, 128, "bfloat16")
    assert [n for n in kws if n.startswith("v2lb")] == ["v2lb256", "v2lb512", "v2lb1024", "v2lb2048"]
    assert bench.variant_plan(1, 32, 16384, 128, 128, "bfloat16", kws["v2lb1024"]) == "chunk_wg2lb<128,2,3,true> L=1024"
    assert bench.variant_products(1, 32, 16384, 128, 128, "bfloat16", kws["v2lb512"]) == 57344 + 128 * 128
    assert not any(n.startswith("v2lb") for n in bench.gen_variants(1, 32, 128, 128, "float32"))
    assert not any(n.startswith("v2lb") for n in bench.gen_variants(8, 32, 64, 32, "float16"))


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_kernels", Path(__file__).parent.parent / "scripts"
                                                  / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_times_the_state_pass_in_its_other_form(h200_gen2):
    """bench_kernels.py --passes times the rule's state pass beside its other form: float32 with one set of pieces
    (the rule takes two), 16-bit at ES = 64 loading through tensor maps (the rule copies by cp.async) and back;
    nothing else."""
    bench = _bench_module()
    f32 = ops.state_plan(128, 128, "float32")
    assert bench.other_state_pass(f32, 128, 128, "float32") == ("one", ops.state_plan(128, 128, "float32", dbuf=False))
    tag, t = bench.other_state_pass(ops.state_plan(128, 128, "bfloat16"), 128, 128, "bfloat16")
    assert (tag, t.name) == ("tma", "chunk_wg_state_tma<128,64,2,4,true,2,true>")
    tag, t = bench.other_state_pass(t, 128, 128, "bfloat16")
    assert (tag, t) == ("cpasync", ops.state_plan(128, 128, "bfloat16"))
    assert bench.other_state_pass(ops.state_plan(128, 96, "float16"), 128, 96, "float16") is None  # ES = 32
    assert bench.other_state_pass(ops.state_plan(128, 128, "bfloat16", gen=1), 128, 128, "bfloat16") is None


def test_bench_names_the_instance_behind_each_variant(h200_gen2):
    """scripts/bench_kernels.py records which template instance each variant ran (`plan_*`), grouping the
    names that are one instance, so a table cannot show one kernel as two different forms."""
    bench = _bench_module()
    kws = bench.gen_variants(8, 32, 128, 128, "bfloat16")
    plan = {name: bench.variant_plan(8, 32, 65536, 128, 128, "bfloat16", kw) for name, kw in kws.items()}
    default = ops.chunk_plan(8, 32, 128, 128, "bfloat16", gen=2).name
    assert plan["v2"] == plan["v2one"] == plan["v2pairwd"] == default and default.startswith("chunk_wg4<")
    assert plan["v2wg1"].startswith("chunk_wg<") and plan["v2wg3"].startswith("chunk_wg3<")
    assert plan["v2P2"] == f"{plan['v2wg2eptdm']} P=2"  # segments: one E slice a CTA, PIPE, TST, DIRECT, TMA
    one = bench.variant_plan(1, 32, 65536, 128, 128, "bfloat16", {"gen": 2})  # B=1: the rule cuts the sequence
    assert one == f"{ops.seq_plan(1, 32, 65536, 128, 128, 'bfloat16').out.name} P=2"


def test_lookback_plan(h200_gen2):
    """chunk_wg2lb: 16-bit, E in 64-column slices, the deepest pipeline one CTA per SM holds; a one-line error naming
    the bad value otherwise."""
    lb = ops.lookback_plan(128, 128, "bfloat16", 1024)
    assert (lb.name, lb.piece, lb.smem) == ("chunk_wg2lb<128,2,3,true>", 1024, 217984)  # four stages would not fit
    assert _stub_wglb_smem(128, 4) > 232448
    assert ops.lookback_plan(64, 256, "float16", 64).name == "chunk_wg2lb<64,4,4,false>"  # four stages fit at D=64
    for args, words in (((128, 128, "float32", 1024), "bfloat16 or float16 .got float32"),
                        ((128, 96, "bfloat16", 1024), "E=96"), ((256, 128, "bfloat16", 1024), "D=256"),
                        ((128, 128, "bfloat16", 1000), "lookback=1000"), ((128, 128, "bfloat16", 0), "lookback=0")):
        with pytest.raises(ValueError, match=words):
            ops.lookback_plan(*args)
