"""A disk cache of the cubins leetbench compiles itself (sources with an architecture-specific target, which
CuPy's RawModule, and so CuPy's own cache, cannot build).

It lives in CuPy's kernel cache folder (`CUPY_CACHE_DIR`, else ~/.cupy/kernel_cache), under `leetbench/`, so
one setting moves or empties both, and a second process (the next worker of a sweep) loads a template instance
instead of compiling it again. One entry per template instance: its key hashes everything the machine code
depends on (the sources' text, the name expression, the compile options, the target, the compiler's version);
an entry is the cubin that holds it, its lowered (mangled) name and the compiler's log. Entries are written
to a temporary file and renamed into place, so a reader never sees half of one; an unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class Compiled:
    """One compiler run's product: the cubin, each name expression's lowered name in it, the log."""

    cubin: bytes
    lowered: dict[str, str]
    log: str


def cache_dir() -> Path:
    """leetbench's part of CuPy's kernel cache folder."""
    root = os.environ.get("CUPY_CACHE_DIR") or str(Path.home() / ".cupy" / "kernel_cache")
    return Path(root) / "leetbench"


def entry_key(source: str, name: str, options: Sequence[str], arch: str, toolchain: str) -> str:
    """The hash that names one template instance's entry."""
    h = hashlib.sha256()
    for part in (source, name, "\0".join(options), arch, toolchain):
        h.update(part.encode())
        h.update(b"\0\0")
    return h.hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(folder: Path, key: str, name: str) -> Compiled | None:
    """The entry for `key`, or None when there is none or it cannot be read whole."""
    try:
        meta = json.loads((folder / f"{key}.json").read_text())
        cubin = (folder / f"{key}.cubin").read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("name") != name or not isinstance(meta.get("lowered"), str) or not cubin:
        return None
    return Compiled(cubin=cubin, lowered={name: meta["lowered"]}, log=str(meta.get("log", "")))


def store(folder: Path, key: str, name: str, compiled: Compiled) -> None:
    """Write one instance's entry (the cubin first, then the description that makes it an entry)."""
    _write(folder / f"{key}.cubin", compiled.cubin)
    meta = {"name": name, "lowered": compiled.lowered[name], "log": compiled.log}
    _write(folder / f"{key}.json", json.dumps(meta).encode())


def compile_cached(source: str, names: Sequence[str], options: Sequence[str], arch: str, toolchain: str,
                   compile_fn: Callable[[list[str]], Compiled], folder: Path | None = None) -> dict[str, Compiled]:
    """Each name's Compiled: from the cache where present, the rest from one call of compile_fn (then stored).

    A cache that cannot be written (read-only home, full disk) costs the next process a compilation, nothing
    more.
    """
    folder = cache_dir() if folder is None else folder
    keys = {n: entry_key(source, n, options, arch, toolchain) for n in names}
    out: dict[str, Compiled] = {}
    for n in names:
        hit = load(folder, keys[n], n)
        if hit is not None:
            out[n] = hit
    missing = [n for n in names if n not in out]
    if missing:
        built = compile_fn(missing)
        for n in missing:
            out[n] = built
            try:
                store(folder, keys[n], n, built)
            except OSError:
                pass
    return out
