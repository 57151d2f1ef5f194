"""The leaderboard from synthetic rows: classes, common problems, the tie rule, winners, machines apart, the
markdown; and on the published H200 rows (older schema)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from leetbench.leaderboard import build, markdown, ranked_set, wall_time, winners
from leetbench.page import page
from leetbench.problem import Problem
from leetbench.report import merge
from leetbench.results import Row
from leetbench.store import read_results

H200 = Path(__file__).resolve().parents[1] / "results" / "gpu-NVIDIA-H200" / "results.csv"


def rows(method: str, times: dict[int, float], status: str = "ok", family: str = "f", *, spread: float = 0.0,
         tf32: bool = False, host: str = "h", gpu: str = "", dtype: str = "float32", **extra) -> list[dict]:
    """One row per N; `spread` gives each median a ± interval (relative)."""
    out = []
    for n, t in times.items():
        r = Row.for_problem(method, family, Problem(1, 2, n, 16, dtype=dtype), status, time_ms=t, rel_err=1e-7,
                            complexity="O(N)", tf32=tf32, host=host, gpu=gpu,
                            time_ms_lo=t * (1 - spread) if spread else math.nan,
                            time_ms_hi=t * (1 + spread) if spread else math.nan, **extra)
        out.append(r.__dict__)
    return out


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for g in groups for r in g])


N4 = [1024, 2048, 4096, 8192]


def test_speedups_ranks_and_exponents() -> None:
    df = frame(rows("base", {k: k / 1000 for k in N4}),  # linear
               rows("fast", {k: k / 4000 for k in N4}),  # 4× faster, linear
               rows("square", {k: (k / 1000) ** 2 for k in N4}),  # quadratic
               rows("wrong", {k: k / 1e6 for k in N4}, status="inaccurate"),  # fastest, but wrong
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


def test_tf32_and_ieee_routes_on_the_same_float32_problems_rank_in_different_classes() -> None:
    df = frame(rows("ieee_a", {k: k / 1000 for k in N4}), rows("ieee_b", {k: k / 500 for k in N4}),
               rows("tensor", {k: k / 8000 for k in N4}, tf32=True, family="peer:x"))
    board = build(df, baseline="ieee_a")
    t = board.table
    assert set(t["precision"]) == {"fp32", "tf32"}
    fp32 = t[t["precision"] == "fp32"].set_index("method")
    assert list(fp32.index) == ["ieee_a", "ieee_b"] and fp32.loc["ieee_a", "rank"] == 1
    tf32 = t[t["precision"] == "tf32"].set_index("method")
    assert list(tf32.index) == ["tensor"] and tf32.loc["tensor", "rank"] == 1
    # the winners are per precision too: the TF32 route does not take the IEEE routes' problems
    w = board.winners
    assert set(w[w["precision"] == "fp32"]["winner"]) == {"ieee_a"}
    assert set(w[w["precision"] == "tf32"]["winner"]) == {"tensor"}
    md = markdown(board, df)
    assert md.index("## fp32 · prefill") < md.index("## tf32 · prefill")


def test_a_method_covering_fewer_problems_is_listed_not_ranked_ahead() -> None:
    n8 = {2 ** i: 2.0 ** i / 1000 for i in range(8, 16)}
    df = frame(rows("wide", n8), rows("mid", {k: v * 2 for k, v in list(n8.items())[:6]}),
               rows("narrow", {k: v / 10 for k, v in list(n8.items())[:2]}))  # 10× faster, on 2 problems only
    board = build(df, baseline="wide")
    t = board.table.set_index("method")
    c = board.classes[0]
    assert c.common_problems == 6 and c.class_problems == 8
    assert t.loc["wide", "rank"] == 1 and t.loc["mid", "rank"] == 2
    assert pd.isna(t.loc["narrow", "rank"]) and not t.loc["narrow", "ranked"]
    assert t.loc["narrow", "own_speedup"] == pytest.approx(10.0) and t.loc["narrow", "own_problems"] == 2
    assert list(board.table["method"]) == ["wide", "mid", "narrow"]
    assert "Ranked on the 6 problems every ranked method ran `ok` (of 8" in markdown(board, df)
    assert "(10.00× on 2 of 8)" in markdown(board, df)


def test_ranked_set_keeps_half_of_the_widest_coverage() -> None:
    times = pd.DataFrame({"a": [1.0] * 10, "b": [1.0] * 6 + [math.nan] * 4, "c": [1.0] * 4 + [math.nan] * 6})
    ranked, common = ranked_set(times)
    assert ranked == ["a", "b"] and len(common) == 6  # c would leave 4 < 5 problems


def test_overlapping_intervals_share_a_rank() -> None:
    df = frame(rows("a", {k: 1.00 for k in N4}, spread=0.05), rows("b", {k: 1.03 for k in N4}, spread=0.05),
               rows("c", {k: 2.0 for k in N4}, spread=0.05))
    t = build(df, baseline="a").table.set_index("method")
    assert t.loc["a", "rank"] == 1 and t.loc["b", "rank"] == 1 and t.loc["a", "tied"] and t.loc["b", "tied"]
    assert t.loc["c", "rank"] == 3 and not t.loc["c", "tied"]  # beaten by both: 1 + 2
    assert t.loc["b", "speedup_lo"] < t.loc["b", "speedup"] < t.loc["b", "speedup_hi"]
    assert "| =1 | `a` |" in markdown(build(df, baseline="a"), df)


def test_a_winner_only_when_intervals_do_not_overlap() -> None:
    df = frame(rows("a", {1024: 1.00, 2048: 1.0}, spread=0.05), rows("b", {1024: 1.04, 2048: 1.5}, spread=0.05))
    w = winners(df).set_index("length")
    assert w.loc[1024, "winner"] == "" and w.loc[1024, "tied"] == "a, b" and w.loc[1024, "fastest"] == "a"
    assert w.loc[2048, "winner"] == "a" and w.loc[2048, "tied"] == "" and w.loc[2048, "lead"] == pytest.approx(1.5)
    assert "tie: `a`, `b`" in markdown(build(df, "a"), df)


def test_rows_without_intervals_fall_back_to_p20_p80() -> None:
    df = frame(rows("a", {1024: 1.0}, time_ms_p20=0.9, time_ms_p80=1.2), rows("b", {1024: 1.1}, time_ms_p20=1.05,
                                                                           time_ms_p80=1.3))
    assert winners(df)["tied"].iloc[0] == "a, b"


def test_two_hosts_are_never_mixed(tmp_path: Path) -> None:
    a = frame(rows("x", {k: 1.0 for k in N4}, host="alpha"), rows("y", {k: 2.0 for k in N4}, host="alpha"))
    b = frame(rows("x", {k: 3.0 for k in N4}, host="beta"), rows("y", {k: 1.0 for k in N4}, host="beta"))
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    df = merge([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert len(df) == 16  # same methods and problems, two machines: every row kept
    board = build(df, baseline="x")
    assert [c.key["host"] for c in board.classes] == ["alpha", "beta"]
    for c, best in zip(board.classes, ["x", "y"]):
        assert c.table.set_index("method").loc[best, "rank"] == 1 and c.common_problems == 4
    w = board.winners
    assert len(w) == 8 and set(w[w["host"] == "alpha"]["winner"]) == {"x"} and set(w[w["host"] == "beta"]["winner"]) == {"y"}
    md = markdown(board, df)
    assert "CPU on `alpha`" in md and "CPU on `beta`" in md


def test_where_the_time_went() -> None:
    df = frame(rows("a", {1024: 1.0}, prepare_s=1.0, setup_s=0.5, check_s=2.0, timing_s=4.0, measured_s=3.0))
    w = wall_time(df)
    assert w.total_s == pytest.approx(7.5) and w.share == pytest.approx(0.4)
    assert w.largest == ("measured calls", 3.0)
    assert "40% of it inside measured calls" in markdown(build(df), df)
    assert wall_time(frame(rows("a", {1024: 1.0}))) is None


def test_a_host_bound_winner_is_marked_and_ranks_as_before() -> None:
    """Two winners on a GPU: at N=1024 the GPU waited for the host in 95% of the calls (host-bound), at N=2048
    in none (its host time, 0.38 ms, waited on a full launch queue: it does not decide)."""
    df = frame(rows("a", {1024: 0.2}, gpu="H200", host_ms=0.19, gpu_waited=0.95),
               rows("a", {2048: 0.4}, gpu="H200", host_ms=0.38, gpu_waited=0.0),
               rows("b", {1024: 0.5, 2048: 0.9}, gpu="H200", host_ms=0.03, gpu_waited=0.1))
    board = build(df, baseline="b")
    w = board.winners.set_index("length")
    assert list(w["winner"]) == ["a", "a"] and list(w["host_bound"]) == [True, False]
    md = markdown(board, df)
    assert "| `a` | 0.2 [0.2–0.2] (host) | — | `b` | 2.50× |" in md
    assert "| `a` | 0.4 [0.4–0.4] | — | `b` | 2.25× |" in md
    assert "(host): host-bound" in md  # the table says what the mark means
    html = page(board, df)
    assert html.count(">0.2 (host)</td>") == 1 and "0.4 (host)" not in html and "(host): host-bound" in html
    t = board.table.set_index("method")
    assert t.loc["a", "host_bound_rows"] == 1 and t.loc["b", "host_bound_rows"] == 0  # ok rows that are, per method
    # the mark changes no ranking, and rows without gpu_waited (older files) mark nothing
    before = build(df.drop(columns=["host_ms", "gpu_waited"]), baseline="b")
    assert before.table[["method", "rank", "speedup"]].equals(board.table[["method", "rank", "speedup"]])
    assert not before.winners["host_bound"].any() and "(host) |" not in markdown(before, df)


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


@pytest.mark.skipif(not H200.exists(), reason="published results not in this checkout")
def test_published_h200_rows_rank_per_precision() -> None:
    """The older schema (no precision, no intervals): fla_chunk's float32 rows are TF32 and rank there only."""
    df = read_results([H200])
    t = build(df, baseline="chunked").table
    fla = t[(t["method"] == "fla_chunk") & t["ranked"]]
    assert set(fla["precision"]) == {"tf32", "fp16", "bf16"}
    bf16 = t[(t["precision"] == "bf16") & (t["mode"] == "prefill") & t["ranked"]].set_index("method")
    assert bf16.loc["cupy_chunked", "rank"] < bf16.loc["fla_chunk", "rank"]
    assert (t[t["ranked"]].groupby(["precision", "mode"])["common_problems"].nunique() == 1).all()
