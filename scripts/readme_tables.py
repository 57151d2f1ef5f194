"""README's published tables, from a results.csv: one (B, N) × method table of median ms per dtype.

    python scripts/readme_tables.py results/gpu-NVIDIA-H200/results.csv [--dtypes bfloat16,float16,float32]
        [--methods cupy_chunked,fla_chunk,lightning_attn2,mamba2_ssd] [--heads 32] [--dim 128] [--dim-v 128]
        [--decay multiscale] [--initial-state]

Prefill rows of one shape (H, D, E, λ profile, with or without an initial state), every B and N there.
A cell is the row's median ms; it is bold where the leaderboard names the method the problem's winner in its
precision class (its 95% interval below every other method's; every tied method is bold on a tie), and the
bold cell carries the winner's % of copy bandwidth for the bytes floor. † marks a host-bound row (the GPU
waited for the CPU in most timed calls, `results.host_bound`); a row that is not ok shows its status; a
method without a row shows –. The caption names the card(s), commit(s) and the dtype's precision classes; where
a dtype has several (float32: IEEE and TF32 routes), each column names its method's class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from leetbench.leaderboard import winners  # noqa: E402
from leetbench.results import host_bound  # noqa: E402
from leetbench.store import read_results  # noqa: E402

DEFAULT_METHODS = "cupy_chunked,fla_chunk,lightning_attn2,mamba2_ssd"


def ms_text(t: float) -> str:
    """Three significant digits, trailing zeros kept (3.20, 28.3, 226); three decimals below 1 ms."""
    return f"{t:.3f}" if t < 1 else f"{t:.2f}" if t < 10 else f"{t:.1f}" if t < 100 else f"{t:.0f}"


def shape_rows(df: pd.DataFrame, dtype: str, heads: int, dim: int, dim_v: int, decay: str,
               initial_state: bool) -> pd.DataFrame:
    """The newest row of each (method, B, N) of the shape, prefill."""
    sel = df[(df["mode"] == "prefill") & (df["dtype"] == dtype) & (df["heads"] == heads) & (df["dim"] == dim)
             & (df["dim_v"] == dim_v) & (df["decay"].astype(str) == decay)
             & (df["initial_state"].astype(str) == str(initial_state))]
    return sel.sort_values("timestamp").drop_duplicates(["method", "batch", "length"], keep="last")


def table(rows: pd.DataFrame, methods: list[str]) -> list[str]:
    """Markdown lines: header, rule, one line per (B, N)."""
    won: dict[tuple, set[str]] = {}
    for w in winners(rows).to_dict("records"):
        names = {w["winner"]} if w["winner"] else set(w["tied"].split(", "))
        won[(w["batch"], w["length"], w["precision"])] = names
    classes = rows.groupby("method")["precision"].first().to_dict()
    mixed = rows["precision"].nunique() > 1  # float32 inputs: IEEE (fp32) and TF32 routes rank apart
    head = [f"`{m}`" + (f" {classes[m]}" if mixed and m in classes else "") for m in methods]
    lines = ["| B | N | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(methods)]
    for (B, N), g in rows.groupby(["batch", "length"], sort=True):
        cells = []
        for m in methods:
            r = g[g["method"] == m]
            if r.empty:
                cells.append("–")
                continue
            r = r.iloc[0]
            if r["status"] != "ok":
                cells.append(f"`{r['status']}`")
                continue
            text = ms_text(float(r["time_ms"]))
            if m in won.get((B, N, r["precision"]), set()):
                text = f"**{text}** ({float(r['pct_bw']):.0f}%)"
            cells.append(text + (" †" if host_bound(r.get("gpu_waited")) else ""))
        lines.append(f"| {B} | {N} | " + " | ".join(cells) + " |")
    return lines


def caption(rows: pd.DataFrame, dtype: str) -> str:
    def named(col: str) -> list[str]:
        return sorted({str(v) for v in rows[col].dropna() if str(v)})

    gpus = ", ".join(named("gpu")) or "?"
    shas = ", ".join(sorted({s[:7] for s in named("git_sha")})) or "?"
    classes = ", ".join(sorted(rows["precision"].dropna().astype(str).unique()))
    return (f"{dtype} (precision classes: {classes}); {gpus}; commit {shas}; median ms; bold: the winner within its "
            f"class (% of copy bandwidth); † host-bound")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dim-v", type=int, default=128)
    ap.add_argument("--decay", default="multiscale")
    ap.add_argument("--initial-state", action="store_true")
    args = ap.parse_args(argv)
    if not args.results.is_file():
        print(f"readme_tables: no results file at {args.results}", file=sys.stderr)
        return 2
    df = read_results([args.results])
    methods = args.methods.split(",")
    for dtype in args.dtypes.split(","):
        rows = shape_rows(df, dtype, args.heads, args.dim, args.dim_v, args.decay, args.initial_state)
        if rows.empty:
            print(f"readme_tables: no {dtype} prefill rows of H={args.heads}, D={args.dim}, E={args.dim_v}, "
                  f"λ={args.decay} in {args.results}", file=sys.stderr)
            continue
        print(caption(rows, dtype) + "\n")
        print("\n".join(table(rows, methods)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
