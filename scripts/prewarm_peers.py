"""Fill the Triton kernel cache for a publication stage's peers before the stage is measured.

    python scripts/prewarm_peers.py --methods fla_chunk,mamba2_ssd [--jobs 16] [--seconds 330]
        [--done results/gpu-NVIDIA-H200/wide] [--dry-run] -- sweep=gpu_wide 'sweep.batch=[1],[4,8]' ...

Why: a Triton peer compiles every autotune config the first time it meets a shape (fla_chunk: 33–44 s at each
new (B, H, D, E, initial state) on an H200), and a publication stage measures one job at a time on one GPU,
so most of its device time was that compiling (session 11: ~7.5 s per row, 89% of it the peers' setup).
Compiled kernels depend on the shape, not on N (Triton specialises an integer argument only on being 1 or a
multiple of 16, and every N of these grids is a multiple of 16), so this runs the stage's sweep once per shape
at its shortest N, with only `--methods`, in `--jobs` processes at once, and throws the rows away: the compiled
kernels land in Triton's on-disk cache, which the stage then finds. The measured region is untouched, and so is tuning:
FLA_CACHE_RESULTS=0 keeps fla's autotune picks (made here beside other processes) off the disk, so the stage,
alone on the GPU, still picks each shape's config itself. Measured on one H200 (wide stage, B=4/8, the same
prewarm as a hand-written loop, before this script): fla_chunk's median setup per row 19.7 s → 6.5 s, the
stage's device time per row 7.5 s → 3.1–3.6 s.

Shapes whose rows for every one of `--methods` are already in `--done` (a stage being resumed) are left out.
A process still running at `--seconds` is stopped with SIGINT; its shape then compiles in the stage as before.
The overrides after `--` are the stage's own, as device_publish.sh passes them; a multirun split such as
'sweep.batch=[1],[4,8]' is taken whole ([1,4,8]).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hydra.errors import HydraException  # noqa: E402

from leetbench.cli import one_line  # noqa: E402
from leetbench.config import ConfigError, problems_from, register_configs, resolve_device  # noqa: E402
from leetbench.problem import Problem  # noqa: E402
from leetbench.results import PROBLEM_COLUMNS, problem_key, problem_values  # noqa: E402
from leetbench.store import read_results  # noqa: E402

# Rows match this run's problems whatever the machine (host, GPU, "cuda" or "cuda:0"): worst case a shape is
# left out and compiles in the stage as before; rows are never affected.
MATCH_COLUMNS = [c for c in PROBLEM_COLUMNS if c not in ("host", "gpu", "device")]


@dataclass(frozen=True)
class Shape:
    """One compile shape of the stage: its problems' common fields, at the shortest N among them."""

    problem: Problem

    def overrides(self) -> list[str]:
        p = self.problem
        e = "null" if p.dim_v is None else str(p.dim_v)
        return [f"sweep.batch=[{p.batch}]", f"sweep.heads=[{p.heads}]", f"sweep.dim=[{p.dim}]", f"sweep.dim_v=[{e}]",
                f"sweep.decay=[{p.decay}]", f"sweep.initial_state=[{str(p.initial_state).lower()}]",
                f"sweep.mode=[{p.mode}]", f"sweep.steps=[{p.steps}]", f"sweep.length=[{p.length}]",
                f"dtypes=[{p.dtype}]"]


def whole(override: str) -> str:
    """A multirun split 'k=[a],[b,c]' as the one value it spans, 'k=[a,b,c]'; anything else unchanged."""
    key, sep, value = override.partition("=")
    if not sep or "],[" not in value.replace(" ", ""):
        return override
    return f"{key}=[{','.join(v.strip('[] ') for v in value.split('],['))}]"


