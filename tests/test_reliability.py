"""Faults never stop a sweep or lose a row: planted raising, hanging, crashing, wrong and greedy methods,
kill -9 and resume, a torn last line, two runs into one folder, Ctrl-C."""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, leetbench_cmd, results, run_cli, write_plugin
from leetbench.lock import RunLock
from leetbench.provenance import git_sha
from leetbench.results import KEY_COLUMNS

FAULTS = '''
import os, signal, time
import torch
from leetbench import register

@register(name="fault_raise", family="fault")
def fault_raise(q, k, v, decay, *, scale, initial_state=None):
    raise ValueError("planted failure")

@register(name="fault_hang", family="fault")
def fault_hang(q, k, v, decay, *, scale, initial_state=None):
    time.sleep(3600)

@register(name="fault_segv", family="fault")
def fault_segv(q, k, v, decay, *, scale, initial_state=None):
    os.kill(os.getpid(), signal.SIGSEGV)

@register(name="fault_exit", family="fault")
def fault_exit(q, k, v, decay, *, scale, initial_state=None):
    os._exit(7)

@register(name="fault_nan", family="fault")
def fault_nan(q, k, v, decay, *, scale, initial_state=None):
    return torch.full_like(v, float("nan"))

@register(name="fault_shape", family="fault")
def fault_shape(q, k, v, decay, *, scale, initial_state=None):
    return v[:, :, :-1]

@register(name="fault_dtype", family="fault")
def fault_dtype(q, k, v, decay, *, scale, initial_state=None):
    return v.double() if v.dtype != torch.float64 else v.float()

@register(name="fault_oom", family="fault")
def fault_oom(q, k, v, decay, *, scale, initial_state=None):
    return torch.empty(1 << 50, dtype=torch.uint8)  # a petabyte: the allocator refuses

@register(name="fault_print", family="fault")
def fault_print(q, k, v, decay, *, scale, initial_state=None):
    print("noise on stdout must not break the worker protocol")
    os.write(1, b"raw noise on fd 1\\n")
    return torch.zeros_like(v)
'''

SLOW = '''
import time
from leetbench import register
from leetbench.problem import Problem

@register(name="slow_ok", family="slow")
def slow_ok(q, k, v, decay, *, scale, initial_state=None):
    from leetbench.reference import reference
    from leetbench.problem import Inputs
    time.sleep(0.05)
    o, _ = reference(Inputs(q, k, v, decay, scale, initial_state))
    return o.to(v.dtype)
'''

SLOW_ARGS = ("sweep.length=[8,12,16,20,24,28]", "sweep.dim=[4]", "methods=[slow_ok]", "timing.rep_ms=1",
             "timing.warmup_ms=1", "timing.min_reps=2")


def test_one_sweep_with_every_planted_fault_finishes(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "faults.py", FAULTS)
    write_plugin(plugins, "broken.py", "def nope(:\n")
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[fault_*,recurrent]", "timeout_s=4",
                   f"out={out}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = results(out)
    assert len(df) == 2 * 10  # 2 problems × (9 faults + recurrent): every row written
    status = df.groupby("method")["status"].agg(set).to_dict()
    # after a timeout or oom at N=32, N=128 is not tried (it would only take longer or more memory)
    expected = {"recurrent": {"ok"}, "fault_raise": {"error"}, "fault_hang": {"timeout", "skipped"},
                "fault_segv": {"crashed"}, "fault_exit": {"crashed"}, "fault_nan": {"inaccurate"},
                "fault_shape": {"error"}, "fault_dtype": {"error"}, "fault_oom": {"oom", "skipped"},
                "fault_print": {"inaccurate"}}
    assert status == expected
    err = df.groupby("method")["error"].first().to_dict()
    assert "ValueError: planted failure" in err["fault_raise"]
    assert "within 4 s" in err["fault_hang"]
    assert "SIGSEGV" in err["fault_segv"] and "exited with code 7" in err["fault_exit"]
    assert "NaN" in err["fault_nan"]
    assert "output shape: expected [1, 2, 32, 16], got [1, 2, 31, 16]" in err["fault_shape"]
    assert "output dtype: expected torch.float32, got torch.float64" in err["fault_dtype"]
    assert err["fault_oom"]
    assert "Traceback" in (out / ".leetbench" / "errors.log").read_text() and "planted failure" in (out / ".leetbench" / "errors.log").read_text()
    board = (out / "leaderboard.md").read_text()
    assert "broken.py" in board and "SyntaxError" in board and "failed to load" in proc.stderr
    ranked = pd.read_csv(out / "leaderboard.csv").dropna(subset=["rank"])
    assert list(ranked["method"]) == ["recurrent"]  # nothing inaccurate or failed ranks


