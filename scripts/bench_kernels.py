"""Time cupy_chunked's launch variants beside the peers, in one process (one device call).

    PYTHONPATH=. python3 scripts/bench_kernels.py --out $OUT [--batches 1,4,8] [--lengths ...] [--ab]
        [--gen [--variants 'v2,v2P2*']]

Per shape (H=32, D=E=128 and D=64/E=256, bf16 by default; --heads, --dims, --batches, --lengths choose others):
the one-pass kernel (`one`), the sequence-parallel path at P = 2, 4 (`P2`, `P4`; `P=` names the plan's own
choice, 1 = one pass), fla's chunk_simple_gla and lightning_attn2 when importable; with --ab also the kernel
options (`4loops`: four consumer loops, `noscale`: unscaled fp16 state copy); with --passes the state pass, scan
and output pass of the default plan alone, where it cuts the sequence (--passes P: of P segments; float32 on
generation 2 also the state pass's other form, one set of pieces where the rule takes two, alone, `pass1one`,
and in the whole call, `wholeone` beside `whole`, KERNEL_NOTES v37, v38; `DB` where the rule takes one set; 16-bit
at ES = 64 the state pass loading through tensor maps, `pass1tma` and `wholetma`, v56 — `cpasync` where the rule
does; all of them in the same rounds as the variants). `agree` is the
worst-head relative difference of each variant's output from the first one's (a sanity check only: accuracy is
tested in tests/test_cupy_kernels.py). --variants times only the variants whose names match one of its globs
(a short device call). Each row names the template instance behind every variant (`plan_*`;
names that are one instance are printed as such), and the first variant is timed once more after the peers
(`<first>.end`): their difference is the run's drift, the least difference between two variants that means
anything. A card whose clock drifts while the run goes on (seen on lent H200s: the same instance 10% slower by
the end) favours the variants timed first; --rounds R times every variant and peer in R interleaved rounds and
keeps the median of the rounds (each round's in `rounds_*`). Rows go to OUT/bench.jsonl; a short table is
printed last.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from leetbench.cuda_kernels import ops  # noqa: E402
from leetbench.cuda_kernels import segments as sp  # noqa: E402
from leetbench.problem import decay_profile  # noqa: E402
from leetbench.timing import TimingConfig, copy_bandwidth_gbps, measure  # noqa: E402
from methods.peer_lightning import offsets_over_int32  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE = {k: str(v).removeprefix("torch.") for k, v in DT.items()}  # the name ops' planners take
TIMING = TimingConfig(warmup_ms=20, rep_ms=100, min_reps=5, max_reps=200)


def peers() -> dict[str, Callable]:
    """fla's and lightning's kernels as fn(q, k, v, λ) on [B, H, N, D] inputs; missing ones are left out."""
    out: dict[str, Callable] = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        def fla(q, k, v, lam, qt=None):  # fla wants [B, T, H, D]: transposed once, outside the timing
            return chunk_simple_gla(*qt, g_gamma=torch.log(lam).float(), scale=q.shape[-1] ** -0.5)
        out["fla"] = fla
    except Exception as exc:  # noqa: BLE001 - any import failure just drops the peer
        print(f"fla unavailable: {exc}")
    try:
        from lightning_attn.ops.triton import lightning_attn2

        out["lightning"] = lambda q, k, v, lam, qt=None: lightning_attn2(
            q, k, v, (-torch.log(lam)).float().reshape(-1, 1, 1).contiguous())
    except Exception as exc:  # noqa: BLE001
        print(f"lightning unavailable: {exc}")
    return out


LOOKBACK_PIECES = (256, 512, 1024, 2048)  # tokens per piece of the look-back kernel's variants


def with_form(out: dict[str, dict], keys: tuple[str, ...], suffix: str, form: Callable[[ops.ChunkPlan], ops.ChunkPlan],
              when: Callable[[ops.ChunkPlan], bool] = lambda plan: True) -> None:
    """Each variant of `keys` in `out` whose plan `when` takes, again as `key + suffix` with its plan in `form`."""
    for key in keys:
        if key in out and when(out[key]["plan"]):
            out[key + suffix] = {**out[key], "plan": form(out[key]["plan"])}


def gen_variants(B: int, H: int, D: int, E: int, dtype: str) -> dict[str, dict]:
    """The two kernel generations: each by its own rule (`v1`, `v2`), in one pass, and generation 2 at each
    E slice in one pass and at P = 2 (and the default at P = 4), and its variants (two consumer warpgroups,
    two output warpgroups, two E slices sharing their scores, two state copies, the state held transposed, Q in
    registers, bulk output stores, output stores from the accumulators (`…d`), loads through tensor maps (`…m`),
    the look-back kernel; float32: fewer producer warps, their split, the state chain apart: `v2sa32` in one pass
    at ES = 32, `v2P2sa` and `v2P2sa32` at P = 2); `v2serial`: the rule with its sequence-parallel passes launched
    one after another (not as programmatic dependents)."""
    out = {"v1": {"gen": 1}, "v1one": {"gen": 1, "segments": 1}}
    if ops.device_gen(0) == 2 and ops.wg_supports(D, E, dtype):
        out.update({"v2": {"gen": 2}, "v2one": {"gen": 2, "segments": 1}, "v2P2": {"gen": 2, "segments": 2},
                    "v2P4": {"gen": 2, "segments": 4}, "v2serial": {"gen": 2, "overlap": False}})
        plans = {f"v2es{c}": dict(es=c) for c in (64, 32) if E % c == 0}  # each E slice, and the default slice
        plans.update({f"v2x{minb}": dict(minb=minb) for minb in (1, 2)})  # at one and at two CTAs per SM
        for name, kw in plans.items():
            try:
                out[name] = {"plan": ops.chunk_plan(B, H, D, E, dtype, gen=2, **kw)}
            except ValueError as exc:  # a variant the shape cannot take is left out
                print(f"  {name}: {exc}")
        if dtype == "float32":  # chunk_wg32 with fewer producer warps than the default, and with their split
            base = ops.chunk_plan(B, H, D, E, dtype, gen=2)
            out.update({f"v2pw{p}": {"plan": replace(base, producers=p)} for p in (1, 2) if p != base.producers})
            out["v2ps"] = {"plan": ops.producer_split_plan(base)}
            # the state chain apart (chunk_wg32x2, v45): one pass in 32-column slices, and at P = 2 where it fits
            for key, es, segs in (("v2sa32", 32, 1), ("v2P2sa", None, 2), ("v2P2sa32", 32, 2)):
                try:
                    apart = ops.float32_split_plan(ops.chunk_plan(B, segs * H, D, E, dtype, es=es, gen=2))
                    out[key] = {"plan": apart, **({"segments": segs} if segs > 1 else {})}
                except ValueError as exc:
                    print(f"  {key}: {exc}")
        if dtype != "float32" and E % 32 == 0:  # two segments in 32-column slices, two CTAs per SM (B=1: 256)
            out["v2P2es32x2"] = {"plan": ops.chunk_plan(B, H, D, E, dtype, es=32, minb=2, gen=2), "segments": 2}
        if dtype != "float32":  # each consumer form in one pass and at P = 2 in 64-column slices: chunk_wg (wg1),
            wide = 64 if E % 64 == 0 else 32  # chunk_wg2 (wg2), chunk_wg3 (wg3), chunk_wg with two copies (c2)
            for w in (1, 2, 3):
                try:
                    out[f"v2wg{w}"] = {"plan": ops.chunk_plan(B, H, D, E, dtype, gen=2, wgs=w)}
                    out[f"v2P2wg{w}"] = {"plan": ops.chunk_plan(B, 2 * H, D, E, dtype, es=wide, gen=2, wgs=w),
                                         "segments": 2}
                    for key in (f"v2wg{w}", f"v2P2wg{w}"):  # chunk_wg2 at one per SM: output warps pipelined
                        plan = out[key]["plan"]
                        if plan.wgs == 2 and plan.minb == 1:
                            out[key + "p"] = {**out[key], "plan": ops.pipe_plan(plan)}
                except ValueError as exc:
                    print(f"  v2wg{w}: {exc}")
            one = ops.chunk_plan(B, H, D, E, dtype, gen=2, wgs=1)
            # one slice a CTA over P segments in `wide`-column slices, and pairs of 32-column slices (the grid of
            # 64-column slices, the state chain split in two)
            cut = {P: ops.chunk_plan(B, P * H, D, E, dtype, es=wide, gen=2, wgs=1) for P in (2, 4)}
            narrow = {P: ops.chunk_plan(B, P * H, D, E, dtype, es=32, gen=2, wgs=1) for P in (1, 2)}
            pairs = [("v2pair", one, 1, False, False), ("v2pairq", one, 1, True, False),
                     ("v2paire", one, 1, False, True), ("v2pairqe", one, 1, True, True),
                     ("v2P2pair", cut[2], 2, False, False), ("v2P4pair", cut[4], 4, False, False),
                     ("v2P2pairq", cut[2], 2, True, False), ("v2P4pairq", cut[4], 4, True, False),
                     ("v2pair32", narrow[1], 1, False, False), ("v2P2pair32", narrow[2], 2, False, False)]
            for key, plan, segs, qstage, early in pairs:
                try:  # chunk_wg4: two E slices a CTA, their scores formed once (KERNEL_NOTES v25); q: outputs
                    # staged in Q, e: chunks announced early (v27)
                    pair = ops.shared_scores_plan(plan, qstage=qstage)
                    out[key] = {"plan": ops.early_plan(pair) if early else pair,
                                **({"segments": segs} if segs > 1 else {})}
                except ValueError as exc:
                    print(f"  {key}: {exc}")
            # w: the output warps' products over both slices (v30)
            with_form(out, ("v2pair", "v2pairq", "v2P4pairq"), "w", ops.wide_plan)
            if E % 32 == 0:  # chunk_wg2 at P = 2 in 32-column slices, two CTAs per SM where they fit (B=1: 256)
                narrow2 = ops.chunk_plan(B, 2 * H, D, E, dtype, es=32, gen=2, wgs=1)
                out["v2P2wg2n"] = {"plan": ops.split_plan(narrow2, 0, 2 * B * H * (E // 32)), "segments": 2}
            with_form(out, ("v2wg2", "v2P2wg2", "v2P2wg2n"), "e",  # chunk_wg2's producer announcing early
                      ops.early_plan, lambda p: p.wgs == 2)
            with_form(out, ("v2wg2e", "v2P2wg2e"), "p",  # and its output warps pipelined too
                      ops.pipe_plan, lambda p: p.wgs == 2 and p.minb == 1)
            with_form(out, ("v2wg2e", "v2wg2ep", "v2P2wg2e", "v2P2wg2p", "v2P2wg2ep"), "t",  # the state transposed
                      ops.transposed_state_plan, lambda p: p.wgs == 2 and p.es == 64)
            with_form(out, ("v2wg2e", "v2wg2et", "v2P2wg2e", "v2P2wg2et"), "q",  # Q in the output warps' registers
                      ops.register_q_plan, lambda p: p.wgs == 2 and p.minb == 1)
            with_form(out, ("v2wg2et", "v2wg2etq", "v2P2wg2et", "v2P2wg2etq"), "b",  # output rows by bulk copies
                      ops.bulk_store_plan, lambda p: p.wgs == 2)
            with_form(out, ("v2wg2e", "v2wg2ep", "v2wg2et", "v2wg2ept", "v2P2wg2et", "v2P2wg2ept", "v2pair",
                            "v2pairw"), "d",  # output rows from the accumulators (DIRECT)
                      ops.direct_store_plan, lambda p: p.wgs == 2 or p.pair)
            with_form(out, ("v2wg2eptd", "v2P2wg2eptd"), "m",  # its producer loading through tensor maps (TMA)
                      ops.tma_load_plan, lambda p: p.es == 64)
            out["v2onec2"] = {"plan": ops.two_copy_plan(one)}
            out["v2P2c2"] = {"plan": ops.two_copy_plan(cut[2]), "segments": 2}
            if E % 64 == 0:  # the look-back kernel (chunk_wg2lb, v48) over pieces of L tokens: `v2lb<L>`
                out.update({f"v2lb{L}": {"lookback": L} for L in LOOKBACK_PIECES})
    return out


def earlier_rules(B: int, H: int, N: int, D: int, E: int, dtype: str) -> dict[str, dict]:
    """The rule's plan for the shape (its segments too) as earlier rules had it, where they differ from it:
    `v2cpasync` with its producer copying each chunk by cp.async (EARLY) instead of through tensor maps (the rule
    before KERNEL_NOTES v55), `v2staged` also with its output rows staged through shared memory as before v53 —
    chunk_wg2 without DIRECT and PIPE, chunk_wg4 staging in its Q tile (QSTAGE) in the same layout."""
    seq = ops.seq_plan(B, H, N, D, E, dtype)
    rule = seq.out if seq else ops.chunk_plan(B, H, D, E, dtype)
    segments = {"segments": seq.seg.count if seq else 1}
    out = {}
    cp_async = ops.cp_async_plan(rule) if rule.tma else rule
    if rule.tma:
        out["v2cpasync"] = {"plan": cp_async, **segments}
    if rule.direct:
        staged = replace(cp_async, direct=False, qstage=True) if rule.pair else replace(cp_async, direct=False,
                                                                                          pipe=False)
        out["v2staged"] = {"plan": staged, **segments}
    return out


def variants(B: int, H: int, N: int, D: int, E: int, dtype: str, ab: bool, es: bool = False,
             gen: bool = False) -> dict[str, dict]:
    """Keyword arguments of ops.chunked per variant."""
    if gen:
        earlier = ops.device_gen(0) == 2 and ops.wg_supports(D, E, dtype)
        return {**gen_variants(B, H, D, E, dtype), **(earlier_rules(B, H, N, D, E, dtype) if earlier else {})}
    out = {"one": {"segments": 1}, "P2": {"segments": 2}, "P4": {"segments": 4}}
    if es:  # one pass at every E slice that fits, at one and (where it fits) two CTAs per SM
        for c in ops._es_options(D, E, dtype == "float32", 0):
            for minb in (1, 2):
                try:
                    out[f"es{c}x{minb}"] = {"plan": ops.chunk_plan(B, H, D, E, dtype, es=c, minb=minb)}
                except Exception as exc:  # noqa: BLE001 - a variant that cannot be planned is left out
                    print(f"  es{c}x{minb}: {exc}")
    if ab:
        plan = ops.chunk_plan(B, H, D, E, dtype)
        out["4loops"] = {"plan": replace(plan, opt=plan.opts & ~ops.OPT_ONELOOP)}
        if dtype == "float16":
            out["noscale"] = {"plan": replace(plan, opt=plan.opts & ~ops.OPT_SCALE16)}
    return out


def select_variants(kws: dict[tuple, dict[str, dict]], globs: str | None) -> dict[tuple, dict[str, dict]]:
    """Each shape's variants (`kws`: by shape, by name) whose names match one of the comma-separated `globs`
    (all where None); ValueError naming the variants there are where a glob matches none in any shape."""
    if globs is None:
        return kws
    patterns = globs.split(",")
    known = list(dict.fromkeys(n for each in kws.values() for n in each))
    if lost := [g for g in patterns if not any(fnmatch.fnmatchcase(n, g) for n in known)]:
        raise ValueError(f"--variants: {', '.join(lost)} matches no variant (valid: {', '.join(known)})")
    return {shape: {n: kw for n, kw in each.items() if any(fnmatch.fnmatchcase(n, g) for g in patterns)}
            for shape, each in kws.items()}


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    num = torch.linalg.vector_norm((a.float() - b.float()).flatten(2), dim=-1)
    return float((num / torch.linalg.vector_norm(b.float().flatten(2), dim=-1).clamp_min(1e-30)).max())


def variant_launch(B: int, H: int, N: int, D: int, E: int, dtype: str,
                   kw: dict) -> tuple[ops.ChunkPlan | ops.LookbackPlan, int]:
    """The plan a variant's outputs come from and its segments (1: one pass), as `ops.chunked` resolves `kw`."""
    if "lookback" in kw:
        return ops.lookback_plan(D, E, dtype, kw["lookback"]), 1
    if "plan" in kw:
        return kw["plan"], kw.get("segments", 1)
    seq = ops.seq_plan(B, H, N, D, E, dtype, segments=kw.get("segments"), gen=kw.get("gen"))
    return (seq.out, seq.seg.count) if seq else (ops.chunk_plan(B, H, D, E, dtype, gen=kw.get("gen")), 1)


