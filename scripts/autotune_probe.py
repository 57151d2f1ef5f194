"""Does a Triton peer's row depend on the length it was autotuned at? (README, "Bigger sweeps".)

    FLA_CACHE_RESULTS=0 python3 scripts/autotune_probe.py --tune-n 128 [--time-n 65536]

In a fresh process: one call of fla's chunk_simple_gla at N = tune-n (bf16, B=1, H=32, D=E=128; the autotuner
picks its configurations here, keyed without N), then `leetbench.timing.measure` at N = time-n. With
FLA_CACHE_RESULTS=0 fla keeps no autotuning result on disk, so every process tunes afresh. Prints one line.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from leetbench.timing import TimingConfig, measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune-n", type=int, required=True)
    ap.add_argument("--time-n", type=int, default=65536)
    args = ap.parse_args()
    from fla.ops.simple_gla import chunk_simple_gla

    g = torch.log(torch.linspace(0.9, 0.999, 32, device="cuda")).float()

    def inputs(n: int) -> tuple[torch.Tensor, ...]:  # fla's layout [B, T, H, D]
        return tuple(torch.randn(1, n, 32, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    t0 = time.time()
    q, k, v = inputs(args.tune_n)
    chunk_simple_gla(q, k, v, g_gamma=g, scale=128 ** -0.5)
    torch.cuda.synchronize()
    tuned_s = time.time() - t0
    q, k, v = inputs(args.time_n)
    chunk_simple_gla(q, k, v, g_gamma=g, scale=128 ** -0.5)  # any compilation for this length, untimed
    ms = measure(lambda: chunk_simple_gla(q, k, v, g_gamma=g, scale=128 ** -0.5), "cuda",
                 TimingConfig(warmup_ms=25, rep_ms=100, min_reps=10, max_reps=500)).median_ms
    print(f"{torch.cuda.get_device_name(0)}: fla chunk_simple_gla tuned at N={args.tune_n} ({tuned_s:.1f} s, "
          f"FLA_CACHE_RESULTS={os.environ.get('FLA_CACHE_RESULTS', '(unset)')}) → {ms:.3f} ms at "
          f"N={args.time_n}", flush=True)


if __name__ == "__main__":
    main()
