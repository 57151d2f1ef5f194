"""Hydra callback: after a multirun, merge every job's results into the sweep folder.

Each job wrote `<sweep>/<job>/results.csv`; the sweep folder gets one results.csv (same schema, host and
gpu columns telling machines apart), leaderboard.csv, leaderboard.md and plots. When jobs ran elsewhere,
`leetbench report=[<folders>] out=<folder>` does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from leetbench.report import merge, write_merged, write_report
from leetbench.results import atomic_write


def merge_sweep(sweep_dir: Path, baseline: str, plots: bool = True) -> int:
    """Merge `<sweep_dir>/*/results.csv` into `<sweep_dir>`; return the number of rows."""
    paths = sorted(p for p in sweep_dir.glob("*/results.csv"))
    if not paths:
        return 0
    df = merge(paths)
    write_merged(df, sweep_dir)
    if not df.empty:
        write_report(df, sweep_dir, baseline, plots=plots, title="leetbench leaderboard (merged sweep)")
    return len(df)


class MergeJobs(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("report"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        base = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
        atomic_write(sweep_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(base), resolve=True))
        rows = merge_sweep(sweep_dir, config.get("baseline", "chunked"), bool(config.get("plots", True)))
        if rows:
            print(f"leetbench: merged {rows} rows of the sweep's jobs → {sweep_dir}")