def variant_plan(B: int, H: int, N: int, D: int, E: int, dtype: str, kw: dict) -> str:
    """The template instance a variant's outputs come from (its state pass and scan left out)."""
    plan, segments = variant_launch(B, H, N, D, E, dtype, kw)
    if isinstance(plan, ops.LookbackPlan):
        return f"{plan.name} L={plan.piece}"
    return plan.name if segments == 1 else f"{plan.name} P={segments}"


def variant_products(B: int, H: int, N: int, D: int, E: int, dtype: str, kw: dict) -> float | None:
    """Multiply-adds a variant's kernels issue per token and head, counted as KERNEL_NOTES v24 and v29 count
    them (generation 2; None for generation 1): Q Kᵀ once per CTA's columns (each of the plan's `cl` slices, a
    pair's two sharing theirs), P V, Q S_in and Kᵀ Ṽ, and in P segments the state pass's Kᵀ V over all but the
    last (the look-back kernel: over every token); three of each in float32 (float16 pieces). Its rate is the
    kernel's ceiling where memory is not."""
    plan, segments = variant_launch(B, H, N, D, E, dtype, kw)
    if isinstance(plan, ops.LookbackPlan):
        return ops.CHUNK * D * plan.cl + ops.CHUNK * E + 3 * D * E
    if plan.gen != 2:
        return None
    macs = ops.CHUNK * D * plan.cl + ops.CHUNK * E + 2 * D * E + D * E * (segments - 1) / segments
    return macs * (3 if plan.f32 else 1)


