"""Recompute the derived columns bytes_floor, gbps and pct_bw of results.csv files from their problem
columns, time_ms and copy_gbps, with the current `Problem.bytes_floor`.

Measured columns (times, errors, statuses) are never touched. Use it when the byte count of the operator
is corrected; leetbench itself never rewrites a finished row.
    python scripts/rederive_bandwidth.py results/gpu-NVIDIA-H200/decode/results.csv ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from leetbench.problem import Problem
from leetbench.results import atomic_write, read_results


def rederive(path: Path) -> int:
    df = read_results([path])
    changed = 0
    for i, r in df.iterrows():
        p = Problem(batch=int(r["batch"]), heads=int(r["heads"]), length=int(r["length"]), dim=int(r["dim"]),
                    dim_v=int(r["dim_v"]), decay=r["decay"], dtype=r["dtype"], device=r["device"],
                    initial_state=str(r["initial_state"]).lower() == "true", mode=r["mode"], steps=int(r["steps"]))
        floor = p.bytes_floor()
        if floor != r["bytes_floor"]:
            changed += 1
        df.at[i, "bytes_floor"] = floor
        if r["time_ms"] == r["time_ms"] and r["time_ms"] > 0:
            df.at[i, "gbps"] = floor / (r["time_ms"] * 1e-3) / 1e9
            df.at[i, "pct_bw"] = 100 * df.at[i, "gbps"] / r["copy_gbps"] if r["copy_gbps"] > 0 else float("nan")
    atomic_write(path, df.to_csv(index=False))
    return changed


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {rederive(Path(arg))} row(s) with a corrected byte count")
