"""The sweep: problems × methods measured in a worker process, each finished row appended at once.

Data flows one way: plan (problems, methods) → (method, problem) runs in the worker → rows → results.csv →
leaderboard and plots. A method that raises, hangs, crashes its process or runs out of memory becomes a row
with that status and the sweep goes on with a fresh worker; rows already in results.csv are not redone.
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import leetbench
from leetbench.config import ConfigError
from leetbench.execute import Outcome
from leetbench.problem import Problem
from leetbench.progress import Progress
from leetbench.registry import LoadFailure, Method
from leetbench.results import ResultsFile, Row, row_key
from leetbench.supervisor import WorkerDied, WorkerProcess, WorkerTimeout


@dataclass
class RunSettings:
    """What the runner needs beyond the plan; built from the Hydra config by the CLI."""

    out: Path
    device: str
    timeout_s: float = 120.0
    setup_timeout_s: float | None = None  # None: timeout_s
    reference_timeout_s: float = 900.0
    rerun: str = "none"
    threads: int | None = None
    methods_dirs: list[str] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    memory_fraction: float = 0.8
    progress: str = "auto"
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for a pinned job


@dataclass
class RunResult:
    rows_written: int = 0
    skipped_existing: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


def git_sha() -> str:
    """The commit of the leetbench checkout in use (+dirty), else $LEETBENCH_GIT_SHA, else ''.

    The variable is for copies of a checkout without its .git folder (a GPU box fed a working tree): the
    one who copies it knows the commit."""
    here = Path(leetbench.__file__).resolve().parent.parent
    fallback = os.environ.get("LEETBENCH_GIT_SHA", "").strip()
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return fallback
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


class RunLock:
    """An exclusive lock on a run folder, so two runs never append to one results.csv."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".leetbench.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"another leetbench run (pid {holder}) is writing to {self.path.parent}; "
                              f"wait for it or choose another out=") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _shape(problem: Problem) -> tuple:
    """Everything that names a problem except its length (and seed): longer N of one shape share a fate."""
    return tuple(v for k, v in problem.as_dict().items() if k not in ("length", "seed"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _memory_limit(hello_env: dict[str, Any], fraction: float) -> float:
    total = hello_env.get("mem_total_bytes")
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return math.inf
    return float(total) * fraction


class Runner:
    """Runs one sweep into one folder."""

    def __init__(self, problems: list[Problem], methods: list[Method], settings: RunSettings,
                 load_failures: list[LoadFailure] | None = None):
        self.problems = problems
        self.methods = methods
        self.s = settings
        self.load_failures = load_failures or []
        self.store = ResultsFile(settings.out / "results.csv")
        self.static_env = {"host": socket.gethostname(), "leetbench": leetbench.__version__, "git_sha": git_sha()}
        self.env: dict[str, Any] = {}
        self.result = RunResult()
        self._last_traceback = ""
        # (method, problem shape without N) → (N, status) of a timeout or oom: longer N is not tried
        self._gave_up: dict[tuple, tuple[int, str]] = {}

    # ---- rows ------------------------------------------------------------------------------------
    def _row(self, method: Method, problem: Problem, outcome: Outcome) -> Row:
        copy = float(self.env.get("copy_gbps", math.nan) or math.nan)
        gbps = pct = math.nan
        if outcome.time_ms and math.isfinite(outcome.time_ms) and outcome.time_ms > 0:
            gbps = problem.bytes_floor() / (outcome.time_ms * 1e-3) / 1e9
            pct = 100.0 * gbps / copy if math.isfinite(copy) and copy > 0 else math.nan
        fields = {k: v for k, v in outcome.as_dict().items() if k in Row.__dataclass_fields__}
        return Row.for_problem(
            method.name, method.family, problem, **fields, gbps=gbps, pct_bw=pct,
            host=self.static_env["host"], gpu=self.env.get("gpu", ""), torch=self.env.get("torch", ""),
            cupy=self.env.get("cupy", ""), leetbench=self.static_env["leetbench"],
            git_sha=self.static_env["git_sha"], timestamp=_now(), complexity=method.complexity, tf32=method.tf32,
            method_hash=method.source_hash, threads=int(self.env.get("threads", 0) or 0), copy_gbps=copy,
        )

    def _write(self, row: Row) -> None:
        self.store.append(row)
        self.result.rows_written += 1
        self.result.counts[row.status] = self.result.counts.get(row.status, 0) + 1

    def _log(self, what: str, where: str, text: str) -> None:
        """Full tracebacks and failure notes go to errors.log in the run folder."""
        with open(self.s.out / "errors.log", "a") as f:
            f.write(f"=== {_now()} {what} · {where}\n{text.rstrip()}\n\n")

    # ---- the worker ------------------------------------------------------------------------------
    def _hello(self) -> dict[str, Any]:
        return {"op": "hello", "device": self.s.device, "threads": self.s.threads,
                "methods_dirs": [str(Path(d).resolve()) for d in self.s.methods_dirs], "measure_bandwidth": True}

    def _start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.s.out / "worker.log", env=dict(self.s.worker_env))
        hello = self._hello()
        try:
            reply = worker.request(hello, timeout_s=max(300.0, self.s.timeout_s))
        except (WorkerDied, WorkerTimeout) as exc:
            worker.stop()
            raise ConfigError(f"the measuring worker did not start: {exc}") from None
        if not reply.get("ok"):
            worker.stop()
            raise ConfigError(f"the measuring worker did not start: {reply.get('error')}")
        self.env = reply["env"]
        # a restarted worker skips measuring the bandwidth again: it is a property of the device
        worker.hello = {**hello, "measure_bandwidth": False}
        return worker

    def _ask(self, worker: WorkerProcess, message: dict[str, Any], timeout_s: float,
             first_phase_s: float | None = None) -> Outcome:
        self._last_traceback = ""
        try:
            reply = worker.request(message, timeout_s, first_phase_s)
        except WorkerTimeout as exc:
            return Outcome(status="timeout", error=str(exc))
        except WorkerDied as exc:
            return Outcome(status="crashed", error=str(exc))
        if reply.get("restart"):
            worker.stop()
        self._last_traceback = reply.get("traceback", "")
        if reply.get("ok") and "outcome" in reply:
            return Outcome(**reply["outcome"])
        if reply.get("ok"):
            return Outcome(status="ok")
        return Outcome(**{**reply.get("outcome", {}), "status": reply.get("status", "error"),
                          "error": reply.get("error", "")})

    # ---- the sweep -------------------------------------------------------------------------------
    def pending(self) -> list[tuple[Problem, list[Method]]]:
        """Per problem, the methods still to run (resume skips rows already in results.csv)."""
        self.result.skipped_existing = 0
        kept = self.store.statuses()
        if self.s.rerun == "all":
            done: set = set()
        elif self.s.rerun == "failed":
            done = {key for key, seen in kept.items() if seen & {"ok", "skipped", "inaccurate"}}
        else:
            done = set(kept)
        plan = []
        for p in self.problems:
            todo = []
            for m in self.methods:
                key = row_key({**p.as_dict(), "method": m.name, "dim_v": p.E, "decay": str(p.decay)})
                if key in done:
                    self.result.skipped_existing += 1
                    # a timeout or oom kept from an earlier run into this folder still rules out longer N
                    for status in ("timeout", "oom"):
                        if status in kept[key]:
                            self._note_gave_up(m, p, status)
                else:
                    todo.append(m)
            if todo:
                plan.append((p, todo))
        return plan

    def run(self) -> RunResult:
        self.s.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.s.out):
            dropped = self.store.repair()
            if dropped:
                print(f"leetbench: dropped {dropped} torn or malformed row(s) from {self.store.path}")
            for failure in self.load_failures:
                self._log("plugin failed to load", failure.source, f"{failure.error}\n{failure.traceback}")
            plan = self.pending()
            total = sum(len(ms) for _, ms in plan)
            progress = Progress(total, self.s.progress)
            if total == 0:
                return self.result
            worker = self._start_worker()
            limit = _memory_limit(self.env, self.s.memory_fraction)
            try:
                for problem, methods in plan:
                    self._run_problem(worker, problem, methods, progress, limit)
            except KeyboardInterrupt:
                self.result.interrupted = True
            finally:
                worker.stop()
                progress.close()
        return self.result

    def _note_gave_up(self, method: Method, problem: Problem, status: str) -> None:
        """Remember the shortest N at which `method` timed out or ran out of memory for this shape."""
        key = (method.name, _shape(problem))
        known = self._gave_up.get(key)
        if known is None or problem.length < known[0]:
            self._gave_up[key] = (problem.length, status)

    def _skip_all(self, methods: list[Method], problem: Problem, reason: str, progress: Progress) -> None:
        for m in methods:
            self._write(self._row(m, problem, Outcome(status="skipped", error=reason)))
            progress.finish(m.name, problem.label(), "skipped", 0.0, reason)

    def _run_problem(self, worker: WorkerProcess, problem: Problem, methods: list[Method], progress: Progress,
                     memory_limit: float) -> None:
        runnable = []
        for m in methods:
            reason = m.why_not(problem)
            gave_up = self._gave_up.get((m.name, _shape(problem)))
            if reason is None and gave_up is not None and problem.length > gave_up[0]:
                reason = f"{gave_up[1]} at N={gave_up[0]}; longer sequences are not tried"
            if reason:
                self._skip_all([m], problem, reason, progress)
            else:
                runnable.append(m)
        if not runnable:
            return
        need = problem.estimate_bytes()
        if need > memory_limit:
            self._skip_all(runnable, problem,
                           f"needs about {need / 1e9:.1f} GB, over {memory_limit / 1e9:.1f} GB "
                           f"(memory_fraction of the device)", progress)
            return
        prepared = False
        for i, m in enumerate(runnable):
            if not prepared:  # first method, or the worker was restarted after a crash or timeout
                progress.start("reference", problem.label())
                prep = self._ask(worker, {"op": "prepare", "problem": problem.as_dict()},
                                 max(self.s.reference_timeout_s, self.s.timeout_s))
                if prep.status != "ok":
                    self._log("reference", problem.label(), prep.error)
                    self._skip_all(runnable[i:], problem,
                                   f"float64 reference could not be computed ({prep.status}): {prep.error}",
                                   progress)
                    return
                prepared = True
            progress.start(m.name, problem.label())
            t0 = time.monotonic()
            outcome = self._ask(worker, {"op": "run", "method": m.name, "timing": self.s.timing,
                                         "tolerances": self.s.tolerances}, self.s.timeout_s,
                                first_phase_s=self.s.setup_timeout_s or self.s.timeout_s)
            if outcome.status in ("error", "crashed", "timeout", "oom"):
                self._log(m.name, problem.label(), self._last_traceback or outcome.error)
            if outcome.status in ("timeout", "oom"):
                self._note_gave_up(m, problem, outcome.status)
            row = self._row(m, problem, outcome)
            self._write(row)
            detail = (f"{row.time_ms:.3f} ms rel_err {row.rel_err:.1e}" if row.status in ("ok", "inaccurate")
                      else row.error[:100])
            progress.finish(m.name, problem.label(), row.status, time.monotonic() - t0, detail)
            prepared = worker.alive
