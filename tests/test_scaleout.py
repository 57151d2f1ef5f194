"""Scale-out through Hydra launchers on the CPU: jobs run elsewhere, rows merge in the sweep folder."""

from __future__ import annotations

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
