"""Check the peer adapters on a GPU: accuracy on small problems, then one timing at the DESIGN §7 anchor.

    python3 scripts/check_peers.py [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./check_peers_out)
    python3 scripts/check_peers.py OUT_DIR --verify-only NAME...   (step 2 alone, in-process, for NAMEs)

Needs the peers installed (fla-core, lightning-attn, leetDecoding with --no-deps) and a CUDA GPU. Work is
spread so that compilation (nvcc for the seed's CUDA extension, Triton autotuning for fla) overlaps:
  1. the seed's three CUDA extensions build in three background processes;
  2. fresh processes compile (and autotune) each Triton peer once at the anchor shape, while a pool of
     workers runs `leetbench.execute.verify` on the small problems (B=1, H=4, N ∈ {1000, 4096},
     D = E ∈ {64, 128}, each dtype, multiscale, with and without an initial state where supported);
  3. then, alone on the GPU, this process checks and times every adapter at the anchor (B=1, H=32,
     D=E=128, N=16384, bf16, multiscale) with `leetbench.timing.measure`, plus DESIGN's B=8 float32 row
     and fla's decode step. Autotuning reruns here (FLA_CACHE_RESULTS=0), from Triton's compile cache.
Writes results.json (every row), check_peers.log (the tables) and build.log into OUT_DIR.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import importlib.util
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("FLA_CACHE_RESULTS", "0")  # autotune afresh in the timing process, not from disk
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER_FILES = ("peer_fla.py", "peer_lightning.py", "peer_seed.py")
SEED_EXTENSIONS = {  # the names and sources leetDecoding.methods.causal_dot_product passes to load()
    "causal_product_cuda_with_decay_fp32_cuda": "causal_product_cuda_with_decay_fp32.cu",
    "causal_product_cuda_with_decay_fp16_cuda": "causal_product_cuda_with_decay_fp16.cu",
    "causal_dot_product_cuda": "causal_product_cuda.cu",
}
SEED_MODULES = ("causal_dot_product", "BlockBased", "Recursion", "FleetAttention", "FleetAttention_triton",
                "lightningAttention2", "lightningAttention2_torch", "causal_dot_product_torch", "linear_attn")
ANCHOR = dict(batch=1, heads=32, length=16384, dim=128, decay="multiscale", dtype="bfloat16", device="cuda")
# Routes whose check call already takes seconds (host round trips per block): that call is their time.
ONE_CALL = {"seed_recursion"}
FP32_B8 = dict(batch=8, heads=32, length=8192, dim=128, decay="multiscale", dtype="float32", device="cuda")
# Triton peers compiled (and autotuned) once at the timed shapes in fresh processes during phase 2.
WARM_GROUPS = (("anchor", "fla_chunk"), ("anchor", "fla_fused_chunk", "fla_parallel"),
               ("anchor", "fla_fused_recurrent", "lightning_attn2", "seed_fleet_attention_triton"),
               ("fp32_b8", "fla_chunk", "lightning_attn2"))
PHASE2_DEADLINE_S = 210.0
DEADLINE_S = 380.0
T0 = time.time()

_registry = None


def registry():
    """Only the peer files (another plugin file cannot break or slow this check)."""
    global _registry
    if _registry is None:
        import shutil
        import tempfile

        from leetbench.discovery import load_methods

        folder = Path(tempfile.mkdtemp(prefix="peers_"))
        for name in PEER_FILES:
            shutil.copy(ROOT / "methods" / name, folder / name)
        _registry = load_methods([folder], builtin=False, entry_points=False)
        if _registry.failures:
            raise RuntimeError(f"peer files failed to load: {_registry.failures}")
    return _registry


def elapsed() -> float:
    return time.time() - T0


# ---- phase 1: the seed's CUDA extensions, built in parallel --------------------------------------------

def start_builds(log) -> list[subprocess.Popen]:
    spec = importlib.util.find_spec("leetDecoding")
    if spec is None:
        print("leetDecoding is not installed: no CUDA extension to build", file=log, flush=True)
        return []
    methods = Path(list(spec.submodule_search_locations)[0]) / "methods"
    code = ("import sys; from torch.utils.cpp_extension import load; "
            "load(name=sys.argv[1], sources=sys.argv[2], verbose=False)")
    return [subprocess.Popen([sys.executable, "-c", code, name, str(methods / cu)], stdout=log, stderr=log)
            for name, cu in SEED_EXTENSIONS.items()]


# ---- phase 2: verification units (pool workers) and warm-ups (fresh processes) -----------------------

def verify_unit(task: tuple) -> list[dict]:
    """Verify one method at one dtype and size over its small problems; one row per problem."""
    import torch

    from leetbench import Problem
    from leetbench.execute import classify, verify

    name, dtype, dim, mode = task
    method = registry()[name]
    if mode == "decode":
        problems = [Problem(batch=1, heads=4, length=1000, dim=dim, decay="multiscale", dtype=dtype,
                            device="cuda", mode="decode", steps=3)]
    else:
        problems = [Problem(batch=1, heads=4, length=n, dim=dim, decay="multiscale", dtype=dtype, device="cuda",
                            initial_state=s0) for n in (1000, 4096) for s0 in (False, True)]
    rows = []
    for problem in problems:
        row = dict(method=name, dtype=dtype, N=problem.length, D=dim, S0=problem.initial_state, mode=problem.mode)
        reason = method.why_not(problem)
        if reason:
            rows.append({**row, "status": "skipped", "error": reason})
            continue
        t = time.time()
        try:
            out = verify(method, problem)
            row.update(status=out.status, rel_err=out.rel_err, state_rel_err=out.state_rel_err, error=out.error)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            status, message = classify(exc)
            row.update(status=status, error=message)
        row["secs"] = round(time.time() - t, 2)
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def warm(shape: str, names: list[str]) -> None:
    """Compile (and autotune) Triton peers at a timed shape; nothing is kept but Triton's disk cache."""
    from leetbench import Problem

    problem = Problem(**(ANCHOR if shape == "anchor" else FP32_B8))
    inputs = make_inputs(problem)
    for name in names:
        method = registry()[name]
        if method.why_not(problem):
            continue
        try:
            if method.setup:
                method.setup(problem)
            method.fn(inputs.q, inputs.k, inputs.v, inputs.decay, scale=inputs.scale, initial_state=None)
        except Exception as exc:  # noqa: BLE001
            print(f"warm {name}: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
    print(f"warm {shape} {' '.join(names)} done in {elapsed():.0f} s", flush=True)


def phase2_tasks(reg) -> list[tuple]:
    heavy = ["fla_chunk", "fla_fused_chunk", "fla_parallel", "lightning_attn2", "seed_fleet_attention_triton",
             "fla_fused_recurrent", "seed_lightning_attn2"]
    light = ["seed_recursion", "seed_block_based", "seed_fleet_attention", "seed_lightning_attn2_torch",
             "seed_causal_dot_product"]
    tasks = [(n, dt, d, "prefill") for n in heavy + light for dt in ("bfloat16", "float16", "float32")
             for d in (128, 64) if n in reg]
    tasks += [("fla_fused_recurrent", dt, 64, "decode") for dt in ("float32", "bfloat16")]
    return tasks


# ---- phase 3: alone on the GPU, check and time at the anchor ------------------------------------------

def seed_imports() -> list[dict]:
    rows = []
    for name in SEED_MODULES + ("../efficient_linear_decoding",):
        mod = "leetDecoding.efficient_linear_decoding" if name.startswith("..") else f"leetDecoding.methods.{name}"
        t = time.time()
        try:
            importlib.import_module(mod)
            rows.append(dict(module=mod, ok=True, secs=round(time.time() - t, 1)))
        except BaseException as exc:  # noqa: BLE001 - KeyError, ImportError, SystemExit from pycuda...
            rows.append(dict(module=mod, ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))
    return rows


def time_one(method, problem, inputs, ref, bw_gbps: float) -> dict:
    import torch

    from leetbench.adapters import clear
    from leetbench.execute import classify, run_method
    from leetbench.timing import TimingConfig, measure

    row = dict(method=method.name, problem=problem.label(), status="", tf32=method.tf32)
    reason = method.why_not(problem)
    if reason:
        return {**row, "status": "skipped", "error": reason}
    if elapsed() > DEADLINE_S:
        return {**row, "status": "not run", "error": "check's deadline"}
    dev = torch.device("cuda")
    call = lambda: method.fn(inputs.q, inputs.k, inputs.v, inputs.decay, scale=inputs.scale,  # noqa: E731
                             initial_state=inputs.initial_state)
    try:
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = run_method(method, problem, inputs, ref, None)  # setup, first call (autotune), errors
        torch.cuda.synchronize()
        check_s = time.perf_counter() - t
        row.update(status=out.status, rel_err=out.rel_err, state_rel_err=out.state_rel_err, error=out.error)
        if method.name in ONE_CALL:
            row.update(time_ms=check_s * 1e3, reps=1)
        else:
            torch.cuda.synchronize()
            t = time.perf_counter()
            call()
            torch.cuda.synchronize()
            probe_s = time.perf_counter() - t
            if probe_s > 0.75:
                row.update(time_ms=probe_s * 1e3, reps=1)
            else:
                tm = measure(call, dev, TimingConfig())
                row.update(time_ms=tm.median_ms, time_ms_p20=tm.p20_ms, time_ms_p80=tm.p80_ms, reps=tm.reps)
        row["pct_bw"] = 100 * problem.bytes_floor() / (row["time_ms"] * 1e-3) / (bw_gbps * 1e9)
    except Exception as exc:  # noqa: BLE001
        row["status"], row["error"] = classify(exc)
    clear()
    torch.cuda.empty_cache()
    return row


def phase3(log) -> dict:
    import torch

    from leetbench import Problem
    from leetbench.execute import run_method
    from leetbench.reference import reference
    from leetbench.timing import TimingConfig, copy_bandwidth_gbps

    reg = registry()
    dev = torch.device("cuda")
    bw = copy_bandwidth_gbps(dev)
    result = {"copy_bandwidth_gbps": bw, "anchor": [], "fp32_b8": [], "decode": []}
    order = ["fla_chunk", "fla_fused_chunk", "fla_parallel", "lightning_attn2", "fla_fused_recurrent",
             "seed_block_based", "seed_lightning_attn2_torch", "seed_fleet_attention_triton",
             "seed_fleet_attention", "seed_causal_dot_product", "seed_lightning_attn2", "seed_recursion"]
    problem = Problem(**ANCHOR)
    inputs = make_inputs(problem)
    ref = reference(inputs)
    for name in order:
        row = time_one(reg[name], problem, inputs, ref, bw)
        result["anchor"].append(row)
        print("anchor", json.dumps(row), file=log, flush=True)
    del inputs, ref
    torch.cuda.empty_cache()

    problem = Problem(**FP32_B8)
    inputs = make_inputs(problem)
    ref = reference(inputs)
    for name in ("fla_chunk", "lightning_attn2", "seed_causal_dot_product"):
        row = time_one(reg[name], problem, inputs, ref, bw)
        result["fp32_b8"].append(row)
        print("fp32_b8", json.dumps(row), file=log, flush=True)
    del inputs, ref
    torch.cuda.empty_cache()

    for dtype in ("bfloat16", "float32"):
        problem = Problem(batch=1, heads=32, length=1024, dim=128, decay="multiscale", dtype=dtype, device="cuda",
                          mode="decode", steps=2)
        inputs = make_inputs(problem)
        try:
            out = run_method(reg["fla_fused_recurrent"], problem, inputs, reference(inputs), TimingConfig())
            row = dict(method="fla_fused_recurrent", problem=problem.label(), **out.as_dict())
        except Exception as exc:  # noqa: BLE001
            row = dict(method="fla_fused_recurrent", problem=problem.label(), status="error", error=str(exc)[:300])
        result["decode"].append(row)
        print("decode", json.dumps(row), file=log, flush=True)
    return result


# ---- report ----------------------------------------------------------------------------------------------

def fmt(x, spec=".2e") -> str:
    return "—" if x is None or x != x else format(x, spec)


def report(verify_rows: list[dict], timing: dict, env: dict, imports: list[dict]) -> str:
    lines = [f"# peers on {env['gpu']} (torch {env['torch']}, triton {env['triton']})", ""]
    lines += ["## seed imports", ""]
    for r in imports:
        lines.append(f"- {r['module']}: " + ("ok" + (f" ({r['secs']} s)" if r.get("secs", 0) > 1 else "")
                                             if r["ok"] else f"FAILS: {r['error']}"))
    lines += ["", "## verify (B=1 H=4 multiscale; worst rel_err over N ∈ {1000, 4096} × S0; status counts)", "",
              "| method | dtype | D | rel_err (no S0) | rel_err (S0) | state rel_err | statuses | note |",
              "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in verify_rows:
        groups.setdefault((r["method"], r["dtype"], r["D"], r["mode"]), []).append(r)
    for (name, dtype, dim, mode), rows in sorted(groups.items()):
        worst = lambda key, pred: max((r.get(key, float("nan")) for r in rows if pred(r)  # noqa: E731
                                       and r.get(key) == r.get(key) and r.get(key) is not None), default=None)
        counts: dict = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        notes = sorted({r.get("error", "") for r in rows if r.get("error")})
        note = "; ".join(n[:110] for n in notes)[:240]
        label = name + (" (decode)" if mode == "decode" else "")
        lines.append(f"| {label} | {dtype} | {dim} | {fmt(worst('rel_err', lambda r: not r['S0']))} | "
                     f"{fmt(worst('rel_err', lambda r: r['S0']))} | {fmt(worst('state_rel_err', lambda r: True))} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(counts.items()))} | {note} |")
    lines += ["", f"## anchor timings (copy bandwidth {timing.get('copy_bandwidth_gbps', float('nan')):.0f} GB/s)", "",
              "| problem | method | status | rel_err | time ms (p20–p80) | % of BW floor | note |",
              "|---|---|---|---|---|---|---|"]
    for key in ("anchor", "fp32_b8", "decode"):
        for r in timing.get(key, []):
            t = r.get("time_ms")
            p20, p80 = r.get("time_ms_p20"), r.get("time_ms_p80")
            spread = f" ({p20:.3f}–{p80:.3f})" if p20 is not None and p20 == p20 else ""
            one = " (1 call)" if r.get("reps") == 1 else ""
            lines.append(f"| {r.get('problem', '')} | {r['method']} | {r['status']} | {fmt(r.get('rel_err'))} | "
                         f"{fmt(t, '.3f')}{spread}{one} | {fmt(r.get('pct_bw'), '.1f')} | {r.get('error', '')[:160]} |")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import torch

    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for mod in ("triton", "fla", "lightning_attn"):
        try:
            env[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as exc:  # noqa: BLE001
            env[mod] = f"missing ({type(exc).__name__})"
    return env


def verify_only(out: Path, names: list[str]) -> None:
    """Phase 2 alone, in this process, for the named methods (a follow-up to a run that hit its deadline)."""
    rows = [r for n in names for dt in ("bfloat16", "float16", "float32") for d in (128, 64)
            for r in verify_unit((n, dt, d, "prefill"))]
    (out / "verify_only.json").write_text(json.dumps(rows, indent=1, default=str))
    print(report(rows, {}, environment(), []), flush=True)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "check_peers_out"))
    if len(sys.argv) > 2 and sys.argv[2] == "--verify-only":
        out.mkdir(parents=True, exist_ok=True)
        return verify_only(out, sys.argv[3:])
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "check_peers.log", "a")
    build_log = open(out / "build.log", "a")
    builds = start_builds(build_log)
    warmers = [subprocess.Popen([sys.executable, __file__, "--warm", *g], stdout=build_log, stderr=build_log)
               for g in WARM_GROUPS]
    reg = registry()
    tasks = phase2_tasks(reg)
    rows: list[dict] = []
    pool = cf.ProcessPoolExecutor(max_workers=10, mp_context=mp.get_context("spawn"))
    futures = {pool.submit(verify_unit, t): t for t in tasks}
    try:
        for fut in cf.as_completed(futures, timeout=max(1.0, PHASE2_DEADLINE_S - elapsed())):
            try:
                got = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died
                name, dtype, dim, mode = futures[fut]
                got = [dict(method=name, dtype=dtype, D=dim, N=0, S0=False, mode=mode, status="crashed",
                            error=f"{type(exc).__name__}: {exc}"[:300])]
            rows += got
            for r in got:
                print("verify", json.dumps(r), file=log, flush=True)
    except cf.TimeoutError:
        for fut, (name, dtype, dim, mode) in futures.items():
            if not fut.done():
                rows.append(dict(method=name, dtype=dtype, D=dim, N=0, S0=False, mode=mode, status="not run",
                                 error="phase-2 deadline"))
        for proc in list(getattr(pool, "_processes", {}).values()):  # the pool's own workers, started here
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    print(f"phase 2 done at {elapsed():.0f} s", file=log, flush=True)
    for p in builds + warmers:
        try:
            p.wait(timeout=max(1.0, PHASE2_DEADLINE_S + 60 - elapsed()))
        except subprocess.TimeoutExpired:
            p.kill()
    imports = seed_imports()
    env = environment()
    timing = phase3(log)
    print(f"phase 3 done at {elapsed():.0f} s", file=log, flush=True)
    (out / "results.json").write_text(json.dumps(dict(env=env, seed_imports=imports, verify=rows, timing=timing),
                                                 indent=1, default=str))
    text = report(rows, timing, env, imports)
    print(text, file=log, flush=True)
    print(text, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--warm":
        warm(sys.argv[2], sys.argv[3:])
    else:
        main()
