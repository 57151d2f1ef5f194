"""What the plots are drawn from: route styles, panels per class, the bytes-floor line, axes that fit the data,
the speed-up bars and the winners map's cells (data, not pixels); and one end-to-end write."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from leetbench.leaderboard import build
from leetbench.plots import (OKABE_ITO, bandwidth_axis, class_panels, floor_ms, route_styles, series,
                             speedup_bars, winner_cells, write_all)
from leetbench.problem import Problem
from leetbench.results import Row


def rows(method: str, family: str, times: dict[int, float], *, tf32: bool = False, host: str = "h",
         copy_gbps: float = 10.0, spread: float = 0.0, batch: int = 1) -> list[dict]:
    out = []
    for n, t in times.items():
        r = Row.for_problem(method, family, Problem(batch, 2, n, 16), "ok", time_ms=t, rel_err=1e-7, tf32=tf32,
                            host=host, copy_gbps=copy_gbps, time_ms_lo=t * (1 - spread) if spread else math.nan,
                            time_ms_hi=t * (1 + spread) if spread else math.nan)
        out.append(r.__dict__)
    return out


def frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for g in groups for r in g])


N = {1024: 1.0, 4096: 4.0}


def contenders() -> pd.DataFrame:
    return frame(rows("cupy_chunked", "chunked", N), rows("fla_chunk", "peer:fla", N, tf32=True),
                 rows("lightning_attn2", "peer:lightning", N, tf32=True), rows("chunked", "chunked", N),
                 rows("recurrent", "recurrent", N))


def test_route_styles_emphasise_ours_and_peers_over_the_zoo() -> None:
    st = route_styles(contenders())
    assert st["cupy_chunked"]["kind"] == "ours" and st["fla_chunk"]["kind"] == "peer" and st["chunked"]["kind"] == "zoo"
    assert st["cupy_chunked"]["linewidth"] > st["fla_chunk"]["linewidth"] > st["chunked"]["linewidth"]
    assert st["fla_chunk"]["linestyle"] == "--" and st["chunked"]["alpha"] < 1 == st["cupy_chunked"]["alpha"]
    assert list(st)[:3] == ["cupy_chunked", "fla_chunk", "lightning_attn2"]  # ours first, then peers
    assert all(s["color"] in OKABE_ITO for s in st.values())
    many = frame(*[rows(f"m{i:02d}", "zoo", N) for i in range(40)])
    looks = {(s["color"], s["marker"]) for s in route_styles(many).values()}
    assert len(looks) == 40  # colour and marker together tell 40 routes apart


def test_the_zoo_is_not_faded_when_nothing_else_ran() -> None:
    df = frame(rows("chunked", "chunked", N), rows("recurrent", "recurrent", N))
    skipped = Row.for_problem("cupy_chunked", "chunked", Problem(1, 2, 1024, 16), "skipped").__dict__
    assert route_styles(pd.concat([df, pd.DataFrame([skipped])]))["chunked"]["alpha"] == 1.0


def test_panels_are_per_class_and_machine() -> None:
    df = pd.concat([contenders(), frame(rows("chunked", "chunked", N, host="other"))])
    keys = [(k["host"], k["precision"]) for k, _ in class_panels(df)]
    assert keys == [("h", "fp32"), ("h", "tf32"), ("other", "fp32")]
    tf32 = dict((k["precision"], g) for k, g in class_panels(contenders()))["tf32"]
    assert set(tf32["method"]) == {"fla_chunk", "lightning_attn2"}


def test_the_limit_line_is_the_bytes_floor_time() -> None:
    sel = frame(rows("chunked", "chunked", N, copy_gbps=10.0))
    floor = floor_ms(sel)
    # B·H·N·(2D + 2E)·4 bytes at 10 GB/s
    assert floor[1024] == pytest.approx(1 * 2 * 1024 * 64 * 4 / 10e9 * 1e3)
    assert floor[4096] == pytest.approx(4 * floor[1024])
    assert floor_ms(frame(rows("chunked", "chunked", N, copy_gbps=math.nan))).empty


def test_series_carry_the_intervals_for_error_bars() -> None:
    s = series(frame(rows("a", "f", N, spread=0.1)))["a"]
    assert list(s.index) == [1024, 4096] and s.loc[4096, "lo"] == pytest.approx(3.6) and s.loc[4096, "hi"] == pytest.approx(4.4)


def test_bandwidth_axis_fits_the_data() -> None:
    scale, (lo, hi) = bandwidth_axis(pd.Series([0.2, 0.9, 3.0]))  # a CPU: a few % of the copy bandwidth
    assert scale == "linear" and hi < 5
    scale, (lo, hi) = bandwidth_axis(pd.Series([0.001, 0.5, 80.0]))  # the seed library beside ours
    assert scale == "log" and lo < 0.001 and hi > 80
    assert bandwidth_axis(pd.Series([math.nan])) == ("linear", (0.0, 100.0))


def test_speedup_bars_per_class_ranked_only() -> None:
    board = build(contenders(), baseline="chunked")
    bars = {k["precision"]: t for k, t in speedup_bars(board)}
    assert set(bars) == {"fp32", "tf32"} and set(bars["tf32"]["method"]) == {"fla_chunk", "lightning_attn2"}
    assert list(bars["fp32"]["method"])[-1] == bars["fp32"].sort_values("speedup")["method"].iloc[-1]  # top bar fastest


def test_winner_cells_name_the_route_its_bandwidth_and_lead() -> None:
    df = frame(rows("cupy_chunked", "chunked", {1024: 1.0}), rows("chunked", "chunked", {1024: 1.5}),
               rows("cupy_chunked", "chunked", {1024: 2.0}, batch=8, spread=0.1),
               rows("chunked", "chunked", {1024: 2.1}, batch=8, spread=0.1))
    (title, cells), = winner_cells(build(df).winners)
    assert "CPU (h) · fp32 · prefill" in title
    c = cells.set_index("batch")
    assert c.loc[1, "method"] == "cupy_chunked" and not c.loc[1, "tie"]
    pct = 100 * 1 * 2 * 1024 * 64 * 4 / 1e-3 / 1e9 / 10.0
    assert c.loc[1, "label"] == f"cupy_chunked\n{pct:.0f}% BW\n+50%"
    assert c.loc[8, "tie"] and c.loc[8, "label"].startswith("tie\ncupy_chunked\nchunked")


def test_the_winners_map_keeps_every_class_main_grid_when_panels_are_too_many() -> None:
    """A wide grid gives a class dozens of small panels: the main (largest) grid of every class stays, in
    class order, and only the smallest panels are left out (the published H200 map lost its bf16 grid)."""
    def one(dim: int, times: dict[int, float], dtype: str = "bfloat16", batch: int = 1) -> list[dict]:
        out = []
        for n, t in times.items():
            r = Row.for_problem("cupy_chunked", "chunked", Problem(batch, 2, n, dim, dtype=dtype), "ok", time_ms=t,
                                rel_err=1e-3, host="h", copy_gbps=1000.0)
            out.append(r.__dict__)
        return out
    small = [one(d, {512: 1.0}) for d in range(17, 37)]  # 20 one-cell bf16 panels, listed first
    main = [one(64, {1024: 1.0, 4096: 2.0}, batch=b) for b in (1, 8)]  # the bf16 grid: 4 cells, sorted last
    fp32 = [one(16, {1024: 1.0}, dtype="float32")]
    panels = winner_cells(build(frame(*small, *main, *fp32)).winners, limit=5)
    titles = [t for t, _ in panels]
    assert len(panels) == 5 and "fp32" in titles[0] and "D=64" in titles[1] and "bf16" in titles[1]
    assert len(panels[1][1]) == 4 and all(len(c) == 1 for _, c in panels[2:])


def test_write_all_draws_every_plot(tmp_path: Path) -> None:
    df = contenders()
    made = write_all(df, build(df, "chunked"), tmp_path)
    assert {p.stem for p in made} == {"time_vs_length", "winners", "bandwidth", "speedup", "error_vs_length"}
    assert all(p.stat().st_size > 5000 for p in made)
