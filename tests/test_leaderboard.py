"""The leaderboard from synthetic rows: speed-ups, ranking rules, fitted exponents, the markdown."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from leetbench.leaderboard import build, markdown
from leetbench.problem import Problem
from leetbench.results import Row
from leetbench.store import read_results


def rows(method: str, times: dict[int, float], status: str = "ok", family: str = "f") -> list[dict]:
    out = []
    for n, t in times.items():
        r = Row.for_problem(method, family, Problem(1, 2, n, 16), status, time_ms=t, rel_err=1e-7,
                            complexity="O(N)")
        out.append(r.__dict__)
    return out


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for g in groups for r in g])


def test_speedups_ranks_and_exponents() -> None:
    n = [1024, 2048, 4096, 8192]
    df = frame(rows("base", {k: k / 1000 for k in n}),  # linear
               rows("fast", {k: k / 4000 for k in n}),  # 4× faster, linear
               rows("square", {k: (k / 1000) ** 2 for k in n}),  # quadratic
               rows("wrong", {k: k / 1e6 for k in n}, status="inaccurate"),  # fastest, but wrong
               rows("gpu_only", {1024: math.nan}, status="skipped"))
    board = build(df, baseline="base")
    t = board.table.set_index("method")
    assert t.loc["fast", "speedup"] == pytest.approx(4.0) and t.loc["fast", "rank"] == 1
    assert t.loc["base", "speedup"] == pytest.approx(1.0) and t.loc["base", "rank"] == 2
    assert t.loc["square", "fitted_exponent"] == pytest.approx(2.0, abs=1e-9)
    assert t.loc["base", "fitted_exponent"] == pytest.approx(1.0, abs=1e-9)
    assert pd.isna(t.loc["wrong", "rank"]) and t.loc["wrong", "pass_rate"] == 0.0
    assert t.loc["gpu_only", "problems"] == 0 and t.loc["gpu_only", "skipped"] == 1
    assert set(board.winners["winner"]) == {"fast"}  # the inaccurate method never wins
    md = markdown(board, df)
    assert "| 1 | `fast` |" in md and "Rows that did not pass" in md and "`gpu_only`: " in md


def test_missing_baseline_falls_back_to_the_method_with_most_ok_rows() -> None:
    df = frame(rows("a", {1024: 1.0, 2048: 2.0}), rows("b", {1024: 0.5}))
    assert build(df, baseline="chunked").baseline == "a"


def test_only_skipped_rows_still_make_a_board(tmp_path) -> None:
    board = build(frame(rows("x", {1024: math.nan}, status="skipped")), baseline="x")
    assert board.table["rank"].isna().all() and board.winners.empty


def test_torn_csv_reads_back(tmp_path) -> None:
    path = tmp_path / "results.csv"
    frame(rows("a", {1024: 1.0})).to_csv(path, index=False)
    with open(path, "a") as f:
        f.write("a,f,cpu,float32,1,2")  # no newline: a torn last line
    assert len(read_results([path])) == 1
