"""GPU tests of leetbench's own CUDA kernels (cupy_recurrent, cupy_chunked).

Accuracy against the float64 reference over awkward shapes (B = 1 with long N, the seed library's failure
case; N = 1, prime N, chunk tails; D ≠ E from 16 to 256; λ = 1, λ = 1e-6 and the per-head profiles; with and
without an initial state; the final state checked too), plus compute-sanitizer memcheck / racecheck runs on
small shapes. Everything here skips cleanly without CuPy or a CUDA device (the CPU-only CI machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from leetbench import load_methods  # noqa: E402
from leetbench.execute import verify  # noqa: E402
from leetbench.problem import Problem  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# What our kernels reach (well inside the tolerances of docs/design.md §4, which `verify` applies as well).
EXPECTED = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 1.2e-2}


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

# ---- cupy_chunked ------------------------------------------------------------------------------------------
CHUNKED = (
    # B = 1, long N (the seed library's CUDA kernel failed exactly here)
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


@pytest.mark.parametrize("problem", CHUNKED, ids=lambda p: p.label())
def test_cupy_chunked(registry, problem):
    _check(registry, "cupy_chunked", problem)


# ---- cupy_recurrent (prefill and decode) -------------------------------------------------------------------
ALL = ("float32", "bfloat16", "float16")
RECURRENT = (
    [P(1, 4, 2048, 128, dtype=dt, s0=True) for dt in ALL]
    + [P(2, 3, 97, D, E, decay="alibi", dtype=dt, s0=True)
       for (D, E) in ((16, 16), (32, 64), (256, 128), (128, 256), (24, 10), (256, 256)) for dt in ALL]
    + [P(1, 2, N, 64, decay=lam, dtype=dt) for N in (1, 2, 33, 65) for lam in (1.0, 1e-6) for dt in ALL]
    # decode: a prefix of `length` tokens folded into the float32 state, then `steps` single-token calls
    + [P(B, 8, 100, 128, decay="multiscale", dtype=dt, mode="decode", steps=3) for B in (1, 4) for dt in ALL]
    + [P(2, 3, 50, D, E, decay=lam, dtype=dt, mode="decode", steps=2)
       for (D, E) in ((16, 32), (256, 64), (24, 10)) for lam in (1.0, 1e-6, "retnet") for dt in ALL]
)


@pytest.mark.parametrize("problem", RECURRENT, ids=lambda p: p.label())
def test_cupy_recurrent(registry, problem):
    _check(registry, "cupy_recurrent", problem)


def test_refuses_honestly(registry):
    assert "D ≤ 256" in registry["cupy_recurrent"].why_not(P(1, 1, 8, 512))
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 48)) is not None
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 64, 24)) is not None
    assert registry["cupy_chunked"].why_not(P(1, 1, 8, 256, dtype="float32")) is not None
    assert "float64" in registry["cupy_chunked"].why_not(P(1, 1, 8, 64, dtype="float64"))


# ---- compute-sanitizer -------------------------------------------------------------------------------------
_SANITIZE = textwrap.dedent("""
    import torch
    from leetbench.cuda_kernels import ops
    from leetbench.problem import decay_profile
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
    for dt in (torch.bfloat16, torch.float16):
        run(ops.chunked, 1, 2, 131, 64, 64, dt, True)                       # E slices, tail
        plan = ops.ChunkPlan(es=32, cl=2, stages=2, bf16=dt == torch.bfloat16, D=64)
        run(ops.chunked, 2, 1, 70, 64, 64, dt, False, plan=plan)            # shallow pipeline
        run(ops.chunked, 1, 1, 40, 16, 16, dt, True)                        # tiny tiles, idle state warps
    run(ops.chunked, 1, 2, 131, 64, 64, torch.float32, True)               # 3xTF32 path
    for dt in (torch.float32, torch.bfloat16):
        run(ops.recurrent, 2, 2, 37, 64, 40, dt, True)
        run(ops.recurrent, 2, 2, 1, 128, 64, dt, True)                      # decode step
    print("SANITIZE-OK")
""")


@pytest.mark.slow
@pytest.mark.parametrize("tool", [
    "memcheck",
    "racecheck",
    # The consumer warps meet at one named barrier from four template instances (different bar.sync
    # instructions); synccheck reports "Barrier error detected. Divergent thread(s) in block". The non-aligned
    # barrier.sync passes synccheck but is 4-7% slower (H200, 2026-11-26): see chunked.cu, consumers_sync.
    pytest.param("synccheck", marks=pytest.mark.xfail(reason="bar.sync from four instances, kept for speed",
                                                      strict=True)),
])
def test_compute_sanitizer(tool):
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not on PATH")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([exe, "--tool", tool, "--error-exitcode", "9", sys.executable, "-c", _SANITIZE],
                          capture_output=True, text=True, env=env, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SANITIZE-OK" in text, text[-4000:]
    assert "ERROR SUMMARY: 0 errors" in text or "RACECHECK SUMMARY: 0 hazards" in text, text[-4000:]
