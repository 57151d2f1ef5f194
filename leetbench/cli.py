"""The command line: `leetbench [overrides]` (also `python -m leetbench`), a Hydra app.

    leetbench                                   # the smoke sweep on the CPU
    leetbench sweep=paper device=cuda dtypes=[bfloat16]
    leetbench report=[results/runs/a,results/runs/b] out=results/merged   # tables and plots only

Bad input ends with one line `leetbench: error: …` and exit code 2; Ctrl-C writes what finished, then 130.
"""

from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from leetbench.callbacks import HeldStderr, release_stderr
from leetbench.config import (ConfigError, PROGRESS, cpu_threads, normalize_rerun, problems_from,
                              register_configs, resolve_device, select_methods)
from leetbench.gpus import gpu_slot, visible_gpus
from leetbench.problem import ProblemError
from leetbench.discovery import Catalog, catalog_of, load_methods, plugin_files, plugin_folders
from leetbench.registry import RegistryError
from leetbench.report import find_results, merge, write_merged, write_report
from leetbench.lock import RunLock, RunLocked
from leetbench.runner import RunSettings, Runner
from leetbench.store import StorageError, atomic_write
from leetbench.supervisor import WorkerStartError

register_configs()


def _gpu_count() -> int:
    """GPUs on this host, for launcher configs (`n_jobs: ${leetbench_gpus:}`); 1 without any."""
    return max(1, len(visible_gpus()))


OmegaConf.register_new_resolver("leetbench_gpus", _gpu_count, replace=True)

USER_ERRORS = (ConfigError, RegistryError, ProblemError, FileNotFoundError, RunLocked, StorageError, WorkerStartError)


def fail(message: str) -> None:
    print(f"leetbench: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_folder() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (called from Python)
        raise ConfigError("run folder unknown: call leetbench through its command line") from None


def summary_table(board_table: Any, limit: int = 15) -> str:
    """The leaderboard's methods that ran, as printed at the end of a run."""
    cols = ["rank", "method", "family", "ok", "problems", "speedup", "median_rel_err", "fitted_exponent"]
    ran = board_table[board_table["problems"] > 0]
    idle = len(board_table) - len(ran)
    t = ran[cols].head(limit).copy()
    t["speedup"] = t["speedup"].map(lambda v: f"{v:.2f}x" if v == v else "-")
    t["median_rel_err"] = t["median_rel_err"].map(lambda v: f"{v:.1e}" if v == v else "-")
    t["fitted_exponent"] = t["fitted_exponent"].map(lambda v: f"{v:.2f}" if v == v else "-")
    t["rank"] = t["rank"].astype("string").fillna("-")
    note = f"\n({idle} more method(s) skipped on every problem; reasons in leaderboard.md)" if idle else ""
    return (t.to_string(index=False) if len(t) else "(no method ran)") + note


def report_only(cfg: DictConfig, out: Path) -> int:
    paths = find_results(cfg.report)
    if not paths:
        raise ConfigError(f"no results.csv found under {list(cfg.report)}")
    df = merge(paths)
    if len(paths) > 1 or paths[0].parent.resolve() != out.resolve():
        write_merged(df, out)
    rep = write_report(df, out, cfg.baseline, plots=cfg.plots)
    print(f"merged {len(paths)} results file(s), {len(df)} rows → {out}")
    print(summary_table(rep.board.table))
    return 0


def catalog_for(cfg: DictConfig, problems: list, device: str) -> tuple[Catalog, list[str]]:
    """The methods (checked against methods=/exclude=) and what they can run, found in this process."""
    registry = load_methods(list(cfg.methods_dirs))
    methods = select_methods(registry, list(cfg.methods), list(cfg.exclude))
    for f in registry.failures:
        print(f"leetbench: warning: plugin {f.source} failed to load: {f.error}", file=sys.stderr)
    if not methods:
        raise ConfigError("no methods selected: check methods= and exclude=; known: " + ", ".join(registry.names()))
    broken = {f.source for f in registry.failures}
    files = [str(p) for folder in plugin_folders(list(cfg.methods_dirs)) for p in plugin_files(folder)
             if str(p) not in broken]
    gpu = ""
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(torch.device(device))
    return catalog_of(registry, problems, files, socket.gethostname(), gpu), [m.name for m in methods]


def sweep(cfg: DictConfig, out: Path) -> int:
    if cfg.progress not in PROGRESS:
        raise ConfigError(f"progress={cfg.progress!r}: use one of {', '.join(PROGRESS)}")
    device = resolve_device(cfg.device)
    problems = problems_from(cfg.sweep, list(cfg.dtypes), device, cfg.seed)
    catalog, methods = catalog_for(cfg, problems, device)
    timing = OmegaConf.to_container(cfg.timing)
    rounds = int(timing.pop("rounds", 1))
    settings = RunSettings(
        out=out, device=device, timeout_s=float(cfg.timeout_s), reference_timeout_s=float(cfg.reference_timeout_s),
        setup_timeout_s=None if cfg.setup_timeout_s is None else float(cfg.setup_timeout_s),
        rerun=normalize_rerun(cfg.rerun), threads=cpu_threads(cfg.threads) if device == "cpu" else cfg.threads,
        timing=timing, rounds=rounds, tolerances=OmegaConf.to_container(cfg.tolerances),
        memory_fraction=float(cfg.memory_fraction), progress=cfg.progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        atomic_write(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        print(f"leetbench: {len(problems)} problems × {len(methods)} methods on {device} → {out}", file=sys.stderr)
        runner = Runner(problems, methods, catalog, settings)
        with pinned_gpu(cfg, device) as env:
            settings.worker_env.update(env)
            result = runner.run()
        df = merge([runner.store.path])  # a re-measured (method, problem) counts once: its newest row
        failures = [(f.source, f.error) for f in catalog.failures]
        if not df.empty:
            rep = write_report(df, out, cfg.baseline, plots=cfg.plots, load_failures=failures)
            print(summary_table(rep.board.table))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "nothing new"
    resumed = f"; {result.skipped_existing} already in results.csv" if result.skipped_existing else ""
    print(f"leetbench: {result.rows_written} rows ({counts}){resumed} → {out}")
    if result.rows_written:
        print(f"leetbench: {result.summary()}")
    if result.interrupted:
        print("leetbench: interrupted; finished rows are saved (run again with the same out= to resume)",
              file=sys.stderr)
        return 130
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
        out = run_folder()
        code = report_only(cfg, out) if cfg.report else sweep(cfg, out)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    if code:
        sys.exit(code)


def one_line(hydra_message: str) -> str:
    """Hydra's multi-line configuration error as one line (no search path, no type-name noise)."""
    parts: list[str] = []
    for line in hydra_message.splitlines():
        line = line.strip()
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR", "reference_type=",
                                        "object_type=", "provider=")):
            continue
        if line.startswith("Config search path"):
            break
        if parts and parts[-1].endswith(":") and not line.endswith(":"):
            parts[-1] = parts[-1] + " " + line
        elif parts and parts[-1].startswith("Available options") :
            parts[-1] = parts[-1] + ", " + line
        else:
            parts.append(line)
    return "; ".join(p.replace(": ,", ":") for p in parts) or "invalid configuration"


def main() -> None:
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
