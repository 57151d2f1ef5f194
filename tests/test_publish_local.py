"""scripts/publish_local.sh: a device's stage archives become the published folder, its "since" and tables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from leetbench.problem import Problem
from leetbench.results import Row

ROOT = Path(__file__).resolve().parent.parent
CARD = "results/gpu-NVIDIA-H200"

pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                                reason="needs the project's git history (the previous publication)")


def _clone(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(repo)], check=True, timeout=120)
    shutil.copy(ROOT / "scripts" / "publish_local.sh", repo / "scripts" / "publish_local.sh")  # as in the tree
    shutil.copy(ROOT / "scripts" / "readme_tables.py", repo / "scripts" / "readme_tables.py")
    return repo


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "scripts/publish_local.sh", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def _stage_tgz(tmp_path: Path, name: str) -> Path:
    """A finished stage as device_publish.sh packs it: its merged results.csv."""
    rows = [Row.for_problem(m, "f", Problem(batch=1, heads=32, length=n, dim=128, decay="multiscale",
                                            dtype="bfloat16", device="cuda"), "ok",
                            time_ms=t * n / 1024, time_ms_lo=t * n / 1024 * 0.99, time_ms_hi=t * n / 1024 * 1.01,
                            gpu="NVIDIA H200", host="vm", copy_gbps=4200.0, git_sha="f" * 40,
                            gpu_waited=0.0, timestamp="2099-01-01T00:00:00+00:00").as_dict()  # the newest
            for m, t in (("cupy_chunked", 0.03), ("fla_chunk", 0.05)) for n in (1024, 4096)]
    folder = tmp_path / name
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    tgz = tmp_path / f"{name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder / "results.csv", arcname="results.csv")
    return tgz


def _cut_short_tgz(tmp_path: Path, name: str) -> Path:
    """A stage stopped before its merge, as device_publish.sh packs it to resume from: the job folders whole,
    with Hydra's multirun.yaml (a machine path in it) and a run's lock folder."""
    complete = _stage_tgz(tmp_path, f"{name}-rows")
    folder = tmp_path / name
    (folder / "0" / ".leetbench").mkdir(parents=True)
    with tarfile.open(complete) as tar:
        tar.extractall(folder / "0", filter="data")
    (folder / "0" / ".leetbench" / "lock").write_text("")
    (folder / "multirun.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {tmp_path}/device\n")
    tgz = tmp_path / f"{name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return tgz


def _numeric_named_commit(repo: Path) -> str:
    """An empty commit on top whose short name Hydra reads as another number's text (99464e7 as 994640000000.0,
    0123456 as 123456): made by trying messages, one in about 45."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for i in range(2000):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", f"try {i}"], cwd=repo, check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        if re.fullmatch(r"[0-9]+e[0-9]+|0[0-9]+", sha[:7]):
            return sha
        subprocess.run(["git", "reset", "-q", "--soft", "HEAD~1"], cwd=repo, check=True)
    pytest.fail("no commit with a numeric short name in 2000 tries")


@pytest.mark.slow
@pytest.mark.parametrize("numeric", [False, True], ids=["publication", "numeric-short-name"])
def test_a_stage_archive_is_merged_with_since_the_previous_publication(tmp_path: Path, numeric: bool) -> None:
    repo = _clone(tmp_path)
    prev = subprocess.run(["git", "log", "-1", "--format=%H", "--", f"{CARD}/results.csv"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.strip()
    if numeric:  # the same publication under a name Hydra would read as a number unless quoted
        prev = _numeric_named_commit(repo)
    proc = _run(repo, prev, str(_stage_tgz(tmp_path, "decode")), str(_cut_short_tgz(tmp_path, "wide")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows, complete" in proc.stdout and "| B | N |" in proc.stdout  # README's tables printed
    assert "wide: job folders only" in proc.stdout and (repo / CARD / "wide" / "0" / "results.csv").exists()
    device_files = [p.name for p in (repo / CARD / "wide").rglob("*") if p.name in ("multirun.yaml", ".leetbench")]
    assert not device_files, device_files                                   # the reader's files only
    merged = pd.read_csv(repo / CARD / "results.csv")
    assert ("f" * 40) in set(merged["git_sha"].astype(str))                # the archive's rows are in
    board = (repo / CARD / "leaderboard.md").read_text()
    assert f"Against {prev[:7]}" in board                                   # named by the commit, not a path
    published = [p for p in (repo / CARD).rglob("*") if p.is_file() and p.suffix in (".md", ".csv", ".html")]
    assert not [p for p in published if str(tmp_path) in p.read_text(errors="ignore")]  # no machine paths
    assert (repo / "leetbench" / "dispatch_tables" / "NVIDIA_H200.json").exists()


def test_bad_arguments_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    repo = _clone(tmp_path)
    bad_commit = _run(repo, "nosuchcommit")
    assert bad_commit.returncode == 2 and "nosuchcommit is not a commit" in bad_commit.stderr
    odd = tmp_path / "notastage.tgz"
    odd.write_bytes(b"")
    not_stage = _run(repo, "HEAD", str(odd))
    assert not_stage.returncode == 2 and "not a stage" in not_stage.stderr
    assert len(not_stage.stderr.strip().splitlines()) == 1
    status = subprocess.run(["git", "status", "--porcelain", "--", "results"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert status == ""
