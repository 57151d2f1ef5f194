"""torch's JIT extension builds (`torch.utils.cpp_extension.load`) made safe to kill.

`load()` guards each extension's build folder with a plain `lock` file (torch's FileBaton): created at the
start, removed at the end, and a second `load()` of that extension polls until it disappears — forever, if
the builder died in between. leetbench kills workers (a setup past `setup_timeout_s`, a sweep interrupted
with SIGINT and resumed on the same machine), so a build killed midway left such a file and the next run's
setup waited on it until its own timeout: a false `timeout` row, 300 s lost (H200, the paper stage resumed
on a warm machine).

`exclusive_builds(names)` holds an OS lock of leetbench's own (`flock`: the kernel drops it when its holder
dies, however it dies) across the builds and imports it guards; every extension build leetbench starts goes
through it, so once it is held no other leetbench process is building, and a torch `lock` file left in the
named extensions' folders is stale: it is removed. A process outside leetbench building the same extension
at that moment would lose its guard; that is the price of never waiting on a dead builder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

LOCK_NAME = "leetbench-builds.lock"


def build_root() -> Path:
    """Where torch builds extensions: $TORCH_EXTENSIONS_DIR, else its per-user cache folder (whose builds sit
    one level deeper, in a folder per Python and CUDA version)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    from torch.utils.cpp_extension import get_default_build_root
    return Path(get_default_build_root())


def stale_locks(names: Iterable[str], root: Path) -> list[Path]:
    """torch's lock files of the extensions `names` under `root` (directly, or one version folder down)."""
    found: list[Path] = []
    for name in names:
        found += [p for p in (root / name / "lock", *root.glob(f"*/{name}/lock")) if p.is_file()]
    return found


@contextlib.contextmanager
def exclusive_builds(names: Iterable[str], root: Path | None = None) -> Iterator[list[Path]]:
    """Hold leetbench's build lock and clear the stale torch locks of `names`; yields the paths cleared."""
    root = root or build_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            cleared = stale_locks(names, root)
            for lock in cleared:
                lock.unlink(missing_ok=True)
            yield cleared
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
