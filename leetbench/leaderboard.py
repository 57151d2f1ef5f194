"""The leaderboard: per method, how much it ran, how accurate it was, how fast, and how it scales.

Speed is the geometric mean, over the problems both ran `ok`, of baseline time / method time; only `ok`
rows count, so an inaccurate method never ranks. The fitted exponent is the slope of log time against
log N over each method's larger lengths, the measured counterpart of the declared complexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from leetbench.results import PROBLEM_COLUMNS, SHAPE_COLUMNS
RAN = ("ok", "inaccurate", "error", "timeout", "crashed", "oom")


@dataclass
class Leaderboard:
    table: pd.DataFrame  # one row per method, ranked
    baseline: str
    winners: pd.DataFrame  # fastest ok method per problem


def choose_baseline(df: pd.DataFrame, wanted: str) -> str:
    ok = df[df["status"] == "ok"]
    if wanted in set(ok["method"]):
        return wanted
    if ok.empty:
        return wanted
    counts = ok.groupby("method").size().sort_values(ascending=False, kind="stable")
    return str(counts.index[0])


def ok_times(df: pd.DataFrame) -> pd.DataFrame:
    """Median time of every ok (problem, method): one row per problem, one column per method."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    pid = ok[PROBLEM_COLUMNS].astype(str).agg("|".join, axis=1)
    return ok.assign(pid=pid).pivot_table(index="pid", columns="method", values="time_ms", aggfunc="median")


def geomean_speedup(times: pd.DataFrame, method: str, baseline: str) -> tuple[float, int]:
    """Geometric mean of baseline/method time over problems both ran ok, and how many there were."""
    if method not in times.columns or baseline not in times.columns:
        return math.nan, 0
    ratios = (times[baseline] / times[method]).to_numpy(dtype=float)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if len(ratios) == 0:
        return math.nan, 0
    return float(np.exp(np.mean(np.log(ratios)))), int(len(ratios))


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


