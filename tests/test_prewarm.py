"""scripts/prewarm_peers.py: a publication stage's shapes run once each, at their shortest N, with only the named
methods and FLA_CACHE_RESULTS=0; shapes already measured in the stage are left out; bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli, write_plugin

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "prewarm_peers.py"

# Records every shape it is called on, and the environment's FLA_CACHE_RESULTS: the prewarm's only traces.
CALLS = '''
import os
import torch
from leetbench import register

@register(name="calls", family="recurrent", complexity="O(N·D·E)", devices=("cpu",), dtypes=("float32",))
def calls(q, k, v, decay, *, scale, initial_state=None):
    B, H, N, D = q.shape
    with open(os.environ["CALLS_LOG"], "a") as f:
        f.write(f"{B} {N} {os.environ.get('FLA_CACHE_RESULTS')}\\n")
    n = torch.arange(N, dtype=q.dtype)
    mask = (decay.to(q.dtype)[:, None, None] ** (n[:, None] - n[None, :]).clamp(min=0)).tril()
    return scale * ((q @ k.transpose(-1, -2)) * mask) @ v
'''

# Two shapes (B=1, B=2), two lengths each, split as device_publish.sh splits a stage.
STAGE = ["sweep=tiny", "sweep.batch=[1],[2]", "sweep.length=[64,32]", "device=cpu"]


def prewarm(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_prewarm_runs_each_shape_once_at_its_shortest_length(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "calls.py", CALLS)
    log = tmp_path / "calls.log"
    done = prewarm("--methods", "calls", "--jobs", "2", "--", *STAGE, f"methods_dirs=[{plugins}]",
                   cwd=tmp_path, env={"CALLS_LOG": str(log), "FLA_CACHE_RESULTS": "1"})
    assert done.returncode == 0, done.stderr
    assert "prewarm: 2 shape(s) of calls in" in done.stdout and "2 done" in done.stdout, done.stdout
    calls = {tuple(line.split()) for line in log.read_text().splitlines()}
    assert calls == {("1", "32", "0"), ("2", "32", "0")}  # N=64 never run; fla's tuning picks kept off the disk
    assert not list(tmp_path.glob("results*")), "the prewarm's rows are thrown away"


def test_prewarm_leaves_out_shapes_the_stage_has_measured(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "calls.py", CALLS)
    stage = tmp_path / "stage"
    measured = run_cli("sweep=tiny", "sweep.batch=[1]", "sweep.length=[64,32]", "device=cpu", "methods=[calls]",
                       f"methods_dirs=[{plugins}]", f"out={stage}", cwd=tmp_path,
                       env={"CALLS_LOG": str(tmp_path / "stage.log")})
    assert measured.returncode == 0, measured.stderr
    plan = prewarm("--methods", "calls", "--done", str(stage), "--dry-run", "--", *STAGE, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[:-1] == ["B2 H2 N32 D16 λ=retnet float32"], plan.stdout
    # a method without rows there still needs every shape
    both = prewarm("--methods", "calls,recurrent", "--done", str(stage), "--dry-run", "--", *STAGE, cwd=tmp_path)
    assert "prewarm: 2 shape(s)" in both.stdout, both.stdout


def test_prewarm_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, says in [(["--methods", "calls", "--", "sweep=tiny", "sweep.batch=[0]"], "sweep.batch value 0"),
                       (["--methods", "calls", "--", "sweep.bach=[1]"], "unknown key sweep.bach; did you mean"),
                       (["--methods", ",", "--", "sweep=tiny"], "--methods ',' names no method")]:
        bad = prewarm("--dry-run", *args, cwd=tmp_path)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


SLEEPY = '''
import time
from leetbench import register

@register(name="sleepy", family="wrong", complexity="O(1)", devices=("cpu",), dtypes=("float32",))
def sleepy(q, k, v, decay, *, scale, initial_state=None):
    time.sleep(300)
    return v
'''


def test_prewarm_stops_what_still_runs_at_its_deadline(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "sleepy.py", SLEEPY)
    start = time.monotonic()
    cut = prewarm("--methods", "sleepy", "--jobs", "1", "--seconds", "8", "--", *STAGE, f"methods_dirs=[{plugins}]",
                  cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert "2 shape(s) of sleepy" in cut.stdout and "1 cut short, 1 not started" in cut.stdout, cut.stdout
    assert time.monotonic() - start < 120
