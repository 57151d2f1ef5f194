"""The leaderboard: methods ranked within a class, and the fastest correct method per problem.

Classes. A row's class is (host, gpu, precision, mode): methods rank only against methods on the same
machine computing at the same precision — a TF32 route never ranks with IEEE float32 routes, even on the
same float32 problems — and decode steps apart from prefill. Problems are identified by
`results.PROBLEM_COLUMNS` (host and GPU included), so rows of two machines are never pooled.

Common problems. Within a class, methods are ranked on the problems every ranked method ran `ok`. The ranked
set is built greedily: methods in order of how many problems they ran ok (widest first, then by name); a
method joins while the common set keeps at least `MIN_SHARE` (half) of the widest method's problems. A method
that does not join is listed with its coverage and its speed-up on its own overlap with the baseline, without
a rank: it never gets ahead through a subset of problems that suits it.

Speed-up: the geometric mean over the common problems of baseline time / method time. The class's baseline is
`baseline` where it is ranked in the class, else the widest ranked method. The order does not depend on the
baseline: on one common set, ordering by speed-up is ordering by geometric-mean time.

Tie rule. Each row's median comes with a 95% interval [time_ms_lo, time_ms_hi]; rows written before
intervals existed use [time_ms_p20, time_ms_p80] (wider than the median's interval, so conservative), and
rows with neither the median alone. A method's interval on the common set is the box [G(lo), G(hi)], G the
geometric mean over the common problems: whenever every median lies in its interval, the geometric mean lies
in the box. Method A beats B when A's box lies entirely below B's (G_A(hi) < G_B(lo)); a method's rank is
1 + the number of ranked methods that beat it. Methods that nothing separates share a rank (ranks may repeat
and skip: 1, 1, 3), and a slower median with a wide interval can share a better rank — the table is sorted
by rank, then by geometric-mean time. Per problem the same rule picks the fastest correct method: a winner
only when its interval lies below every other method's; otherwise the methods whose interval reaches below
the best upper bound are tied.

Host-bound rows (`results.host_bound`: in most timed calls the GPU waited for the host to issue the call)
rank as any other; the fastest method's time is marked `(host)` where its row is one, and each method's
`host_bound_rows` counts its ok rows that are.

The intervals describe one run. A Triton autotuner that picks another config when it tunes again, and a
launch-bound call that measures the host, vary more than that from run to run (design §6); measure with
`timing.rounds` > 1 (each round a fresh process, tuning afresh) to include it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from leetbench.results import (FAILED, HOST_BOUND, PRECISIONS, PROBLEM_COLUMNS, RAN, SHAPE_COLUMNS, host_bound,
                               problem_key)

CLASS_COLUMNS = ["host", "gpu", "precision", "mode"]
MIN_SHARE = 0.5
RAN_STATUSES = [str(s) for s in RAN]
FAILED_STATUSES = [str(s) for s in FAILED]
TABLE_COLUMNS = CLASS_COLUMNS + [
    "rank", "tied", "method", "family", "complexity", "problems", "ok", "pass_rate", "skipped", "failed",
    "median_rel_err", "speedup", "speedup_lo", "speedup_hi", "ranked", "common_problems", "class_problems",
    "baseline", "own_speedup", "own_problems", "fitted_exponent", "best_pct_bw", "host_bound_rows"]
WINNER_COLUMNS = PROBLEM_COLUMNS + [
    "precision", "winner", "tied", "fastest", "family", "time_ms", "time_ms_lo", "time_ms_hi", "host_ms",
    "gpu_waited", "host_bound", "pct_bw", "runner_up", "runner_up_ms", "lead"]
# After the fastest method's time where that row is host-bound (results.host_bound)
HOST_MARK = "(host)"


@dataclass
class ClassBoard:
    """One class's ranking: which problems it used and its rows of the table."""

    key: dict[str, str]
    baseline: str
    class_problems: int  # problems some method ran ok in the class
    common_problems: int  # problems every ranked method ran ok
    table: pd.DataFrame


