"""On a GPU: what holds the memory when a row ends `oom` — the worker's own path, one method after another.

    python3 scripts/device_memory_probe.py [--dtype float32] [--batch 8] [--lengths 16384,65536]
                                           [--methods cupy_chunked,cupy_recurrent,fla_chunk,lightning_attn2,mamba2_ssd]

Drives `leetbench.worker.Worker` in this process exactly as a sweep's worker does (hello, then per problem
prepare and one run per method, in the order given), with torch's allocator recording a Python stack for
every allocation. It prints the memory allocated after each prepare, after each method's setup (the worker's
"setup done" note) and after each run: what a finished run leaves behind should be nothing. When a run
fails for memory, the allocator's state at the moment of the failure (torch's out-of-memory observer) is
summarised: the live blocks of ≥ 64 MiB, grouped by the innermost frames outside torch, largest first.

Written for issue 21: `mamba2_ssd` float32 at B=8, N=65536 ended `oom` with 128 GiB allocated (commit
90e51cd). The other methods' runs left 0.06 GiB allocated on an H200 (2026-11-30), and Mamba-2's own chunk
and passed states there are 2 × 8 GiB: measured again at 99464e7 the row runs, peak 25.9 GB. What held the
rest in that worker was not found.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from leetbench.problem import Problem  # noqa: E402
from leetbench.protocol import Failure, Hello, Message, Phase, Prepare, Run  # noqa: E402
from leetbench.worker import Worker  # noqa: E402

GIB = float(1 << 30)
TIMING = dict(warmup_ms=25, rep_ms=50, min_reps=5, max_reps=500)  # sweep=gpu_kernels
BIG_BLOCK = 64 << 20


def allocated() -> str:
    return f"{torch.cuda.memory_allocated() / GIB:7.2f} GiB allocated, {torch.cuda.memory_reserved() / GIB:7.2f} reserved"


def where(frames: list[dict]) -> str:
    """The three innermost frames outside torch's own files, as file:line function."""
    ours = [f for f in frames if "/torch/" not in f.get("filename", "") and f.get("filename", "").endswith(".py")]
    return " ← ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in ours[:3]) or "?"


def live_blocks(snapshot: dict) -> list[tuple[str, int, int]]:
    """(where, bytes, blocks) of the live allocations of ≥ BIG_BLOCK, largest first."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for segment in snapshot.get("segments", []):
        for block in segment.get("blocks", []):
            if block.get("state") == "active_allocated" and block.get("size", 0) >= BIG_BLOCK:
                key = where(block.get("frames", []))
                sums[key][0] += block["size"]
                sums[key][1] += 1
    return sorted(((k, v[0], v[1]) for k, v in sums.items()), key=lambda x: -x[1])


def summarise(snapshot: dict, title: str) -> None:
    print(f"  -- {title}: live blocks ≥ {BIG_BLOCK >> 20} MiB by allocating frame", flush=True)
    for key, nbytes, n in live_blocks(snapshot)[:15]:
        print(f"     {nbytes / GIB:7.2f} GiB in {n:3d} block(s)  {key}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lengths", default="16384,65536")
    ap.add_argument("--methods", default="cupy_chunked,cupy_recurrent,fla_chunk,lightning_attn2,mamba2_ssd")
    args = ap.parse_args()
    methods = args.methods.split(",")
    problems = [Problem(batch=args.batch, heads=32, length=int(n), dim=128, decay="multiscale", dtype=args.dtype,
                        device="cuda") for n in args.lengths.split(",")]
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    at_oom: list[dict] = []
    torch._C._cuda_attach_out_of_memory_observer(lambda *a: at_oom.append(torch.cuda.memory._snapshot()))

    def note(message: Message) -> None:
        if isinstance(message, Phase) and message.name == "setup done":
            print(f"    after setup:   {allocated()}", flush=True)

    worker = Worker(note)
    ready = worker.handle(Hello(device="cuda", problems=[dataclasses.asdict(p) for p in problems]))
    if isinstance(ready, Failure):
        sys.exit(f"worker: {ready.error}")
    for p in problems:
        worker.handle(Prepare(dataclasses.asdict(p)))
        print(f"{p.label()}\n  prepared:          {allocated()}", flush=True)
        for name in methods:
            at_oom.clear()
            print(f"  {name}", flush=True)
            reply = worker.handle(Run(name, timing=TIMING))
            status = getattr(reply, "status", "?")
            print(f"    {status:10s}     {allocated()}  {getattr(reply, 'error', '')[:160]}",
                  flush=True)
            if at_oom:
                summarise(at_oom[0], "at the out-of-memory error")
                summarise(torch.cuda.memory._snapshot(), "after the failed run")
    torch.cuda.memory._record_memory_history(enabled=None)


if __name__ == "__main__":
    main()
