"""Hydra callbacks: stderr held while Hydra composes the configuration, and merging after a multirun.

A bad override makes Hydra print several lines and exit before any work; leetbench holds stderr until work
starts so that such an error can be shown as one line (cli.main). After a multirun, each job wrote `<sweep>/<job>/results.csv`; the sweep folder gets one results.csv (same schema, host and
gpu columns telling machines apart), leaderboard.csv, leaderboard.md and plots. When jobs ran elsewhere,
`leetbench report=[<folders>] out=<folder>` does the same.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from leetbench.report import merge, write_merged, write_report
from leetbench.store import atomic_write


class HeldStderr:
    """Holds what Hydra writes to stderr until the first job starts, so that a bad override, which Hydra
    reports in several lines before any job runs, can be turned into one `leetbench: error:` line."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.held: list[str] = []
        self.passing = False

    def write(self, text: str) -> int:
        if self.passing:
            return self.real.write(text)
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.passing:
            self.real.flush()

    def release(self) -> None:
        if not self.passing:
            self.passing = True
            self.real.write("".join(self.held))
            self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def release_stderr() -> None:
    """Let held stderr through: Hydra has accepted the configuration and work is starting."""
    if isinstance(sys.stderr, HeldStderr):
        sys.stderr.release()


def merge_sweep(sweep_dir: Path, baseline: str, plots: bool = True) -> int:
    """Merge `<sweep_dir>/*/results.csv` into `<sweep_dir>`; return the number of rows."""
    paths = sorted(p for p in sweep_dir.glob("*/results.csv"))
    if not paths:
        return 0
    df = merge(paths)
    write_merged(df, sweep_dir, paths)
    if not df.empty:
        write_report(df, sweep_dir, baseline, plots=plots, title="leetbench leaderboard (merged sweep)")
    return len(df)


class MergeJobs(Callback):
    """Releases held stderr when work starts, and merges the jobs' rows when a multirun ends."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        release_stderr()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        release_stderr()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("report"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        base = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
        atomic_write(sweep_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(base), resolve=True))
        rows = merge_sweep(sweep_dir, config.get("baseline", "chunked"), bool(config.get("plots", True)))
        if rows:
            print(f"leetbench: merged {rows} rows of the sweep's jobs → {sweep_dir}")
