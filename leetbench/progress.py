"""Progress: a one-line bar with the current method, problem and ETA on a terminal; plain lines in logs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Progress:
    total: int
    style: str = "auto"  # auto, bar, lines, none
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    measured: int = 0  # rows that took real time (skipped rows are instant and do not count for the ETA)
    _start: float = field(default_factory=time.monotonic)
    _busy: float = 0.0

    def __post_init__(self) -> None:
        if self.style == "auto":
            self.style = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"

    def eta(self) -> str:
        if self.measured == 0:
            return "?"
        left = self.total - self.done
        return _clock(self._busy / self.measured * left)

    def start(self, method: str, label: str) -> None:
        if self.style == "bar":
            width = 24
            filled = int(width * self.done / max(1, self.total))
            bar = "█" * filled + "·" * (width - filled)
            line = f"\r[{bar}] {self.done}/{self.total} ETA {self.eta()}  {method} · {label}"
            self.stream.write(line[:160].ljust(160))
            self.stream.flush()

    def finish(self, method: str, label: str, status: str, seconds: float, detail: str = "") -> None:
        self.done += 1
        if status != "skipped":
            self.measured += 1
            self._busy += seconds
        if self.style == "lines":
            self.stream.write(f"[{self.done}/{self.total}] {status:<10} {method:<24} {label}  {detail}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.style == "bar":
            self.stream.write("\r" + " " * 160 + "\r")
            self.stream.flush()

    def elapsed(self) -> str:
        return _clock(time.monotonic() - self._start)
