"""The plugin contract: `@register`, the `Method` it declares, and a `Registry` of methods (docs/design.md §3).

`register` records nothing globally. It attaches a `Method` to the function and, while a plugin file is being
imported by `leetbench.discovery`, also hands it to that import's collector (a context variable), so a file
may register any number of methods, in loops or through factories.
"""

from __future__ import annotations

import contextvars
import fnmatch
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

from leetbench.problem import DTYPES, MODES, Problem

ALL_DTYPES = tuple(DTYPES)
DEVICE_KINDS = ("cpu", "cuda")
# Names travel into CSV, markdown, HTML and file names: letters, digits and a few separators only.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
FAMILY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]*$")
collector: contextvars.ContextVar[list | None] = contextvars.ContextVar("leetbench_collector", default=None)


class RegistryError(ValueError):
    """A plugin or plugin set that cannot be used (a bad declaration, one name registered twice)."""


@dataclass(frozen=True)
class Method:
    """A registered method: the function and what it declares about itself."""

    name: str
    fn: Callable[..., Any]
    family: str = "other"
    complexity: str = ""
    devices: tuple[str, ...] = DEVICE_KINDS
    dtypes: tuple[str, ...] = ALL_DTYPES
    supports: Callable[[Problem], str | None] | None = None
    setup: Callable[[Problem], Any] | None = None
    prepare: Callable[..., Any] | None = None  # untimed, before every call with the call's arguments
    tf32: bool = False
    requires: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("prefill",)
    sources: tuple[str, ...] = ()  # files the method depends on besides its plugin file (absolute paths)
    differentiable: bool = False  # gradients flow through it (PyTorch autograd or a peer's backward)
    step: Callable[..., Any] | None = None  # the decode step on [B, H, D] tensors (docs/design.md §3)
    source: str = ""  # the plugin file it came from
    source_hash: str = ""  # hash of that file, `sources` and the required packages' versions (asv-style)

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    def why_not(self, problem: Problem) -> str | None:
        """None when the method can run the problem, else the reason (a `skipped` row's message)."""
        kind = problem.device.split(":")[0]
        if kind not in self.devices:
            return f"runs on {', '.join(self.devices)}, not {kind}"
        if problem.dtype not in self.dtypes:
            return f"supports dtypes {', '.join(self.dtypes)}, not {problem.dtype}"
        if problem.mode not in self.modes:
            return f"supports mode {', '.join(self.modes)}, not {problem.mode}"
        missing = [m for m in self.requires if not importable(m)]
        if missing:
            return f"needs {', '.join(missing)} (not installed)"
        if self.supports is not None:
            try:
                reason = self.supports(problem)
            except Exception as exc:  # a buggy capability check must not stop a sweep
                return f"supports() raised {type(exc).__name__}: {exc}"
            if reason:
                return str(reason)
        return None


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check_declaration(name: str, family: str, dtypes: Sequence[str], modes: Sequence[str],
                       devices: Sequence[str]) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistryError(f"method name {name!r} must be letters, digits and _ . + - (no spaces, | or newlines)")
    if not isinstance(family, str) or not FAMILY_PATTERN.match(family):
        raise RegistryError(f"method {name!r}: family {family!r} must be letters, digits and _ . : + -")
    for what, given, valid in (("dtypes", dtypes, DTYPES), ("modes", modes, MODES), ("devices", devices, DEVICE_KINDS)):
        bad = [x for x in given if x not in valid]
        if bad:
            raise RegistryError(f"method {name!r}: unknown {what} {bad}; use {', '.join(valid)}")


def _source_paths(sources: Iterable[str | Path | ModuleType], fn: Callable) -> tuple[str, ...]:
    """Absolute paths of `sources`: files (relative ones to the plugin file's folder) or imported modules."""
    code = getattr(fn, "__code__", None)
    base = Path(code.co_filename).resolve().parent if code is not None else Path.cwd()
    paths = []
    for s in sources:
        if isinstance(s, ModuleType):
            if not getattr(s, "__file__", None):
                raise RegistryError(f"sources: module {s.__name__} has no file to hash")
            s = s.__file__
        p = Path(s)
        paths.append(str(p if p.is_absolute() else (base / p).resolve()))
    return tuple(paths)


