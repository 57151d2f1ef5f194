"""leaderboard.html: the leaderboard as one self-contained page (no network: inline CSS and a little vanilla
JS, plots embedded as base64 PNG), written beside leaderboard.md by every run and report.

Per class (machine, precision, mode) the ranked table and every row of the class, sortable (click a column
heading) and filtered by the bar at the top (method, family, dtype, shape); each row's provenance and error
open on a click (<details>). Then the winners per problem, the plots and the rows that did not pass, with
their reasons. Every value from the rows is escaped (`html.escape`); the script only reorders and hides
existing elements, so no data ever becomes markup.
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

import pandas as pd

from leetbench.leaderboard import (HOST_MARK, ClassBoard, Leaderboard, Since, host_note, machine, problem_text,
                                   rank_text, settings, wall_note, FAILED_STATUSES, RAN_STATUSES)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1500px;
 padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.ours td:nth-child(2){font-weight:bold}.unranked{color:#777}
details summary{cursor:pointer;color:#0072B2}details pre{white-space:pre-wrap;max-width:60em;margin:.3em 0}
.bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;z-index:2}
.bar input{margin-right:1em;width:11em}.note{color:#555}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.scroll{overflow-x:auto}
pre{white-space:pre-wrap;margin:0;font-size:12px}
.status-ok{color:#009E73}.status-bad{color:#D55E00;font-weight:bold}
"""

JS = """
document.addEventListener('DOMContentLoaded', function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) v = td.textContent.trim();
    var x = parseFloat(v);
    return (v !== '' && !isNaN(x) && isFinite(v)) ? x : v.toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === '' || y === '') return (x === '') - (y === '');  // missing values last, either way
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var inputs = document.querySelectorAll('.bar input');
  function apply() {
    document.querySelectorAll('tr[data-method]').forEach(function (tr) {
      var show = true;
      inputs.forEach(function (inp) {
        var want = inp.value.trim().toLowerCase();
        var have = tr.getAttribute('data-' + inp.name);
        if (want && have !== null && have.toLowerCase().indexOf(want) < 0) show = false;
      });
      tr.style.display = show ? '' : 'none';
    });
  }
  inputs.forEach(function (inp) { inp.addEventListener('input', apply); });
  document.body.setAttribute('data-ready', '1');
});
"""


def _e(v: object) -> str:
    return escape("" if v is None or v is pd.NA else str(v), quote=True)


def _num(v: object, fmt: str, suffix: str = "") -> str:
    """A numeric cell: the formatted value (and `suffix`), the raw one in data-v for sorting; '—' for a missing
    one. `fmt` "x" is a speed-up (two decimals, or two significant digits below 0.1)."""
    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return '<td class="n" data-v="">—</td>'
    x = float(v)
    text = (f"{x:.2f}×" if x >= 0.1 else f"{x:.2g}×") if fmt == "x" else format(x, fmt)
    return f'<td class="n" data-v="{x!r}">{_e(text + suffix)}</td>'


def _attrs(**kw: object) -> str:
    return "".join(f' data-{k}="{_e(v)}"' for k, v in kw.items())


