"""The sweep: problems × methods measured in a worker process, each finished row appended at once.

Data flows one way: plan (problems, methods) → (method, problem) runs in the worker → rows → results.csv
(+ samples.csv.gz) → leaderboard and plots. A method that raises, hangs, crashes its process or runs out of
memory becomes a row with that status and the sweep goes on with a fresh worker; rows already in results.csv
(same method version, same machine) are not redone.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import leetbench
from leetbench.discovery import Catalog, MethodInfo
from leetbench.inputs import harness_bytes
from leetbench.problem import Problem
from leetbench.progress import Progress
from leetbench.config import RunSettings
from leetbench.protocol import Environment, Outcome, Prepare, Prepared, Run
from leetbench.provenance import git_sha
from leetbench.results import ERROR_COLUMNS, FAILED, RULED_OUT, WALL_COLUMNS, Row, Status, problem_values, row_key
from leetbench.stats import quantile, summarize
from leetbench.store import ResultsFile, SamplesFile
from leetbench.supervisor import Supervisor


@dataclass
class RunResult:
    rows_written: int = 0
    skipped_existing: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    interrupted: int = 0  # the signal that stopped the sweep (SIGINT, SIGTERM, SIGHUP), 0 if none
    wall_s: float = 0.0
    worker_start_s: float = 0.0  # of wall_s: until the measuring worker had loaded the methods
    spent: dict[str, float] = field(default_factory=dict)  # where the rows' wall time went

    def summary(self) -> str:
        """One line: wall time (and the worker's start), the share inside measured calls, what dominated."""
        measured = self.spent.get("measured calls", 0.0)
        parts = sorted(self.spent.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {v:.1f} s" for k, v in parts[:3] if v > 0)
        share = 100.0 * measured / self.wall_s if self.wall_s > 0 else 0.0
        start = (f" ({self.wall_s - self.worker_start_s:.1f} s after the worker started)"
                 if self.worker_start_s > 0 else "")
        return (f"wall {self.wall_s:.1f} s{start}, {share:.0f}% inside measured calls"
                + (f"; most: {top}" if top else ""))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def combine(outcomes: list[Outcome]) -> Outcome:
    """One row's outcome from its rounds: a failure or a wrong answer in any round decides the status; the
    errors are the largest seen; the samples stay per round; the host samples and the GPU's waits are pooled
    (their median is `host_ms`, their share `gpu_waited`); the wall times add up."""
    rank = {str(Status.OK): 0, str(Status.SUSPECT): 1, str(Status.INACCURATE): 2}
    worst = max(outcomes, key=lambda o: rank.get(o.status, 3))
    out = Outcome(status=worst.status, error=worst.error, traceback=worst.traceback)
    for name in ERROR_COLUMNS:
        values = [getattr(o, name) for o in outcomes if getattr(o, name) == getattr(o, name)]
        setattr(out, name, max(values) if values else float("nan"))
    for name in WALL_COLUMNS:
        values = [getattr(o, name) for o in outcomes if getattr(o, name) == getattr(o, name)]
        setattr(out, name, sum(values) if values else float("nan"))
    out.host_samples_ms = [x for o in outcomes for x in o.host_samples_ms]
    out.gpu_waited = [x for o in outcomes for x in o.gpu_waited]
    return out


class Runner:
    """Runs one sweep into one folder (whose lock the caller holds), through a started worker."""

    def __init__(self, problems: list[Problem], methods: list[str], catalog: Catalog, settings: RunSettings,
                 supervisor: Supervisor, started: float | None = None):
        self.problems, self.methods, self.catalog, self.s = problems, methods, catalog, settings
        self.sup = supervisor
        now = time.monotonic()
        self.started = now if started is None else started  # the wall clock of the whole run
        self.store = ResultsFile(settings.out / "results.csv")
        self.samples = SamplesFile(settings.out / "samples.csv.gz")
        self.logs = settings.out / ".leetbench"
        self.env = supervisor.ready.env if supervisor.ready is not None else Environment()
        self.sha = git_sha()
        self.result = RunResult(worker_start_s=now - self.started)  # the caller started the worker
        # (method, problem shape without N) → (N, status) of a timeout or oom: longer N is not tried
        self._gave_up: dict[tuple, tuple[int, str]] = {}

    # ---- rows ------------------------------------------------------------------------------------------
    def _row(self, name: str, problem: Problem, outcome: Outcome, rounds: list[list[float]]) -> Row:
        info: MethodInfo = self.catalog.methods[name]
        s = summarize(rounds) if any(rounds) else None
        timed = {} if s is None else dict(time_ms=s.median_ms, time_ms_p20=s.p20_ms, time_ms_p80=s.p80_ms,
                                            time_ms_lo=s.lo_ms, time_ms_hi=s.hi_ms, reps=s.reps, rounds=s.rounds,
                                            host_ms=quantile(outcome.host_samples_ms, 0.5),
                                            gpu_waited=(sum(outcome.gpu_waited) / len(outcome.gpu_waited)
                                                        if outcome.gpu_waited else math.nan))
        e = self.env
        measured = {c: getattr(outcome, c) for c in ("error",) + ERROR_COLUMNS + WALL_COLUMNS}
        return Row.for_problem(
            name, info.family, problem, outcome.status, **measured, **timed,
            host=e.host, gpu=e.gpu, torch=e.torch, cupy=e.cupy, cpu=e.cpu, os=e.os, leetbench=leetbench.__version__,
            git_sha=self.sha,
            timestamp=_now(), complexity=info.complexity, tf32=info.tf32, method_hash=info.source_hash,
            threads=e.threads, copy_gbps=e.copy_gbps, launch_floor_ms=e.launch_floor_ms)

    def _write(self, row: Row, rounds: list[list[float]]) -> None:
        self.store.append(row)
        if any(rounds):
            self.samples.append(row.row_id, rounds)
        self.result.rows_written += 1
        self.result.counts[row.status] = self.result.counts.get(row.status, 0) + 1
        for what, v in (("reference + inputs", row.prepare_s), ("setup", row.setup_s), ("checking", row.check_s),
                        ("timing loops", row.timing_s - (row.measured_s if row.measured_s == row.measured_s else 0)),
                        ("measured calls", row.measured_s)):
            if v == v:
                self.result.spent[what] = self.result.spent.get(what, 0.0) + v

    def _log(self, what: str, where: str, text: str) -> None:
        """Full tracebacks and failure notes go to .leetbench/errors.log in the run folder."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "errors.log", "a") as f:
            f.write(f"=== {_now()} {what} · {where}\n{text.rstrip()}\n\n")

    # ---- the plan --------------------------------------------------------------------------------------
    def _key(self, name: str, problem: Problem) -> tuple:
        return row_key({**problem_values(problem), "method": name, "host": self.catalog.host,
                        "gpu": self.catalog.gpu})

    def pending(self) -> list[tuple[Problem, list[str]]]:
        """Per problem, the methods still to run. Resume keeps rows of the same method version (hash) on the
        same machine; `rerun=failed` also redoes failures and what they ruled out; `rerun=all` everything."""
        done: dict[tuple, set[str]] = {}
        if self.s.rerun != "all":
            for r in self.store.read().to_dict("records"):
                info = self.catalog.methods.get(r["method"])
                if info is None or r["method_hash"] not in ("", info.source_hash):
                    continue  # the method changed since: measure it again
                if self.s.rerun == "failed" and (r["status"] in FAILED or str(r["error"]).startswith(RULED_OUT)):
                    continue
                done.setdefault(row_key(r), set()).add(r["status"])
        plan, self.result.skipped_existing = [], 0
        for p in self.problems:
            todo = []
            for m in self.methods:
                seen = done.get(self._key(m, p))
                if seen is None:
                    todo.append(m)
                    continue
                self.result.skipped_existing += 1
                for status in (Status.TIMEOUT, Status.OOM):  # still rules out longer N of this shape
                    if status in seen:
                        self._note_gave_up(m, p, status)
            if todo:
                plan.append((p, todo))
        return plan

    def _note_gave_up(self, method: str, problem: Problem, status: str) -> None:
        key = (method, problem.shape_key())
        known = self._gave_up.get(key)
        if known is None or problem.length < known[0]:
            self._gave_up[key] = (problem.length, str(status))

    def _reason(self, method: str, problem: Problem) -> str | None:
        reason = self.catalog.why_not(method, problem)
        gave_up = self._gave_up.get((method, problem.shape_key()))
        if reason is None and gave_up is not None and problem.length > gave_up[0]:
            reason = f"{RULED_OUT} {gave_up[1]} at N={gave_up[0]}; longer sequences are not tried"
        return reason

    # ---- the sweep -------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        dropped = self.store.repair()
        if dropped:
            print(f"leetbench: dropped {dropped} torn or malformed row(s) from {self.store.path}")
        for failure in self.catalog.failures:
            self._log("plugin failed to load", failure.source, f"{failure.error}\n{failure.traceback}")
        plan = self.pending()
        progress = Progress(sum(len(ms) for _, ms in plan), self.s.progress)
        try:
            for problem, methods in plan:
                self._run_problem(self.sup, problem, methods, progress)
        except KeyboardInterrupt as exc:
            self.result.interrupted = getattr(exc, "signum", signal.SIGINT)
        finally:
            self.sup.stop()
            progress.close()
            self.result.wall_s = time.monotonic() - self.started
            if self.sup.lost_s > 0:  # no row holds this time: a timed-out row has no wall columns
                self.result.spent["timeouts, crashes and restarts"] = self.sup.lost_s
        return self.result

    def _skip(self, name: str, problem: Problem, reason: str, progress: Progress) -> None:
        self._write(self._row(name, problem, Outcome(status=str(Status.SKIPPED), error=reason), []), [])
        progress.finish(name, problem.label(), str(Status.SKIPPED), reason)

    def _runnable(self, problem: Problem, methods: list[str], progress: Progress) -> list[str]:
        runnable = []
        for m in methods:
            reason = self._reason(m, problem)
            if reason:
                self._skip(m, problem, reason, progress)
            else:
                runnable.append(m)
        need, limit = harness_bytes(problem, self.env.mem_total_bytes), self.env.mem_total_bytes * self.s.memory_fraction
        if runnable and need > limit:
            for m in runnable:
                self._skip(m, problem, f"the harness alone needs {need / 1e9:.1f} GB for this problem, over "
                                       f"{limit / 1e9:.1f} GB (memory_fraction of the device)", progress)
            return []
        return runnable

    def _run_problem(self, sup: Supervisor, problem: Problem, methods: list[str], progress: Progress) -> None:
        runnable = self._runnable(problem, methods, progress)
        if not runnable:
            return
        outcomes: dict[str, list[Outcome]] = {m: [] for m in runnable}
        rounds = max(1, self.s.rounds)
        for r in range(rounds):
            if r > 0:  # a fresh process per round: JIT peers compile and autotune afresh
                sup.restart(max(300.0, self.s.timeout_s))
            progress.start("reference", problem.label())
            prep = sup.prepare(Prepare(problem.as_dict()), max(self.s.reference_timeout_s, self.s.timeout_s))
            if not isinstance(prep, Prepared):
                self._log("reference", problem.label(), prep.traceback or prep.error)
                for m in runnable:
                    self._skip(m, problem, f"float64 reference could not be computed ({prep.status}): {prep.error}",
                               progress)
                return
            for i, m in enumerate(runnable):
                progress.start(m, problem.label())
                out = self._measure(sup, m)
                if out.status == Status.OOM and sup.runs_in_worker > 1:
                    out = self._alone(sup, m, problem, out)
                if r == 0 and i == 0:
                    out.prepare_s = (out.prepare_s if out.prepare_s == out.prepare_s else 0.0) + prep.reference_s
                outcomes[m].append(out)
                if r == rounds - 1:  # a row is written as soon as its last round is measured
                    self._finish(m, problem, outcomes[m], progress)

    def _measure(self, sup: Supervisor, name: str) -> Outcome:
        """One run of method `name` on the prepared problem, under the run's time limits."""
        return sup.run(Run(name, self.s.timing, self.s.tolerances), self.s.timeout_s,
                       self.s.setup_timeout_s or self.s.timeout_s)

    def _alone(self, sup: Supervisor, name: str, problem: Problem, first: Outcome) -> Outcome:
        """A method that ran out of memory in a worker where other methods ran before, run again alone.

        What they left behind (memory a package keeps between calls, a fragmented allocator) may have been the
        cause, and an `oom` row must be the method's own: a fresh worker prepares the problem again and runs
        it; that outcome is the row's (the methods after it use the fresh worker too).
        """
        t0 = time.monotonic()
        replay = sup.restart(max(300.0, self.s.reference_timeout_s, self.s.timeout_s))
        sup.lost_s += time.monotonic() - t0
        if not isinstance(replay, Prepared):
            first.error = f"{first.error} (not run again alone: the problem could not be prepared again)"
            return first
        again = self._measure(sup, name)
        self._log(name, problem.label(), f"out of memory after other methods in one worker ({first.error}); "
                                         f"run again alone in a fresh worker: {again.status}")
        if again.status == Status.OOM:
            again.error = f"{again.error} (also alone in a fresh worker)"
        return again

    def _finish(self, name: str, problem: Problem, outcomes: list[Outcome], progress: Progress) -> None:
        out = combine(outcomes)
        if out.status in FAILED:
            self._log(name, problem.label(), out.traceback or out.error)
        if out.status in (Status.TIMEOUT, Status.OOM):
            self._note_gave_up(name, problem, out.status)
        rounds = [o.samples_ms for o in outcomes if o.samples_ms]
        row = self._row(name, problem, out, rounds)
        self._write(row, rounds)
        detail = (f"{row.time_ms:.3f} ms rel_err {row.worst_head_rel_err:.1e}"
                  if row.status in (Status.OK, Status.INACCURATE, Status.SUSPECT) else row.error[:100])
        progress.finish(name, problem.label(), row.status, detail)