def build(df: pd.DataFrame, baseline: str = "chunked") -> Leaderboard:
    base = choose_baseline(df, baseline)
    times = ok_times(df)
    records = []
    for method, rows in df.groupby("method", sort=True):
        ran = rows[rows["status"].isin(RAN)]
        ok = rows[rows["status"] == "ok"]
        speed, common = geomean_speedup(times, str(method), base)
        errs = pd.to_numeric(ran["rel_err"], errors="coerce")
        records.append({
            "method": method,
            "family": rows["family"].iloc[0],
            "complexity": rows["complexity"].iloc[0] if "complexity" in rows else "",
            "problems": int(len(ran)),
            "ok": int(len(ok)),
            "pass_rate": float(len(ok) / len(ran)) if len(ran) else math.nan,
            "skipped": int((rows["status"] == "skipped").sum()),
            "failed": int(rows["status"].isin(("error", "timeout", "crashed", "oom")).sum()),
            "median_rel_err": float(errs.median()) if errs.notna().any() else math.nan,
            "speedup": speed,
            "common_problems": common,
            "fitted_exponent": fitted_exponent(rows),
            "best_pct_bw": float(pd.to_numeric(ok["pct_bw"], errors="coerce").max()) if len(ok) else math.nan,
        })
    table = pd.DataFrame.from_records(records, columns=[
        "method", "family", "complexity", "problems", "ok", "pass_rate", "skipped", "failed",
        "median_rel_err", "speedup", "common_problems", "fitted_exponent", "best_pct_bw"])
    table = table.sort_values(["speedup", "ok"], ascending=[False, False], na_position="last", kind="stable")
    ranked = table["speedup"].notna() & (table["ok"] > 0)
    table.insert(0, "rank", pd.array([pd.NA] * len(table), dtype="Int64"))
    table.loc[ranked, "rank"] = range(1, int(ranked.sum()) + 1)
    return Leaderboard(table.reset_index(drop=True), base, winners(df))


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """For each problem, the fastest ok method and its time, with the runner-up's."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=PROBLEM_COLUMNS + ["winner", "time_ms", "runner_up", "runner_up_ms"])
    out = []
    for key, g in ok.groupby(PROBLEM_COLUMNS, dropna=False, sort=True):
        g = g.sort_values("time_ms")
        first = g.iloc[0]
        second = g.iloc[1] if len(g) > 1 else None
        out.append({**dict(zip(PROBLEM_COLUMNS, key)), "winner": first["method"], "time_ms": first["time_ms"],
                    "runner_up": "" if second is None else second["method"],
                    "runner_up_ms": math.nan if second is None else second["time_ms"]})
    return pd.DataFrame(out)


_FORMATS = {"sci": "{:.1e}", "x": "{:.2f}×", "f2": "{:.2f}", "g4": "{:.4g}", "bw": "{:.1f}%"}


def _fmt(v: object, kind: str = "") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return _FORMATS[kind].format(float(v)) if kind else str(v)


def markdown(board: Leaderboard, df: pd.DataFrame, load_failures: list[tuple[str, str]] | None = None,
             title: str = "leetbench leaderboard") -> str:
    """leaderboard.md: environment, the ranked table, winners per problem, failures."""
    lines = [f"# {title}", ""]
    envs = df.drop_duplicates(["host", "gpu", "device", "torch"])[["host", "gpu", "device", "torch", "cupy",
                                                                   "copy_gbps", "threads", "git_sha"]]
    for e in envs.to_dict("records"):
        where = e["gpu"] or f"CPU ({int(e['threads'] or 0)} thread(s))"
        bw = e["copy_gbps"]
        bw_txt = f", copy bandwidth {float(bw):.0f} GB/s" if isinstance(bw, (int, float)) and math.isfinite(bw) else ""
        lines.append(f"- {where} on `{e['host']}`, torch {e['torch']}"
                     f"{', cupy ' + str(e['cupy']) if e['cupy'] else ''}{bw_txt}, commit {e['git_sha'] or '?'}")
    lines += ["", f"Speed-up: geometric mean of `{board.baseline}` time / method time over the problems both ran "
              f"`ok`. Inaccurate rows never rank. Fitted exponent: slope of log time vs log N.", ""]
    header = ["rank", "method", "family", "complexity", "fitted exp.", "speed-up", "ok / ran", "median rel_err",
              "best % BW"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    idle = board.table[board.table["problems"] == 0]
    for r in board.table[board.table["problems"] > 0].to_dict("records"):
        lines.append("| " + " | ".join([
            _fmt(r["rank"]), f"`{r['method']}`", str(r["family"]), str(r["complexity"] or "—"),
            _fmt(r["fitted_exponent"], "f2"), _fmt(r["speedup"], "x"), f"{r['ok']} / {r['problems']}",
            _fmt(r["median_rel_err"], "sci"), _fmt(r["best_pct_bw"], "bw")]) + " |")
    if len(idle):
        lines += ["", "Not run on any problem here:", ""]
        for m in idle["method"]:
            reasons = df[(df["method"] == m) & (df["status"] == "skipped")]["error"]
            lines.append(f"- `{m}`: {reasons.iloc[0] if len(reasons) else 'no rows'}")
    if not board.winners.empty:
        lines += ["", "## Fastest correct method per problem", "",
                  "| device | dtype | B | H | N | D | E | decay | mode | winner | ms | runner-up | ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for w in board.winners.to_dict("records"):
            mode = w["mode"] + (f"×{int(w['steps'])}" if w["mode"] == "decode" else "")
            lines.append(f"| {w['device']} | {w['dtype']} | {w['batch']} | {w['heads']} | {w['length']} | "
                         f"{w['dim']} | {w['dim_v']} | {w['decay']} | {mode} | `{w['winner']}` | "
                         f"{float(w['time_ms']):.4g} | {('`' + w['runner_up'] + '`') if w['runner_up'] else '—'} | "
                         f"{_fmt(w['runner_up_ms'], 'g4')} |")
    bad = df[df["status"].isin(("inaccurate", "error", "timeout", "crashed", "oom"))]
    if not bad.empty:
        lines += ["", "## Rows that did not pass", "", "| method | problem | status | detail |", "|---|---|---|---|"]
        for r in bad.head(200).to_dict("records"):
            prob = f"{r['dtype']} B{r['batch']} H{r['heads']} N{r['length']} D{r['dim']} λ={r['decay']}"
            detail = str(r["error"] or "").replace("|", "\\|")[:160]
            if r["status"] == "inaccurate" and not detail:
                detail = f"rel_err {r['rel_err']}"
            lines.append(f"| `{r['method']}` | {prob} | {r['status']} | {detail} |")
    if load_failures:
        lines += ["", "## Plugin files that failed to load", ""]
        lines += [f"- `{src}`: {err}" for src, err in load_failures]
    return "\n".join(lines) + "\n"
