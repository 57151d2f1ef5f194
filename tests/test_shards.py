"""The test suite's own sharding (tests/conftest.py): the GPU suite outlasts one device call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_shards_split_the_suite():
    """pytest --shard I/N (tests/conftest.py) runs every collected test in exactly one of the N parts, and
    refuses a part that does not exist in one line."""
    def collected(*args: str) -> subprocess.CompletedProcess:
        here = Path(__file__).parent
        return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               str(here / "test_segments.py"), *args], capture_output=True, text=True,
                              cwd=here.parent)

    def ids(*args: str) -> list[str]:
        return [line for line in collected(*args).stdout.splitlines() if "::" in line]

    everything = ids()
    parts = [ids("--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(everything) and all(parts) and len(everything) > 3
    assert not set(parts[0]) & set(parts[1])
    bad = collected("--shard", "4/3")
    assert bad.returncode == 4 and "--shard 4/3: expected I/N with 1 <= I <= N" in bad.stderr
