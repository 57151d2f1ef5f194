"""`leetbench compare=[BASE,NEW]`: verdicts from samples and from intervals, machines matched apart, the exit
status; end to end through the CLI with planted methods whose time is a fixed sleep plus real work."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, run_cli, write_plugin
from leetbench.compare import compare_command, compare_runs
from leetbench.config import ConfigError
from leetbench.problem import Problem
from leetbench.results import Row
from leetbench.store import SamplesFile


def write_run(folder: Path, times: dict[str, float], *, host: str = "h", gpu: str = "", status: str = "ok",
              samples: bool = True, spread: float = 0.01, seed: int = 0,
              waited: dict[str, float] | None = None) -> None:
    """A run folder: one row per method at N=64 (median `times[m]`), and its samples unless `samples=False`;
    `waited[m]` is the row's gpu_waited (else NaN, as on the CPU or before the column)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = SamplesFile(folder / "samples.csv.gz")
    out = []
    for m, t in times.items():
        draws = t * (1 + spread * rng.standard_normal(40))
        r = Row.for_problem(m, "f", Problem(1, 2, 64, 16), status, time_ms=float(np.median(draws)),
                            time_ms_lo=t * (1 - 2 * spread), time_ms_hi=t * (1 + 2 * spread), host=host, gpu=gpu,
                            timestamp="2026-11-29T00:00:00+00:00", gpu_waited=(waited or {}).get(m, math.nan))
        out.append(r.as_dict())
        if samples:
            store.append(r.row_id, [list(draws[:20]), list(draws[20:])])
    pd.DataFrame(out).to_csv(folder / "results.csv", index=False)


def verdicts(c) -> dict[str, str]:
    return dict(zip(c.table["method"], c.table["verdict"]))


def test_samples_decide_slower_faster_and_same(tmp_path: Path) -> None:
    write_run(tmp_path / "base", {"steady": 1.0, "slowed": 1.0, "sped": 1.0, "nudged": 1.0}, seed=1)
    write_run(tmp_path / "new", {"steady": 1.0, "slowed": 5.0, "sped": 0.5, "nudged": 1.05}, seed=2)
    c = compare_runs(tmp_path / "base", tmp_path / "new")
    assert verdicts(c) == {"steady": "same", "slowed": "slower", "sped": "faster", "nudged": "same"}
    assert c.table["basis"].str.startswith("samples (40 vs 40)").all()
    slowed = c.table.set_index("method").loc["slowed"]
    assert slowed["ratio"] == pytest.approx(5.0, rel=0.05) and slowed["ratio_lo"] > 1 and slowed["p_value"] < 1e-6
    assert list(c.table["method"])[0] == "slowed"  # regressions first
    # 5% is below the default threshold (10%), above 1%
    assert verdicts(compare_runs(tmp_path / "base", tmp_path / "new", threshold=0.01))["nudged"] == "slower"


def test_a_verdict_whose_new_samples_scattered_is_marked_noisy(tmp_path: Path) -> None:
    """A busy host shows through a launch-bound call as samples both slower and scattered: the verdict
    stands (the gate), comparison.md marks it noisy; a clean slowdown is not marked."""
    write_run(tmp_path / "base", {"clean": 1.0, "scattered": 1.0}, spread=0.01, seed=1)
    write_run(tmp_path / "new", {"clean": 2.0}, spread=0.01, seed=2)
    write_run(tmp_path / "new_s", {"scattered": 2.0}, spread=0.4, seed=3)
    rows = pd.concat([pd.read_csv(tmp_path / f / "results.csv") for f in ("new", "new_s")])
    (tmp_path / "both").mkdir()
    rows.to_csv(tmp_path / "both" / "results.csv", index=False)
    (tmp_path / "both" / "samples.csv.gz").write_bytes((tmp_path / "new" / "samples.csv.gz").read_bytes()
                                                      + (tmp_path / "new_s" / "samples.csv.gz").read_bytes())
    assert compare_command([str(tmp_path / "base"), str(tmp_path / "both")], 0.10, tmp_path / "cmp") == 1
    t = compare_runs(tmp_path / "base", tmp_path / "both").table.set_index("method")
    assert t.loc["clean", "verdict"] == t.loc["scattered", "verdict"] == "slower"
    assert t.loc["scattered", "spread_new"] > 4 * t.loc["scattered", "spread_base"] > 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    line = {m: next(x for x in md.splitlines() if f"`{m}`" in x and x.startswith("| **")) for m in ("clean", "scattered")}
    assert "*noisy*" in line["scattered"] and "*noisy*" not in line["clean"]


