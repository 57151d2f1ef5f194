"""Per-role timeline of one chunk_wg2 CTA: where a chunk's time goes, role by role (KERNEL_NOTES v34/v35).

    PYTHONPATH=. python3 scripts/timeline.py [--batch 1] [--heads 32] [--length 16384] [--dims 128x128]
        [--dtype bf16] [--cta 0] [--skip 4] [--tstate on|off] [--loads tma|cp.async] [--out DIR]

Runs the rule's plan for the shape (its state pass and scan first where it cuts the sequence) with the output
kernel built with LB_TIMELINE=<cta>: lane 0 of that CTA's first output warp, first state warp and producer writes
clock64() at each event of each chunk (chunked_wg.cu names the events). Prints per role the median cycles from
each event to the next over the chunks (the first --skip chunks, the pipeline filling, left out) and their share
of the chunk period, then how far each role runs ahead of the output warps; the stamps go to OUT/timeline.npz.
Only chunk_wg2's roles are stamped (threads 0, 128, 256; in chunk_wg2_tma too, whose producer's lane 0 issues the
copies and arms the barrier at once: its events 2 and 3 coincide), so other plans are refused. --tstate on / off:
the rule's plan with its state held transposed or not (TST, KERNEL_NOTES v39); --loads tma / cp.async: its
producer loading through tensor maps or not (v55); the rule's own choices by default.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from leetbench.cuda_kernels.ops import ChunkPlan

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The events of each role, in the order chunked_wg.cu's LB_STAMP numbers them (row = chunk, column = event).
EVENTS = {
    "outputs": ("begun", "slot full", "state copy ready", "Q Kᵀ done", "Q S_in done", "P V done", "stored"),
    "state": ("begun", "slot full", "Ṽ formed", "Kᵀ Ṽ done", "met again", "copy buffer free", "copy published"),
    "producer": ("begun", "slot free", "copies issued", "announced"),
}
ROLES = tuple(EVENTS)


@dataclass(frozen=True)
class Step:
    role: str
    step: str        # "event a → event b", or "→ next chunk"
    cycles: float    # median over the chunks that stamped both
    share: float     # of the role's median chunk period


def steps(stamps: np.ndarray, skip: int = 4) -> list[Step]:
    """Median cycles between consecutive events of every role ([3, chunks, events] clock64 stamps, 0 = not
    stamped), over chunks ≥ skip that stamped both ends, and from the last event to the next chunk's first."""
    out: list[Step] = []
    for r, role in enumerate(ROLES):
        names = EVENTS[role]
        t = stamps[r, :, :len(names)].astype(np.float64)
        t[t == 0] = np.nan
        t = t[skip:]
        period = np.nanmedian(np.diff(t[:, 0])) if len(t) > 1 else np.nan
        for e in range(1, len(names)):
            d = t[:, e] - t[:, e - 1]
            out.append(Step(role, f"{names[e - 1]} → {names[e]}", _median(d), _median(d) / period))
        wrap = t[1:, 0] - t[:-1, -1]
        out.append(Step(role, f"{names[-1]} → next chunk", _median(wrap), _median(wrap) / period))
        out.append(Step(role, "chunk period", period, 1.0))
    return out


def leads(stamps: np.ndarray, skip: int = 4) -> dict[str, float]:
    """Median cycles by which the other roles were ready before the output warps needed them: the state copy
    of chunk c published (state row c - 1, event 6) before the output warps had chunk c's slot (outputs row c,
    event 1), and chunk c announced by the producer (row c, event 3) before the output warps began it (row c,
    event 0). Negative: the output warps waited."""
    out_t, st_t, pr_t = (stamps[r].astype(np.float64) for r in range(3))
    for t in (out_t, st_t, pr_t):
        t[t == 0] = np.nan
    c = np.arange(max(skip, 1), stamps.shape[1])
    return {"state copy": _median(out_t[c, 1] - st_t[c - 1, 6]), "producer": _median(out_t[c, 0] - pr_t[c, 3])}


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def table(stamps: np.ndarray, skip: int = 4) -> str:
    lines = [f"{'role':9s} {'step':40s} {'cycles':>8s} {'share':>6s}"]
    lines += [f"{s.role:9s} {s.step:40s} {s.cycles:8.0f} {s.share:6.0%}" for s in steps(stamps, skip)]
    lines += [f"ahead of the output warps: {name} {cycles:.0f} cycles" for name, cycles in leads(stamps, skip).items()]
    return "\n".join(lines)


