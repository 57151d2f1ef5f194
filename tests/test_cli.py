"""The command line end to end, through the installed console script, on tiny sweeps."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY, results, run_cli, run_cli_here
from leetbench.results import COLUMNS

DESIGN_COLUMNS = ("method, family, device, dtype, batch, heads, length, dim, dim_v, decay, status, rel_err, max_err, "
                  "time_ms, time_ms_p20, time_ms_p80, peak_mem_mb, gbps, pct_bw, error, host, gpu, torch, cupy, "
                  "leetbench, git_sha, timestamp").split(", ")


def assert_run_folder(out: Path) -> pd.DataFrame:
    for name in ("results.csv", "leaderboard.csv", "leaderboard.md", "config.yaml"):
        assert (out / name).is_file(), f"{name} missing in {out}"
    assert list((out / "plots").glob("*.png")), "no plots written"
    df = results(out)
    assert set(DESIGN_COLUMNS) <= set(df.columns)
    return df


@pytest.mark.slow
def test_default_sweep_is_the_readme_quick_start(tmp_path: Path) -> None:
    """`leetbench` with no arguments: the smoke sweep on the CPU, into results/runs/<timestamp>/."""
    proc = run_cli(cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 1
    df = assert_run_folder(runs[0])
    assert set(df["dtype"]) == {"float32", "float64"} and set(df["device"]) == {"cpu"}
    assert len(set(df["method"])) >= 2 and (df[df["status"] != "skipped"]["status"] == "ok").all()
    board = pd.read_csv(runs[0] / "leaderboard.csv")
    assert {"rank", "method", "speedup", "pass_rate", "fitted_exponent", "complexity"} <= set(board.columns)
    for plot in ("time_vs_length", "error_vs_length", "speedup"):
        assert (runs[0] / "plots" / f"{plot}.png").stat().st_size > 10_000


def test_every_axis_can_be_overridden(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(*TINY, "sweep.batch=[2]", "sweep.heads=[3]", "sweep.length=[16,33]", "sweep.dim=[8]",
                   "sweep.dim_v=[4]", "sweep.decay=[0.5,alibi]", "sweep.initial_state=[true]",
                   "dtypes=[float64]", "methods=[quad*,recurrent]", "timeout_s=60", "baseline=recurrent", "plots=true",
                   f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = assert_run_folder(out)
    assert set(df["batch"]) == {2} and set(df["heads"]) == {3} and set(df["length"]) == {16, 33}
    assert set(df["dim"]) == {8} and set(df["dim_v"]) == {4} and set(df["decay"]) == {"0.5", "alibi"}
    assert set(df["method"]) == {"quadratic", "recurrent"} and set(df["dtype"]) == {"float64"}
    assert (df["status"] == "ok").all() and (df["rel_err"] < 1e-10).all() and (df["state_rel_err"] < 1e-10).all()
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["sweep"]["length"] == [16, 33] and saved["out"] == str(out) and saved["baseline"] == "recurrent"
    assert "Speed-up: geometric mean of `recurrent`" in (out / "leaderboard.md").read_text()


def test_python_dash_m_and_exclude(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(*TINY, "exclude=[quadratic]", "methods=[quadratic,recurrent]", f"out={out}", cwd=tmp_path,
                   module=True)
    assert proc.returncode == 0, proc.stderr
    assert set(results(out)["method"]) == {"recurrent"}


@pytest.mark.parametrize("override, names", [
    ("methods=[nope]", ["'nope'", "known methods:", "recurrent"]),
    ("methods=[zzz*]", ["'zzz*'", "known methods:"]),
    ("dtypes=[float8]", ["'float8'", "bfloat16"]),
    ("device=cuda", ["device=cuda", "no CUDA GPU"]),
    ("device=tpu", ["'tpu'", "cuda:N"]),
    ("sweep.length=[0]", ["sweep.length value 0"]),
    ("sweep.batch=[-2]", ["sweep.batch value -2"]),
    ("sweep.decay=[1.5]", ["1.5", "(0, 1]"]),
    ("sweep.decay=[warm]", ["'warm'", "retnet, multiscale, alibi"]),
    ("sweep.length=[abc]", ["sweep.length", "abc"]),
    ("sweep=nope", ["sweep/nope", "smoke"]),
    ("swep.length=3", ["swep"]),
    ("rerun=sometimes", ["sometimes", "none, failed, all"]),
    ("methods_dirs=[/does/not/exist]", ["/does/not/exist", "not a folder"]),
    ("report=[/does/not/exist]", ["/does/not/exist"]),
])
def test_bad_input_is_one_line(tmp_path: Path, override: str, names: list[str]) -> None:
    out = tmp_path / "run"
    proc = run_cli_here(*TINY, override, f"out={out}", cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("leetbench: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert not (out / "results.csv").exists()


def test_report_merges_runs(tmp_path: Path) -> None:
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert run_cli(*TINY, "methods=[recurrent]", f"out={a}", cwd=tmp_path).returncode == 0
    assert run_cli(*TINY, "methods=[quadratic]", "sweep.length=[64]", f"out={b}", cwd=tmp_path).returncode == 0
    proc = run_cli(f"report=[{a},{b}]", f"out={merged}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = results(merged)
    assert len(df) == len(results(a)) + len(results(b)) and set(df["method"]) == {"quadratic", "recurrent"}
    assert (merged / "leaderboard.md").exists() and list((merged / "plots").glob("*.png"))


def test_multirun_with_the_basic_launcher_merges_jobs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = run_cli("-m", *TINY, "methods=[recurrent]", "sweep.length=[16],[48]", "plots=true", f"out={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "0" / "results.csv").exists() and (out / "1" / "results.csv").exists()
    df = assert_run_folder(out)
    assert sorted(df["length"]) == [16, 48]


def test_decode_mode(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(*TINY, "sweep.mode=[decode]", "sweep.steps=[5]", "sweep.length=[40]",
                   "methods=[recurrent,quadratic]", "dtypes=[float32,bfloat16]", "plots=true", f"out={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = results(out)
    rec = df[df["method"] == "recurrent"]
    assert (rec["status"] == "ok").all() and set(rec["steps"]) == {5} and (rec["state_rel_err"] < 1e-2).all()
    quad = df[df["method"] == "quadratic"]
    assert (quad["status"] == "skipped").all() and quad["error"].str.contains("supports mode prefill").all()
    assert (out / "plots" / "decode_latency.png").exists()
    summary = re.search(r"wall ([\d.]+) s \(([\d.]+) s after the worker started\), \d+% inside measured calls",
                        proc.stdout)
    assert summary and float(summary[2]) < float(summary[1]), proc.stdout[-1000:]


def test_problems_that_cannot_fit_are_skipped_by_an_estimate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(*TINY, "methods=[recurrent]", "sweep.batch=[4096]", "sweep.heads=[64]", "sweep.length=[1048576]",
                   "sweep.dim=[256]", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = results(out)
    assert (df["status"] == "skipped").all() and df["error"].str.match(r"the harness alone needs \d+\.\d GB for this problem, over").all()