@dataclass
class Leaderboard:
    table: pd.DataFrame  # one row per (class, method), classes in order, ranked within each
    baseline: str  # the baseline asked for (or, where no method of that name ran ok, the widest method)
    winners: pd.DataFrame  # fastest ok method (or a tie) per (problem, precision)
    classes: list[ClassBoard] = field(default_factory=list)


def choose_baseline(df: pd.DataFrame, wanted: str) -> str:
    ok = df[df["status"] == "ok"]
    if wanted in set(ok["method"]):
        return wanted
    if ok.empty:
        return wanted
    counts = ok.groupby("method").size().sort_values(ascending=False, kind="stable")
    return str(counts.index[0])


def bounds(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's interval of its median: [time_ms_lo, time_ms_hi], else [p20, p80], else the median."""
    t = pd.to_numeric(rows["time_ms"], errors="coerce").to_numpy(dtype=float)

    def col(name: str) -> np.ndarray:
        return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float) if name in rows else np.full_like(t, np.nan)

    lo, hi = col("time_ms_lo"), col("time_ms_hi")
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    lo = np.where(has_ci, lo, col("time_ms_p20"))
    hi = np.where(has_ci, hi, col("time_ms_p80"))
    lo = np.fmin(np.where(np.isfinite(lo), lo, t), t)
    hi = np.fmax(np.where(np.isfinite(hi), hi, t), t)
    return lo, hi


def problem_ids(rows: pd.DataFrame) -> list[str]:
    """One string per row naming its problem (results.problem_key: machine included)."""
    return ["|".join(problem_key(r)) for r in rows[PROBLEM_COLUMNS].to_dict("records")]


def ok_times(df: pd.DataFrame, value: str = "time_ms") -> pd.DataFrame:
    """`value` (time_ms, lo or hi) of every ok (problem, method): one row per problem, one column per method."""
    ok = df[(df["status"] == "ok") & (pd.to_numeric(df["time_ms"], errors="coerce") > 0)]
    if ok.empty:
        return pd.DataFrame()
    lo, hi = bounds(ok)
    ok = ok.assign(pid=problem_ids(ok), lo=lo, hi=hi)
    return ok.pivot_table(index="pid", columns="method", values=value, aggfunc="median")


def geomean_speedup(times: pd.DataFrame, method: str, baseline: str) -> tuple[float, int]:
    """Geometric mean of baseline/method time over problems both ran ok, and how many there were."""
    if method not in times.columns or baseline not in times.columns:
        return math.nan, 0
    ratios = (times[baseline] / times[method]).to_numpy(dtype=float)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if len(ratios) == 0:
        return math.nan, 0
    return float(np.exp(np.mean(np.log(ratios)))), int(len(ratios))


def ranked_set(times: pd.DataFrame, min_share: float = MIN_SHARE) -> tuple[list[str], pd.Index]:
    """The methods ranked in a class and the problems all of them ran ok (see the module docstring)."""
    have = times.notna()
    order = sorted(have.columns, key=lambda m: (-int(have[m].sum()), str(m)))
    if not order:
        return [], pd.Index([])
    common = have[order[0]]
    need = max(1.0, min_share * int(common.sum()))
    ranked = [str(order[0])]
    for m in order[1:]:
        trial = common & have[m]
        if int(trial.sum()) >= need:
            common, ranked = trial, ranked + [str(m)]
    return ranked, times.index[common.to_numpy()]


def _gmean(x: pd.Series) -> float:
    v = x.to_numpy(dtype=float)
    return float(np.exp(np.mean(np.log(v)))) if len(v) and (v > 0).all() else math.nan


def shared_ranks(low: dict[str, float], high: dict[str, float]) -> dict[str, int]:
    """1 + how many methods' intervals lie entirely below this one's (the tie rule)."""
    return {m: 1 + sum(1 for o in low if o != m and high[o] < low[m]) for m in low}