def record(B: int, H: int, N: int, D: int, E: int, dtype: str, cta: int, tstate: bool | None = None,
           tma: bool | None = None) -> tuple[np.ndarray, ChunkPlan]:
    """The stamps of CTA `cta` in one call of the rule's plan (tstate True / False: with its state held transposed
    or not; tma True / False: its producer loading through tensor maps or by cp.async; None: as the rule has it),
    and the plan."""
    import cupy as cp  # noqa: PLC0415 - the GPU machine's
    import torch  # noqa: PLC0415

    from leetbench.cuda_kernels import kernel, ops  # noqa: PLC0415
    from leetbench.problem import decay_profile  # noqa: PLC0415

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    name = str(dt).removeprefix("torch.")
    seq = ops.seq_plan(B, H, N, D, E, name)
    plan = (seq.out if seq else ops.chunk_plan(B, H, D, E, name)).sized(0)
    if not plan.wg2:
        raise SystemExit(f"timeline.py stamps chunk_wg2's roles; this shape's plan is {plan.name}")
    if tstate is not None and tstate != plan.tstate:
        try:
            plan = ops.transposed_state_plan(plan) if tstate else replace(plan, tstate=False)
        except ValueError as exc:
            raise SystemExit(f"timeline.py --tstate on: {exc}") from None
    if tma is not None and tma != plan.tma:
        try:
            plan = ops.tma_load_plan(plan) if tma else ops.cp_async_plan(plan)
        except ValueError as exc:
            raise SystemExit(f"timeline.py --loads tma: {exc}") from None
    defines = (f"LB_TIMELINE={cta}",)
    g = torch.Generator(device="cuda").manual_seed(N)
    q, k = (torch.randn(B, H, N, D, device="cuda", generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, N, E, device="cuda", generator=g).to(dt)
    lam = decay_profile("multiscale", H).cuda().double()
    o = torch.empty_like(v)
    sN = torch.empty(B, H, D, E, device="cuda")
    s_in, L, runs = None, N, 1
    if seq is not None:
        local = ops._local_states(seq.state, 0, k, v, lam, seq.seg)
        s_in, L, runs = ops._scan_cuda(local, lam, seq.seg, None), seq.seg.length, seq.seg.count
    ptr = kernel(plan.files, plan.name, 0, defines).module.get_global_var("lb_timeline")
    stamps = np.zeros((3, 512, 8), dtype=np.uint64)  # chunked_wg.cu's LB_TL_CHUNKS, LB_TL_EVENTS
    for _ in range(3):  # the last of three calls is read: compiled, caches warm
        cp.cuda.runtime.memset(ptr, 0, stamps.nbytes)
        ops._launch_out(plan, 0, q, k, v, o, s_in, sN, lam, D ** -0.5, L, runs, defines)
        torch.cuda.synchronize()
    cp.cuda.runtime.memcpy(stamps.ctypes.data, ptr, stamps.nbytes, cp.cuda.runtime.memcpyDeviceToHost)
    return stamps, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--dims", default="128x128", help="DxE")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--cta", type=int, default=0, help="the block index stamped")
    ap.add_argument("--skip", type=int, default=4, help="first chunks left out (the pipeline filling)")
    ap.add_argument("--tstate", choices=("on", "off"), default=None,
                    help="the state held transposed (TST) or not; default: as the rule holds it")
    ap.add_argument("--loads", choices=("tma", "cp.async"), default=None,
                    help="the producer loading through tensor maps or by cp.async; default: as the rule loads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        D, E = (int(x) for x in args.dims.split("x"))
    except ValueError:
        raise SystemExit(f"timeline.py: --dims {args.dims!r}: expected DxE, e.g. 128x128") from None
    from leetbench.cuda_kernels import cupy_available, ops  # noqa: PLC0415

    if not cupy_available() or ops.device_gen(0) != 2:
        raise SystemExit("timeline.py: needs a Hopper GPU (compute capability 9.0) with CuPy: it stamps chunk_wg2")
    stamps, plan = record(args.batch, args.heads, args.length, D, E, args.dtype, args.cta,
                          None if args.tstate is None else args.tstate == "on",
                          None if args.loads is None else args.loads == "tma")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, "timeline.npz"), stamps=stamps)
    print(f"{plan.name}, B={args.batch} H={args.heads} N={args.length} D={D} E={E} {args.dtype}, CTA {args.cta}:")
    print(table(stamps, args.skip))


if __name__ == "__main__":
    main()
