"""What `leetbench.decay_attention` costs over calling the route it picks (on a GPU; the target is ≤ 5 µs).

    python scripts/bench_dispatch.py [--device cuda] [--dtype bfloat16]

Per case it prints the route the dispatcher chose and two comparisons of the dispatched call against the
route's own call (its `prepare=` and function on ready [B,H,N,D] tensors and a float64 λ on the device; for a
decode step the route's `step=` on [B,H,D] tensors when it has one):
- `leetbench.timing.measure` medians (CUDA events, L2 flushed between calls: the GPU time a model sees;
  host overhead shows there only where it exceeds the GPU's queue);
- host µs per call to enqueue back-to-back calls (41 alternating rounds of `--loops` calls of each, the
  clock stopped before the synchronize, fewer calls than the launch queue holds): the dispatcher's own host
  cost is the median of the per-round differences, whatever the GPU time of the route.
Last, the dispatcher alone: a planted no-op route (returns q; no GPU work, no route cost) steered to by a
table of its own, prefill and decode step, so that neither the route's host work nor the GPU shows in it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import leetbench
from leetbench.attention import default_dispatcher
from leetbench.dispatch import FORMAT, Dispatcher
from leetbench.problem import DTYPES, decay_profile
from leetbench.timing import TimingConfig, measure

CASES = [  # name, B, H, N (None: a decode step), D, E
    ("prefill N=128", 1, 32, 128, 128, 128),
    ("prefill N=1024", 1, 32, 1024, 128, 128),
    ("prefill B=8 N=4096", 8, 32, 4096, 128, 128),
    ("decode step B=1", 1, 32, None, 128, 128),
    ("decode step B=64", 64, 32, None, 128, 128),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # (a CPU run is a dry run of this script)
        torch.cuda.synchronize(device)


def _enqueue_us(fn, device: torch.device, n: int) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    spent = time.perf_counter() - t
    sync(device)
    return spent / n * 1e6


def host_us(own, dispatched, device: torch.device, n: int, rounds: int = 41) -> tuple[float, float, float]:
    """Host µs per call to enqueue `n` calls of each (the clock stops before the synchronize; n stays below
    the launch queue's depth, so the GPU never makes the host wait), in alternating rounds so that drift
    in the host's speed hits both: the median of each, and the median of the per-round differences."""
    pairs = [(_enqueue_us(own, device, n), _enqueue_us(dispatched, device, n)) for _ in range(rounds)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b - a for a, b in pairs))


NOOP = """
from leetbench.registry import register


def _step(q, k, v, decay, *, scale, state):
    return q, state


@register(name="noop", family="bench", modes=("prefill", "decode"), step=_step)
def noop(q, k, v, decay, *, scale, initial_state=None):
    return q, initial_state
"""


def noop_cases(device: torch.device, dtype: torch.dtype, loops: int) -> None:
    """The dispatcher's own host cost: a no-op route it is steered to, against calling that route directly."""
    B, H, N, D = 1, 32, 128, 128
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "noop.py").write_text(NOOP)
        entries = [dict(mode=mode, dtype=str(dtype).removeprefix("torch."), initial_state=mode == "decode",
                        batch=B, heads=H, length=N if mode == "prefill" else 1, dim=D, dim_v=D,
                        routes=[dict(method="noop", time_ms=0.001)]) for mode in ("prefill", "decode")]
        table = {"format": FORMAT, "device": default_dispatcher().device_name(device), "entries": entries}
        disp = Dispatcher([table], methods_dirs=[folder], user_cache=False, shipped=False)
        route = disp.registry["noop"]
        lam = torch.full((H,), 0.9, dtype=torch.float64, device=device)
        q4 = torch.randn(B, H, N, D, device=device, dtype=dtype)
        q3 = q4[:, :, 0].contiguous()
        state = torch.zeros(B, H, D, D, device=device, dtype=torch.float32)
        cases = [("no-op prefill", (q4,) * 3, None,
                  lambda: route.fn(q4, q4, q4, lam, scale=0.1, initial_state=None),
                  lambda: leetbench.decay_attention(q4, q4, q4, "multiscale", dispatcher=disp)),
                 ("no-op decode step", (q3,) * 3, state,
                  lambda: route.step(q3, q3, q3, lam, scale=0.1, state=state),
                  lambda: leetbench.decay_attention_step(q3, q3, q3, "multiscale", state, dispatcher=disp))]
        for label, qkv, s0, own, dispatched in cases:
            dispatched()
            chosen = leetbench.explain(*qkv, "multiscale", initial_state=s0, dispatcher=disp).route
            h_own, h_disp, overhead = host_us(own, dispatched, device, loops)
            print(f"{label:20} {chosen:16} {'':9} {'':9} {h_own:12.2f} {h_disp:13.2f} {overhead:12.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--decay", default="multiscale")
    ap.add_argument("--loops", type=int, default=200)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = TimingConfig(warmup_ms=25, rep_ms=200, min_reps=50, max_reps=2000)
    disp = default_dispatcher()
    print(f"{disp.device_name(device)}, {args.dtype}, decay {args.decay}, torch {torch.__version__}")
    print(f"{'case':20} {'route':16} {'own ms':>9} {'disp ms':>9} {'own µs/call':>12} {'disp µs/call':>13} "
          f"{'overhead µs':>12}")
    for name, B, H, N, D, E in CASES:
        step = N is None
        shape = (B, H, D) if step else (B, H, N, D)
        q, k = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
        v = torch.randn(shape[:-1] + (E,), device=device, dtype=dtype)
        state = torch.randn(B, H, D, E, device=device, dtype=torch.float32) if step else None
        why = leetbench.explain(q, k, v, args.decay, initial_state=state)
        method = disp.registry[why.route] if why.route in disp.registry else None
        if method is None:  # a fallback not registered by discovery: no own call to compare with
            print(f"{name:20} {why.route:16} (not in the registry)")
            continue
        lam = decay_profile(args.decay, H).to(device)
        q4, k4, v4 = (t.unsqueeze(2) for t in (q, k, v)) if step else (q, k, v)
        scale = D ** -0.5

        def own() -> object:
            if step and method.step is not None:  # the route's own decode entry, as its users call it
                return method.step(q, k, v, lam, scale=scale, state=state)
            if method.prepare is not None:
                method.prepare(q4, k4, v4, lam, scale=scale, initial_state=state)
            return method.fn(q4, k4, v4, lam, scale=scale, initial_state=state)

        def dispatched() -> object:
            if step:
                return leetbench.decay_attention_step(q, k, v, args.decay, state)
            return leetbench.decay_attention(q, k, v, args.decay)

        dispatched()  # the decision, the route's setup and first call (compilation) happen here
        own()
        t_own = measure(own, device, cfg).median_ms
        t_disp = measure(dispatched, device, cfg).median_ms
        h_own, h_disp, overhead = host_us(own, dispatched, device, args.loops)
        print(f"{name:20} {why.route:16} {t_own:9.4f} {t_disp:9.4f} {h_own:12.2f} {h_disp:13.2f} "
              f"{overhead:12.2f}")
    noop_cases(device, dtype, args.loops)
    print("overhead µs = host µs to enqueue a dispatched call − to enqueue the route's own call (median of the\n"
          "differences over alternating rounds)")


if __name__ == "__main__":
    main()
