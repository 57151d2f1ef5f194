"""Finding methods: plugin files in `methods/` and in `methods_dirs`, and the entry-point group
`leetbench.methods`; and each method's version hash (docs/design.md §3).

A method's hash covers its plugin file, the files it names in `sources=` and the installed versions of the
packages it `requires=`, so editing a kernel source or upgrading a peer library makes its old rows stale
(resume measures them again), as asv versions a benchmark by its source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from leetbench.problem import Problem
from leetbench.registry import LoadFailure, Method, Registry, RegistryError, collector, select_names

ENTRY_POINT_GROUP = "leetbench.methods"
ENTRY_POINTS = "entry points"  # the `source` name of all entry-point plugins in `skip` lists


def builtin_methods_dir() -> Path:
    """The top-level `methods/` folder, mapped into the package as `leetbench.methods` at build time."""
    spec = importlib.util.find_spec("leetbench.methods")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "methods"


def plugin_files(folder: Path) -> list[Path]:
    """The plugin files of a folder: `*.py` not starting with `_` (so `__init__.py` and helpers are not)."""
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def plugin_folders(methods_dirs: Sequence[str | Path], builtin: bool = True) -> list[Path]:
    """The folders searched, checked: a `methods_dirs` entry that is not a folder is an error."""
    folders = ([builtin_methods_dir()] if builtin else []) + [Path(d).expanduser() for d in methods_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise RegistryError(f"methods_dirs entry {str(folder)!r} is not a folder")
    return folders


@lru_cache(maxsize=None)
def _distribution_of() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _versions(modules: Sequence[str]) -> list[str]:
    """`dist==version` of the installed distributions providing `modules` (top-level names)."""
    found = []
    for module in modules:
        for dist in _distribution_of().get(module.split(".")[0], []):
            try:
                found.append(f"{dist}=={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                pass
    return sorted(set(found))


def method_hash(plugin_file: str, method: Method) -> str:
    """First 12 hex digits of sha256 over the plugin file, `sources` and the required packages' versions."""
    h = hashlib.sha256()
    for path in (plugin_file, *method.sources):
        try:
            h.update(Path(path).read_bytes())
        except OSError:
            h.update(f"missing:{Path(path).name}".encode())
    for version in _versions(method.requires):
        h.update(version.encode())
    return h.hexdigest()[:12]


def import_file(path: Path) -> None:
    """Import one plugin file as a uniquely named module (two folders may hold files of one name)."""
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


def collect(load: Callable[[], Any], source: str, registry: Registry, hashed_file: str | None = None) -> None:
    """Run `load` (an import) and add what it registered to `registry`; a failure is recorded, not raised."""
    sink: list[Method] = []
    token = collector.set(sink)
    try:
        load()
    except Exception as exc:
        registry.failures.append(LoadFailure(source, f"{type(exc).__name__}: {exc}".splitlines()[0],
                                             traceback.format_exc()))
        return
    finally:
        collector.reset(token)
    for method in sink:
        digest = method_hash(hashed_file, method) if hashed_file else method_hash("", method)
        registry.add(replace(method, source=source, source_hash=digest))


def load_file(path: Path, registry: Registry) -> None:
    collect(lambda: import_file(path), str(path), registry, hashed_file=str(path))


def load_entry_points(registry: Registry) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        collect(ep.load, f"entry point {ep.name} ({ep.value})", registry)


def load_methods(methods_dirs: Sequence[str | Path] = (), *, builtin: bool = True, entry_points: bool = True,
                 files: Sequence[str | Path] | None = None, skip: Sequence[str] = (),
                 on_load: Callable[[str], None] | None = None) -> Registry:
    """Discover every method in this process; import failures are recorded, duplicate names raise.

    `files`, when given, are the plugin files to import instead of every file of the folders; `skip` names files (or "entry points") not to import; `on_load(source)` is called before each import
    (the measuring worker reports it, so a file that hangs or kills the process at import is known).
    """
    registry = Registry()
    paths = ([Path(f) for f in files] if files is not None
             else [p for folder in plugin_folders(methods_dirs, builtin) for p in plugin_files(folder)])
    for path in paths:
        if str(path) in skip:
            continue
        if on_load is not None:
            on_load(str(path))
        load_file(path, registry)
    if entry_points and ENTRY_POINTS not in skip:
        if on_load is not None:
            on_load(ENTRY_POINTS)
        load_entry_points(registry)
    return registry


# ---- the catalog: what the runner needs to know of the methods, without their code -------------------

@dataclass
class MethodInfo:
    """A method's declaration as data (no functions): enough to plan, skip and label rows."""

    name: str
    family: str
    complexity: str
    tf32: bool
    source: str
    source_hash: str
    summary: str = ""
    modes: list[str] = field(default_factory=list)
    differentiable: bool = False

    @classmethod
    def of(cls, m: Method) -> "MethodInfo":
        return cls(m.name, m.family, m.complexity, m.tf32, m.source, m.source_hash, m.summary, list(m.modes),
                   m.differentiable)


@dataclass
class Catalog:
    """The methods found, why each cannot run each problem of a sweep (None: it can), the plugin files that
    failed to load, and the machine's names."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    reasons: dict[str, dict[str, str | None]] = field(default_factory=dict)  # method → problem id → reason
    failures: list[LoadFailure] = field(default_factory=list)
    host: str = ""
    gpu: str = ""

    def why_not(self, method: str, problem: Problem) -> str | None:
        return self.reasons.get(method, {}).get(problem.id)

    def select(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
        return select_names(sorted(self.methods), include, exclude)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Catalog":
        return cls(methods={n: MethodInfo(**m) for n, m in d["methods"].items()}, reasons=d["reasons"],
                   failures=[LoadFailure(**f) for f in d["failures"]], host=d.get("host", ""),
                   gpu=d.get("gpu", ""))
