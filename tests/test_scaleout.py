"""Scale-out through Hydra launchers on the CPU: jobs run elsewhere, rows merge in the sweep folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, results, run_cli
from leetbench.gpus import gpu_slot


@pytest.mark.parametrize("launcher, extra", [
    ("joblib", ["hydra.launcher.n_jobs=2"]),
    ("submitit_local", ["hydra.launcher.timeout_min=10"]),
])
def test_multirun_through_a_launcher_merges_into_the_sweep_folder(tmp_path: Path, launcher: str,
                                                                   extra: list[str]) -> None:
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    out = tmp_path / "sweep"
    proc = run_cli("-m", f"hydra/launcher={launcher}", *extra, *TINY, "methods=[recurrent,quadratic]",
                   "sweep.length=[16],[24],[40]", "plots=true", f"out={out}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1", "2"):
        assert len(results(out / job)) == 2, job
    merged = results(out)
    assert sorted(merged["length"]) == [16, 16, 24, 24, 40, 40] and (merged["status"] == "ok").all()
    assert (out / "leaderboard.md").exists() and list((out / "plots").glob("*.png"))
    # resume works per job: the same sweep again measures nothing new
    again = run_cli("-m", f"hydra/launcher={launcher}", *extra, *TINY, "methods=[recurrent,quadratic]",
                    "sweep.length=[16],[24],[40]", f"out={out}", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and len(results(out)) == 6


def test_gpu_slots_are_exclusive(tmp_path: Path) -> None:
    with gpu_slot(tmp_path, ["0", "1"]) as first:
        with gpu_slot(tmp_path, ["0", "1"]) as second:
            assert {first, second} == {"0", "1"}
    with gpu_slot(tmp_path, ["0", "1"]) as again:
        assert again == "0"  # released on exit


def test_paper_split_puts_every_method_in_one_job() -> None:
    """scripts/paper_sweep.sh splits the published paper sweep into jobs by method group: a method in no
    group would vanish from the leaderboard, one in two groups would be measured twice."""
    import shlex

    from leetbench.discovery import load_methods
    from leetbench.registry import select_names

    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run(["bash", "-c", 'source scripts/paper_sweep.sh && echo "$PAPER" && echo "$PAPER_SPLIT"'],
                           cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    paper = dict(arg.split("=", 1) for arg in shlex.split(shown[0]))
    key, groups = shown[1].split("=", 1)
    assert key == "methods" and groups.startswith("[") and groups.endswith("]")
    names = load_methods(entry_points=False).names()
    swept = select_names(names, [], paper["exclude"].strip("[]").split(","))
    jobs = [select_names(swept, group.split(",")) for group in groups[1:-1].split("],[")]
    flat = [m for job in jobs for m in job]
    assert sorted(flat) == swept, (sorted(set(swept) - set(flat)), [m for m in flat if flat.count(m) > 1])


def _one_commit(stage: Path, sha: str) -> subprocess.CompletedProcess[str]:
    """scripts/device_publish.sh's one_commit on `stage`, as on the device with LEETBENCH_GIT_SHA=sha."""
    root = Path(__file__).resolve().parents[1]
    script = 'eval "$(sed -n "/^one_commit()/,/^}/p" scripts/device_publish.sh)" && one_commit "$1"'
    env = {**os.environ, "LEETBENCH_GIT_SHA": sha, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", script, "bash", str(stage)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_publishing_measures_a_stage_of_another_commit_afresh_and_resumes_its_own(tmp_path: Path) -> None:
    """A publication comes from one commit: a stage folder holding rows of another (the last publication, in the
    tree the device receives) must not be resumed; one of the same commit (a stage cut short) must."""
    import pandas as pd

    from leetbench.problem import Problem
    from leetbench.results import Row

    stage = tmp_path / "kernels"
    (stage / "1").mkdir(parents=True)
    rows = [Row.for_problem("m", "f", Problem(1, 2, n, 16), "ok", time_ms=1.0, git_sha="aaaa").as_dict()
            for n in (64, 128)]
    pd.DataFrame(rows).to_csv(stage / "1" / "results.csv", index=False)
    same = _one_commit(stage, "aaaa")
    assert same.returncode == 0 and (stage / "1" / "results.csv").exists(), same.stderr
    # the tree carries the last publication's merged stage files: they go, this commit's job folder stays
    pd.DataFrame([{**r, "git_sha": "old0"} for r in rows]).to_csv(stage / "results.csv", index=False)
    (stage / "plots").mkdir()
    (stage / "plots" / "winners.png").write_bytes(b"png")
    (stage / "leaderboard.md").write_text("old")
    resumed = _one_commit(stage, "aaaa")
    assert resumed.returncode == 0 and (stage / "1" / "results.csv").exists(), resumed.stderr
    assert sorted(p.name for p in stage.iterdir()) == ["1"]
    assert "rows of commit(s) old0 set aside; measuring afresh at aaaa" in resumed.stdout
    other = _one_commit(stage, "bbbb")
    assert other.returncode == 0 and not any(stage.iterdir()), other.stderr
    assert "rows of commit(s) aaaa set aside; measuring afresh at bbbb" in other.stdout
    assert _one_commit(tmp_path / "none", "bbbb").returncode == 0  # nothing there yet: nothing to do
