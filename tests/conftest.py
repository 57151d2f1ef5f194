"""Shared helpers: run the installed `leetbench` console script on tiny sweeps, write plugin files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import pandas as pd
import pytest

TINY = ["sweep=tiny", "progress=lines"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run the I-th of N interleaved parts of the collected tests (the GPU suite outlasts one "
                          "device call: scripts/device_check.sh's SHARD)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = config.getoption("--shard")
    if shard is None:
        return
    i, _, n = shard.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise pytest.UsageError(f"--shard {shard}: expected I/N with 1 <= I <= N, e.g. 1/3")
    i, n = int(i), int(n)
    keep = items[i - 1::n]  # interleaved, so the slow cases of one test spread over the parts
    config.hook.pytest_deselected(items=[item for k, item in enumerate(items) if k % n != i - 1])
    items[:] = keep


def leetbench_cmd() -> list[str]:
    exe = shutil.which("leetbench")
    if exe is None:
        pytest.fail("the `leetbench` console script is not installed (pip install -e '.[test]')")
    return [exe]


def run_cli(*args: str, cwd: Path, module: bool = False, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "leetbench"] if module else leetbench_cmd()
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def run_cli_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`leetbench.cli.main()` in this process (no interpreter start, no imports): for inputs refused before any
    work. The same entry point as the console script; its exit code, stdout and stderr are returned."""
    import contextlib
    import io
    import signal

    from hydra.core.global_hydra import GlobalHydra

    from leetbench import cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = sys.argv, os.getcwd(), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        os.chdir(cwd)
        sys.argv = ["leetbench", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        for s, handler in saved[2].items():
            signal.signal(s, handler)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def write_plugin(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs) -> types.ModuleType:
    """Install a fake module (with a spec, so `requires=` finds it) under `name`, for this test only."""
    module = types.ModuleType(name)
    module.__spec__ = ModuleSpec(name, None)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.fixture
def fresh_adapter_cache():
    """The peer adapters' conversion cache, empty before and after the test."""
    from leetbench.adapters import clear

    clear()
    yield
    clear()


def results(folder: Path) -> pd.DataFrame:
    from leetbench.store import read_results

    return read_results([folder / "results.csv"])


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return tmp_path / "plugins"


# ---- kernel helpers compiled for the host (test_producer_copies, test_fragment_loads) ---------------------------
KERNELS = Path(__file__).resolve().parent.parent / "leetbench" / "cuda_kernels"
CXX = shutil.which("c++") or shutil.which("g++")


def cut_definition(text: str, start: str, end: str = "\n}\n") -> str:
    """The definition beginning at `start` in a kernel source, through the first `end` (a closing brace in column
    0; "\n};\n" for a struct)."""
    i = text.index(start)
    j = text.index(end, i)
    return text[i:j + len(end)]


# Before every host program: CUDA's function qualifiers as nothing (inline) and the kernel sources' integer names,
# which every helper cut from them uses.
HOST_PRELUDE = """#define __device__
#define __forceinline__ inline
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#define LB_STAMP(c, ev) do { } while (0)
"""  # (LB_STAMP: the timeline's clock stamps, nothing outside a timeline build, as chunked_wg.cu has it)


def run_host_program(source: str, tmp_path: Path, name: str) -> tuple[int, str]:
    """`source` (C++17, after HOST_PRELUDE) compiled with the host's compiler and run: its exit status and standard
    output."""
    src = tmp_path / f"{name}.cpp"
    src.write_text(HOST_PRELUDE + source)
    exe = tmp_path / name
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-Wno-unknown-pragmas", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    return run.returncode, run.stdout


def assert_no_mismatch(rc: int, out: str, rows: int) -> None:
    """A host program's comparison passed: exit status 0 and `rows` lines, each ending in a count of 0 mismatches."""
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) == rows
    assert rc == 0 and all(line[-1] == "0" for line in lines), out


def assert_planted_fault_caught(helper: str, good: str, bad: str, compare) -> None:
    """`bad` planted for `good` in a helper's text: `compare(helper) -> (exit status, lines ending in a count of
    mismatches)` must fail."""
    assert good in helper, f"the fault's anchor {good!r} is no longer in the helper"
    rc, out = compare(helper.replace(good, bad))
    assert rc != 0 and any(line.split()[-1] != "0" for line in out.splitlines()), out