def fitted_exponent(rows: pd.DataFrame, min_points: int = 3) -> float:
    """Median over problem shapes of the log-log slope of time vs N, fitted on the larger lengths.

    Small N is dominated by fixed overheads, so each fit uses the lengths ≥ 1/16 of that shape's largest.
    """
    ok = rows[(rows["status"] == "ok") & (rows["time_ms"] > 0)]
    slopes = []
    for _, g in ok.groupby(SHAPE_COLUMNS, dropna=False):
        per_n = g.groupby("length")["time_ms"].median()
        per_n = per_n[per_n.index >= per_n.index.max() / 16]
        if len(per_n) < min_points:
            continue
        x = np.log(per_n.index.to_numpy(dtype=float))
        y = np.log(per_n.to_numpy(dtype=float))
        slopes.append(float(np.polyfit(x, y, 1)[0]))
    return float(np.median(slopes)) if slopes else math.nan


def _method_record(rows: pd.DataFrame) -> dict:
    """What a method did in a class, whatever its rank."""
    ran = rows[rows["status"].isin(RAN_STATUSES)]
    ok = rows[rows["status"] == "ok"]
    errs = pd.to_numeric(ran["rel_err"], errors="coerce")
    return {
        "method": str(rows["method"].iloc[0]), "family": rows["family"].iloc[0],
        "complexity": rows["complexity"].iloc[0] if "complexity" in rows else "",
        "problems": int(len(ran)), "ok": int(len(ok)),
        "pass_rate": float(len(ok) / len(ran)) if len(ran) else math.nan,
        "skipped": int((rows["status"] == "skipped").sum()),
        "failed": int(rows["status"].isin(FAILED_STATUSES).sum()),
        "median_rel_err": float(errs.median()) if errs.notna().any() else math.nan,
        "fitted_exponent": fitted_exponent(rows),
        "best_pct_bw": float(pd.to_numeric(ok["pct_bw"], errors="coerce").max()) if len(ok) else math.nan,
        "host_bound_rows": int(_host_bound(ok).sum()),  # ok rows whose time is the host's
    }


def _host_bound(rows: pd.DataFrame) -> pd.Series:
    """results.host_bound of each row (False for rows written before gpu_waited existed)."""
    waited = rows["gpu_waited"] if "gpu_waited" in rows else pd.Series(math.nan, index=rows.index)
    return pd.Series([host_bound(w) for w in waited], index=rows.index, dtype=bool)


def rank_class(rows: pd.DataFrame, wanted: str, key: dict[str, str]) -> ClassBoard:
    """Rank one class's methods on their common problems, with shared ranks where intervals overlap."""
    times, lows, highs = ok_times(rows), ok_times(rows, "lo"), ok_times(rows, "hi")
    ranked, common = ranked_set(times) if not times.empty else ([], pd.Index([]))
    base = wanted if wanted in ranked else (ranked[0] if ranked else wanted)
    g_mid = {m: _gmean(times.loc[common, m]) for m in ranked}
    g_lo = {m: _gmean(lows.loc[common, m]) for m in ranked}
    g_hi = {m: _gmean(highs.loc[common, m]) for m in ranked}
    ranks = shared_ranks(g_lo, g_hi)
    counts = {r: list(ranks.values()).count(r) for r in ranks.values()}
    records = []
    for method, mrows in rows.groupby("method", sort=True):
        rec = {**key, **_method_record(mrows), "ranked": method in ranks, "baseline": base,
               "common_problems": len(common), "class_problems": len(times)}
        own, n_own = geomean_speedup(times, str(method), base) if not times.empty else (math.nan, 0)
        rec.update(own_speedup=own, own_problems=n_own, rank=pd.NA, tied=False,
                   speedup=math.nan, speedup_lo=math.nan, speedup_hi=math.nan, _order=math.inf)
        if method in ranks:
            gb = g_mid[base]
            rec.update(rank=ranks[method], tied=counts[ranks[method]] > 1, speedup=gb / g_mid[method],
                       speedup_lo=gb / g_hi[method], speedup_hi=gb / g_lo[method], _order=g_mid[method])
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    table["_rank"] = pd.to_numeric(table["rank"], errors="coerce").fillna(math.inf)
    table = table.sort_values(["_rank", "_order", "ok", "problems", "method"],
                              ascending=[True, True, False, False, True], kind="stable")
    table = table.drop(columns=["_rank", "_order"])[TABLE_COLUMNS]
    table["rank"] = table["rank"].astype("Int64")
    return ClassBoard(key, base, len(times), len(common), table.reset_index(drop=True))


