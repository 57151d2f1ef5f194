"""An exclusive lock on a run folder, so two runs never write into one results.csv."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any


class RunLocked(RuntimeError):
    """Another run holds the folder (one-line message)."""


class RunLock:
    """flock on `<out>/.leetbench/lock`, holding the owner's pid. Taken before anything is written into the
    folder; refused at once (never waits) when another run holds it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".leetbench" / "lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise RunLocked(f"another leetbench run (pid {holder}) is writing to {self.folder}; "
                            f"wait for it or choose another out=") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
