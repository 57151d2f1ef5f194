"""results.csv: one row per (method, problem), appended whole as each finishes, and read back for resume.

Each row is written by a single `os.write` on a file opened with O_APPEND, so a killed run leaves at most
one partial last line; `ResultsFile.repair` cuts such a line off before anything is appended again.
Whole-file outputs (leaderboard, plots) go through `atomic_write`: a temporary file, then a rename.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from leetbench.problem import Problem


@dataclass
class Row:
    """One line of results.csv (DESIGN.md §5 columns first, then extras)."""

    method: str
    family: str
    device: str
    dtype: str
    batch: int
    heads: int
    length: int
    dim: int
    dim_v: int
    decay: str
    status: str
    rel_err: float = math.nan
    max_err: float = math.nan
    time_ms: float = math.nan
    time_ms_p20: float = math.nan
    time_ms_p80: float = math.nan
    peak_mem_mb: float = math.nan
    gbps: float = math.nan
    pct_bw: float = math.nan
    error: str = ""
    host: str = ""
    gpu: str = ""
    torch: str = ""
    cupy: str = ""
    leetbench: str = ""
    git_sha: str = ""
    timestamp: str = ""
    # extras
    mode: str = "prefill"
    steps: int = 0
    initial_state: bool = False
    state_rel_err: float = math.nan
    state_max_err: float = math.nan
    reps: int = 0
    complexity: str = ""
    tf32: bool = False
    method_hash: str = ""
    threads: int = 0
    copy_gbps: float = math.nan
    bytes_floor: int = 0
    seed: int = 0

    @classmethod
    def for_problem(cls, method: str, family: str, problem: Problem, status: str, **extra: Any) -> "Row":
        return cls(method=method, family=family, device=problem.device, dtype=problem.dtype,
                   batch=problem.batch, heads=problem.heads, length=problem.length, dim=problem.dim,
                   dim_v=problem.E, decay=str(problem.decay), status=status, mode=problem.mode,
                   steps=problem.steps, initial_state=problem.initial_state, seed=problem.seed,
                   bytes_floor=problem.bytes_floor(), **extra)


COLUMNS = [f.name for f in fields(Row)]
# What identifies a (method, problem) pair in results.csv, for resume and merging.
KEY_COLUMNS = ["method", "device", "dtype", "batch", "heads", "length", "dim", "dim_v", "decay",
               "initial_state", "mode", "steps"]


def row_key(values: dict[str, Any]) -> tuple:
    """The identity of a row, normalised to strings so CSV-read and fresh rows compare equal."""
    out = []
    for col in KEY_COLUMNS:
        v = values.get(col, "")
        if col == "decay":
            try:
                v = repr(float(v))
            except (TypeError, ValueError):
                v = str(v)
        elif col == "initial_state":
            v = str(v).strip().lower() in ("true", "1")
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(str(v))
    return tuple(out)


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        ["" if (isinstance(v, float) and math.isnan(v)) else v for v in values])
    return buf.getvalue()


class ResultsFile:
    """Append-only results.csv with a header; tolerant of a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def repair(self) -> int:
        """Cut off a partial last line (no newline) and drop malformed rows; return how many were dropped."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        data = self.path.read_bytes()
        dropped = 0
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
            dropped += 1
        text = data.decode("utf-8", "replace")
        rows = list(csv.reader(io.StringIO(text)))
        if rows and rows[0] != COLUMNS and len(rows[0]) and rows[0][0] == "method":
            header = rows[0]
        else:
            header = COLUMNS
        good = [r for r in rows[1:] if len(r) == len(header)]
        dropped += len(rows) - 1 - len(good)
        if dropped:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(good)
            atomic_write(self.path, buf.getvalue())
        return dropped

    def append(self, row: Row) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        line = (_csv_line(COLUMNS) if new else "") + _csv_line(asdict(row).values())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> pd.DataFrame:
        return read_results([self.path])

    def statuses(self) -> dict[tuple, set[str]]:
        """Every (method, problem) key in the file, with the statuses its rows have (one read)."""
        found: dict[tuple, set[str]] = {}
        for r in self.read().to_dict("records"):
            found.setdefault(row_key(r), set()).add(r["status"])
        return found


def read_results(paths: Iterable[Path]) -> pd.DataFrame:
    """Read and concatenate results.csv files (missing columns filled), tolerating a torn last line."""
    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists() or p.stat().st_size == 0:
            continue
        data = p.read_bytes()
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        try:
            df = pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""], on_bad_lines="skip",
                             dtype={"decay": str, "error": str, "gpu": str, "cupy": str, "git_sha": str})
        except pd.errors.EmptyDataError:
            continue
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    for col in ("error", "gpu", "cupy", "git_sha", "decay", "host", "complexity", "method_hash"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    return df


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write a whole file so that readers see the old or the new version, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
