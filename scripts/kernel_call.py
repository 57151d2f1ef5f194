"""Call cupy_chunked's kernels on one shape a few times and nothing else: the process to put under a profiler.

    python3 scripts/kernel_call.py [--dtype bf16|fp16|fp32] [--batch 1] [--heads 32] [--length 16384]
                                   [--dims 128x128] [--segments P] [--producers NPW] [--wgs 1|2|3] [--pipe]
                                   [--two-copies] [--producer-split] [--pair [--qstage] [--wide]] [--early]
                                   [--calls 3]

Random inputs, the multiscale decay, the default plan (or P segments; `--producers` sets chunk_wg32's producer
warps; `--wgs` one consumer warpgroup, chunk_wg, two, chunk_wg2, or three, chunk_wg3; `--pipe` chunk_wg2's
output warps pipelined; `--two-copies` chunk_wg with two state copies; `--producer-split` has chunk_wg32's
producers split the chunk; `--pair` chunk_wg4, two E slices a CTA sharing their scores, `--qstage` its outputs
staged in Q, `--wide` its output products over both slices at once; `--early` chunk_wg2's or chunk_wg4's
producer announcing chunks early). It compiles before the first call and synchronises after the last, so under
`ncu -k "regex:^chunk_wg(2|3|4|32)?$" --launch-skip 1 --launch-count 1 …` the profiled launch is a warm one.
Prints the plan and the median ms of the calls (CUDA events, not the harness's figure).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from leetbench.cuda_kernels import ops  # noqa: E402
from leetbench.problem import decay_profile  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=sorted(DT), default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--dims", default="128x128", help="DxE")
    ap.add_argument("--segments", type=int, default=None)
    ap.add_argument("--producers", type=int, default=None, help="chunk_wg32's producer warps (float32 only)")
    ap.add_argument("--wgs", type=int, choices=(1, 2, 3), default=None,
                    help="consumer warpgroups: 1 chunk_wg, 2 chunk_wg2, 3 chunk_wg3 (16-bit only; default: the rule)")
    ap.add_argument("--pipe", action="store_true", help="chunk_wg2's output warps pipelined (16-bit only)")
    ap.add_argument("--two-copies", action="store_true", help="chunk_wg with two state copies (16-bit only)")
    ap.add_argument("--producer-split", action="store_true", help="chunk_wg32's producers split the chunk (fp32)")
    ap.add_argument("--pair", action="store_true", help="chunk_wg4: two E slices a CTA, one Q Kᵀ (16-bit only)")
    ap.add_argument("--qstage", action="store_true", help="with --pair: outputs staged in the slot's Q tile")
    ap.add_argument("--early", action="store_true", help="chunk_wg2's or chunk_wg4's producer announces chunks early")
    ap.add_argument("--wide", action="store_true", help="with --pair: the output products over both slices at once")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    if args.qstage and not args.pair:
        ap.error("--qstage is an option of --pair (chunk_wg4)")
    B, H, N = args.batch, args.heads, args.length
    D, E = map(int, args.dims.split("x"))
    dt = DT[args.dtype]
    dtype = str(dt).removeprefix("torch.")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(B, H, N, D, device="cuda", generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, N, E, device="cuda", generator=g).to(dt)
    lam = decay_profile("multiscale", H).cuda()
    kw: dict = {"segments": args.segments}
    if args.producers is not None:
        plan = ops.chunk_plan(B, H, D, E, dtype)
        if not plan.f32 or plan.gen != 2:
            sys.exit(f"kernel_call: --producers applies to chunk_wg32 only (the plan here is {plan.name})")
        kw = {"plan": replace(plan, producers=args.producers)}
    if args.wgs:
        try:
            kw = {"plan": ops.chunk_plan(B, H, D, E, dtype, wgs=args.wgs), "segments": args.segments}
        except ValueError as exc:
            sys.exit(f"kernel_call: --wgs {args.wgs}: {exc}")
    for on, flag, variant, wgs in ((args.pipe, "--pipe", ops.pipe_plan, 2),
                                   (args.two_copies, "--two-copies", ops.two_copy_plan, 1),
                                   (args.producer_split, "--producer-split", ops.producer_split_plan, None),
                                   (args.pair, "--pair", functools.partial(ops.shared_scores_plan, qstage=args.qstage),
                                    1),
                                   (args.early, "--early", ops.early_plan, None),
                                   (args.wide, "--wide", ops.wide_plan, None)):
        if on:  # the variant of the plan so far (or of the consumer warpgroups it varies)
            try:
                base = kw.get("plan") or ops.chunk_plan(B, H, D, E, dtype, wgs=wgs)
                kw = {"plan": variant(base), "segments": args.segments}
            except ValueError as exc:
                sys.exit(f"kernel_call: {flag}: {exc}")
    names = [kw["plan"].name] if "plan" in kw else ops.chunk_kernel_names(B, H, N, D, E, dtype, 0, args.segments)
    if kw.get("segments"):  # the split plan as the output pass of P segments: the state pass and scan too
        names = [kw["plan"].name] + ops.chunk_kernel_names(B, H, N, D, E, dtype, 0, args.segments)[1:]
    ops.precompile_chunked(names, 0, jobs=4)
    times = []
    for _ in range(args.calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        ops.chunked(q, k, v, lam, scale=D ** -0.5, **kw)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    print(f"{' + '.join(names)}: B{B} H{H} N{N} D{D} E{E} {dtype}, median {statistics.median(times):.3f} ms "
          f"over {args.calls} calls (CUDA events)")


if __name__ == "__main__":
    main()
