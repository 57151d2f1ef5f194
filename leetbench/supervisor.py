"""The runner's side of a worker: start it, send a request, wait at most a timeout, restart after faults.

A worker runs in its own process group (`start_new_session`), so on a timeout the whole group, with any
children a plugin started, is killed. A worker that dies is described by its signal or exit code and the
last lines of its log.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class WorkerTimeout(Exception):
    pass


class WorkerDied(Exception):
    pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (possibly the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


def tail(path: Path, lines: int = 5, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = deque((ln for ln in text.splitlines() if ln.strip()), maxlen=lines)
    return " | ".join(kept)


@dataclass
class WorkerProcess:
    """One measuring worker for one device; `env` holds extra environment variables (e.g. a GPU pin)."""

    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    hello: dict[str, Any] | None = None
    _log: Any = None

    def start(self) -> None:
        self.stop()
        self._log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leetbench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=env, start_new_session=True, bufsize=0,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, message: dict[str, Any], timeout_s: float,
                first_phase_s: float | None = None) -> dict[str, Any]:
        """Send one request and wait for its reply; raise WorkerTimeout or WorkerDied.

        With `first_phase_s`, the worker has that long until it reports `{"phase": ...}` (a method's `setup=`:
        compilation, autotuning), then `timeout_s` for the rest; otherwise `timeout_s` for all of it.
        """
        if not self.alive:
            self.start()
            if self.hello is not None:  # a restarted worker gets the same hello first
                self._exchange(self.hello, timeout_s=max(timeout_s, 300))
        return self._exchange(message, timeout_s, first_phase_s)

    def _exchange(self, message: dict[str, Any], timeout_s: float,
                  first_phase_s: float | None = None) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._death_note()) from None
        limit, what = ((first_phase_s, "end of setup (setup_timeout_s)") if first_phase_s is not None
                       else (timeout_s, "answer"))
        deadline = time.monotonic() + limit
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerTimeout(f"no {what} within {limit:g} s; worker process group killed")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerDied(self._death_note())
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                reply = json.loads(line)
                if "phase" not in reply:
                    return reply
                limit, what = timeout_s, "answer"  # first phase done: the measurement's own limit starts
                deadline = time.monotonic() + timeout_s

    def _death_note(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        last = tail(self.log_path)
        self.proc = None
        return f"worker {_describe_exit(code)}" + (f"; last output: {last}" if last else "")

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                pass
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