def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n + 1:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("rows did not appear")


def test_kill_9_then_resume_redoes_nothing_and_loses_nothing(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "slow.py", SLOW)
    out = tmp_path / "run"
    args = [*TINY, f"methods_dirs=[{plugins}]", *SLOW_ARGS, f"out={out}"]
    proc = subprocess.Popen(leetbench_cmd() + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _wait_for_rows(out / "results.csv", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results(out)
    assert 3 <= len(before) < 6
    with open(out / "results.csv", "a") as f:  # a torn last line, as a kill during a write could leave
        f.write("slow_ok,slow,cpu,float32,1,2,999")
    proc2 = run_cli(*args, cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    after = results(out)
    assert len(after) == 6 and not after.duplicated(subset=KEY_COLUMNS).any()
    assert set(after["length"]) == {8, 12, 16, 20, 24, 28}
    kept = after.merge(before, on=KEY_COLUMNS + ["timestamp"])
    assert len(kept) == len(before)  # finished rows untouched
    assert f"{len(before)} already in results.csv" in proc2.stdout
    # and a third run measures nothing new; rerun=all measures everything again
    assert "0 rows" in run_cli(*args, cwd=tmp_path).stdout
    proc4 = run_cli(*args, "rerun=all", cwd=tmp_path)
    assert "6 rows" in proc4.stdout and len(results(out)) == 12


def test_a_second_run_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        proc = run_cli(*TINY, f"out={out}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"another leetbench run (pid {os.getpid()}) is writing to {out}" in proc.stderr


def test_ctrl_c_keeps_finished_rows_writes_the_report_and_exits_nonzero(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "slow.py", SLOW.replace("time.sleep(0.05)", "time.sleep(0.25)"))  # rows of ~1.5 s
    out = tmp_path / "run"
    # Ctrl-C as from a terminal: the run starts with SIGINT's default action even when pytest itself was
    # started in the background by a shell without job control (which leaves SIGINT ignored, inherited here)
    proc = subprocess.Popen(leetbench_cmd() + [*TINY, f"methods_dirs=[{plugins}]", *SLOW_ARGS, f"out={out}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_rows(out / "results.csv", 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and (out / "leaderboard.md").exists()
    assert 2 <= len(results(out)) < 6


@pytest.mark.skipif(sys.platform != "linux", reason="peak memory via /proc is Linux-only")
def test_rows_carry_memory_and_provenance(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(*TINY, "methods=[quadratic]", f"out={out}", cwd=tmp_path).returncode == 0
    df = results(out)
    assert (df["peak_mem_mb"] >= 0).all() and (df["method_hash"].str.len() == 12).all()
    assert (df["threads"] >= 1).all() and (df["copy_gbps"] > 0).all() and (df["gbps"] > 0).all()
    assert df["timestamp"].str.match(r"\d{4}-\d\d-\d\dT").all() and (df["torch"] != "").all()
    assert (df["cpu"].str.len() > 0).all() and df["os"].str.startswith(platform.system()).all()


def test_host_columns_are_written_nan_on_the_cpu_and_a_results_csv_without_them_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(*TINY, "methods=[recurrent]", f"out={out}", cwd=tmp_path).returncode == 0
    raw = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    new = ["host_ms", "gpu_waited"]
    assert (raw[new] == "").all().all()  # the CPU's time is host time already
    assert results(out)[new].isna().all().all()
    # a file of the schema before these columns: it reads, and a resume adds rows that line up with its columns
    raw.drop(columns=new).to_csv(out / "results.csv", index=False)
    old = results(out)
    assert len(old) == 2 and old[new].isna().all().all() and (old["status"] == "ok").all()
    proc = run_cli(*TINY, "methods=[recurrent,chunked]", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0 and "2 already in results.csv" in proc.stdout, proc.stderr
    assert "dropped" not in proc.stdout + proc.stderr
    df = results(out)
    assert len(df) == 4 and (df["status"] == "ok").all() and (df["time_ms"] > 0).all()
    assert set(df[df["method"] == "chunked"]["length"]) == {32, 128} and df[new].isna().all().all()
    assert df.merge(old, on=KEY_COLUMNS + ["timestamp", "row_id"]).shape[0] == 2  # the old rows, untouched
    assert "dropped" not in run_cli(f"report=[{out}]", f"out={tmp_path / 'rep'}", cwd=tmp_path).stderr



def test_git_sha_comes_from_the_environment_where_the_tree_has_no_git(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git: a working tree copied to a GPU box without .git
    monkeypatch.setenv("LEETBENCH_GIT_SHA", "0123456789ab")
    assert git_sha() == "0123456789ab"
    monkeypatch.delenv("LEETBENCH_GIT_SHA")
    assert git_sha() == ""


def test_git_sha_set_in_the_environment_wins_and_an_enclosing_repository_is_not_borrowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer = tmp_path / "outer"
    (outer / "copy" / "leetbench").mkdir(parents=True)
    git = ["git", "-C", str(outer), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    (outer / "f").write_text("x")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    monkeypatch.delenv("LEETBENCH_GIT_SHA", raising=False)
    assert git_sha(outer / "copy") == ""  # a checkout copied into another repository's folder: not its commit
    assert len(git_sha(outer)) >= 12  # the repository that holds the package itself: its commit
    monkeypatch.setenv("LEETBENCH_GIT_SHA", "feedbeef1234")
    assert git_sha(outer) == git_sha(outer / "copy") == "feedbeef1234"


def test_resume_measures_again_a_method_whose_version_changed(tmp_path: Path, plugins: Path) -> None:
    """Editing a method (or a file it names in sources=) makes its old rows stale; others are kept."""
    write_plugin(plugins, "slow.py", SLOW)
    out = tmp_path / "run"
    args = [*TINY, f"methods_dirs=[{plugins}]", "methods=[slow_ok,recurrent]", "sweep.length=[8]", "sweep.dim=[4]",
            f"out={out}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    write_plugin(plugins, "slow.py", SLOW + "\n# an edit\n")
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "1 rows" in again.stdout and "1 already in results.csv" in again.stdout
    df = results(out)
    assert sorted(df["method"]) == ["recurrent", "slow_ok", "slow_ok"] and df["method_hash"].nunique() == 3

PHASES = '''
import time
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

_compiled = []

def _compile(problem):
    if not _compiled:  # like a kernel build or an autotune: once per worker
        time.sleep(4)
        _compiled.append(True)

def _exact(q, k, v, decay, scale, s0):
    return reference(Inputs(q, k, v, decay, scale, s0))[0].to(v.dtype)

@register(name="slow_setup", setup=_compile)
def slow_setup(q, k, v, decay, *, scale, initial_state=None):
    return _exact(q, k, v, decay, scale, initial_state)

@register(name="slow_long")
def slow_long(q, k, v, decay, *, scale, initial_state=None):
    if q.shape[2] > 16:
        time.sleep(3600)
    return _exact(q, k, v, decay, scale, initial_state)
'''


def test_setup_has_its_own_limit_and_longer_n_is_not_tried_after_a_timeout(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "phases.py", PHASES)
    out = tmp_path / "run"
    started = time.monotonic()
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[slow_setup,slow_long]", "timeout_s=2",
                   "setup_timeout_s=60", "sweep.length=[8,16,24,32,40]", "sweep.dim=[4]", f"out={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the hang at N=24 is cut 2 s after its (instant) setup, not when setup_timeout_s would end (60 s)
    assert time.monotonic() - started < 40
    lost = re.search(r"timeouts, crashes and restarts ([\d.]+) s", proc.stdout)  # the end-of-run line says so
    assert lost and float(lost[1]) >= 2, proc.stdout[-1000:]
    df = results(out).set_index(["method", "length"])
    assert (df.loc["slow_setup", "status"] == "ok").all()  # a 4 s setup under setup_timeout_s, not timeout_s
    long = df.loc["slow_long"]
    assert list(long["status"]) == ["ok", "ok", "timeout", "skipped", "skipped"]
    assert "within 2 s" in long.loc[24, "error"]
    assert long.loc[32, "error"] == "ruled out: timeout at N=24; longer sequences are not tried"


def test_a_timeout_kept_from_an_earlier_run_still_rules_out_longer_n(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "phases.py", PHASES)
    out = tmp_path / "run"
    common = (*TINY, f"methods_dirs=[{plugins}]", "methods=[slow_long]", "timeout_s=2", "sweep.dim=[4]",
              f"out={out}")
    first = run_cli(*common, "sweep.length=[8,24]", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_cli(*common, "sweep.length=[8,24,32,40]", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    long = results(out).set_index("length")
    assert list(long.loc[[8, 24, 32, 40], "status"]) == ["ok", "timeout", "skipped", "skipped"]
    assert long.loc[40, "error"] == "ruled out: timeout at N=24; longer sequences are not tried"
    # asked to run the failures again, the timed-out length is retried (and times out again)
    again = run_cli(*common, "sweep.length=[8,24,32]", "rerun=failed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rows = results(out)
    assert (rows[(rows.length == 24)].status == "timeout").all()


HOARD = '''
import torch
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

_kept = []  # what a package keeps between calls, for the life of the worker process

def _exact(q, k, v, decay, scale, initial_state):
    o, s = reference(Inputs(q, k, v, decay, scale, initial_state))
    return o.to(v.dtype), s.to(torch.float32)

@register(name="a_hoarder", family="mem")
def a_hoarder(q, k, v, decay, *, scale, initial_state=None):
    _kept.append(torch.zeros(4))
    return _exact(q, k, v, decay, scale, initial_state)

@register(name="b_squeezed", family="mem")
def b_squeezed(q, k, v, decay, *, scale, initial_state=None):
    if _kept:  # room another method took: the allocator refuses (fits alone)
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB (planted)")
    return _exact(q, k, v, decay, scale, initial_state)

@register(name="c_greedy", family="mem")
def c_greedy(q, k, v, decay, *, scale, initial_state=None):
    raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 PiB (planted)")
'''


def test_an_oom_after_other_methods_is_confirmed_alone_in_a_fresh_worker(tmp_path: Path, plugins: Path) -> None:
    """An `oom` row is the method's own: one that fits alone but ran out of memory after another method kept
    memory in the same worker is run again in a fresh worker and measured (its row ok); one that never fits
    stays oom and says it was tried alone. The later problem rules out the greedy one as before."""
    write_plugin(plugins, "hoard.py", HOARD)
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[a_hoarder,b_squeezed,c_greedy]", f"out={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = results(out)
    status = df.groupby("method")["status"].agg(list).to_dict()
    assert status == {"a_hoarder": ["ok", "ok"], "b_squeezed": ["ok", "ok"], "c_greedy": ["oom", "skipped"]}
    greedy = df[(df["method"] == "c_greedy") & (df["status"] == "oom")]["error"].iloc[0]
    assert "1.00 PiB (planted)" in greedy and "also alone in a fresh worker" in greedy
    log = (out / ".leetbench" / "errors.log").read_text()
    assert "run again alone in a fresh worker: ok" in log and "run again alone in a fresh worker: oom" in log
