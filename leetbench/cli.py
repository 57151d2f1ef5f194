"""The command line: `leetbench [overrides]` (also `python -m leetbench`), a Hydra app.

    leetbench                                   # the smoke sweep on the CPU
    leetbench sweep=paper device=cuda dtypes=[bfloat16]
    leetbench report=[results/runs/a,results/runs/b] out=results/merged   # tables and plots only
    leetbench compare=[results/runs/base,results/runs/new] out=cmp   # NEW/BASE; exit 1 on a regression
    leetbench tune sweep=gpu_kernels device=cuda      # measure this card, write its dispatch table

Bad input ends with one line `leetbench: error: …` and exit code 2, with nothing written. Ctrl-C, SIGTERM and
SIGHUP write what finished (report included), stop the worker and everything it started, and exit 130, 143
and 129; the same command resumes.
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from leetbench.callbacks import HeldStderr, release_stderr
from leetbench.compare import compare_command, compare_runs, since as compare_since, write_comparison
from leetbench.config import ConfigError, SweepPlan, check, did_you_mean, plan_from, register_configs
from leetbench.discovery import Catalog
from leetbench.gpus import gpu_slot, visible_gpus
from leetbench.lock import RunLock, RunLocked
from leetbench.problem import ProblemError
from leetbench.protocol import Hello
from leetbench.registry import RegistryError
from leetbench.report import find_results, merge, write_merged, write_report
from leetbench.runner import RunResult, Runner
from leetbench.store import StorageError, atomic_write
from leetbench.supervisor import Supervisor, WorkerStartError

register_configs()


def _gpu_count() -> int:
    """GPUs on this host, for launcher configs (`n_jobs: ${leetbench_gpus:}`); 1 without any."""
    return max(1, len(visible_gpus()))


OmegaConf.register_new_resolver("leetbench_gpus", _gpu_count, replace=True)

USER_ERRORS = (ConfigError, RegistryError, ProblemError, FileNotFoundError, RunLocked, StorageError, WorkerStartError)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is (a scheduler's polite stop)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def fail(message: str) -> None:
    print(f"leetbench: error: {message}", file=sys.stderr)
    sys.exit(2)


def out_folder(cfg: DictConfig) -> Path:
    """The run folder: `out`, or in a multirun the job's folder under it (Hydra made that one)."""
    if is_multirun():
        return Path(HydraConfig.get().runtime.output_dir)
    out = Path(str(cfg.out)).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder: give a folder (new or a run to resume)")
    return out


def make_folder(out: Path) -> bool:
    """Create the run folder; True when this call created it (so a refused run can take it away again)."""
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise StorageError(f"cannot create out={out}: {exc.strerror or exc}") from None
    return True


def summary_table(board_table: Any, limit: int = 15) -> str:
    """The leaderboard's methods that ran, as printed at the end of a run: each class's first `limit`."""
    cols = ["precision", "rank", "method", "family", "ok", "problems", "speedup", "median_rel_err", "fitted_exponent"]
    ran = board_table[board_table["problems"] > 0]
    idle = int((board_table.groupby("method")["problems"].sum() == 0).sum())  # one row per (class, method)
    cols = cols[:1] + (["mode"] if ran["mode"].nunique() > 1 else []) + cols[1:]
    t = ran.groupby(["host", "gpu", "precision", "mode"], sort=False).head(limit)[cols].copy()
    t["speedup"] = t["speedup"].map(lambda v: f"{v:.2f}x" if v == v else "-")
    t["median_rel_err"] = t["median_rel_err"].map(lambda v: f"{v:.1e}" if v == v else "-")
    t["fitted_exponent"] = t["fitted_exponent"].map(lambda v: f"{v:.2f}" if v == v else "-")
    t["rank"] = t["rank"].astype("string").fillna("-")
    note = f"\n({idle} more method(s) skipped on every problem; reasons in leaderboard.md)" if idle else ""
    return (t.to_string(index=False) if len(t) else "(no method ran)") + note


SINCE_FOLDER = "since"  # where report=… since=… puts the comparison's every pair, beside the leaderboard


def report_only(cfg: DictConfig, out: Path) -> int:
    paths = find_results(cfg.report)
    if not paths:
        raise ConfigError(f"no results.csv found under {list(cfg.report)}")
    if cfg.since and not (Path(cfg.since).expanduser().exists() and find_results([cfg.since])):
        raise ConfigError(f"since={cfg.since}: no results.csv found there (a previous run folder)")
    df = merge(paths)
    make_folder(out)
    if len(paths) > 1 or paths[0].parent.resolve() != out.resolve():
        write_merged(df, out, paths)
    since = None
    if cfg.since:  # the previous run against this report's merged rows (not every results.csv below `out`)
        c = compare_runs(cfg.since, out / "results.csv", cfg.compare_threshold)
        since = compare_since(c, write_comparison(c, out / SINCE_FOLDER).relative_to(out).as_posix())
    rep = write_report(df, out, cfg.baseline, plots=cfg.plots, since=since)
    print(f"merged {len(paths)} results file(s), {len(df)} rows → {out}")
    print(summary_table(rep.board.table))
    return 0


def start_worker(plan: SweepPlan, env: dict[str, str]) -> tuple[Supervisor, Catalog, list[str]]:
    """Start the measuring worker: it loads the plugins and says what each method can run."""
    s = plan.settings
    hello = Hello(s.device, s.threads, plan.methods_dirs, problems=[p.as_dict() for p in plan.problems])
    sup = Supervisor(None, hello, env=env, import_timeout_s=s.discovery_timeout_s)
    try:
        ready = sup.start()
        catalog = Catalog.from_dict(ready.catalog)
        catalog.failures += sup.broken
        for f in catalog.failures:
            print(f"leetbench: warning: plugin {f.source} failed to load: {f.error}", file=sys.stderr)
        methods = catalog.select(plan.include, plan.exclude)
        if not methods:
            raise ConfigError("no methods selected: check methods= and exclude=; known: " + ", ".join(catalog.methods))
    except BaseException:
        sup.stop()
        raise
    return sup, catalog, methods


