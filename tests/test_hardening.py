"""Hardening (issue 14): signals, hostile plugin files, damaged results, full disks, bad `out`, and the rough
edges a new user hits. Every case is planted and run through the installed command line."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY, leetbench_cmd, results, run_cli, run_cli_here, write_plugin

HANGS = '''
import os, subprocess, sys, time
from pathlib import Path
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

MARK = Path(__file__).with_name("hang.marker")

@register(name="waits_when_marked", family="planted")
def waits_when_marked(q, k, v, decay, *, scale, initial_state=None):
    if MARK.exists():
        # a child in its own session: a process-group kill alone would miss it
        child = subprocess.Popen(["sleep", "600"], start_new_session=True)
        Path(__file__).with_name("pids").write_text(f"{os.getpid()} {child.pid}")
        time.sleep(3600)
    return reference(Inputs(q, k, v, decay, scale, initial_state))[0].to(v.dtype)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_kill_everything_started(tmp_path: Path, plugins: Path, sig: int,
                                                                         code: int) -> None:
    write_plugin(plugins, "hangs.py", HANGS)
    (plugins / "hang.marker").write_text("")
    out = tmp_path / "run"
    args = [*TINY, f"methods_dirs=[{plugins}]", "methods=[recurrent,waits_when_marked]", "timeout_s=600",
            f"out={out}"]
    proc = subprocess.Popen(leetbench_cmd() + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(plugins / "pids", proc)
    worker, child = (int(x) for x in (plugins / "pids").read_text().split())
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert (out / "leaderboard.md").exists() and len(results(out)) == 1  # recurrent's row, then the hang
    deadline = time.monotonic() + 10
    while (_alive(worker) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(child)
    (plugins / "hang.marker").unlink()
    again = run_cli(*args, cwd=tmp_path)  # the same command resumes
    assert again.returncode == 0, again.stderr
    assert "1 already in results.csv" in again.stdout and len(results(out)) == 4


def test_a_timeout_kills_children_that_left_the_process_group(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "hangs.py", HANGS)
    (plugins / "hang.marker").write_text("")
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[waits_when_marked]", "timeout_s=3",
                   "sweep.length=[32]", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert results(out)["status"].tolist() == ["timeout"]
    worker, child = (int(x) for x in (plugins / "pids").read_text().split())
    time.sleep(0.5)
    assert not _alive(worker) and not _alive(child)


BROKEN = {
    "exits.py": "import os\nos._exit(0)\n",
    "segfaults.py": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    "hangs_at_import.py": "import time\ntime.sleep(3600)\n",
    "raises.py": "raise RuntimeError('planted import error')\n",
    "bad_supports.py": '''
import time
from leetbench import register
def never(problem):
    time.sleep(3600)
@register(name="bad_supports", supports=never)
def bad_supports(q, k, v, decay, *, scale, initial_state=None):
    return v
''',
}


def test_plugin_files_that_exit_crash_or_hang_at_import_are_reported_while_others_run(tmp_path: Path,
                                                                                     plugins: Path) -> None:
    for name, source in BROKEN.items():
        write_plugin(plugins, name, source)
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[recurrent]", "discovery_timeout_s=3",
                   f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(results(out)["status"]) == {"ok"}
    board = (out / "leaderboard.md").read_text()
    for name in BROKEN:
        assert name in board and name in proc.stderr, name
    assert "hung" in proc.stderr and "crashed" in proc.stderr and "planted import error" in proc.stderr


def test_malformed_and_torn_rows_are_dropped_with_a_warning_by_resume_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*TINY, "methods=[recurrent,chunked]", f"out={out}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    lines = (out / "results.csv").read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    bad = row.copy()
    bad[header.index("time_ms")] = "fast"  # the right number of fields, a wrong value
    with open(out / "results.csv", "a") as f:
        f.write(",".join(bad) + "\n" + lines[2][:40])  # and a torn last line
    rep = run_cli(f"report=[{out}]", f"out={tmp_path / 'merged'}", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "dropped 2 torn or malformed row(s)" in rep.stderr
    for name in ("leaderboard.csv", "leaderboard.md"):
        assert (tmp_path / "merged" / name).exists()
    assert list((tmp_path / "merged" / "plots").glob("*.png"))
    again = run_cli(*args, cwd=tmp_path)  # resume over the damaged file
    assert again.returncode == 0, again.stderr
    assert len(results(out)) == 4 and "Traceback" not in again.stderr


def _small_file_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))


def test_a_full_disk_is_one_error_line_and_leaves_no_torn_row(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = leetbench_cmd() + [*TINY, "methods=[recurrent,chunked,quadratic]", "plots=false", f"out={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, preexec_fn=_small_file_limit,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("leetbench: error:")]
    assert lines and "cannot save" in lines[0] and "Traceback" not in proc.stderr
    data = (out / "results.csv").read_bytes()
    assert data.endswith(b"\n") and 2 <= data.count(b"\n") < 7  # whole rows only, not all of them


@pytest.mark.parametrize("make_out, words", [
    (lambda tmp: (tmp / "a_file").write_text("x") and tmp / "a_file", ["is a file, not a folder"]),
    (lambda tmp: Path("/proc/no/such/place"), ["cannot create out=/proc/no/such/place"]),
])
def test_a_bad_out_is_one_error_line(tmp_path: Path, make_out, words: list[str]) -> None:
    out = make_out(tmp_path)
    proc = run_cli(*TINY, "methods=[recurrent]", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("leetbench: error: ") and all(w in lines[0] for w in words)


@pytest.mark.parametrize("override, words", [
    ("timeout_s=0", ["timeout_s=0", "positive"]),
    ("timeout_s=-1", ["timeout_s=-1", "positive"]),
    ("setup_timeout_s=0", ["setup_timeout_s=0", "positive"]),
    ("timing.rounds=0", ["timing.rounds=0"]),
    ("+sweep.lenght=[64]", ["unknown key sweep.lenght", "did you mean sweep.length"]),
    ("sweep.lenght=[64]", ["unknown key sweep.lenght", "did you mean sweep.length"]),
    ("+colour=blue", ["unknown key colour"]),
])
def test_limits_must_be_positive_and_unknown_keys_are_refused_even_with_plus(tmp_path: Path, override: str,
                                                                             words: list[str]) -> None:
    proc = run_cli_here(*TINY, override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert "use +" not in lines[0]
    assert not (tmp_path / "results").exists()  # a rejected command leaves no run folder behind


def test_a_locked_folder_is_not_written_into(tmp_path: Path) -> None:
    from leetbench.lock import RunLock

    out = tmp_path / "run"
    assert run_cli(*TINY, "methods=[recurrent]", f"out={out}", cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    with RunLock(out):
        proc = run_cli(*TINY, "methods=[chunked]", "sweep.length=[16]", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 2 and "another leetbench run" in proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before  # config.yaml included; and Hydra wrote no .hydra/ folder
    assert not (out / ".hydra").exists()


def test_report_files_have_the_mode_of_results_csv(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(*TINY, "methods=[recurrent]", f"out={out}", cwd=tmp_path).returncode == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for name in ("config.yaml", "leaderboard.csv", "leaderboard.md"):
        assert mode(out / name) == mode(out / "results.csv"), name
    assert mode(out / "results.csv") & 0o044  # readable by others (umask 022)


CHATTY = '''
import sys
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

@register(name="chatty", family="planted")
def chatty(q, k, v, decay, *, scale, initial_state=None):
    sys.stdout.write("x" * (8 << 20) + "\\n")
    sys.stdout.flush()
    return reference(Inputs(q, k, v, decay, scale, initial_state))[0].to(v.dtype)
'''


def test_worker_output_is_capped_per_request(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "chatty.py", CHATTY)
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[chatty]", "sweep.length=[16]",
                   "timing.max_reps=12", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = out / ".leetbench" / "worker.log"
    assert log.stat().st_size < 3 << 20  # ~100 MB printed, 1 MB kept per request
    assert "bytes of worker output dropped" in log.read_text()[-2000:]
