"""Honest verdicts (issue 15): what is timed is checked, every head is judged, the impossible is flagged.

Planted plugins that a lazy or narrow check would pass: exact on the first call only, memoising, caching by
tensor identity, one head off by 5e-5 at float32, one token off, an unwritten tail. None may end `ok`; exact
methods stay `ok` in every dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, results, run_cli, write_plugin
from leetbench.problem import Problem
from leetbench.results import Row, Status

PLANTED = '''
import torch
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

def exact(q, k, v, decay, scale, s0):
    o, s = reference(Inputs(q, k, v, decay, scale, s0))
    return o.to(v.dtype)

_calls = {"lazy": 0}
_memo = {}
_by_identity = {}

@register(name="honest", family="planted")
def honest(q, k, v, decay, *, scale, initial_state=None):
    return exact(q, k, v, decay, scale, initial_state)

@register(name="lazy_after_first", family="planted")
def lazy_after_first(q, k, v, decay, *, scale, initial_state=None):
    _calls["lazy"] += 1
    if _calls["lazy"] == 1:
        return exact(q, k, v, decay, scale, initial_state)
    return torch.zeros_like(v)

@register(name="memoises", family="planted")
def memoises(q, k, v, decay, *, scale, initial_state=None):
    if "o" not in _memo:
        _memo["o"] = exact(q, k, v, decay, scale, initial_state)
    return _memo["o"].clone()

@register(name="identity_cache", family="planted")
def identity_cache(q, k, v, decay, *, scale, initial_state=None):
    key = (id(q), q.data_ptr(), id(v), v.data_ptr())
    if key not in _by_identity:
        _by_identity[key] = exact(q, k, v, decay, scale, initial_state)
    return _by_identity[key]

@register(name="one_head_off", family="planted")
def one_head_off(q, k, v, decay, *, scale, initial_state=None):
    o = exact(q, k, v, decay, scale, initial_state).to(torch.float64)
    o[:, 0] *= 1 + 5e-5
    return o.to(v.dtype)

@register(name="one_token_off", family="planted")
def one_token_off(q, k, v, decay, *, scale, initial_state=None):
    o = exact(q, k, v, decay, scale, initial_state).to(torch.float64)
    o[:, 3, -1] *= 1 + 2e-3
    return o.to(v.dtype)

@register(name="unwritten_tail", family="planted")
def unwritten_tail(q, k, v, decay, *, scale, initial_state=None):
    o = torch.empty_like(v)
    o[:, :, :-1] = exact(q, k, v, decay, scale, initial_state)[:, :, :-1]
    return o
'''

SHAPE = ("sweep.heads=[8]", "sweep.length=[1024]", "sweep.dim=[16]", "sweep.decay=[multiscale]")


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("verdicts")
    plugins = write_plugin(tmp / "plugins", "planted.py", PLANTED).parent
    out = tmp / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[honest,lazy_after_first,memoises,identity_cache,"
                   "one_head_off,one_token_off,unwritten_tail,chunked]", *SHAPE, "dtypes=[float32,bfloat16]",
                   f"out={out}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results(out).set_index(["method", "dtype"])


@pytest.mark.parametrize("method", ["lazy_after_first", "memoises", "identity_cache"])
def test_methods_that_skip_work_after_the_first_call_are_caught(planted_run: pd.DataFrame, method: str) -> None:
    row = planted_run.loc[(method, "float32")]  # its first problem: the checked call was exact
    assert row["status"] == "inaccurate", (method, row["error"])
    assert "timed call" in row["error"] and "first call passed" in row["error"]
    assert "inputs (" in row["error"]  # which call: its inputs' signs
    assert planted_run.loc[(method, "bfloat16"), "status"] != "ok"  # later problems: wrong from the start


def test_one_head_off_by_5e_5_fails_at_float32_though_the_global_norm_passes(planted_run: pd.DataFrame) -> None:
    row = planted_run.loc[("one_head_off", "float32")]
    assert row["status"] == "inaccurate"
    assert row["rel_err"] < 1e-5 < row["worst_head_rel_err"]


def test_one_token_off_fails(planted_run: pd.DataFrame) -> None:
    assert planted_run.loc[("one_token_off", "float32"), "status"] == "inaccurate"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_unwritten_tail_fails(planted_run: pd.DataFrame, dtype: str) -> None:
    row = planted_run.loc[("unwritten_tail", dtype)]
    assert row["status"] == "inaccurate", row["error"]


def test_exact_methods_stay_ok_and_rank(planted_run: pd.DataFrame) -> None:
    for method in ("honest", "chunked"):
        for dtype in ("float32", "bfloat16"):
            row = planted_run.loc[(method, dtype)]
            assert row["status"] == "ok", (method, dtype, row["error"])
            assert row["worst_head_rel_err"] >= row["rel_err"] and row["reps"] >= 10
            assert row["time_ms_lo"] <= row["time_ms"] <= row["time_ms_hi"]


def test_exact_methods_are_ok_in_every_dtype_through_the_timed_check(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(*TINY, "methods=[chunked,recurrent,lightning2]", "dtypes=[float64,float32,float16,bfloat16]",
                   "sweep.initial_state=[true]", "sweep.decay=[multiscale]", "sweep.heads=[4]", f"out={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = results(out)
    assert len(df) == 3 * 4 * 2 and set(df["dtype"]) == {"float64", "float32", "float16", "bfloat16"}
    assert (df["status"] == "ok").all(), df[["method", "dtype", "status", "error"]].to_string()


def _row(time_ms: float, copy_gbps: float = 100.0, floor_ms: float = 1e-4) -> Row:
    p = Problem(1, 8, 4096, 64, dtype="bfloat16")
    return Row.for_problem("m", "f", p, "ok", time_ms=time_ms, copy_gbps=copy_gbps, launch_floor_ms=floor_ms)


def test_rows_faster_than_physics_are_suspect_not_ok() -> None:
    floor_ms = Problem(1, 8, 4096, 64, dtype="bfloat16").bytes_floor() / 100e9 * 1e3  # at 100 GB/s
    fine = _row(2 * floor_ms)
    assert fine.status == "ok" and math.isclose(fine.pct_bw, 50.0)
    too_fast = _row(floor_ms / 2)
    assert too_fast.status == Status.SUSPECT and "200% of the measured copy bandwidth" in too_fast.error
    at_launch_floor = _row(2e-4, copy_gbps=float("nan"), floor_ms=3e-4)
    assert at_launch_floor.status == Status.SUSPECT and "launch floor" in at_launch_floor.error
    assert _row(5.0).tflops == pytest.approx(4 * 8 * 4096 * 64 * 64 / 5e-3 / 1e12)


STEPS = '''
import torch
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import reference

def _fn(q, k, v, decay, *, scale, initial_state=None):
    o, s = reference(Inputs(q, k, v, decay, scale, initial_state))
    return o.to(v.dtype), s.to(torch.float32)

def _step(q, k, v, decay, *, scale, state, off=1.0):
    o, s = _fn(q[:, :, None], k[:, :, None], v[:, :, None], decay * off, scale=scale, initial_state=state)
    return o[:, :, 0], s

register(name="good_step", family="planted", modes=("prefill", "decode"), step=_step)(_fn)
register(name="step_wrong_decay", family="planted", modes=("prefill", "decode"),
         step=lambda *a, **kw: _step(*a, off=0.999, **kw))(_fn)
'''


def test_a_decode_step_entry_is_checked_on_every_decode_row(tmp_path: Path) -> None:
    """`step=` is what the dispatcher calls for a decode token: the harness runs the check through it."""
    plugins = write_plugin(tmp_path / "plugins", "steps.py", STEPS).parent
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[good_step,step_wrong_decay,recurrent]",
                   "sweep.mode=[decode]", "sweep.steps=[4]", "sweep.length=[40]", "dtypes=[float32]",
                   f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = results(out).set_index("method")
    assert df.loc["good_step", "status"] == "ok" and df.loc["recurrent", "status"] == "ok"
    wrong = df.loc["step_wrong_decay"]  # its `fn` is exact, so only the step can fail it
    assert wrong["status"] == "inaccurate", wrong["error"]
