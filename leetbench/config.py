"""The configuration schema (Hydra structured configs) and its validation into a typed plan.

Dataclass schemas make Hydra reject typos and wrong types with the key path (`sweep.length=abc`);
`check` refuses keys the schema does not know (even added with `+`) and limits that cannot work, and
`plan_from` checks what types cannot (sizes > 0, decay in (0, 1], known dtypes and devices) before any work
starts, raising `ConfigError` with a one-line message. The rest of leetbench reads the `SweepPlan`, not the
Hydra config.
"""

from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from leetbench.problem import DTYPES, MODES, Problem, ProblemError, normalize_decay
from leetbench.progress import STYLES


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line naming the bad value and valid ones."""


@dataclass
class SweepSchema:
    """The axes of a sweep; the sweep is their product (× dtypes × methods)."""

    name: str = "custom"
    batch: List[int] = field(default_factory=lambda: [1])
    heads: List[int] = field(default_factory=lambda: [2])
    length: List[int] = field(default_factory=lambda: [256])
    dim: List[int] = field(default_factory=lambda: [32])
    dim_v: Optional[List[Optional[int]]] = None  # null (or [null]) means E = D
    decay: List[Any] = field(default_factory=lambda: ["retnet"])
    initial_state: List[bool] = field(default_factory=lambda: [False])
    mode: List[str] = field(default_factory=lambda: ["prefill"])
    steps: List[int] = field(default_factory=lambda: [0])  # decode: new tokens per sequence


@dataclass
class TimingSchema:
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    max_reps: int = 1000
    rounds: int = 1  # each problem measured in this many rounds, each in a fresh worker process


@dataclass
class Config:
    sweep: SweepSchema = field(default_factory=SweepSchema)
    dtypes: List[str] = field(default_factory=lambda: ["float32", "float64"])
    device: str = "auto"
    methods: List[str] = field(default_factory=list)  # names or globs; empty = all
    exclude: List[str] = field(default_factory=list)
    methods_dirs: List[str] = field(default_factory=list)
    timeout_s: float = 120.0  # per (method, problem): checking and timing, after its setup
    setup_timeout_s: Optional[float] = None  # a method's setup= (compiling, autotuning); null = timeout_s
    reference_timeout_s: float = 900.0  # per problem, for inputs + float64 reference
    discovery_timeout_s: float = 120.0  # per plugin file imported (a file that hangs longer is left out)
    out: Optional[str] = None  # run folder; default results/runs/<timestamp>
    baseline: str = "chunked"  # speed-ups in the leaderboard are relative to this method
    rerun: str = "none"  # none: resume; failed: redo rows that did not end ok/skipped; all: redo everything
    seed: int = 0
    threads: Optional[int] = None  # CPU threads for torch (recorded); default: all cores
    memory_fraction: float = 0.8  # skip problems whose estimated need exceeds this share of device memory
    timing: TimingSchema = field(default_factory=TimingSchema)
    tolerances: Dict[str, float] = field(default_factory=dict)  # overrides, e.g. tolerances.float32=1e-4
    plots: bool = True
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise), bar, lines, none
    report: List[str] = field(default_factory=list)  # rebuild leaderboard and plots from these runs; no sweep
    compare: List[str] = field(default_factory=list)  # [BASE,NEW] run folders: NEW/BASE times; exit 1 if slower
    compare_threshold: float = 0.10  # compare: a change counts only beyond this factor (and its interval)
    since: Optional[str] = None  # with report=: a previous run; the leaderboard says what changed since it
    gpus: Optional[List[int]] = None  # scale-out: GPUs jobs may take (default: all visible)
    tune: bool = False  # `leetbench tune …`: after the sweep, write its dispatch table to the user cache


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


RERUN = ("none", "failed", "all")
PROGRESS = STYLES  # progress display styles, defined with the display


def resolve_device(device: str) -> str:
    import torch

    d = str(device).strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but no CUDA GPU is visible; use device=cpu or device=auto")
        if ":" in d:
            idx = d.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise ConfigError(f"device={device}: valid GPUs are cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return d
    if d == "cpu":
        return d
    raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def normalize_rerun(value: Any) -> str:
    v = str(value).strip().lower()
    v = {"true": "all", "false": "none", "yes": "all", "no": "none"}.get(v, v)
    if v not in RERUN:
        raise ConfigError(f"rerun={value!r}: use one of {', '.join(RERUN)}")
    return v


def _axis(values: Any, name: str) -> list:
    if values is None:
        return [None]
    if isinstance(values, (str, int, float, bool)):
        values = [values]
    values = list(values)
    if not values:
        raise ConfigError(f"sweep.{name} is empty: give at least one value")
    return values


def problems_from(sweep: Any, dtypes: list[str], device: str, seed: int = 0) -> list[Problem]:
    """The product of the sweep axes and dtypes, validated, in a stable order (length varies fastest)."""
    for dt in dtypes:
        if dt not in DTYPES:
            raise ConfigError(f"unknown dtype {dt!r} in dtypes: use {', '.join(DTYPES)}")
    axes = {name: _axis(getattr(sweep, name, None), name)
            for name in ("batch", "heads", "dim", "dim_v", "decay", "initial_state", "mode", "steps", "length")}
    for name in ("batch", "heads", "dim", "length"):
        for v in axes[name]:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"sweep.{name} value {v!r} must be a positive integer")
    for v in axes["dim_v"]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ConfigError(f"sweep.dim_v value {v!r} must be a positive integer or null (= dim)")
    for v in axes["mode"]:
        if v not in MODES:
            raise ConfigError(f"unknown mode {v!r} in sweep.mode: use {', '.join(MODES)}")
    try:
        axes["decay"] = list(dict.fromkeys(normalize_decay(d) for d in axes["decay"]))
    except ProblemError as exc:
        raise ConfigError(f"sweep.decay: {exc}") from None
    problems: list[Problem] = []
    seen: set = set()
    for dtype in dtypes:
        for b, h, d, e, lam, s0, mode, steps, n in itertools.product(*axes.values()):
            if mode == "decode" and (not isinstance(steps, int) or steps <= 0):
                raise ConfigError(f"sweep.steps value {steps!r} must be a positive integer for decode mode")
            try:
                p = Problem(batch=b, heads=h, length=n, dim=d, dim_v=e, decay=lam, dtype=dtype, device=device,
                            seed=seed, initial_state=bool(s0), mode=mode, steps=steps if mode == "decode" else 0)
            except ProblemError as exc:
                raise ConfigError(str(exc)) from None
            if p.key() not in seen:
                seen.add(p.key())
                problems.append(p)
    return problems


def cpu_threads(threads: Optional[int]) -> int:
    if threads is not None and (not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"threads={threads!r} must be a positive integer or null (all cores)")
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---- checks beyond types ------------------------------------------------------------------------------

def _known_keys(schema: type, prefix: str = "") -> dict[str, type | None]:
    """Every key path of a dataclass schema → its nested schema (None for leaves)."""
    keys: dict[str, type | None] = {}
    hints = {f.name: f for f in fields(schema)}
    for name, f in hints.items():
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        nested = type(default) if is_dataclass(default) else None
        keys[prefix + name] = nested
        if nested is not None:
            keys.update(_known_keys(nested, prefix + name + "."))
    return keys


def unknown_keys(cfg: Any, schema: type | None = None) -> list[str]:
    """Keys of `cfg` (a DictConfig without its `hydra` node) that the schema does not define."""
    known = _known_keys(schema or Config)
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys():
            path = f"{prefix}{key}"
            if not prefix and key == "hydra":
                continue
            if path not in known:
                found.append(path)
            elif known[path] is not None:
                walk(node[key], path + ".")

    walk(cfg, "")
    return found


def did_you_mean(key: str, schema: type | None = None) -> str:
    close = difflib.get_close_matches(key, list(_known_keys(schema or Config)), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{name}={value!r} must be a positive number{extra}")


def check(cfg: Any) -> None:
    """Refuse what the schema's types let through: unknown keys (added with `+`) and unusable limits."""
    bad = unknown_keys(cfg)
    if bad:
        raise ConfigError(f"unknown key {bad[0]}{did_you_mean(bad[0])} (see leetbench --help)")
    for name in ("timeout_s", "reference_timeout_s", "discovery_timeout_s"):
        _positive(name, cfg[name])
    _positive("setup_timeout_s", cfg.setup_timeout_s, allow_none=True)
    _positive("compare_threshold", cfg.compare_threshold)
    if cfg.since and not cfg.report:
        raise ConfigError(f"since={cfg.since} goes with report=[…] (the runs whose leaderboard it annotates)")
    if not 0 < cfg.memory_fraction <= 1:
        raise ConfigError(f"memory_fraction={cfg.memory_fraction!r} must be in (0, 1]")
    t = cfg.timing
    for name in ("warmup_ms", "rep_ms", "min_reps", "max_reps", "rounds"):
        _positive(f"timing.{name}", t[name])
    if t.max_reps < t.min_reps:
        raise ConfigError(f"timing.max_reps={t.max_reps} must be at least timing.min_reps={t.min_reps}")
    if cfg.progress not in PROGRESS:
        raise ConfigError(f"progress={cfg.progress!r}: use one of {', '.join(PROGRESS)}")