def stage_config(overrides: list[str]):
    """The stage's composed configuration, as `leetbench` would compose it (splits already taken whole)."""
    from hydra import compose, initialize_config_module  # noqa: PLC0415

    register_configs()
    with initialize_config_module(config_module="leetbench.configs", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _match(values: dict) -> tuple:
    return tuple(problem_key(values)[PROBLEM_COLUMNS.index(c)] for c in MATCH_COLUMNS)


def done_pairs(folder: Path | None) -> set[tuple]:
    """(method,) + problem fields of every row already under `folder` (its job folders included)."""
    files = sorted(folder.rglob("results.csv")) if folder and folder.is_dir() else []
    if not files:
        return set()
    rows = read_results(files)
    return {(str(r["method"]),) + _match(r) for r in rows.to_dict("records")}


def shapes(problems: list[Problem], methods: list[str], done: set[tuple]) -> list[Shape]:
    """One Shape per problem shape with a (method, problem) pair still to measure, at the shape's shortest N."""
    shortest: dict[tuple, Problem] = {}
    todo: set[tuple] = set()
    for p in problems:
        first = shortest.setdefault(p.shape_key(), p)
        if p.length < first.length:
            shortest[p.shape_key()] = p
        if any((m,) + _match(problem_values(p)) not in done for m in methods):
            todo.add(p.shape_key())
    return [Shape(p) for key, p in shortest.items() if key in todo]


def prewarm(shape: Shape, base: list[str], methods: list[str], out: Path, deadline: float) -> str:
    """Run the stage's sweep for one shape with only `methods`; SIGINT at the deadline. Returns its outcome."""
    cmd = [sys.executable, "-m", "leetbench", *base, *shape.overrides(), f"methods=[{','.join(methods)}]",
           "progress=none", "plots=false", f"out={out}"]
    env = {**os.environ, "FLA_CACHE_RESULTS": "0"}
    if time.monotonic() >= deadline:
        return "not started"
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            return "done" if proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0 else "failed"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # leetbench stops its worker and everything it started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return "cut short"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", required=True, help="comma-separated methods whose setup compiles per shape")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at once (default: CPUs)")
    ap.add_argument("--seconds", type=float, default=330.0, help="stop every process by then (default 330)")
    ap.add_argument("--done", type=Path, help="the stage's folder: shapes measured there are left out")
    ap.add_argument("--dry-run", action="store_true", help="print the shapes to compile, run nothing")
    ap.add_argument("overrides", nargs="*", help="the stage's leetbench overrides (after --)")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        ap.error(f"--methods {args.methods!r} names no method: give e.g. fla_chunk,mamba2_ssd")
    if args.jobs < 1 or args.seconds <= 0:
        ap.error(f"--jobs {args.jobs} and --seconds {args.seconds} must be positive")
    base = [whole(o) for o in args.overrides if not o.startswith(("methods=", "out=", "progress=", "plots="))]
    try:
        cfg = stage_config(base)
        problems = problems_from(cfg.sweep, list(cfg.dtypes), resolve_device(cfg.device))
        todo = shapes(problems, methods, done_pairs(args.done))
    except (ConfigError, ValueError, HydraException) as exc:  # a bad override or sweep value: one line
        print(f"prewarm: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    if args.dry_run:
        for s in todo:
            print(s.problem.label())
        print(f"prewarm: {len(todo)} shape(s) of {', '.join(methods)} to compile")
        return 0
    start = time.monotonic()
    deadline = start + args.seconds
    with tempfile.TemporaryDirectory(prefix="leetbench-prewarm-") as tmp, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(lambda i: prewarm(todo[i], base, methods, Path(tmp) / str(i), deadline),
                                 range(len(todo))))
        failed = [Path(tmp) / f"{i}.log" for i, o in enumerate(outcomes) if o == "failed"]
        why = failed[0].read_text().strip().splitlines()[-1:] if failed else []
    counts = {o: outcomes.count(o) for o in ("done", "cut short", "not started", "failed") if o in outcomes}
    summary = ", ".join(f"{n} {o}" for o, n in counts.items()) or "nothing to do"
    print(f"prewarm: {len(todo)} shape(s) of {', '.join(methods)} in {time.monotonic() - start:.0f} s: {summary}"
          + (f" (first failure: {why[0]})" if why else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
