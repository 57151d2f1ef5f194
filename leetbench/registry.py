"""The plugin contract: `@register` and the discovery of method files (DESIGN.md §3).

`register` records nothing globally. It attaches a `Method` to the function and, while `load_methods`
imports a plugin file, also hands it to that load's collector (a context variable), so a file may register
any number of methods, in loops or through factories. Discovery looks in the built-in `methods/` folder,
in the folders named by `methods_dirs`, and in the entry-point group `leetbench.methods`.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from leetbench.problem import DTYPES, MODES, Problem

ALL_DTYPES = tuple(DTYPES)
ENTRY_POINT_GROUP = "leetbench.methods"
_collector: contextvars.ContextVar[list | None] = contextvars.ContextVar("leetbench_collector", default=None)


class RegistryError(ValueError):
    """A plugin set that cannot be used as a whole (e.g. one name registered twice)."""


@dataclass(frozen=True)
class Method:
    """A registered method: the function and what it declares about itself."""

    name: str
    fn: Callable[..., Any]
    family: str = "other"
    complexity: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ALL_DTYPES
    supports: Callable[[Problem], str | None] | None = None
    setup: Callable[[Problem], Any] | None = None
    tf32: bool = False
    requires: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("prefill",)
    source: str = ""  # the file it came from
    source_hash: str = ""  # sha256 of that file, first 12 hex digits (asv-style method version)

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
        missing = [m for m in self.requires if not _importable(m)]
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


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def register(name: str, *, family: str = "other", complexity: str = "",
             devices: Sequence[str] = ("cpu", "cuda"), dtypes: Sequence[str] = ALL_DTYPES,
             supports: Callable[[Problem], str | None] | None = None,
             setup: Callable[[Problem], Any] | None = None, tf32: bool = False,
             requires: Sequence[str] = (), modes: Sequence[str] = ("prefill",)) -> Callable:
    """Declare a method. The decorated function is returned unchanged.

    fn(q, k, v, decay, *, scale, initial_state=None) -> o or (o, final_state); q, k [B,H,N,D], v [B,H,N,E],
    decay λ [H] (float64), all on one device. See DESIGN.md §3 for the keywords.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise RegistryError(f"method name {name!r} must be a non-empty string without spaces")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise RegistryError(f"method {name!r}: unknown dtypes {bad}; use {', '.join(DTYPES)}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise RegistryError(f"method {name!r}: unknown modes {bad}; use {', '.join(MODES)}")
    bad = [d for d in devices if d not in ("cpu", "cuda")]
    if bad:
        raise RegistryError(f"method {name!r}: unknown devices {bad}; use cpu, cuda")

    def decorate(fn: Callable) -> Callable:
        method = Method(name=name, fn=fn, family=family, complexity=complexity, devices=tuple(devices),
                        dtypes=tuple(dtypes), supports=supports, setup=setup, tf32=tf32,
                        requires=tuple(requires), modes=tuple(modes))
        fn.__dict__.setdefault("__leetbench_methods__", []).append(method)
        sink = _collector.get()
        if sink is not None:
            sink.append(method)
        return fn

    return decorate


@dataclass
class LoadFailure:
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
        """Methods matching any include pattern (all when empty) and no exclude pattern, by name.

        A pattern that matches nothing is an error listing the known names.
        """
        names = self.names()

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
        return [self.methods[n] for n in names if n in chosen]


def builtin_methods_dir() -> Path:
    """The top-level `methods/` folder, mapped into the package as `leetbench.methods` at build time."""
    spec = importlib.util.find_spec("leetbench.methods")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "methods"


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def _import_file(path: Path) -> None:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    mod_name = f"leetbench_plugins.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise


def _collect(load: Callable[[], Any], source: str, source_hash: str, registry: Registry) -> None:
    sink: list[Method] = []
    token = _collector.set(sink)
    try:
        load()
    except Exception as exc:
        registry.failures.append(LoadFailure(source, f"{type(exc).__name__}: {exc}".splitlines()[0],
                                             traceback.format_exc()))
        return
    finally:
        _collector.reset(token)
    for method in sink:
        registry.add(Method(**{**method.__dict__, "source": source, "source_hash": source_hash}))


def plugin_files(folder: Path) -> list[Path]:
    """The plugin files of a folder: `*.py` not starting with `_` (so `__init__.py` and helpers are not)."""
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def load_methods(methods_dirs: Sequence[str | Path] = (), *, builtin: bool = True,
                 entry_points: bool = True) -> Registry:
    """Discover every method; failures to import are recorded, duplicate names raise RegistryError."""
    registry = Registry()
    folders = ([builtin_methods_dir()] if builtin else []) + [Path(d).expanduser() for d in methods_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise RegistryError(f"methods_dirs entry {str(folder)!r} is not a folder")
        for path in plugin_files(folder):
            _collect(lambda p=path: _import_file(p), str(path), _file_hash(path), registry)
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            _collect(ep.load, f"entry point {ep.name} ({ep.value})", "", registry)
    return registry
