"""The configuration schema (Hydra structured configs) and its validation into a sweep plan.

Dataclass schemas make Hydra reject typos and wrong types with the key path (`sweep.length=abc`);
`plan` checks what types cannot (sizes > 0, decay in (0, 1], known dtypes, devices and methods) before
any work starts, raising `ConfigError` with a one-line message.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from leetbench.problem import DTYPES, MODES, Problem, ProblemError, normalize_decay
from leetbench.registry import Method, Registry, RegistryError


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
    gpus: Optional[List[int]] = None  # scale-out: GPUs jobs may take (default: all visible)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


RERUN = ("none", "failed", "all")
PROGRESS = ("auto", "bar", "lines", "none")


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


def select_methods(registry: Registry, include: list[str], exclude: list[str]) -> list[Method]:
    try:
        return registry.select(include, exclude)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None


def cpu_threads(threads: Optional[int]) -> int:
    if threads is not None and (not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"threads={threads!r} must be a positive integer or null (all cores)")
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