def class_order(key: tuple) -> tuple:
    host, gpu, prec, mode = key
    return (str(host), str(gpu), PRECISIONS.index(prec) if prec in PRECISIONS else 99, mode != "prefill", mode)


def build(df: pd.DataFrame, baseline: str = "chunked") -> Leaderboard:
    """Rank every class (host, gpu, precision, mode) of the rows, and name the winners per problem."""
    classes = []
    groups = {k: g for k, g in df.groupby(CLASS_COLUMNS, sort=False, dropna=False)}
    for key in sorted(groups, key=class_order):
        classes.append(rank_class(groups[key], baseline, dict(zip(CLASS_COLUMNS, map(str, key)))))
    tables = [c.table for c in classes]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=TABLE_COLUMNS)
    table["rank"] = table["rank"].astype("Int64")
    return Leaderboard(table, choose_baseline(df, baseline), winners(df), classes)


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """Per (problem, precision): the winner when its interval lies below all others', else the tied methods;
    the fastest median, the runner-up and the lead (runner-up time / fastest time)."""
    ok = df[(df["status"] == "ok") & (pd.to_numeric(df["time_ms"], errors="coerce") > 0)]
    if ok.empty:
        return pd.DataFrame(columns=WINNER_COLUMNS)
    lo, hi = bounds(ok)
    ok = ok.assign(_lo=lo, _hi=hi)
    out = []
    for key, g in ok.groupby(PROBLEM_COLUMNS + ["precision"], dropna=False, sort=True):
        g = g.sort_values(["time_ms", "method"])
        tied = g[g["_lo"] <= g["_hi"].min()]
        first = g.iloc[0]
        second = g.iloc[1] if len(g) > 1 else None
        out.append({**dict(zip(PROBLEM_COLUMNS + ["precision"], key)),
                    "winner": first["method"] if len(tied) == 1 else "",
                    "tied": ", ".join(tied["method"]) if len(tied) > 1 else "",
                    "fastest": first["method"], "family": first["family"], "time_ms": first["time_ms"],
                    "time_ms_lo": first["_lo"], "time_ms_hi": first["_hi"], "host_ms": first.get("host_ms", math.nan),
                    "gpu_waited": first.get("gpu_waited", math.nan),
                    "host_bound": host_bound(first.get("gpu_waited")), "pct_bw": first["pct_bw"],
                    "runner_up": "" if second is None else second["method"],
                    "runner_up_ms": math.nan if second is None else second["time_ms"],
                    "lead": math.nan if second is None else second["time_ms"] / first["time_ms"]})
    return pd.DataFrame(out, columns=WINNER_COLUMNS)


# ---- where the wall time went ------------------------------------------------------------------------

WALL_PARTS = {"prepare_s": "preparing inputs and references", "setup_s": "method setup",
              "check_s": "checking against the reference", "loops_s": "timing loops around the calls",
              "measured_s": "measured calls"}


@dataclass(frozen=True)
class WallTime:
    total_s: float  # Σ(prepare_s + setup_s + check_s + timing_s)
    measured_s: float
    parts: dict[str, float]  # WALL_PARTS key → seconds; timing_s split into measured calls and the loops

    @property
    def share(self) -> float:
        return self.measured_s / self.total_s if self.total_s > 0 else math.nan

    @property
    def largest(self) -> tuple[str, float]:
        name = max(self.parts, key=lambda k: self.parts[k])
        return WALL_PARTS[name], self.parts[name]


def wall_time(df: pd.DataFrame) -> WallTime | None:
    """The rows' wall-time columns summed; None for rows written before they existed."""
    cols = ["prepare_s", "setup_s", "check_s", "timing_s", "measured_s"]
    if any(c not in df for c in cols):
        return None
    s = {c: pd.to_numeric(df[c], errors="coerce") for c in cols}
    if not any(v.notna().any() for v in s.values()):
        return None
    sums = {c: float(v.sum()) for c, v in s.items()}
    total = sums["prepare_s"] + sums["setup_s"] + sums["check_s"] + sums["timing_s"]
    parts = {"prepare_s": sums["prepare_s"], "setup_s": sums["setup_s"], "check_s": sums["check_s"],
             "loops_s": max(0.0, sums["timing_s"] - sums["measured_s"]), "measured_s": sums["measured_s"]}
    return WallTime(total, sums["measured_s"], parts)


