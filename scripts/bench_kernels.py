"""Build, check and time leetbench's CuPy kernels against the peers, in one process (one device call).

    PYTHONPATH=. python3 scripts/bench_kernels.py --what copy,check,prefill,decode --out $OUT

Sections (--what, comma separated):
  copy     device copy bandwidth (read + write), the denominator of % of BW
  check    correctness of every chunked variant (ES, stages, multicast) and the recurrent/decode kernels on
           awkward shapes against the float64 reference; prints rel_err of outputs and final states
  prefill  median ms of cupy_chunked (default plan and --variants) vs fla chunk_simple_gla and
           lightning_attn2, B×N grid, H=32, D=E=128, multiscale decay
  decode   one decode step (state in/out, float32 state) vs fla fused_recurrent_simple_gla, by batch
  fp32     float32 prefill: ours vs fla and lightning (TF32)
  one      a single chunked call per --lengths/--batches (for ncu)
Writes rows to OUT/bench.jsonl and prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from leetbench.cuda_kernels import ops  # noqa: E402
from leetbench.problem import Inputs, decay_profile  # noqa: E402
from leetbench.reference import reference  # noqa: E402
from leetbench.timing import TimingConfig, copy_bandwidth_gbps, measure  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TIMING = TimingConfig(warmup_ms=25, rep_ms=150, min_reps=10, max_reps=500)
ROWS: list[dict] = []
TABLE: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def record(row: dict, line: str, out: str | None) -> None:
    """A measured row: to bench.jsonl, the log, and the closing table."""
    emit(row, out)
    log(line)
    TABLE.append(line)


def emit(row: dict, out: str | None) -> None:
    ROWS.append(row)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    d = torch.linalg.vector_norm(a.double() - b).item()
    n = torch.linalg.vector_norm(b).item()
    return d / n if n > 0 else (0.0 if d == 0 else math.inf)


def make(B, H, N, D, E, dtype, decay="multiscale", s0=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype)
    k = torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, H, N, E, device="cuda", generator=g).to(dtype)
    lam = decay_profile(decay, H).cuda()
    st = torch.randn(B, H, D, E, device="cuda", generator=g) * D ** -0.5 if s0 else None
    return q, k, v, lam, st


def poison() -> None:
    """Leave NaN in torch's cached blocks so an unwritten output element shows up."""
    x = torch.full((64 << 20,), float("nan"), device="cuda")
    del x


def check_one(name, fn, B, H, N, D, E, dtype, decay, s0, tol):
    q, k, v, lam, st = make(B, H, N, D, E, dtype, decay, s0, seed=N + D + E)
    ref_o, ref_s = reference(Inputs(q, k, v, lam, D ** -0.5, st))
    poison()
    o, s = fn(q, k, v, lam, scale=D ** -0.5, initial_state=st)
    torch.cuda.synchronize()
    eo, es = rel(o, ref_o), rel(s, ref_s)
    ok = eo <= tol and es <= tol and math.isfinite(eo) and math.isfinite(es)
    tag = "ok " if ok else "BAD"
    log(f"  {tag} {name:28s} B{B} H{H} N{N:6d} D{D:3d} E{E:3d} {str(dtype)[6:]:8s} λ={decay!s:10s} "
        f"s0={int(s0)} o_err={eo:.2e} s_err={es:.2e}")
    return ok, eo, es


