"""`leetbench compare=[BASE,NEW]`: did NEW (a commit, a card, a setting) get slower than BASE?

Matching. Rows of the two run folders are matched by method and problem WITHOUT host and GPU
(`MATCH_COLUMNS`: dtype, sizes, decay, initial state, mode, steps), so two commits on one machine and one
commit on two cards compare alike; the header of comparison.md names both machines. Where a folder holds
the same (method, problem) from several machines, its newest row is used.

Verdict per matched pair that is `ok` in both folders, NEW/BASE of the median times:
- from the timed samples (samples.csv.gz, by row_id), `stats.compare_samples` as asv does: slower or faster
  only when the Mann–Whitney test rejects equality (α = 0.05), the ratio is beyond 1 ± `threshold` and the
  ratio's bootstrap 95% interval lies entirely beyond 1;
- where either folder has no samples for the row (older runs), from the rows' intervals
  (`leaderboard.bounds`: the median's 95% interval, else p20–p80): ratio interval
  [new_lo / base_hi, new_hi / base_lo], slower or faster when the ratio is beyond the threshold and that
  interval lies entirely beyond 1.
Each side's spread, (p80 − p20) / median of its samples, is kept too: a verdict where NEW's spread is
`NOISY_SPREAD`× BASE's (and above 10%) is marked noisy in comparison.md — the samples moved as a whole but
also scattered, as when a busy host shows through a launch-bound call's timing — so a reader weighs it; the
verdict itself stands (the gate is the test's, not a guess about causes).
A pair whose row is host-bound on either side (`results.host_bound`: the GPU waited for the CPU issuing the
call) is marked so with the side, for the same reason: its time is the host's.
A pair `ok` in BASE and not in NEW (inaccurate, suspect, error, timeout, crashed, oom) is `failed`; the reverse
is `fixed`; neither ok: `not ok`; skipped on either side: `skipped` (no verdict). A pair whose two rows are one
row (the same `row_id`: a merged leaderboard carried it over unmeasured) is `carried` (no verdict): calling it
`same` would count a measurement as agreeing with itself.

Exit status: 1 when any pair is `slower` or `failed` (a CI regression gate), else 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leetbench.config import ConfigError
from leetbench.leaderboard import Since, bounds, per_method_table
from leetbench.report import find_results, merge
from leetbench.results import PROBLEM_COLUMNS, host_bound, problem_key
from leetbench.stats import compare_samples, quantile
from leetbench.store import atomic_write, read_samples

MATCH_COLUMNS = [c for c in PROBLEM_COLUMNS if c not in ("host", "gpu")]
_MATCH_AT = [PROBLEM_COLUMNS.index(c) for c in MATCH_COLUMNS]
REGRESSIONS = ("slower", "failed")
NOISY_SPREAD = 4.0  # NEW's spread this many times BASE's marks a verdict noisy (module docstring)
VERDICT_ORDER = {"failed": 0, "slower": 1, "faster": 2, "fixed": 3, "same": 4, "not ok": 5, "skipped": 6,
                 "carried": 7}
COLUMNS = ["method", "family", "precision"] + MATCH_COLUMNS + [
    "status_base", "status_new", "base_ms", "new_ms", "ratio", "ratio_lo", "ratio_hi", "p_value", "basis",
    "verdict", "spread_base", "spread_new", "host_bound_base", "host_bound_new", "base_row_id", "new_row_id"]


@dataclass
class Side:
    """One run folder: its rows (newest per (method, problem) without the machine) and its samples."""

    folder: Path
    rows: pd.DataFrame
    samples: dict[str, list[list[float]]]

    @property
    def machines(self) -> list[str]:
        pairs = self.rows[["gpu", "host"]].drop_duplicates().to_dict("records")
        return [f"{p['gpu'] or 'CPU'} on `{p['host'] or '?'}`" for p in pairs]

    @property
    def commits(self) -> list[str]:
        return sorted({str(s) or "?" for s in self.rows["git_sha"]})


@dataclass
class Comparison:
    base: Side
    new: Side
    threshold: float
    table: pd.DataFrame  # one row per matched (method, problem), regressions first
    only_base: int
    only_new: int

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"].isin(REGRESSIONS)]

    def counts(self) -> dict[str, int]:
        return {v: int((self.table["verdict"] == v).sum()) for v in VERDICT_ORDER}


def match_key(values: dict) -> tuple:
    """(method,) + the problem's identity without host and GPU."""
    key = problem_key(values)
    return (str(values.get("method", "")),) + tuple(key[i] for i in _MATCH_AT)