# ---- leaderboard.md ----------------------------------------------------------------------------------

_FORMATS = {"sci": "{:.1e}", "x": "{:.2f}×", "f2": "{:.2f}", "g4": "{:.4g}", "bw": "{:.1f}%"}


def _fmt(v: object, kind: str = "") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return _FORMATS[kind].format(float(v)) if kind else str(v)


def machine(host: str, gpu: str) -> str:
    """How a class's machine is named in headings: the card (or CPU) on its host."""
    return f"{gpu or 'CPU'} on `{host or '?'}`"


def rank_text(rank: object, tied: bool) -> str:
    return "—" if rank is None or rank is pd.NA else f"={rank}" if tied else str(rank)


def speedup_text(r: dict) -> str:
    """The speed-up with its interval; for a method not ranked, its own overlap in parentheses."""
    if r["ranked"]:
        return f"{_fmt(r['speedup'], 'x')} [{r['speedup_lo']:.2f}–{r['speedup_hi']:.2f}]"
    if r["ok"] and r["own_problems"]:
        return f"({_fmt(r['own_speedup'], 'x')} on {r['own_problems']} of {r['class_problems']})"
    return "—"


def wall_note(df: pd.DataFrame) -> str:
    """One sentence: how much of the rows' wall time was inside the measured calls, and the largest part."""
    w = wall_time(df)
    if w is None:
        return "Where the time went: not recorded (rows written before the wall-time columns existed)."
    name, secs = w.largest
    return (f"Where the time went: {w.total_s:.1f} s of wall time in the rows, {100 * w.share:.0f}% of it inside "
            f"measured calls; the largest part: {name} ({secs:.1f} s, {100 * secs / max(w.total_s, 1e-12):.0f}%).")


@dataclass(frozen=True)
class Setting:
    """One machine and software stack of a results table, and the commits its rows were measured at."""

    where: str  # the GPU's name, or "CPU (n thread(s))"
    host: str
    torch: str
    cupy: str
    copy_gbps: float
    commits: tuple[tuple[str, int], ...]  # (git sha or "?", rows), most rows first
    machines: tuple[str, ...] = ()  # "CPU model, OS" of its rows (several lent machines may share a name)

    def details(self) -> str:
        """Everything after the host: versions, copy bandwidth, commit(s), the host's CPU and OS."""
        bw = f", copy bandwidth {self.copy_gbps:.0f} GB/s" if math.isfinite(self.copy_gbps) else ""
        if len(self.commits) == 1:
            commit = f"commit {self.commits[0][0]}"
        else:  # a table merged from runs at several commits says so, row counts included
            commit = "commits " + ", ".join(f"{sha} ({n} row{'s' if n != 1 else ''})" for sha, n in self.commits)
        hosts = f"; host {' / '.join(self.machines)}" if self.machines else ""
        return f"torch {self.torch}{', cupy ' + self.cupy if self.cupy else ''}{bw}, {commit}{hosts}"


def settings(df: pd.DataFrame) -> list[Setting]:
    """The machines and stacks of a results table, in order of first appearance."""
    out = []
    for _, g in df.groupby(["host", "gpu", "device", "torch"], dropna=False, sort=False):
        e = g.iloc[0]
        bw = e["copy_gbps"]
        shas = g["git_sha"].fillna("").astype(str).replace("", "?").value_counts()
        threads = int(e["threads"]) if isinstance(e["threads"], (int, float)) and e["threads"] == e["threads"] else 0
        out.append(Setting(where=e["gpu"] if isinstance(e["gpu"], str) and e["gpu"] else f"CPU ({threads} thread(s))",
                           host=str(e["host"]), torch=str(e["torch"]),
                           cupy=str(e["cupy"]) if isinstance(e["cupy"], str) else "",
                           copy_gbps=float(bw) if isinstance(bw, (int, float)) else math.nan,
                           commits=tuple((str(sha), int(n)) for sha, n in shas.items()),
                           machines=_machines(g)))
    return out


