"""Progress of a sweep: tqdm's bar (current method and problem, ETA) on a terminal; one plain line per
finished row in logs; or nothing."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

STYLES = ("auto", "bar", "lines", "none")


class Progress:
    def __init__(self, total: int, style: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if style == "auto":
            style = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.style, self.total, self.done = style, total, 0
        self.bar = (tqdm(total=total, file=self.stream, unit="row", dynamic_ncols=True, leave=False)
                    if style == "bar" else None)

    def start(self, method: str, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{method} · {label}"[:70], refresh=True)

    def finish(self, method: str, label: str, status: str, detail: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.style == "lines":
            self.stream.write(f"[{self.done}/{self.total}] {status:<10} {method:<24} {label}  {detail}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