def test_a_pair_whose_row_is_host_bound_says_on_which_side(tmp_path: Path) -> None:
    """A launch-bound row measures the CPU issuing the call: comparison.md says so, the verdict stands."""
    times = {"kernel": 1.0, "launch": 1.0, "older": 1.0}
    write_run(tmp_path / "base", times, gpu="H200", seed=1, waited={"kernel": 0.0, "launch": 0.2})
    write_run(tmp_path / "new", {**times, "launch": 2.0}, gpu="H200", seed=2, waited={"kernel": 0.1, "launch": 0.9})
    assert compare_command([str(tmp_path / "base"), str(tmp_path / "new")], 0.10, tmp_path / "cmp") == 1
    t = compare_runs(tmp_path / "base", tmp_path / "new").table.set_index("method")
    assert list(t["host_bound_new"]) == [True, False, False] and not t["host_bound_base"].any()  # launch first
    assert t.loc["launch", "verdict"] == "slower"
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    per_problem = md.split("## Per problem")[1].splitlines()
    rows = {m: next(x for x in per_problem if f"`{m}`" in x) for m in times}
    assert "*host-bound* (NEW)" in rows["launch"]
    assert "host-bound" not in rows["kernel"] + rows["older"]


def test_without_samples_the_rows_intervals_decide(tmp_path: Path) -> None:
    write_run(tmp_path / "base", {"a": 1.0, "b": 1.0}, samples=False)
    write_run(tmp_path / "new", {"a": 1.01, "b": 2.0}, samples=False)
    c = compare_runs(tmp_path / "base", tmp_path / "new")
    assert verdicts(c) == {"a": "same", "b": "slower"} and set(c.table["basis"]) == {"intervals"}
    b = c.table.set_index("method").loc["b"]
    assert b["ratio_lo"] == pytest.approx(2.0 * 0.98 / 1.02) and b["ratio_hi"] == pytest.approx(2.0 * 1.02 / 0.98)


def test_two_cards_are_matched_without_host_and_gpu(tmp_path: Path) -> None:
    write_run(tmp_path / "base", {"a": 1.0}, host="alpha", gpu="Card A")
    write_run(tmp_path / "new", {"a": 0.5}, host="beta", gpu="Card B")
    out = tmp_path / "cmp"
    assert compare_command([str(tmp_path / "base"), str(tmp_path / "new")], 0.10, out) == 0
    md = (out / "comparison.md").read_text()
    assert "WITHOUT host and GPU" in md and "Card A on `alpha`" in md and "Card B on `beta`" in md
    assert pd.read_csv(out / "comparison.csv")["verdict"].tolist() == ["faster"]


def test_a_method_that_stops_passing_is_a_regression(tmp_path: Path) -> None:
    write_run(tmp_path / "base", {"a": 1.0})
    write_run(tmp_path / "new", {"a": 1.0}, status="error")
    out = tmp_path / "cmp"
    assert compare_command([str(tmp_path / "base"), str(tmp_path / "new")], 0.10, out) == 1
    assert pd.read_csv(out / "comparison.csv")["verdict"].tolist() == ["failed"]


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    write_run(tmp_path / "base", {"a": 1.0})
    with pytest.raises(ConfigError, match="two run folders"):
        compare_command([str(tmp_path / "base")], 0.10, tmp_path / "cmp")
    with pytest.raises(ConfigError, match="compare_threshold"):
        compare_runs(tmp_path / "base", tmp_path / "base", threshold=-1)
    with pytest.raises(ConfigError, match="neither a run folder"):
        compare_runs(tmp_path / "base", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results.csv"):
        compare_runs(tmp_path / "base", tmp_path / "empty")


# ---- end to end ---------------------------------------------------------------------------------------

PLANT = '''
import time
from leetbench import register

FACTOR = {factor}


def _work(q, k, v, decay, scale, initial_state):
    from leetbench.problem import Inputs
    from leetbench.reference import reference
    o, _ = reference(Inputs(q, k, v, decay, scale, initial_state))
    return o.to(v.dtype)


@register(name="plant_steady", family="plant")
def plant_steady(q, k, v, decay, *, scale, initial_state=None):
    # a fixed sleep dominates (10 ms against ~0.5 ms of work and of wake-up lateness on a busy 2-core machine;
    # with 3 ms, 3.4 → 3.74 ms was seen between two equal runs): the speed hardly depends on the machine's load
    time.sleep(0.010)
    return _work(q, k, v, decay, scale, initial_state)


@register(name="plant_moving", family="plant")
def plant_moving(q, k, v, decay, *, scale, initial_state=None):
    time.sleep(0.010 * FACTOR)
    return _work(q, k, v, decay, scale, initial_state)
'''

PLANT_ARGS = ("methods=[plant_*]", "timing.warmup_ms=1", "timing.rep_ms=1", "timing.min_reps=10")


def sweep_with(tmp_path: Path, name: str, factor: int) -> Path:
    plugins = write_plugin(tmp_path / f"plugins_{name}", "plant.py", PLANT.format(factor=factor)).parent
    out = tmp_path / name
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", *PLANT_ARGS, f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_compare_through_the_cli_flags_a_5x_slowdown_and_passes_equal_runs(tmp_path: Path) -> None:
    base, same, slow = (sweep_with(tmp_path, "base", 1), sweep_with(tmp_path, "same", 1),
                        sweep_with(tmp_path, "slow", 5))
    with ThreadPoolExecutor(2) as pool:  # the comparisons only read files: both at once
        same_run, slow_run = pool.map(lambda args: run_cli(*args, cwd=tmp_path), [
            (f"compare=[{base},{same}]", f"out={tmp_path / 'cmp_same'}"),
            (f"compare=[{base},{slow}]", f"out={tmp_path / 'cmp_slow'}")])
    proc = same_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    clean = pd.read_csv(tmp_path / "cmp_same" / "comparison.csv")
    assert len(clean) == 4 and set(clean["verdict"]) == {"same"}, clean
    assert clean["basis"].str.startswith("samples").all()

    proc = slow_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "cmp_slow" / "comparison.csv")
    v = table.groupby("method")["verdict"].agg(set).to_dict()
    assert v == {"plant_moving": {"slower"}, "plant_steady": {"same"}}, table
    moving = table[table["method"] == "plant_moving"]
    assert (moving["ratio"] > 3).all() and (moving["ratio_lo"] > 1).all()
    assert "slower: plant_moving" in proc.stdout and "1 slower" not in proc.stdout  # both problems
    md = (tmp_path / "cmp_slow" / "comparison.md").read_text()
    assert "2 slower, 2 same" in md and "WITHOUT host and GPU" in md and not math.isnan(moving["p_value"].iloc[0])