def _machines(rows: pd.DataFrame) -> tuple[str, ...]:
    """The distinct "CPU model, OS" of rows that record them (rows from before those columns record none)."""
    if "cpu" not in rows or "os" not in rows:
        return ()
    pairs = rows[["cpu", "os"]].fillna("").astype(str)
    seen = [f"{c}, {o}" if c and o else c or o for c, o in pairs.drop_duplicates().itertuples(index=False)]
    return tuple(s for s in seen if s)


def _environment(df: pd.DataFrame) -> list[str]:
    return [f"- {s.where} on `{s.host}`, {s.details()}" for s in settings(df)]


def class_markdown(c: ClassBoard) -> list[str]:
    """One class's heading, the sentence saying what was compared, and its table."""
    k = c.key
    t = c.table[c.table["problems"] > 0]
    if t.empty:
        return []
    lines = ["", f"## {k['precision']} · {k['mode']} · {machine(k['host'], k['gpu'])}", "",
             f"Ranked on the {c.common_problems} problems every ranked method ran `ok` (of {c.class_problems} "
             f"that some method ran `ok` in this class). Speed-up: geometric mean of `{c.baseline}` time / method "
             "time over them, [95% interval]; `=k`: a shared rank (intervals overlap). In parentheses: a method "
             "not ranked (it ran too few of the common problems), with its speed-up on the problems it shares "
             "with the baseline.", ""]
    header = ["rank", "method", "family", "complexity", "fitted exp.", "speed-up [95%]", "ok / ran",
              "median rel_err", "best % BW"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in t.to_dict("records"):
        lines.append("| " + " | ".join([
            rank_text(r["rank"], r["tied"]), f"`{r['method']}`", str(r["family"]), str(r["complexity"] or "—"),
            _fmt(r["fitted_exponent"], "f2"), speedup_text(r), f"{r['ok']} / {r['problems']}",
            _fmt(r["median_rel_err"], "sci"), _fmt(r["best_pct_bw"], "bw")]) + " |")
    return lines


def problem_text(w: dict) -> str:
    mode = w["mode"] + (f"×{int(w['steps'])}" if w["mode"] == "decode" else "")
    return (f"B{w['batch']} H{w['heads']} N{w['length']} D{w['dim']} E{w['dim_v']} λ={w['decay']}"
            f"{' S0' if str(w['initial_state']) == 'True' else ''} {mode}")


def winner_text(w: dict) -> str:
    return f"`{w['winner']}`" if w["winner"] else "tie: " + ", ".join(f"`{m}`" for m in w["tied"].split(", "))


def host_note() -> str:
    """The sentence saying what the host-bound marker means (markdown and page)."""
    return (f"{HOST_MARK}: host-bound, in ≥ {HOST_BOUND:.0%} of the timed calls the GPU waited for the CPU to issue "
            "the call (gpu_waited), so the time is the host's: it says little about the GPU kernel and moves with "
            "the host's state.")


def winners_markdown(win: pd.DataFrame) -> list[str]:
    if win.empty:
        return []
    lines = ["", "## Fastest correct method per problem", "",
             "A winner only where its 95% interval lies below every other method's; otherwise the tied methods. "
             f"Lead: runner-up time / fastest time. {host_note()}", "",
             "| machine | precision | problem | winner | ms [95%] | % BW | runner-up | lead |",
             "|---|---|---|---|---|---|---|---|"]
    for w in win.to_dict("records"):
        lines.append(f"| {w['gpu'] or 'CPU'} `{w['host']}` | {w['precision']} | {problem_text(w)} | "
                     f"{winner_text(w)} | {float(w['time_ms']):.4g} [{w['time_ms_lo']:.4g}–{w['time_ms_hi']:.4g}]"
                     f"{' ' + HOST_MARK if w['host_bound'] else ''} | "
                     f"{_fmt(w['pct_bw'], 'bw')} | {('`' + w['runner_up'] + '`') if w['runner_up'] else '—'} | "
                     f"{_fmt(w['lead'], 'x')} |")
    return lines


def failures_markdown(df: pd.DataFrame, load_failures: list[tuple[str, str]] | None) -> list[str]:
    lines: list[str] = []
    ran = df[df["status"].isin(RAN_STATUSES)]["method"].unique()
    idle = sorted(set(df["method"]) - set(ran))
    if idle:
        lines += ["", "Not run on any problem here:", ""]
        for m in idle:
            reasons = df[(df["method"] == m) & (df["status"] == "skipped")]["error"]
            lines.append(f"- `{m}`: {reasons.iloc[0] if len(reasons) else 'no rows'}")
    bad = df[df["status"].isin(["inaccurate", "suspect"] + FAILED_STATUSES)]
    if not bad.empty:
        lines += ["", "## Rows that did not pass", "", "| method | machine | problem | status | detail |",
                  "|---|---|---|---|---|"]
        for r in bad.head(200).to_dict("records"):
            prob = f"{r['dtype']} B{r['batch']} H{r['heads']} N{r['length']} D{r['dim']} λ={r['decay']}"
            detail = str(r["error"] or "").replace("|", "\\|").replace("\n", " ")[:160]
            if r["status"] == "inaccurate" and not detail:
                detail = f"rel_err {r['rel_err']}"
            lines.append(f"| `{r['method']}` | {r['gpu'] or 'CPU'} `{r['host']}` | {prob} | {r['status']} | {detail} |")
    if load_failures:
        lines += ["", "## Plugin files that failed to load", ""]
        lines += [f"- `{src}`: {err}" for src, err in load_failures]
    return lines


@dataclass
class Since:
    """What changed since a previous run (`since=`; made by `compare.since`), as a leaderboard states it."""

    base: str  # the previous run's folder, as given
    commits: str
    summary: str  # the verdict counts
    threshold: float
    per_method: pd.DataFrame  # compare.per_method: method, precision, pairs, slower, faster, geomean_ratio
    link: str  # comparison.md with every pair, relative to the leaderboard

    def intro(self) -> str:
        return (f"Against {self.base} (commit {self.commits}), rows matched by method and problem: {self.summary} "
                f"(this run / that one; a change only past {100 * self.threshold:.0f}% and outside the 95% interval"
                f"{'; carried: the same row in both, not measured again' if 'carried' in self.summary else ''}).")


def per_method_table(per_method: pd.DataFrame, ratio: str) -> list[str]:
    """A comparison's per-(method, precision) counts in markdown, the ratio named `ratio`; [] when empty."""
    if per_method.empty:
        return []
    return [f"| method | precision | pairs | slower | faster | geomean {ratio} |", "|---|---|---|---|---|---|"] + [
        f"| `{r['method']}` | {r['precision']} | {r['pairs']} | {r['slower']} | {r['faster']} | "
        f"{r['geomean_ratio']:.3f}× |" for r in per_method.to_dict("records")]


def since_markdown(s: Since) -> list[str]:
    return (["", "## Since the previous run", "", f"{s.intro()} Every pair: [{s.link}]({s.link}).", ""]
            + per_method_table(s.per_method, "this/that"))


def markdown(board: Leaderboard, df: pd.DataFrame, load_failures: list[tuple[str, str]] | None = None,
             title: str = "leetbench leaderboard", since: Since | None = None) -> str:
    """leaderboard.md: environment, where the time went, what changed since a previous run (`since`), one
    ranked table per class, winners, failures."""
    lines = [f"# {title}", ""] + _environment(df) + ["", wall_note(df), "",
             "Methods rank within a class: one machine (host and GPU), one precision (fp64, IEEE fp32, tf32, fp16, "
             "bf16) and one mode; only `ok` rows count. Fitted exponent: slope of log time vs log N."]
    lines += since_markdown(since) if since is not None else []
    for c in board.classes:
        lines += class_markdown(c)
    lines += winners_markdown(board.winners)
    lines += failures_markdown(df, load_failures)
    return "\n".join(lines) + "\n"