def load_side(folder: str | Path) -> Side:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ConfigError(f"compare: {str(folder)!r} is neither a run folder nor a results.csv")
    paths = find_results([folder])
    if not paths:
        raise ConfigError(f"compare: no results.csv found under {str(folder)!r}")
    rows = merge(paths)
    if not rows.empty:  # newest row per (method, problem) regardless of the machine (merge sorted by time)
        keys = pd.Series([match_key(r) for r in rows.to_dict("records")], index=rows.index)
        rows = rows[~keys.duplicated(keep="last")].assign(_key=keys[~keys.duplicated(keep="last")])
    else:
        rows = rows.assign(_key=pd.Series(dtype=object))
    return Side(folder, rows.reset_index(drop=True), read_samples([p.parent / "samples.csv.gz" for p in paths]))


def from_intervals(b: dict, n: dict, threshold: float) -> tuple[float, float, float, str]:
    """Ratio, its interval and the verdict from the two rows' intervals of the median (no samples)."""
    (b_lo,), (b_hi,) = bounds(pd.DataFrame([b]))
    (n_lo,), (n_hi,) = bounds(pd.DataFrame([n]))
    ratio = float(n["time_ms"]) / float(b["time_ms"])
    lo, hi = n_lo / b_hi, n_hi / b_lo
    verdict = "same"
    if ratio > 1 + threshold and lo > 1:
        verdict = "slower"
    elif ratio < 1 / (1 + threshold) and hi < 1:
        verdict = "faster"
    return ratio, lo, hi, verdict


def spread(samples: list[float]) -> float:
    """(p80 − p20) / median of timed samples: how scattered they are (NaN without samples)."""
    p20, p50, p80 = (quantile(samples, q) for q in (0.2, 0.5, 0.8))
    return (p80 - p20) / p50 if p50 > 0 else math.nan


def host_side(r: dict) -> str:
    """Which side's row is host-bound (its time is the CPU issuing the call: results.host_bound), '' if none."""
    b, n = bool(r.get("host_bound_base")), bool(r.get("host_bound_new"))
    return "both" if b and n else "BASE" if b else "NEW" if n else ""


def noisy(r: dict) -> bool:
    """Whether NEW's samples scattered `NOISY_SPREAD`× more than BASE's (and more than 10%)."""
    b, n = r.get("spread_base", math.nan), r.get("spread_new", math.nan)
    return bool(math.isfinite(b) and math.isfinite(n) and n > 0.1 and n > NOISY_SPREAD * b)