def test_a_report_says_what_changed_since_a_previous_run(tmp_path: Path) -> None:
    """report=[NEW] since=BASE: the leaderboard (markdown and page) states the comparison, every pair beside it."""
    write_run(tmp_path / "base", {"kept": 1.0, "slowed": 1.0}, seed=1)
    write_run(tmp_path / "new", {"kept": 1.0, "slowed": 3.0}, seed=2)
    write_run(tmp_path / "rep" / "elsewhere", {"other": 9.0}, seed=3)  # below out, not in the report
    proc = run_cli("report=[new]", "since=base", "out=rep", "plots=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    section = md.split("## Since the previous run")[1]
    assert "Against base (commit ?)" in section and "1 slower, 1 same" in section
    assert "[since/comparison.md](since/comparison.md)" in section and "| `slowed` | fp32 | 1 | 1 | 0 | 3." in section
    pairs = (tmp_path / "rep" / "since" / "comparison.md").read_text()
    assert "WITHOUT host and GPU" in pairs and "`other`" not in pairs and "0 only in NEW" in pairs
    html = (tmp_path / "rep" / "leaderboard.html").read_text()
    assert "<h2>Since the previous run</h2>" in html and 'href="since/comparison.md"' in html
    plain = run_cli("report=[new]", "out=rep2", "plots=false", cwd=tmp_path)
    assert plain.returncode == 0 and "Since the previous run" not in (tmp_path / "rep2" / "leaderboard.md").read_text()
    for bad, says in ((["since=base"], "goes with report="), (["report=[new]", "since=nowhere"], "since=nowhere")):
        proc = run_cli(*bad, "out=rep3", cwd=tmp_path)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "rep3").exists()  # refused before anything was written


def test_a_row_carried_over_unmeasured_is_not_counted_as_the_same(tmp_path: Path) -> None:
    """A merged leaderboard keeps stages it did not measure again: those rows are in BASE and NEW with one row_id,
    and are `carried` (no ratio, no verdict), not `same`; the re-measured rows are judged as before."""
    write_run(tmp_path / "base", {"kept": 1.0, "remeasured": 1.0}, seed=1)
    base = pd.read_csv(tmp_path / "base" / "results.csv")
    write_run(tmp_path / "new", {"remeasured": 3.0}, seed=2)
    new = pd.read_csv(tmp_path / "new" / "results.csv")
    pd.concat([new, base[base["method"] == "kept"]]).to_csv(tmp_path / "new" / "results.csv", index=False)
    c = compare_runs(tmp_path / "base", tmp_path / "new")
    assert verdicts(c) == {"kept": "carried", "remeasured": "slower"}
    assert math.isnan(c.table.set_index("method").loc["kept", "ratio"])
    assert c.counts()["carried"] == 1 and c.counts()["same"] == 0
    proc = run_cli("report=[new]", "since=base", "out=rep", "plots=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    section = (tmp_path / "rep" / "leaderboard.md").read_text().split("## Since the previous run")[1]
    assert "1 slower, 1 carried" in section and "carried: the same row in both, not measured again" in section
