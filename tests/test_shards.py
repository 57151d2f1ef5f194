"""The test suite's own sharding (tests/conftest.py): the GPU suite outlasts one device call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def collected(*args: str) -> subprocess.CompletedProcess:
    """pytest --collect-only on tests/test_segments.py (the suite's quick file), with `args`."""
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_segments.py", *args], capture_output=True, text=True, cwd=ROOT)


def ids(*args: str) -> list[str]:
    """The test ids `collected` lists."""
    return [line for line in collected(*args).stdout.splitlines() if "::" in line]


def test_shards_split_the_suite():
    """pytest --shard I/N (tests/conftest.py) runs every collected test in exactly one of the N parts, and
    refuses a part that does not exist in one line."""

    everything = ids()
    parts = [ids("--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(everything) and all(parts) and len(everything) > 3
    assert not set(parts[0]) & set(parts[1])
    bad = collected("--shard", "4/3")
    assert bad.returncode == 4 and "--shard 4/3: expected I/N with 1 <= I <= N" in bad.stderr


@pytest.mark.slow
def test_device_check_runs_the_parts_side_by_side(tmp_path: Path):
    """`PARTS=2 bash scripts/device_check.sh tests` runs the suite's two --shard parts at once (spread over the
    host's GPUs; here, without one, both on "GPU 0"), names each part's exit and summary, then the tests marked
    `alone` in one process after them; together every test runs once."""
    files = "tests/test_segments.py tests/test_measure.py"
    env = {**os.environ, "PARTS": "2", "TEST_FILES": files, "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "scripts/device_check.sh", "tests"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.findall(r"== tests part (\d)/2 \(GPU 0\): exit 0, (.*)", proc.stdout)
    assert [i for i, _ in parts] == ["1", "2"], proc.stdout
    alone = re.search(r"== tests alone: exit 0, (.*)", proc.stdout)
    assert alone, proc.stdout

    def count(summary: str) -> int:
        return sum(int(n) for n in re.findall(r"(\d+) (?:passed|skipped)", summary))

    assert count(alone.group(1)) == 3  # test_measure's three readings of how the GPU waits
    everything = ids(*files.split()[1:], "-m", "not slow")
    assert count(" ".join(s for _, s in parts)) + count(alone.group(1)) == len(everything) > 3
    assert "== tests: 2 parts over" in proc.stdout and (tmp_path / "check.tgz").exists()