def judge(b: dict, n: dict, base: Side, new: Side, threshold: float) -> dict:
    """The comparison of one matched pair of rows."""
    out = {"ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan, "p_value": math.nan, "basis": "",
           "spread_base": math.nan, "spread_new": math.nan}
    b_ok, n_ok = b["status"] == "ok", n["status"] == "ok"
    if str(b.get("row_id") or "") and str(b.get("row_id")) == str(n.get("row_id")):  # one row, not two runs
        return {**out, "verdict": "carried"}
    if "skipped" in (b["status"], n["status"]):  # not run on one side (a package, a device): no verdict
        return {**out, "verdict": "skipped"}
    if not (b_ok and n_ok):
        return {**out, "verdict": "failed" if b_ok else "fixed" if n_ok else "not ok"}
    bs = [x for r in base.samples.get(str(b["row_id"]), []) for x in r]
    ns = [x for r in new.samples.get(str(n["row_id"]), []) for x in r]
    if bs and ns:
        c = compare_samples(bs, ns, threshold=threshold)
        return {"ratio": c.ratio, "ratio_lo": c.ratio_lo, "ratio_hi": c.ratio_hi, "p_value": c.p_value,
                "basis": f"samples ({len(bs)} vs {len(ns)})", "verdict": c.verdict,
                "spread_base": spread(bs), "spread_new": spread(ns)}
    ratio, lo, hi, verdict = from_intervals(b, n, threshold)
    return {**out, "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi, "basis": "intervals", "verdict": verdict}


def compare_runs(base_folder: str | Path, new_folder: str | Path, threshold: float = 0.10) -> Comparison:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(f"compare_threshold={threshold!r} must be a number ≥ 0 (e.g. 0.10 for 10%)")
    base, new = load_side(base_folder), load_side(new_folder)
    b_rows = {k: r for k, r in zip(base.rows["_key"], base.rows.to_dict("records"))}
    n_rows = {k: r for k, r in zip(new.rows["_key"], new.rows.to_dict("records"))}
    records = []
    for key in sorted(set(b_rows) & set(n_rows)):
        b, n = b_rows[key], n_rows[key]
        if b["status"] == "skipped" and n["status"] == "skipped":
            continue  # neither ran it: nothing to say
        records.append({"method": b["method"], "family": n["family"], "precision": n["precision"],
                        **{c: n[c] for c in MATCH_COLUMNS}, "status_base": b["status"], "status_new": n["status"],
                        "base_ms": b["time_ms"], "new_ms": n["time_ms"],
                        "host_bound_base": host_bound(b.get("gpu_waited")),
                        "host_bound_new": host_bound(n.get("gpu_waited")),
                        "base_row_id": b["row_id"],
                        "new_row_id": n["row_id"], **judge(b, n, base, new, threshold)})
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    if not table.empty:
        table = table.assign(_o=table["verdict"].map(VERDICT_ORDER), _r=-table["ratio"].fillna(0))
        table = table.sort_values(["_o", "_r", "method"], kind="stable").drop(columns=["_o", "_r"])
    return Comparison(base, new, threshold, table.reset_index(drop=True),
                      len(set(b_rows) - set(n_rows)), len(set(n_rows) - set(b_rows)))


# ---- comparison.md / .csv and the command ---------------------------------------------------------------

def _x(v: float) -> str:
    return "—" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.3g}"


def problem_label(r: dict) -> str:
    mode = r["mode"] + (f"×{int(r['steps'])}" if r["mode"] == "decode" else "")
    return (f"{r['dtype']} B{r['batch']} H{r['heads']} N{r['length']} D{r['dim']} E{r['dim_v']} λ={r['decay']}"
            f"{' S0' if str(r['initial_state']) == 'True' else ''} {mode}")


def per_method(c: Comparison) -> pd.DataFrame:
    """Per (method, precision): pairs, verdict counts and the geometric mean of NEW/BASE."""
    t = c.table[c.table["ratio"].notna() & (c.table["ratio"] > 0)]
    if t.empty:
        return pd.DataFrame(columns=["method", "precision", "pairs", "slower", "faster", "geomean_ratio"])
    g = t.groupby(["method", "precision"], sort=True)
    return pd.DataFrame({"pairs": g.size(), "slower": g["verdict"].apply(lambda v: int((v == "slower").sum())),
                         "faster": g["verdict"].apply(lambda v: int((v == "faster").sum())),
                         "geomean_ratio": g["ratio"].apply(lambda r: float(np.exp(np.log(r).mean())))}).reset_index()


def summary(c: Comparison) -> str:
    """The verdict counts, as comparison.md's bold line says them."""
    return ", ".join(f"{n} {v}" for v, n in c.counts().items() if n) or "nothing matched"


def since(c: Comparison, link: str) -> Since:
    """What a leaderboard says of a comparison of a previous run (BASE) with its own rows (NEW)."""
    return Since(str(c.base.folder), ", ".join(c.base.commits), summary(c), c.threshold, per_method(c), link)


