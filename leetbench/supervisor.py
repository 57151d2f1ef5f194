"""The worker's life, owned here: start it, send it requests under time limits, restart it after a fault
(replaying `Hello` and the last `Prepare`), and kill it with everything it started (docs/design.md §7).

The runner sees only replies and `Outcome`s: a request that times out or whose worker dies comes back as an
Outcome with status `timeout` or `crashed`. The worker's output goes through a pipe to the worker log,
capped per request (a plugin printing 50 MB does not fill the disk). A timeout kills the worker's whole
process tree, including children that left its process group or session: the runner registers as a child
subreaper, so orphans of the tree come back to it and are killed too.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from leetbench.protocol import Failure, Hello, Message, Outcome, Phase, Prepare, Prepared, Ready, Run, decode, encode
from leetbench.registry import LoadFailure
from leetbench.results import Status

LOG_CAP_BYTES = 1 << 20  # worker output kept per request
_PR_SET_CHILD_SUBREAPER = 36


class WorkerStartError(RuntimeError):
    """The measuring worker could not be started (one-line message)."""


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


def describe_exit(code: int | None) -> str:
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


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (Linux), so a timeout can still find them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _parents() -> dict[int, int]:
    """pid → parent pid of every process (from /proc; empty where there is none)."""
    found = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                found[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


def descendants(root: int) -> list[int]:
    parents = _parents()
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out += kids
        frontier += kids
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _LogPump(threading.Thread):
    """Copies the worker's output to the log, keeping at most `cap` bytes per request. Until the log has a
    path (the run folder is only created once the configuration is known to be good), output is held."""

    def __init__(self, stream: BinaryIO, path: Path | None, cap: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.path, self.cap = stream, path, cap
        self.kept = self.dropped = 0
        self.held: list[bytes] = []
        self.recent = b""  # the last bytes written, for a crashed worker's death note
        self.lock = threading.Lock()

    def new_request(self) -> None:
        with self.lock:
            self._note_dropped()
            self.kept = 0

    def log_to(self, path: Path) -> None:
        with self.lock:
            self.path = path
            self._write(b"".join(self.held))
            self.held.clear()

    def last_lines(self, lines: int = 5) -> str:
        with self.lock:
            text = self.recent.decode("utf-8", "replace")
        kept = deque((ln for ln in text.splitlines() if ln.strip()), maxlen=lines)
        return " | ".join(kept)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        self.recent = (self.recent + data)[-16384:]
        if self.path is None:
            self.held.append(data)
            return
        with open(self.path, "ab") as log:
            log.write(data)

    def _note_dropped(self) -> None:
        if self.dropped:
            self._write(f"[... {self.dropped} more bytes of worker output dropped]\n".encode())
            self.dropped = 0

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read(1 << 16), b""):
            with self.lock:
                room = max(0, self.cap - self.kept)
                self._write(chunk[:room])
                self.kept += min(room, len(chunk))
                self.dropped += max(0, len(chunk) - room)
        with self.lock:
            self._note_dropped()


@dataclass
class Supervisor:
    """One measuring worker for one device; `env` holds extra environment variables (e.g. a GPU pin).

    `log_path` may be None until the run folder exists (`log_to`); the worker's output is held until then.
    """

    log_path: Path | None
    hello: Hello
    env: dict[str, str] = field(default_factory=dict)
    log_cap: int = LOG_CAP_BYTES
    import_timeout_s: float = 120.0  # per plugin file (and per method's capability checks) at start
    ready: Ready | None = None
    broken: list[LoadFailure] = field(default_factory=list)  # plugin files that killed or hung the worker
    proc: subprocess.Popen | None = None
    _pump: _LogPump | None = None
    _prepared: Prepare | None = None
    lost_s: float = 0.0  # waiting on requests that timed out or crashed, and restarting after them
    runs_in_worker: int = 0  # methods run by the current worker process (0 after every start)
    _phase: str = ""
    _spawned: set[int] = field(default_factory=set)

    # ---- life ------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 300.0) -> Ready:
        """Start the worker and greet it; WorkerStartError if it cannot be. A plugin file (or a method's
        `supports=`) that kills or hangs the worker is recorded in `broken` and left out, and it starts again."""
        while True:
            self._spawn()
            try:
                reply = self._exchange(self.hello, self.import_timeout_s, per_phase=True)
            except (_Timeout, _Died) as exc:
                source = self._phase.partition(" ")[2]
                self.kill()
                if not source or source in self.hello.skip:
                    raise WorkerStartError(f"the measuring worker did not start: {exc}") from None
                self.hello.skip.append(source)
                self.broken.append(LoadFailure(source, f"{'hung' if isinstance(exc, _Timeout) else 'crashed'} "
                                                       f"while {self._phase.partition(' ')[0]}: {exc}"))
                continue
            break
        if not isinstance(reply, Ready):
            self.stop()
            raise WorkerStartError(getattr(reply, "error", None) or f"unexpected reply {type(reply).__name__}")
        if self.ready is None:
            self.ready = reply
        self.hello.measure_bandwidth = False  # a restarted worker keeps the first measurement
        return self.ready

    def log_to(self, path: Path) -> None:
        self.log_path = path
        if self._pump is not None:
            self._pump.log_to(path)

    def _spawn(self) -> None:
        self.kill()
        self.runs_in_worker = 0
        become_subreaper()
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "leetbench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True, bufsize=0)
        self._spawned.add(self.proc.pid)
        self._pump = _LogPump(self.proc.stderr, self.log_path, self.log_cap)
        self._pump.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, timeout_s: float = 300.0) -> Message | None:
        """A fresh worker with the same hello, and the last problem prepared again (its reply, or None)."""
        self.start()
        if self._prepared is None:
            return None
        try:
            return self._exchange(self._prepared, timeout_s)
        except _Timeout as exc:
            return Failure(str(Status.TIMEOUT), str(exc))
        except _Died as exc:
            return Failure(str(Status.CRASHED), str(exc))

    # ---- requests --------------------------------------------------------------------------------------
    def prepare(self, prepare: Prepare, timeout_s: float) -> Prepared | Outcome:
        self._prepared = prepare
        reply = self._call(prepare, timeout_s)
        return reply if isinstance(reply, Prepared) else _as_outcome(reply)

    def run(self, run: Run, timeout_s: float, setup_timeout_s: float | None = None) -> Outcome:
        if not self.alive:
            t0 = time.monotonic()
            replay = self.restart()
            self.lost_s += time.monotonic() - t0
            if replay is not None and not isinstance(replay, Prepared):
                out = _as_outcome(replay)
                out.error = f"the problem could not be prepared again after a restart: {out.error}"
                return out
        self.runs_in_worker += 1
        return _as_outcome(self._call(run, timeout_s, setup_timeout_s))

    def _call(self, message: Message, timeout_s: float, first_phase_s: float | None = None) -> Message:
        if not self.alive:
            self.start()
        t0 = time.monotonic()
        try:
            reply = self._exchange(message, timeout_s, first_phase_s)
        except _Timeout as exc:
            self.lost_s += time.monotonic() - t0
            return Failure(str(Status.TIMEOUT), str(exc))
        except _Died as exc:
            self.lost_s += time.monotonic() - t0
            return Failure(str(Status.CRASHED), str(exc))
        if isinstance(reply, Failure) and reply.restart:
            self.stop()
        return reply

    def _exchange(self, message: Message, timeout_s: float, first_phase_s: float | None = None,
                  per_phase: bool = False) -> Message:
        """Send one request and wait for its reply. `first_phase_s`: the limit until the first `Phase` note
        (a method's setup), then `timeout_s`; `per_phase`: `timeout_s` between consecutive notes."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        if self._pump is not None:
            self._pump.new_request()
        self._phase = ""
        try:
            self.proc.stdin.write(encode(message))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Died(self._death_note()) from None
        limit, what = ((first_phase_s, "end of setup (setup_timeout_s)") if first_phase_s is not None
                       else (timeout_s, "answer"))
        deadline = time.monotonic() + limit
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise _Timeout(f"no {what} within {limit:g} s; worker and everything it started killed")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Died(self._death_note())
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                reply = decode(line)
                if not isinstance(reply, Phase):
                    return reply
                self._phase = reply.name
                if per_phase:
                    limit, what = timeout_s, f"progress after {reply.name}"
                else:
                    limit, what = timeout_s, "answer"  # setup done: the measurement's own limit starts
                deadline = time.monotonic() + limit

    def _death_note(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode if self.proc else None
        if self._pump is not None:
            self._pump.join(timeout=2)
        last = self._pump.last_lines() if self._pump is not None else ""
        self.kill()
        return f"worker {describe_exit(code)}" + (f"; last output: {last}" if last else "")

    # ---- ending ----------------------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the worker, its process group, every descendant, and orphans of it re-parented to us."""
        proc, self.proc = self.proc, None
        if proc is not None:
            tree = descendants(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _kill([proc.pid] + tree)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._reap_orphans()
        if self._pump is not None:
            self._pump.join(timeout=2)
            self._pump = None

    def _reap_orphans(self) -> None:
        me = os.getpid()
        orphans = [p for p, pp in _parents().items() if pp == me and p not in self._spawned]
        _kill(orphans)
        for pid in orphans:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def stop(self) -> None:
        """Ask the worker to end (stdin closed), then make sure it has."""
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def _as_outcome(reply: Message) -> Outcome:
    if isinstance(reply, Outcome):
        return reply
    if isinstance(reply, Failure):
        return reply.outcome()
    return Outcome(status=str(Status.ERROR), error=f"unexpected reply {type(reply).__name__}")