def sweep(cfg: DictConfig, out: Path) -> int:
    started = time.monotonic()
    plan = plan_from(cfg, out)
    with pinned_gpu(cfg, plan.settings.device) as env:
        plan.settings.worker_env.update(env)
        sup, catalog, methods = start_worker(plan, plan.settings.worker_env)
        created = make_folder(out)
        try:
            with RunLock(out):
                sup.log_to(out / ".leetbench" / "worker.log")
                atomic_write(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
                print(f"leetbench: {len(plan.problems)} problems × {len(methods)} methods on "
                      f"{plan.settings.device} → {out}", file=sys.stderr)
                runner = Runner(plan.problems, methods, catalog, plan.settings, sup, started)
                result = runner.run()
                _report(plan, out, catalog, runner)
        except RunLocked:
            sup.stop()
            if created:
                _remove_empty(out)
            raise
    return _finish(result, out)


def _report(plan: SweepPlan, out: Path, catalog: Catalog, runner: Runner) -> None:
    df = merge([runner.store.path])  # a re-measured (method, problem) counts once: its newest row
    if not df.empty:
        failures = [(f.source, f.error) for f in catalog.failures]
        rep = write_report(df, out, plan.baseline, plots=plan.plots, load_failures=failures)
        print(summary_table(rep.board.table))


def _remove_empty(folder: Path) -> None:
    for sub in (folder / ".leetbench" / "lock", folder / ".leetbench", folder):
        try:
            sub.unlink() if sub.is_file() else sub.rmdir()
        except OSError:
            return


def _finish(result: RunResult, out: Path) -> int:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "nothing new"
    resumed = f"; {result.skipped_existing} already in results.csv" if result.skipped_existing else ""
    print(f"leetbench: {result.rows_written} rows ({counts}){resumed} → {out}")
    if result.rows_written:
        print(f"leetbench: {result.summary()}")
    if result.interrupted:
        name = signal.Signals(result.interrupted).name
        print(f"leetbench: interrupted ({name}); finished rows are saved (run the same command again to resume)",
              file=sys.stderr)
        return 128 + int(result.interrupted)
    return 0


@contextmanager
def pinned_gpu(cfg: DictConfig, device: str) -> Iterator[dict[str, str]]:
    """In a multirun job on `device=cuda`, hold one GPU of the host for the job (leetbench.gpus)."""
    if device != "cuda" or not is_multirun():
        yield {}
        return
    gpus = [str(g) for g in cfg.gpus] if cfg.gpus else visible_gpus()
    lock_dir = Path(HydraConfig.get().sweep.dir) / ".gpus"
    with gpu_slot(lock_dir, gpus) as gpu:
        print(f"leetbench: job {HydraConfig.get().job.num} measures on GPU {gpu}", file=sys.stderr)
        yield {"CUDA_VISIBLE_DEVICES": gpu}


@hydra.main(version_base="1.3", config_path="pkg://leetbench.configs", config_name="config")
def app(cfg: DictConfig) -> None:
    release_stderr()  # a job has started: Hydra accepted the configuration
    try:
        check(cfg)
        out = out_folder(cfg)
        if cfg.compare:
            code = compare_command(list(cfg.compare), cfg.compare_threshold, out)
        elif cfg.report:
            code = report_only(cfg, out)
        else:
            code = sweep(cfg, out)
            if cfg.tune and code == 0:  # `leetbench tune …`: the sweep's dispatch table into the user cache
                from leetbench.dispatch import tune_from_run  # noqa: PLC0415 - only for tune

                tune_from_run(out)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    except KeyboardInterrupt as exc:  # before the sweep started: nothing to report
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"leetbench: interrupted ({signal.Signals(signum).name}) before any row was measured", file=sys.stderr)
        sys.exit(128 + int(signum))
    if code:
        sys.exit(code)


def _override_hint(line: str) -> str | None:
    """Hydra's "Could not override 'x.y'" for an unknown key, without its advice to add it with `+`."""
    if not line.startswith("Could not override '"):
        return None
    key = line.split("'")[1]
    return f"unknown key {key}{did_you_mean(key)} (see leetbench --help)"


def one_line(hydra_message: str) -> str:
    """Hydra's multi-line configuration error as one line (no search path, no type-name noise)."""
    parts: list[str] = []
    for line in hydra_message.splitlines():
        line = line.strip()
        hint = _override_hint(line)
        if hint:
            return hint
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR", "reference_type=",
                                        "object_type=", "provider=")):
            continue
        if line.startswith("Config search path"):
            break
        if parts and parts[-1].endswith(":") and not line.endswith(":"):
            parts[-1] = parts[-1] + " " + line
        elif parts and parts[-1].startswith("Available options"):
            parts[-1] = parts[-1] + ", " + line
        else:
            parts.append(line)
    return "; ".join(p.replace(": ,", ":") for p in parts) or "invalid configuration"


def main() -> None:
    if sys.argv[1:2] == ["tune"]:  # `leetbench tune [overrides]`: Hydra takes no bare word; a sweep, then a table
        sys.argv[1:2] = ["tune=true"]
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    held = HeldStderr(sys.stderr)
    sys.stderr = held
    try:
        app()
    except SystemExit as exc:
        if not held.passing and exc.code not in (0, None):
            sys.stderr = held.real
            print(f"leetbench: error: {one_line(''.join(held.held))}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        if sys.stderr is held:
            held.release()
            sys.stderr = held.real


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False