def other_state_pass(state: ops.StatePlan, D: int, E: int, dtype: str) -> tuple[str, ops.StatePlan] | None:
    """The rule's state pass in its other form, and its tag, where --passes times one beside it: float32 on
    generation 2 with one set of pieces where the rule takes two (`one`) or two where it takes one (`DB`; v37, v38);
    16-bit on generation 2 at ES = 64 loading through tensor maps where the rule copies by cp.async (`tma`) or by
    cp.async where it loads through them (`cpasync`; v56). (16-bit with Ṽ through shared memory, v41/v43's `plain`,
    is ops.state_plan(..., tstate=False).)"""
    if state.gen != 2:
        return None
    if dtype == "float32":
        other = ops.state_plan(D, E, dtype, 0, dbuf=not state.dbuf)
        return ("DB" if other.dbuf else "one"), other
    if state.es == 64:
        return ("cpasync", replace(state, tma=False)) if state.tma else ("tma", ops.tma_state_pass(state))
    return None


PASS = "pass:"  # time_shape's calls that are one pass of the rule's sequence-parallel plan (--passes)
STREAM = "stream"  # time_shape's call that moves the operator's floor bytes and computes nothing (--stream)


def time_shape(B: int, H: int, N: int, D: int, E: int, dname: str, bw: float, kws: dict[str, dict], peer: dict,
               passes: int | None = None, rounds: int = 1, stream: bool = False) -> dict:
    """The shape's variants (`kws`: ops.chunked's keyword arguments by name) and peers, timed side by side; with
    rounds > 1 in that many interleaved rounds (each call timed once a round, shorter), the median of the rounds'
    medians kept and each round's in `rounds_*`: a card whose clock drifts during the run then biases no variant
    by its place in the order. stream (D = E): also one elementwise kernel that reads q, k, v and writes o
    (`torch.addcmul`, `stream_ms`) — the operator's floor bytes in its read-write mix, with no arithmetic to speak
    of: how close to the copy bandwidth that mix itself comes on this card."""
    dt = DT[dname]
    g = torch.Generator(device="cuda").manual_seed(N + B)
    q, k = (torch.randn(B, H, N, D, device="cuda", generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, N, E, device="cuda", generator=g).to(dt)
    lam = decay_profile("multiscale", H).cuda()
    dtype = DTYPE[dname]
    calls = {name: (lambda kw=kw: ops.chunked(q, k, v, lam, scale=D ** -0.5, **kw)[0])
             for name, kw in kws.items()}
    qt = tuple(x.transpose(1, 2).contiguous() for x in (q, k, v)) if "fla" in peer else None
    calls.update({name: (lambda fn=fn: fn(q, k, v, lam, qt)) for name, fn in peer.items()})
    if "lightning" in calls and (why := offsets_over_int32(B, H, N, D, E)):  # it would fault, poisoning the run
        print(f"  lightning left out: {why}")
        del calls["lightning"]
    if kws and rounds == 1:  # the first variant once more, last: how far the card drifted while the others ran
        first_name = next(iter(kws))
        calls[f"{first_name}.end"] = calls[first_name]
    floor = B * H * N * (2 * D + 2 * E) * q.element_size()
    seq = ops.seq_plan(B, H, N, D, E, dtype)
    row = {"dtype": dname, "B": B, "H": H, "N": N, "D": D, "E": E, "bw_gbps": bw, "floor_bytes": floor,
           "segments_auto": seq.seg.count if seq else 1}
    plans: dict[str, list[str]] = {}  # which instance each variant ran, so two names for one plan show as such
    for name, kw in kws.items():
        row[f"plan_{name}"] = variant_plan(B, H, N, D, E, dtype, kw)
        plans.setdefault(row[f"plan_{name}"], []).append(name)
        if (macs := variant_products(B, H, N, D, E, dtype, kw)) is not None:
            row[f"macs_{name}"] = macs
    row["same_plan"] = [names for names in plans.values() if len(names) > 1]
    if passes is not None:  # the three passes of the rule's sequence-parallel plan (0) or of P segments
        seq = ops.seq_plan(B, H, N, D, E, dtype, segments=passes or None)
    if passes is not None and seq is not None:
        row["passes_plan"] = f"{seq.state.name}, {seq.out.name}: P={seq.seg.count}, {seq.seg.sub} pieces each"
        local = ops._local_states(seq.state, 0, k, v, lam, seq.seg)
        s_in = ops._scan_cuda(local, lam, seq.seg, None)
        out_plan = seq.out.sized(0)
        timed = {"pass1": lambda: ops._local_states(seq.state, 0, k, v, lam, seq.seg),
                 "pass2": lambda: ops._scan_cuda(local, lam, seq.seg, None),
                 "pass3": lambda: ops._outputs(out_plan, 0, q, k, v, lam, D ** -0.5, s_in, seq.seg)}
        other = other_state_pass(seq.state, D, E, dtype)
        if other is not None:  # the state pass's other form, A/B
            tag, other = other
            whole = {"whole": seq.state, f"whole{tag}": other}
            timed[f"pass1{tag}"] = lambda: ops._local_states(other, 0, k, v, lam, seq.seg)
            timed.update({name: functools.partial(
                sp.run, q, k, v, lam, scale=D ** -0.5, initial_state=None, seg=seq.seg,
                local_states=functools.partial(ops._local_states, plan, 0),
                outputs=functools.partial(ops._outputs, out_plan, 0), scan=ops._scan_cuda)
                for name, plan in whole.items()})
            with torch.inference_mode():
                row[f"agree_whole{tag}"] = worst(timed[f"whole{tag}"]()[0], timed["whole"]()[0])
        # timed in the same rounds as the variants: `whole` and the rule's own variant then see the same card
        calls.update({PASS + name: fn for name, fn in timed.items()})
    if stream and D == E:
        o = torch.empty_like(v)
        calls[STREAM] = lambda: torch.addcmul(q, k, v, out=o)
    elif stream:
        print(f"  stream left out: it needs D = E (got D = {D}, E = {E})")
    first = None
    timing = TIMING if rounds == 1 else replace(TIMING, warmup_ms=5, rep_ms=max(10, TIMING.rep_ms // rounds))
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for name, fn in calls.items():
            if r and name not in times:
                continue  # failed in the first round
            try:
                with torch.inference_mode():
                    if r == 0 and not name.startswith(PASS) and name != STREAM:
                        out = fn()
                        out = out[0] if isinstance(out, tuple) else out
                        out = out.transpose(1, 2) if name == "fla" else out
                        out = out * D ** -0.5 if name == "lightning" else out  # lightning_attn2 takes no scale
                        first = out if first is None else first
                        row[f"agree_{name}"] = worst(out, first)
                        del out
                    times.setdefault(name, []).append(measure(fn, "cuda", timing).median_ms)
            except Exception as exc:  # noqa: BLE001 - a failing variant or peer must not end the run
                print(f"  {name} failed: {type(exc).__name__}: {exc}")
                times.pop(name, None)
    for name, each in times.items():
        key = (f"pass_ms_{name.removeprefix(PASS)}" if name.startswith(PASS)
               else f"{STREAM}_ms" if name == STREAM else f"ms_{name}")
        row[key] = statistics.median(each)
        if rounds > 1:
            row[f"rounds_{key.removeprefix('ms_')}"] = each
    return row


def line(row: dict) -> str:
    ms = {k[3:]: v for k, v in row.items() if k.startswith("ms_")}
    best = min(ms.values()) if ms else float("nan")
    def rate(k: str, v: float) -> str:  # the products' TFLOPS, where counted (generation 2)
        macs = row.get(f"macs_{k.removesuffix('.end')}")
        return "" if macs is None else f", {2 * macs * row['B'] * row['H'] * row['N'] / v / 1e9:.0f} TF"

    cells = " ".join(f"{k}={v:.3f}{'*' if v == best else ''}({row['floor_bytes'] / v / 1e6 / row['bw_gbps']:.0%}"
                     f"{rate(k, v)})" for k, v in ms.items())
    bad = [k[6:] for k, v in row.items() if k.startswith("agree_") and v > 3e-2]
    extra = [f"{k[8:]}={v:.4f}" for k, v in row.items() if k.startswith("pass_ms_")]
    extra += [f"({row['passes_plan']})"] if "passes_plan" in row else []
    if (st := row.get(f"{STREAM}_ms")) is not None:
        extra.append(f"{STREAM}={st:.4f}({row['floor_bytes'] / st / 1e6 / row['bw_gbps']:.0%})")
    aside = " ".join(extra)
    shape = f"{row['dtype']} B{row['B']} H{row['H']} N{row['N']:5d} D{row['D']} E{row['E']}"
    return (f"{shape} P={row['segments_auto']}: {cells}"
            + (f"  [{aside}]" if aside else "") + (f"  DISAGREE: {bad}" if bad else "")
            + "".join(f"\n    one instance: {'='.join(names)}" for names in row.get("same_plan", [])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--heads", default="32")
    ap.add_argument("--lengths", default="2048,16384,32768,65536")
    ap.add_argument("--dims", default="128x128,64x256", help="DxE pairs")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--ab", action="store_true", help="also time the kernel options (four loops, fp16 scale)")
    ap.add_argument("--es", action="store_true", help="also time one pass at every E slice and CTAs per SM")
    ap.add_argument("--gen", action="store_true", help="the kernel generations side by side (instead of P, ES)")
    ap.add_argument("--passes", type=int, nargs="?", const=0, default=None, metavar="P",
                    help="also time the three passes of the default sequence-parallel plan, or of P segments, "
                         "each alone (pass_ms_*)")
    ap.add_argument("--stream", action="store_true",
                    help="also time an elementwise kernel that moves the floor bytes (reads q, k, v, writes o; D = E)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--variants", default=None, metavar="GLOBS",
                    help="time only the variants whose names match one of these comma-separated globs (v2,v2P2*)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the variants and peers in this many interleaved rounds (median of rounds)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"bench_kernels.py: --rounds {args.rounds}: expected a count ≥ 1")
    t0 = time.time()
    name = torch.cuda.get_device_name(0)
    bw = copy_bandwidth_gbps("cuda")
    peer = {} if args.no_peers else peers()
    shapes = [(d, B, H, N, *map(int, de.split("x"))) for d in args.dtypes.split(",") for de in args.dims.split(",")
              for B in map(int, args.batches.split(",")) for H in map(int, args.heads.split(","))
              for N in map(int, args.lengths.split(","))]
    kws = {shape: variants(*shape[1:], DTYPE[shape[0]], args.ab, args.es, args.gen) for shape in shapes}
    try:
        kws = select_variants(kws, args.variants)
    except ValueError as exc:
        ap.error(str(exc))
    names = set()  # every kernel a variant launches: its plan, and the rule's passes where it is the rule's
    for (d, B, H, N, D, E), each in kws.items():
        for kw in each.values():
            if "plan" in kw:
                names.add(kw["plan"].name)
            if "plan" not in kw or kw.get("segments"):
                names |= set(ops.chunk_kernel_names(B, H, N, D, E, DTYPE[d], 0, kw.get("segments"), kw.get("gen")))
        names |= set(ops.chunk_kernel_names(B, H, N, D, E, DTYPE[d], 0))  # the rule's, which --passes times
        seq = ops.seq_plan(B, H, N, D, E, DTYPE[d], 0) if args.passes is not None else None
        if seq is not None and (other := other_state_pass(seq.state, D, E, DTYPE[d])) is not None:
            names.add(other[1].name)  # and its state pass's other form
    ops.precompile_chunked(names, 0, jobs=min(16, os.cpu_count() or 1))
    print(f"{name}, copy {bw:.0f} GB/s, {len(names)} kernels compiled in {time.time() - t0:.0f} s", flush=True)
    table = []
    for (d, B, H, N, D, E) in shapes:
        row = time_shape(B, H, N, D, E, d, bw, kws[(d, B, H, N, D, E)], peer, args.passes, args.rounds, args.stream)
        table.append(line(row))
        print(table[-1], flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench.jsonl"), "a") as f:
                f.write(json.dumps({"gpu": name, **row}) + "\n")
        torch.cuda.empty_cache()
    print(f"\n==== ms (% of copy bandwidth, TFLOPS of the products issued), * = fastest; {name}, {bw:.0f} GB/s, "
          f"{time.time() - t0:.0f} s")
    print("\n".join(table))


if __name__ == "__main__":
    main()
