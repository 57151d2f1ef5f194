"""Reading and writing run files: results.csv (append-only), samples.csv.gz (every timed sample), and whole
files written atomically (leaderboard, plots, config).

results.csv: each row is one `os.write` on a file opened with O_APPEND, checked for a short write (a full disk
leaves the file as it was and raises `StorageError`), so a killed run leaves at most one partial last line.
Every reader validates rows against the schema (`leetbench.results`): a torn or malformed row is dropped with
a warning, never crashes a resume or a report.

samples.csv.gz: per row, one gzip member holding lines `row_id,round,samples_ms` (samples space-separated);
members are appended, and a reader stops at a torn last member.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from leetbench.problem import DTYPES, MODES
from leetbench.results import COLUMNS, INTEGER, NUMERIC, STATUSES, TEXT, Row, precision


class StorageError(OSError):
    """A run file could not be written (full disk, read-only location, not a folder); one-line message."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        ["" if (isinstance(v, float) and math.isnan(v)) else v for v in values])
    return buf.getvalue()


def append_bytes(path: Path, data: bytes) -> None:
    """Append `data` whole or not at all: a short write is undone and raised as StorageError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            written, reason = -1, exc.strerror or str(exc)
        else:
            reason = f"only {written} of {len(data)} bytes written (disk full?)"
        if written != len(data):
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise StorageError(f"cannot save to {path}: {reason}")
    finally:
        os.close(fd)


class ResultsFile:
    """Append-only results.csv with a header; tolerant of a torn last line and of malformed rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def repair(self) -> int:
        """Drop a partial last line and malformed rows, and bring a file of an older schema to today's columns
        (the new ones empty), rewriting the file; return how many rows were dropped. Rows are appended in
        `COLUMNS` order: under an older header they would not line up (and be dropped as malformed later)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        dropped: list[int] = []
        df = read_results([self.path], on_drop=lambda path, n: dropped.append(n))
        if dropped or self._header()[: len(COLUMNS)] != COLUMNS:
            atomic_write(self.path, df[COLUMNS + [c for c in df.columns if c not in COLUMNS]].to_csv(index=False))
        return sum(dropped)

    def _header(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    def append(self, row: Row) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        line = (_csv_line(COLUMNS) if new else "") + _csv_line(row.as_dict().values())
        append_bytes(self.path, line.encode())

    def read(self) -> pd.DataFrame:
        return read_results([self.path])


def _warn(path: Path, n: int) -> None:
    print(f"leetbench: warning: dropped {n} torn or malformed row(s) of {path}", file=sys.stderr)


def _valid(df: pd.DataFrame) -> pd.Series:
    """Rows whose key columns and numbers make sense (a row with the right count of fields can still not)."""
    ok = df["status"].isin(STATUSES) & df["method"].str.len().gt(0) & df["dtype"].isin(list(DTYPES))
    ok &= df["mode"].isin(list(MODES)) | df["mode"].eq("")
    for col in NUMERIC:
        if col in df.columns:
            raw = df[col].astype(str).str.strip()
            num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
            ok &= (raw == "") | num.notna() | raw.str.lower().isin(["nan", "inf", "-inf"])
    for col in ("batch", "heads", "length", "dim"):
        ok &= pd.to_numeric(df[col], errors="coerce").gt(0)
    return ok


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce")
    for col in INTEGER:
        df[col] = df[col].fillna(0).astype("int64")
    for col in ("initial_state", "tf32"):
        df[col] = df[col].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])
    for col in TEXT:
        df[col] = df[col].fillna("").astype(str)
    missing = df["precision"] == ""
    if missing.any():  # rows written before the precision column existed
        df.loc[missing, "precision"] = [precision(d, t) for d, t in zip(df.loc[missing, "dtype"], df.loc[missing, "tf32"])]
    empty_mode = df["mode"] == ""
    df.loc[empty_mode, "mode"] = "prefill"
    return df


def read_results(paths: Iterable[Path], on_drop: Callable[[Path, int], None] | None = _warn) -> pd.DataFrame:
    """Read and concatenate results.csv files, typed by the schema; torn and malformed rows are dropped
    (and reported through `on_drop`). Columns of older files that are missing are filled."""
    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists() or p.stat().st_size == 0:
            continue
        data = p.read_bytes()
        torn = 0 if data.endswith(b"\n") else 1
        data = data[: data.rfind(b"\n") + 1] if torn else data
        try:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, on_bad_lines="skip")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        lines = max(0, data.count(b"\n") - 1)
        for col in ("status", "method", "dtype", "mode", "batch", "heads", "length", "dim"):
            if col not in df.columns:
                df[col] = ""
        good = _valid(df)
        dropped = torn + (lines - len(df)) + int((~good).sum())
        if dropped and on_drop is not None:
            on_drop(p, dropped)
        frames.append(df[good])
    if not frames:
        return _typed(pd.DataFrame(columns=COLUMNS, dtype=str))
    return _typed(pd.concat(frames, ignore_index=True))


# ---- samples -----------------------------------------------------------------------------------------

def _samples_text(row_id: str, rounds: list[list[float]]) -> str:
    return "".join(_csv_line([row_id, r, " ".join(f"{x:.6g}" for x in s)]) for r, s in enumerate(rounds))


class SamplesFile:
    """samples.csv.gz beside results.csv: every timed sample of every row, by row_id and round."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, row_id: str, rounds: list[list[float]]) -> None:
        append_bytes(self.path, gzip.compress(_samples_text(row_id, rounds).encode(), mtime=0))


def write_samples(path: Path, samples: dict[str, list[list[float]]]) -> None:
    """A whole samples.csv.gz (e.g. the merged samples of a sweep's jobs), written atomically."""
    text = "".join(_samples_text(row_id, rounds) for row_id, rounds in samples.items())
    atomic_write(path, gzip.compress(text.encode(), mtime=0))


def _members(data: bytes) -> Iterable[bytes]:
    """The decompressed gzip members of `data`, stopping quietly at a torn last one."""
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out = d.decompress(data) + d.flush()
        except zlib.error:
            return
        if not d.eof:
            return
        yield out
        data = d.unused_data


def read_samples(paths: Iterable[Path]) -> dict[str, list[list[float]]]:
    """row_id → samples (ms) per round, from samples.csv.gz files."""
    found: dict[str, list[list[float]]] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            continue
        for member in _members(p.read_bytes()):
            for rec in csv.reader(io.StringIO(member.decode("utf-8", "replace"))):
                if len(rec) != 3:
                    continue
                try:
                    values = [float(x) for x in rec[2].split()]
                except ValueError:
                    continue
                found.setdefault(rec[0], []).append(values)
    return found


# ---- whole files ---------------------------------------------------------------------------------------

def atomic_write(path: Path, content: str | bytes) -> None:
    """Write a whole file so that readers see the old or the new version, never half of one; with the
    permissions a plain new file gets (umask), like results.csv, not mkstemp's 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