def register(name: str, *, family: str = "other", complexity: str = "",
             devices: Sequence[str] = DEVICE_KINDS, dtypes: Sequence[str] = ALL_DTYPES,
             supports: Callable[[Problem], str | None] | None = None,
             setup: Callable[[Problem], Any] | None = None, prepare: Callable[..., Any] | None = None,
             tf32: bool = False, requires: Sequence[str] = (), modes: Sequence[str] = ("prefill",),
             sources: Sequence[str | Path | ModuleType] = (), differentiable: bool = False,
             step: Callable[..., Any] | None = None) -> Callable:
    """Declare a method. The decorated function is returned unchanged.

    fn(q, k, v, decay, *, scale, initial_state=None) -> o or (o, final_state); q, k [B,H,N,D], v [B,H,N,E],
    decay λ [H] (float64), all on one device. step(q, k, v, decay, *, scale, state) -> (o, new state) is one
    decode token on q, k [B,H,D], v [B,H,E], state [B,H,D,E]: what `fn` computes at N = 1, without the
    token axis. Keywords: docs/design.md §3.
    """
    _check_declaration(name, family, dtypes, modes, devices)
    if step is not None and (not callable(step) or "decode" not in modes):
        raise RegistryError(f"method {name!r}: step= must be a function, and the method must declare "
                            f"modes=(..., 'decode'); got step={step!r}, modes={tuple(modes)}")

    def decorate(fn: Callable) -> Callable:
        method = Method(name=name, fn=fn, family=family, complexity=complexity, devices=tuple(devices),
                        dtypes=tuple(dtypes), supports=supports, setup=setup, prepare=prepare, tf32=tf32,
                        requires=tuple(requires), modes=tuple(modes), sources=_source_paths(sources, fn),
                        differentiable=differentiable, step=step)
        fn.__dict__.setdefault("__leetbench_methods__", []).append(method)
        sink = collector.get()
        if sink is not None:
            sink.append(method)
        return fn

    return decorate


@dataclass
class LoadFailure:
    """A plugin file (or entry point) that could not be loaded: it raised, exited, crashed or hung."""

    source: str
    error: str  # one line
    traceback: str = ""


@dataclass
class Registry:
    """The methods found by one discovery, by name, and the plugin files that failed to load."""

    methods: dict[str, Method] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return name in self.methods

    def __getitem__(self, name: str) -> Method:
        return self.methods[name]

    def names(self) -> list[str]:
        return sorted(self.methods)

    def add(self, method: Method) -> None:
        old = self.methods.get(method.name)
        if old is not None and old.fn is not method.fn:
            raise RegistryError(
                f"method name {method.name!r} is registered twice: in {old.source} and in {method.source}"
            )
        self.methods[method.name] = method

    def select(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Method]:
        """Methods matching any include pattern (all when empty) and no exclude pattern, by name."""
        return [self.methods[n] for n in select_names(self.names(), include, exclude)]


def select_names(names: Sequence[str], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    """Names matching any include pattern (all when empty) and no exclude pattern (fnmatch globs), sorted.

    A pattern that matches nothing is an error listing the known names.
    """
    names = sorted(names)

    def expand(patterns: Iterable[str], what: str) -> set[str]:
        chosen: set[str] = set()
        for pattern in patterns:
            hits = fnmatch.filter(names, str(pattern))
            if not hits:
                raise RegistryError(
                    f"unknown method {pattern!r} in {what}; known methods: {', '.join(names) or '(none)'}"
                )
            chosen.update(hits)
        return chosen

    include = list(include or [])
    chosen = expand(include, "methods") if include else set(names)
    chosen -= expand(exclude or [], "exclude")
    return [n for n in names if n in chosen]