# ---- the plan -------------------------------------------------------------------------------------------

@dataclass
class RunSettings:
    """What the runner needs beyond the plan."""

    out: Path
    device: str
    timeout_s: float = 120.0
    setup_timeout_s: float | None = None  # None: timeout_s
    reference_timeout_s: float = 900.0
    discovery_timeout_s: float = 120.0
    rerun: str = "none"
    threads: int | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    rounds: int = 1
    tolerances: dict[str, float] = field(default_factory=dict)
    memory_fraction: float = 0.8
    progress: str = "auto"
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for a pinned job


@dataclass
class SweepPlan:
    """A checked sweep: its problems, which methods to look for, where and how to run."""

    problems: list[Problem]
    include: list[str]
    exclude: list[str]
    methods_dirs: list[str]
    settings: RunSettings
    baseline: str = "chunked"
    plots: bool = True


def plan_from(cfg: Any, out: Path) -> SweepPlan:
    """The checked sweep of a configuration (`check` has accepted it)."""
    from omegaconf import OmegaConf  # noqa: PLC0415 - hydra's dependency; keep this module light to import

    device = resolve_device(cfg.device)
    problems = problems_from(cfg.sweep, list(cfg.dtypes), device, cfg.seed)
    dirs = [str(Path(d).expanduser().resolve()) for d in cfg.methods_dirs]
    for d in dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"methods_dirs entry {d!r} is not a folder")
    timing = OmegaConf.to_container(cfg.timing)
    rounds = int(timing.pop("rounds"))
    settings = RunSettings(
        out=out, device=device, timeout_s=float(cfg.timeout_s), reference_timeout_s=float(cfg.reference_timeout_s),
        setup_timeout_s=None if cfg.setup_timeout_s is None else float(cfg.setup_timeout_s),
        discovery_timeout_s=float(cfg.discovery_timeout_s), rerun=normalize_rerun(cfg.rerun),
        threads=cpu_threads(cfg.threads) if device == "cpu" else cfg.threads, timing=timing, rounds=rounds,
        tolerances=OmegaConf.to_container(cfg.tolerances), memory_fraction=float(cfg.memory_fraction),
        progress=cfg.progress)
    return SweepPlan(problems, list(cfg.methods), list(cfg.exclude), dirs, settings, cfg.baseline, bool(cfg.plots))