def _table(table_id: str, header: list[str], body: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (f'<div class="scroll"><table class="sortable" id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def leader_rows(c: ClassBoard) -> list[str]:
    """The class's ranked table: one <tr> per method that ran."""
    out = []
    for r in c.table[c.table["problems"] > 0].to_dict("records"):
        kind = "ours" if str(r["method"]).startswith("cupy_") else ""
        cls = f' class="{kind}{" unranked" if not r["ranked"] else ""}"'
        rank = r["rank"] if r["rank"] is not pd.NA else None
        interval = (f"{r['speedup_lo']:.2f}–{r['speedup_hi']:.2f}" if r["ranked"] else
                    f"not ranked: {r['own_speedup']:.2f}× on {r['own_problems']} of {r['class_problems']}"
                    if r["ok"] and r["own_problems"] else "not ranked")
        out.append(
            f"<tr{cls}{_attrs(method=r['method'], family=r['family'])}>"
            f'<td data-v="{"" if rank is None else int(rank)}">{_e(rank_text(r["rank"], r["tied"]))}</td>'
            f"<td>{_e(r['method'])}</td><td>{_e(r['family'])}</td><td>{_e(r['complexity'])}</td>"
            f"{_num(r['speedup'], 'x')}<td>{_e(interval)}</td>"
            f'<td data-v="{r["ok"]}">{r["ok"]} / {r["problems"]}</td>'
            f"{_num(r['median_rel_err'], '.1e')}{_num(r['best_pct_bw'], '.1f')}{_num(r['fitted_exponent'], '.2f')}</tr>")
    return out


def _status_class(status: str) -> str:
    return "status-ok" if status == "ok" else "status-bad" if status in ["inaccurate", "suspect"] + FAILED_STATUSES else ""


def provenance(r: dict) -> str:
    """A row's provenance and error, shown on a click."""
    fields = ["host", "gpu", "torch", "cupy", "leetbench", "git_sha", "method_hash", "timestamp", "row_id",
              "threads", "reps", "rounds", "copy_gbps"]
    lines = [f"{f}: {r.get(f, '')}" for f in fields if f in r]
    if r.get("error"):
        lines.append(f"error: {r['error']}")
    return f"<details><summary>more</summary><pre>{_e(chr(10).join(lines))}</pre></details>"


def result_rows(rows: pd.DataFrame) -> list[str]:
    """Every row of a class (that ran), with its interval, bandwidth, error and provenance."""
    out = []
    for r in rows[rows["status"].isin(RAN_STATUSES)].sort_values(["method", "length"]).to_dict("records"):
        shape = problem_text(r)
        ci = (f"{r['time_ms_lo']:.4g}–{r['time_ms_hi']:.4g}"
              if isinstance(r["time_ms_lo"], float) and math.isfinite(r["time_ms_lo"]) else "")
        out.append(
            f"<tr{_attrs(method=r['method'], family=r['family'], dtype=r['dtype'], shape=shape)}>"
            f"<td>{_e(r['method'])}</td><td>{_e(r['family'])}</td><td>{_e(r['dtype'])}</td><td>{_e(shape)}</td>"
            f'<td class="{_status_class(r["status"])}">{_e(r["status"])}</td>'
            f"{_num(r['time_ms'], '.4g')}<td>{_e(ci)}</td>{_num(r['pct_bw'], '.1f')}{_num(r['gbps'], '.4g')}"
            f"{_num(r['worst_head_rel_err'] if math.isfinite(r['worst_head_rel_err']) else r['rel_err'], '.1e')}"
            f"<td>{provenance(r)}</td></tr>")
    return out


def class_section(i: int, c: ClassBoard, rows: pd.DataFrame) -> str:
    k = c.key
    title = f"{k['precision']} · {k['mode']} · {machine(k['host'], k['gpu']).replace('`', '')}"
    lead = _table(f"class-{i}", ["rank", "method", "family", "complexity", "speed-up", "95% interval", "ok / ran",
                                 "median rel_err", "best % BW", "fitted exp."], leader_rows(c))
    every = _table(f"rows-{i}", ["method", "family", "dtype", "shape", "status", "ms", "95% interval", "% BW",
                                 "GB/s", "worst rel_err", "provenance"], result_rows(rows))
    return (f'<section class="class" id="section-{i}"{_attrs(precision=k["precision"], host=k["host"], gpu=k["gpu"])}>'
            f"<h2>{_e(title)}</h2><p class=note>Ranked on the {c.common_problems} problems every ranked method "
            f"ran ok (of {c.class_problems}); speed-up over <code>{_e(c.baseline)}</code>, geometric mean; "
            f"=k: a shared rank (95% intervals overlap).</p>{lead}"
            f"<details><summary>every row of this class ({len(rows)})</summary>{every}</details></section>")


def winners_section(win: pd.DataFrame) -> str:
    if win.empty:
        return ""
    body = []
    for w in win.to_dict("records"):
        who = w["winner"] or "tie: " + w["tied"]
        mark = " " + HOST_MARK if w["host_bound"] else ""
        shape = problem_text(w)
        body.append(
            f"<tr{_attrs(method=w['winner'] or w['tied'], family=w['family'], dtype=w['dtype'], shape=shape)}>"
            f"<td>{_e((w['gpu'] or 'CPU') + ' (' + w['host'] + ')')}</td><td>{_e(w['precision'])}</td>"
            f"<td>{_e(shape)}</td><td>{_e(who)}</td>{_num(w['time_ms'], '.4g', mark)}"
            f"<td>{_e(format(w['time_ms_lo'], '.4g'))}–{_e(format(w['time_ms_hi'], '.4g'))}</td>"
            f"{_num(w['pct_bw'], '.1f')}<td>{_e(w['runner_up'])}</td>{_num(w['lead'], '.2f')}</tr>")
    table = _table("winners", ["machine", "precision", "problem", "winner", "ms", "95% interval", "% BW",
                               "runner-up", "lead ×"], body)
    return ("<h2>Fastest correct method per problem</h2><p class=note>A winner only where its 95% interval "
            "lies below every other method's; otherwise the tied methods. Lead: runner-up time / fastest time. "
            f"{_e(host_note())}</p>{table}")


def plots_section(plots: list[Path]) -> str:
    imgs = []
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        imgs.append(f'<figure><figcaption>{_e(Path(p).name)}</figcaption>'
                    f'<img alt="{_e(Path(p).stem)}" src="data:image/png;base64,{data}"></figure>')
    return "<h2>Plots</h2>" + "".join(imgs) if imgs else ""


def failures_section(df: pd.DataFrame, load_failures: list[tuple[str, str]] | None) -> str:
    """The rows that did not pass and why; the methods skipped everywhere; plugin files that failed."""
    parts = []
    bad = df[df["status"].isin(["inaccurate", "suspect"] + FAILED_STATUSES)]
    if not bad.empty:
        body = []
        for r in bad.to_dict("records"):
            detail = r["error"] or (f"rel_err {r['rel_err']:.3g}, worst head {r['worst_head_rel_err']:.3g}"
                                    if r["status"] == "inaccurate" else "")
            shape = problem_text(r)
            body.append(f"<tr{_attrs(method=r['method'], family=r['family'], dtype=r['dtype'], shape=shape)}>"
                        f"<td>{_e(r['method'])}</td><td>{_e((r['gpu'] or 'CPU') + ' (' + r['host'] + ')')}</td>"
                        f"<td>{_e(r['dtype'])}</td><td>{_e(shape)}</td>"
                        f'<td class="status-bad">{_e(r["status"])}</td><td><pre>{_e(detail)}</pre></td></tr>')
        parts.append("<h2>Rows that did not pass</h2>" + _table(
            "failures", ["method", "machine", "dtype", "problem", "status", "reason"], body))
    ran = set(df[df["status"].isin(RAN_STATUSES)]["method"])
    idle = df[~df["method"].isin(ran)].drop_duplicates("method").sort_values("method")
    if not idle.empty:
        items = "".join(f"<li><code>{_e(r['method'])}</code>: {_e(r['error'] or 'no rows')}</li>"
                        for r in idle.to_dict("records"))
        parts.append(f"<h2>Not run on any problem here</h2><ul id=idle>{items}</ul>")
    if load_failures:
        items = "".join(f"<li><code>{_e(src)}</code>: {_e(err)}</li>" for src, err in load_failures)
        parts.append(f"<h2>Plugin files that failed to load</h2><ul id=load-failures>{items}</ul>")
    return "".join(parts)


def environment(df: pd.DataFrame) -> str:
    items = "".join(f"<li>{_e(s.where)} on <code>{_e(s.host)}</code>, {_e(s.details())}</li>" for s in settings(df))
    return f"<ul>{items}</ul>"


def since_section(s: Since) -> str:
    """What changed since a previous run (`since=`): the counts, per method, a link to every pair."""
    body = [f"<tr{_attrs(method=r['method'])}><td>{_e(r['method'])}</td><td>{_e(r['precision'])}</td>"
            + "".join(_num(r[c], ".0f") for c in ("pairs", "slower", "faster")) + _num(r["geomean_ratio"], ".3f")
            + "</tr>" for r in s.per_method.to_dict("records")]
    table = _table("since", ["method", "precision", "pairs", "slower", "faster", "geomean this/that"], body)
    return (f"<h2>Since the previous run</h2><p class=note>{_e(s.intro())} Every pair: "
            f"<a href=\"{_e(s.link)}\">{_e(s.link)}</a>.</p>{table if body else ''}")


def page(board: Leaderboard, df: pd.DataFrame, plots: list[Path] | None = None,
         load_failures: list[tuple[str, str]] | None = None, title: str = "leetbench leaderboard",
         since: Since | None = None) -> str:
    """The whole page as one string (`since`: what changed since a previous run)."""
    sections = []
    groups = {tuple(map(str, k)): g for k, g in df.groupby(["host", "gpu", "precision", "mode"], dropna=False)}
    for i, c in enumerate(board.classes):
        rows = groups.get(tuple(c.key[k] for k in ("host", "gpu", "precision", "mode")), df.iloc[:0])
        if (c.table["problems"] > 0).any():
            sections.append(class_section(i, c, rows))
    bar = ('<div class="bar">Filter: ' + "".join(
        f'<label>{n} <input name="{n}" type="search" placeholder="{p}"></label>'
        for n, p in [("method", "e.g. cupy_"), ("family", "e.g. peer:"), ("dtype", "e.g. bfloat16"),
                     ("shape", "e.g. N65536")]) + "</div>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'><title>{_e(title)}</title><style>{CSS}</style>"
            f"<script>{JS}</script></head><body><h1>{_e(title)}</h1>{environment(df)}"
            f"<p class=note>{_e(wall_note(df))}</p><p class=note>Methods rank within a class: one machine, one "
            "precision (fp64, IEEE fp32, tf32, fp16, bf16) and one mode; only ok rows count. Click a heading to "
            f"sort.</p>{since_section(since) if since is not None else ''}{bar}{''.join(sections)}"
            f"{winners_section(board.winners)}{plots_section(plots or [])}"
            f"{failures_section(df, load_failures)}</body></html>\n")