def section_check(args) -> None:
    log("== check")
    bad = 0
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    tol = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-5}
    # chunked variants: every (ES, MC) and the shallowest/deepest pipeline, compiled in one NVRTC call
    plans = []
    for dtype in (torch.bfloat16, torch.float16):
        bf = dtype == torch.bfloat16
        for (D, E) in ((128, 128), (64, 32), (16, 16), (32, 64), (256, 256), (128, 64), (16, 256), (64, 128)):
            for es in ops._es_options(D, E):
                stages_list = [s for s in (2, 3, 4) if ops.chunk_smem(D, es, s) <= ops.SMEM_PER_BLOCK]
                for stages in sorted({stages_list[0], stages_list[-1]}):
                    if not bf and (stages != stages_list[-1] or D not in (128, 16)):
                        continue
                    plans.append((dtype, E, ops.ChunkPlan(es=es, cl=E // es, stages=stages, bf16=bf, D=D,
                                                          minb=2 if stages == 2 and D <= 128 else 1)))
    for (D, E) in ((128, 128), (64, 32), (16, 16), (32, 64), (128, 64), (16, 128)):
        for es in ops._es_options(D, E, True):
            st = max(s for s in (2, 3, 4) if ops.chunk_smem(D, es, s, True) <= ops.SMEM_PER_BLOCK)
            plans.append((torch.float32, E, ops.ChunkPlan(es=es, cl=E // es, stages=st, bf16=False, D=D, f32=True)))
    if args.quick:  # one multicast and one plain variant per dtype
        keep = []
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            mine = [x for x in plans if x[0] == dtype and x[2].D in (128, 16)]
            keep += mine[:1] + mine[-1:]
        plans = keep
    t0 = time.time()
    from leetbench.cuda_kernels import precompile
    precompile(ops._CHUNK_FILES, [p.name for _, _, p in plans], 0)
    log(f"  compiled {len(plans)} chunked instances in {time.time() - t0:.1f} s")
    for dtype, E, plan in plans:
        D = plan.D
        fn = (lambda p: lambda *a, **kw: ops.chunked(*a, plan=p, **kw))(plan)
        for (B, H, N, decay, s0) in ((1, 2, 1000, "multiscale", True), (2, 3, 131, 1.0, False)):
            try:
                ok, *_ = check_one(f"chunk {plan.name}", fn, B, H, N, D, E, dtype, decay, s0, tol[dtype])
            except Exception as exc:  # noqa: BLE001
                ok = False
                log(f"  ERR {plan.name}: {type(exc).__name__}: {exc}")
            bad += not ok
    # default plans on the edge cases of the brief
    cases = [
        (1, 32, 16384, 128, 128, "multiscale", False), (1, 8, 65536, 128, 128, "multiscale", True),
        (1, 4, 1, 128, 128, "retnet", True), (2, 3, 997, 64, 32, 1e-6, True), (1, 2, 997, 32, 16, 1.0, False),
        (3, 5, 4099, 128, 64, "alibi", True), (1, 2, 63, 256, 128, "retnet", False), (2, 4, 65, 16, 32, 1.0, True),
    ]
    def check_cases(name: str, fn, cases_: list, dtypes: tuple, refuses=lambda D, E, dt: None) -> int:
        failures = 0
        for dtype in dtypes:
            for (B, H, N, D, E, decay, s0) in cases_:
                if refuses(D, E, str(dtype)[6:]):
                    continue
                try:
                    ok, *_ = check_one(name, fn, B, H, N, D, E, dtype, decay, s0, tol[dtype])
                except Exception as exc:  # noqa: BLE001
                    ok = False
                    log(f"  ERR {name} {B,H,N,D,E}: {type(exc).__name__}: {exc}")
                failures += not ok
        return failures

    bad += check_cases("cupy_chunked", ops.chunked, cases, (torch.bfloat16, torch.float16, torch.float32),
                       refuses=ops.chunked_supports)
    rcases = [(1, 4, 1, 128, 128, "retnet", True), (2, 3, 997, 64, 32, 1e-6, True), (1, 2, 300, 256, 128, 1.0, False),
              (2, 2, 37, 16, 20, "alibi", True), (4, 8, 1, 256, 256, "multiscale", True), (1, 2, 1, 24, 10, 0.9, True),
              (1, 4, 2048, 128, 128, "multiscale", True)]
    bad += check_cases("cupy_recurrent", ops.recurrent, rcases, (torch.float32, torch.bfloat16, torch.float16))
    log(f"== check: {bad} failures (sm={sm})")
    TABLE.append(f"check failures: {bad}")


def peers():
    out = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        out["fla"] = chunk_simple_gla
        out["fla_rec"] = fused_recurrent_simple_gla
    except Exception as exc:  # noqa: BLE001
        log(f"fla unavailable: {exc}")
    try:
        from lightning_attn.ops.triton import lightning_attn2

        out["lightning"] = lightning_attn2
    except Exception as exc:  # noqa: BLE001
        log(f"lightning unavailable: {exc}")
    return out


def timeit(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return measure(fn, "cuda", TIMING).median_ms


def section_prefill(args, bw: float, dtypes=None) -> None:
    P = peers() if not args.no_peers else {}
    H, D = 32, 128
    variants = [v for v in args.variants.split(";") if v] if args.variants else []
    for dname in (dtypes or args.dtypes.split(",")):
        dtype = DT[dname]
        for B in [int(b) for b in args.batches.split(",")]:
            for N in [int(n) for n in args.lengths.split(",")]:
                q, k, v, lam, _ = make(B, H, N, D, D, dtype)
                floor = B * H * N * 4 * D * q.element_size()
                res = {}
                if dtype != torch.float32:
                    res["ours"] = timeit(lambda: ops.chunked(q, k, v, lam, scale=D ** -0.5))
                    for var in variants:
                        kw = dict(x.split("=") for x in var.split(","))
                        plan = ops.chunk_plan(B, H, D, D, dtype == torch.bfloat16, 132,
                                              es=int(kw["es"]) if "es" in kw else None,
                                              stages=int(kw["st"]) if "st" in kw else None,
                                              minb=int(kw["mb"]) if "mb" in kw else None)
                        try:
                            res[var] = timeit(lambda: ops.chunked(q, k, v, lam, scale=D ** -0.5, plan=plan))
                        except Exception as exc:  # noqa: BLE001
                            log(f"variant {var}: {exc}")
                else:
                    res["ours"] = timeit(lambda: ops.chunked(q, k, v, lam, scale=D ** -0.5))
                    if N <= 8192:
                        res["ours_rec"] = timeit(lambda: ops.recurrent(q, k, v, lam, scale=D ** -0.5))
                if "fla" in P:
                    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                    gg = torch.log(lam).float()
                    with torch.inference_mode():
                        try:
                            res["fla"] = timeit(lambda: P["fla"](qt, kt, vt, g_gamma=gg, scale=D ** -0.5))
                        except Exception as exc:  # noqa: BLE001
                            log(f"fla failed: {exc}")
                    del qt, kt, vt
                if "lightning" in P:
                    s = (-torch.log(lam)).float().reshape(H, 1, 1).contiguous()
                    with torch.inference_mode():
                        try:
                            res["lightning"] = timeit(lambda: P["lightning"](q, k, v, s))
                        except Exception as exc:  # noqa: BLE001
                            log(f"lightning failed: {exc}")
                row = {"section": "prefill", "dtype": dname, "B": B, "H": H, "N": N, "D": D, "bw_gbps": bw,
                       "floor_bytes": floor, **{f"ms_{k2}": v2 for k2, v2 in res.items()}}
                record(row, f"prefill {dname} B{B} N{N}: " + " ".join(
                    f"{k2}={v2:.3f}ms({floor / (v2 * 1e-3) / 1e9 / bw * 100:.0f}%)" for k2, v2 in res.items()),
                    args.out)
                del q, k, v


def section_decode(args, bw: float) -> None:
    P = peers()
    H, D = 32, 128
    for dname in ("bf16", "fp32"):
        dtype = DT[dname]
        for B in (1, 8, 64, 256):
            q, k, v, lam, st = make(B, H, 1, D, D, dtype, s0=True)
            st = st.float()
            res = {"ours": timeit(lambda: ops.recurrent(q, k, v, lam, scale=D ** -0.5, initial_state=st))}
            if "fla_rec" in P:
                qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                gg = torch.log(lam).float()
                with torch.inference_mode():
                    try:
                        res["fla"] = timeit(lambda: P["fla_rec"](qt, kt, vt, g_gamma=gg, scale=D ** -0.5,
                                                                 initial_state=st, output_final_state=True))
                    except Exception as exc:  # noqa: BLE001
                        log(f"fla decode failed: {exc}")
            state_bytes = 2 * B * H * D * D * 4
            row = {"section": "decode", "dtype": dname, "B": B, "bw_gbps": bw, "state_bytes": state_bytes,
                   **{f"ms_{k2}": v2 for k2, v2 in res.items()}}
            record(row, f"decode {dname} B{B}: " + " ".join(
                f"{k2}={v2 * 1e3:.1f}us({state_bytes / (v2 * 1e-3) / 1e9 / bw * 100:.0f}%)" for k2, v2 in res.items()),
                args.out)


def section_one(args) -> None:
    H, D = 32, 128
    dtype = DT[args.dtypes.split(",")[0]]
    for B in [int(b) for b in args.batches.split(",")]:
        for N in [int(n) for n in args.lengths.split(",")]:
            q, k, v, lam, _ = make(B, H, N, D, D, dtype)
            for _ in range(3):
                ops.chunked(q, k, v, lam, scale=D ** -0.5)
            torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="copy,check,prefill,decode")
    ap.add_argument("--lengths", default="1024,4096,16384,65536")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--variants", default="", help="e.g. 'es=32,st=2;es=64,mc=0'")
    ap.add_argument("--quick", action="store_true", help="check: fewer variants")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    what = args.what.split(",")
    t0 = time.time()
    log(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    bw = float("nan")
    if "copy" in what or "prefill" in what or "decode" in what or "fp32" in what:
        bw = copy_bandwidth_gbps("cuda")
        log(f"copy bandwidth: {bw:.0f} GB/s")
        TABLE.append(f"{torch.cuda.get_device_name(0)} copy bandwidth {bw:.0f} GB/s")
    for name, fn in (("check", lambda: section_check(args)), ("prefill", lambda: section_prefill(args, bw)),
                     ("fp32", lambda: section_prefill(args, bw, ["fp32"])),
                     ("decode", lambda: section_decode(args, bw)), ("one", lambda: section_one(args))):
        if name in what:
            try:
                fn()
            except Exception:  # noqa: BLE001
                log(f"section {name} failed:\n{traceback.format_exc()}")
                TABLE.append(f"section {name} FAILED")
    log(f"\n==== summary ({time.time() - t0:.0f} s)")
    for line in TABLE:
        log(line)


if __name__ == "__main__":
    main()
