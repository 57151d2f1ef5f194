"""Tables and plots from results rows: leaderboard.csv, leaderboard.md, leaderboard.html and plots/, for one
run or many merged.

Used at the end of every sweep, by `leetbench report=[...]` to rebuild from existing CSVs, and by the
multirun callback to merge the jobs of a sweep. Every file is written whole (temporary file, rename).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from leetbench.leaderboard import Leaderboard, Since, build, markdown
from leetbench.page import page
from leetbench.plots import write_all
from leetbench.results import COLUMNS, KEY_COLUMNS, row_key
from leetbench.store import atomic_write, read_results, read_samples, write_samples


@dataclass
class Report:
    rows: pd.DataFrame
    board: Leaderboard
    plots: list[Path] = field(default_factory=list)


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """results.csv files named directly or found under the given folders (recursively)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.csv")))
        else:
            raise FileNotFoundError(f"report path {str(p)!r} is neither a results.csv nor a folder")
    return found


def merge(paths: Iterable[Path]) -> pd.DataFrame:
    """Rows of several results.csv; a (method, problem) measured twice keeps the newest row. The problem
    includes host and GPU (results.KEY_COLUMNS), so rows of two machines are both kept, never mixed."""
    df = read_results(paths)
    if df.empty:
        return df
    df = df.sort_values("timestamp", kind="stable")
    keys = pd.Series([row_key(r) for r in df[KEY_COLUMNS].to_dict("records")], index=df.index)
    return df[~keys.duplicated(keep="last")].reset_index(drop=True)


def write_report(df: pd.DataFrame, folder: Path, baseline: str, *, plots: bool = True,
                 load_failures: list[tuple[str, str]] | None = None, title: str = "leetbench leaderboard",
                 since: Since | None = None) -> Report:
    """The leaderboard files of `df` into `folder`; `since`: a section on what changed since a previous run."""
    folder.mkdir(parents=True, exist_ok=True)
    board = build(df, baseline)
    atomic_write(folder / "leaderboard.csv", board.table.to_csv(index=False))
    atomic_write(folder / "leaderboard.md", markdown(board, df, load_failures, title, since))
    made = write_all(df, board, folder / "plots") if plots else []
    atomic_write(folder / "leaderboard.html", page(board, df, made, load_failures, title, since))
    return Report(df, board, made)


def write_merged(df: pd.DataFrame, folder: Path, sources: Iterable[Path] = ()) -> None:
    """A merged results.csv (same schema) for a sweep folder, and beside it the samples of its rows found
    next to the `sources` (results.csv files), so the folder stands on its own."""
    cols = COLUMNS + [c for c in df.columns if c not in COLUMNS]
    atomic_write(folder / "results.csv", df[cols].to_csv(index=False))
    found = read_samples([Path(p).parent / "samples.csv.gz" for p in sources])
    ids = set(df["row_id"].astype(str))
    kept = {row_id: rounds for row_id, rounds in found.items() if row_id in ids}
    if kept:
        write_samples(folder / "samples.csv.gz", kept)