def write_comparison(c: Comparison, out: Path) -> Path:
    """comparison.csv and comparison.md into `out`; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "comparison.csv", c.table.to_csv(index=False))
    atomic_write(out / "comparison.md", markdown(c))
    return out / "comparison.md"


def markdown(c: Comparison) -> str:
    lines = ["# leetbench compare", "",
             f"- BASE: `{c.base.folder}` — {', '.join(c.base.machines) or 'no rows'}, commit {', '.join(c.base.commits)}",
             f"- NEW: `{c.new.folder}` — {', '.join(c.new.machines) or 'no rows'}, commit {', '.join(c.new.commits)}", "",
             "Rows are matched by method and problem (dtype, B, H, N, D, E, decay, initial state, mode, steps) "
             f"WITHOUT host and GPU: BASE ran on {', '.join(c.base.machines) or '—'}, NEW on "
             f"{', '.join(c.new.machines) or '—'}. Ratio = NEW / BASE median time. `slower` / `faster` only past "
             f"{100 * c.threshold:.0f}% and outside the 95% interval (from the timed samples with a Mann–Whitney "
             "test, else from the rows' intervals); `failed`: ok in BASE, not ok in NEW. *noisy*: NEW's samples "
             f"scattered over {NOISY_SPREAD:g}× as widely as BASE's ((p80 − p20) / median, in parentheses): "
             "weigh that verdict with care. *host-bound*: on that side (BASE, NEW or both) the GPU waited for the "
             "CPU to issue the call in most timed calls, so its time is the host's: a change there may be the "
             "machine's, not the method's.", "",
             f"**{summary(c)}** ({c.only_base} only in BASE, "
             f"{c.only_new} only in NEW)." + (" Regressions: exit status 1." if len(c.regressions) else ""), ""]
    per = per_method_table(per_method(c), "NEW/BASE")
    if per:
        lines += ["## Per method", ""] + per + [""]
    lines += ["## Per problem", "", "| verdict | method | precision | problem | BASE ms | NEW ms | NEW/BASE [95%] | p | basis |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in c.table.to_dict("records"):
        verdict = f"**{r['verdict']}**" if r["verdict"] in REGRESSIONS else r["verdict"]
        if noisy(r):
            verdict += f", *noisy* ({r['spread_base']:.0%} → {r['spread_new']:.0%})"
        if host_side(r):
            verdict += f", *host-bound* ({host_side(r)})"
        status = "" if r["status_base"] == r["status_new"] == "ok" else f" ({r['status_base']} → {r['status_new']})"
        lines.append(f"| {verdict}{status} | `{r['method']}` | {r['precision']} | {problem_label(r)} | {_x(r['base_ms'])} | "
                     f"{_x(r['new_ms'])} | {_x(r['ratio'])} [{_x(r['ratio_lo'])}–{_x(r['ratio_hi'])}] | "
                     f"{_x(r['p_value'])} | {r['basis'] or '—'} |")
    return "\n".join(lines) + "\n"


def compare_command(folders: list[str], threshold: float, out: Path) -> int:
    """compare=[BASE,NEW]: write comparison.csv/.md into `out`, print the summary; 1 on a regression."""
    if len(folders) != 2:
        raise ConfigError(f"compare= takes two run folders, compare=[BASE,NEW]; got {len(folders)}")
    c = compare_runs(folders[0], folders[1], float(threshold))
    md = write_comparison(c, out)
    print(f"leetbench compare: {summary(c)} (NEW/BASE, threshold {100 * c.threshold:.0f}%) → {md}")
    for r in c.regressions.head(20).to_dict("records"):
        print(f"  {r['verdict']}: {r['method']} {problem_label(r)}  {_x(r['base_ms'])} → {_x(r['new_ms'])} ms "
              f"({_x(r['ratio'])}×)" + (f"; noisy: spread {r['spread_base']:.0%} → {r['spread_new']:.0%}"
                                        if noisy(r) else ""))
    return 1 if len(c.regressions) else 0
