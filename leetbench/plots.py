"""Plots that answer "which route for my shape", from results rows (any number of runs merged).

time_vs_length.png   median time vs N (log-log) with 95% error bars and the bytes-floor time as the limit
bandwidth.png        % of the measured copy bandwidth vs N (bytes floor / time), on axes that fit the data
error_vs_length.png  worst error vs N with the class's tolerance
speedup.png          the leaderboard's speed-ups per class, with intervals and shared ranks
winners.png          for each (B, N) the fastest correct route, its % of the bandwidth floor and its lead
decode_latency.png   per-token latency vs batch (decode rows only)

One panel per class (host, GPU, precision; never pooled), each showing one problem shape (the one with the
most rows), named in its title. Routes keep one style in every plot: ours (methods starting `cupy_`) bold,
peers (family `peer:*`) dashed, the PyTorch zoo thin and faded; colours from the Okabe–Ito palette, which
colour-blind readers can tell apart, with markers as a second cue. The data functions (`route_styles`,
`class_panels`, `series`, `floor_ms`, `bandwidth_axis`, `speedup_bars`, `winner_cells`) are what the tests
check; the drawing functions only draw what they return.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from leetbench.leaderboard import Leaderboard, class_order  # noqa: E402
from leetbench.verdict import DEFAULT_TOLERANCES  # noqa: E402

SHAPE = ["batch", "heads", "dim", "dim_v", "decay", "initial_state", "mode", "steps"]
PANEL = ["host", "gpu", "precision"]
# Okabe–Ito without black (black is the physical limit); markers cycle with a coprime period, so that
# (colour, marker) pairs stay unique for 56 routes.
OKABE_ITO = ["#D55E00", "#0072B2", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442"]
MARKERS = "osD^vPXh"
KINDS = ("ours", "peer", "zoo")
TOLERANCE_KEY = {"fp64": "float64", "fp32": "float32", "tf32": "tf32", "fp16": "float16", "bf16": "bfloat16"}


# ---- data for the plots ------------------------------------------------------------------------------

def route_kind(method: str, family: str) -> str:
    """ours (our CuPy kernels), peer (another library through an adapter) or zoo (the PyTorch routes)."""
    if str(method).startswith("cupy_") or str(family).startswith("cupy"):
        return "ours"
    return "peer" if str(family).startswith("peer:") else "zoo"


def route_styles(df: pd.DataFrame) -> dict[str, dict]:
    """One matplotlib style per method, the same in every plot: ours, then peers, then the zoo."""
    fams = df.drop_duplicates("method").set_index("method")["family"].astype(str).to_dict()
    order = sorted(fams, key=lambda m: (KINDS.index(route_kind(m, fams[m])), str(m)))
    measured = set(df.loc[df["status"] == "ok", "method"]) if "status" in df else set(fams)
    contenders = any(route_kind(m, f) != "zoo" for m, f in fams.items() if m in measured)
    look = {"ours": dict(linestyle="-", linewidth=2.8, alpha=1.0, zorder=4, markersize=5),
            "peer": dict(linestyle="--", linewidth=1.8, alpha=1.0, zorder=3, markersize=4),
            # the zoo fades only beside contenders (on a CPU it is all there is)
            "zoo": dict(linestyle="-", linewidth=1.0, alpha=0.4, zorder=2, markersize=3) if contenders else
            dict(linestyle="-", linewidth=1.6, alpha=1.0, zorder=2, markersize=4)}
    return {m: {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)],
                "kind": route_kind(m, fams[m]), **look[route_kind(m, fams[m])]} for i, m in enumerate(order)}


def _line_style(style: dict) -> dict:
    return {k: v for k, v in style.items() if k != "kind"}


def class_panels(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> list[tuple[dict, pd.DataFrame]]:
    """Rows split by class (host, gpu, precision + `extra`), in leaderboard order; never pooled."""
    keys = PANEL + list(extra)
    groups = [(dict(zip(keys, k if isinstance(k, tuple) else (k,))), g)
              for k, g in df.groupby(keys, sort=False, dropna=False)]
    return sorted(groups, key=lambda kg: class_order((kg[0]["host"], kg[0]["gpu"], kg[0]["precision"], "prefill"))
                  + tuple(str(kg[0][c]) for c in extra))


def panel_title(key: dict) -> str:
    return f"{key['gpu'] or 'CPU'} ({key['host']}) · {key['precision']}"


def main_shape(g: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the shape with the most rows, and its label."""
    counts = g.groupby(SHAPE, dropna=False).size().sort_values(ascending=False, kind="stable")
    key = counts.index[0]
    mask = pd.Series(True, index=g.index)
    for col, val in zip(SHAPE, key):
        mask &= (g[col] == val) if not (isinstance(val, float) and math.isnan(val)) else g[col].isna()
    b, h, d, e, lam = key[:5]
    return g[mask], f"B={b} H={h} D={d} E={e} λ={lam}"


def series(sel: pd.DataFrame, y: str = "time_ms") -> dict[str, pd.DataFrame]:
    """Per method: `y` per N (median), with the 95% interval columns lo/hi where the rows have them."""
    out = {}
    for method, g in sel.groupby("method", sort=True):
        cols = {"y": g[y]}
        if y == "time_ms":
            cols |= {"lo": g["time_ms_lo"], "hi": g["time_ms_hi"]}
        per_n = pd.DataFrame(cols).apply(pd.to_numeric, errors="coerce").groupby(g["length"]).median()
        per_n = per_n[per_n["y"].notna()]
        if not per_n.empty:
            out[str(method)] = per_n
    return out


def floor_ms(sel: pd.DataFrame) -> pd.Series:
    """The bytes-floor time per N: bytes_floor / (copy_gbps · 1e9) in ms — no route can beat it."""
    bw = pd.to_numeric(sel["copy_gbps"], errors="coerce")
    t = pd.to_numeric(sel["bytes_floor"], errors="coerce") / (bw * 1e9) * 1e3
    t = t[(bw > 0) & t.notna() & (t > 0)]
    return t.groupby(sel.loc[t.index, "length"]).median().sort_index()


def bandwidth_axis(values: pd.Series | np.ndarray) -> tuple[str, tuple[float, float]]:
    """Scale and limits that show the data: linear from 0 when it spans less than 30×, else logarithmic."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) == 0:
        return "linear", (0.0, 100.0)
    lo, hi = float(v.min()), float(v.max())
    if hi / lo > 30:
        return "log", (lo / 1.5, hi * 1.5)
    return "linear", (0.0, hi * 1.15)


def speedup_bars(board: Leaderboard) -> list[tuple[dict, pd.DataFrame]]:
    """Per class, its ranked methods (slowest first, as bars are drawn bottom-up) with speed-up intervals."""
    out = []
    for c in board.classes:
        t = c.table[c.table["ranked"].astype(bool)]
        if not t.empty:
            out.append(({**c.key, "baseline": c.baseline, "common": c.common_problems}, t.iloc[::-1]))
    return out


def winner_label(w: dict) -> str:
    """A winners-map cell: the route (or the tie), its % of the bandwidth floor, its lead over the runner-up."""
    pct = w["pct_bw"]
    bw = f"{float(pct):.0f}% BW" if isinstance(pct, (int, float)) and math.isfinite(pct) else "— BW"
    if not w["winner"]:
        return "tie\n" + "\n".join(w["tied"].split(", ")[:3]) + f"\n{bw}"
    lead = w["lead"]
    ahead = f"+{100 * (float(lead) - 1):.0f}%" if isinstance(lead, (int, float)) and math.isfinite(lead) else "alone"
    return f"{w['winner']}\n{bw}\n{ahead}"


MAP_PANELS = 12  # panels of the winners map at most (a figure of readable cells)


def winner_cells(winners: pd.DataFrame, limit: int = MAP_PANELS) -> list[tuple[str, pd.DataFrame]]:
    """Panels of the winners map: one per class and per value of the other swept axes (H, D, E, λ, ...);
    in each, one cell per (B, N) with the route, whether it is a tie, and the label. At most `limit`:
    every class's largest panel first (its main grid), then the largest others; in class order."""
    return _winner_panels(winners, limit)[0]


def _winner_panels(winners: pd.DataFrame, limit: int) -> tuple[list[tuple[str, pd.DataFrame]], int]:
    """`winner_cells`, and how many panels the limit left out."""
    if winners.empty:
        return [], 0
    keys = ["host", "gpu", "precision", "mode", "steps", "heads", "dim", "dim_v", "decay", "initial_state"]
    panels = []
    for key, g in winners.groupby(keys, sort=False, dropna=False):
        k = dict(zip(keys, key))
        mode = "decode×" + str(k["steps"]) if k["mode"] == "decode" else "prefill"
        title = (f"{k['gpu'] or 'CPU'} ({k['host']}) · {k['precision']} · {mode}\nH={k['heads']} D={k['dim']} "
                 f"E={k['dim_v']} λ={k['decay']}{' S0' if str(k['initial_state']) == 'True' else ''}")
        cells = pd.DataFrame({"batch": g["batch"].astype(int), "length": g["length"].astype(int),
                              "method": g["fastest"], "tie": g["winner"] == "",
                              "label": [winner_label(w) for w in g.to_dict("records")]})
        panels.append((class_order((k["host"], k["gpu"], k["precision"], k["mode"])), -len(cells), title, cells))
    panels.sort(key=lambda p: p[:3])  # in each class the largest panel first
    first = [i == 0 or p[0] != panels[i - 1][0] for i, p in enumerate(panels)]
    others = sorted((i for i in range(len(panels)) if not first[i]), key=lambda i: panels[i][1])
    picked = ([i for i in range(len(panels)) if first[i]] + others)[:limit]
    chosen = [panels[i] for i in sorted(picked)]
    return [(title, cells) for _, _, title, cells in chosen], len(panels) - len(chosen)


def winner_colors(panels: list[tuple[str, pd.DataFrame]], styles: dict) -> dict[str, str]:
    """Distinct colours for the routes on the winners map (few win anywhere): Okabe–Ito in route order, then
    greys; a cell names its route too, so colour is a second cue."""
    rank = {m: i for i, m in enumerate(styles)}
    routes = sorted({m for _, c in panels for m in c["method"]}, key=lambda m: (rank.get(m, len(rank)), m))
    greys = ["#999999", "#666666", "#BBBBBB", "#444444"]
    return {m: OKABE_ITO[i] if i < len(OKABE_ITO) else greys[(i - len(OKABE_ITO)) % len(greys)]
            for i, m in enumerate(routes)}


# ---- drawing ---------------------------------------------------------------------------------------------

def _save(fig: plt.Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _grid(n: int, width: float = 6.4, height: float = 4.6, cols: int = 2) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _figure_legend(fig: plt.Figure, axes: list[plt.Axes], styles: dict) -> None:
    """One legend for all panels (a route has one style everywhere): ours, peers, then the zoo."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    rank = {m: i for i, m in enumerate(styles)}
    labels = sorted(seen, key=lambda m: (m not in rank, rank.get(m, 0), m))
    names = {"ours": " (ours)", "peer": " (peer)", "zoo": ""}
    text = [m + names[styles[m]["kind"]] if m in styles else m for m in labels]
    if labels:
        fig.legend([seen[m] for m in labels], text, loc="outside right center", fontsize=8,
                   title="ours bold · peers dashed · PyTorch faded", title_fontsize=8)


def _route_lines(ax: plt.Axes, data: dict[str, pd.DataFrame], styles: dict, errorbars: bool) -> None:
    for method, per_n in data.items():
        st = _line_style(styles[method])
        ax.plot(per_n.index, per_n["y"], label=method, **st)
        if errorbars and "lo" in per_n and per_n["lo"].notna().any():
            ok = per_n["lo"].notna() & per_n["hi"].notna()
            err = np.vstack([(per_n["y"] - per_n["lo"])[ok].clip(lower=0), (per_n["hi"] - per_n["y"])[ok].clip(lower=0)])
            ax.errorbar(per_n.index[ok], per_n["y"][ok], yerr=err, fmt="none", ecolor=st["color"],
                        elinewidth=1, capsize=2, alpha=st["alpha"], zorder=st["zorder"])


def _per_length(rows: pd.DataFrame, path: Path, styles: dict, *, y: str, ylabel: str, suptitle: str,
                decorate: Callable[[plt.Axes, dict, pd.DataFrame], None] | None = None,
                logy: bool = True) -> bool:
    """One panel per class: `y` against N, one line per route, on the class's most common shape."""
    if rows.empty:
        return False
    panels = class_panels(rows)
    fig, axes = _grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        sel, shape = main_shape(g)
        _route_lines(ax, series(sel, y), styles, errorbars=(y == "time_ms"))
        if decorate is not None:
            decorate(ax, key, sel)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel="sequence length N", ylabel=ylabel)
        ax.set_title(f"{panel_title(key)}\n{shape}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes, styles)
    fig.suptitle(suptitle, fontsize=11)
    _save(fig, path)
    return True


def _draw_floor(ax: plt.Axes, key: dict, sel: pd.DataFrame) -> None:
    floor = floor_ms(sel)
    if not floor.empty:
        ax.plot(floor.index, floor.values, color="black", linestyle="--", linewidth=1.6, zorder=5,
                label="bytes floor / copy bandwidth")


def time_vs_length(df: pd.DataFrame, path: Path, styles: dict | None = None) -> bool:
    ok = df[(df["status"] == "ok") & (df["mode"] == "prefill")]
    return _per_length(ok, path, styles or route_styles(df), y="time_ms", ylabel="median time (ms), 95% interval",
                       suptitle="Time vs sequence length (rows within tolerance); dashed black: the bytes-floor time",
                       decorate=_draw_floor)


def _bandwidth_axes(ax: plt.Axes, key: dict, sel: pd.DataFrame) -> None:
    scale, lim = bandwidth_axis(sel["pct_bw"])
    ax.set_yscale(scale)
    ax.set_ylim(*lim)
    if lim[1] >= 100:
        ax.axhline(100, color="black", linewidth=1.2, linestyle="--", label="copy bandwidth")
    copy = pd.to_numeric(sel["copy_gbps"], errors="coerce").median()
    if math.isfinite(copy):
        ax.text(0.01, 0.98, f"100% = copy {copy:.0f} GB/s", transform=ax.transAxes, va="top", fontsize=7)


def bandwidth(df: pd.DataFrame, path: Path, styles: dict | None = None) -> bool:
    ok = df[(df["status"] == "ok") & df["pct_bw"].notna() & (df["mode"] == "prefill")]
    return _per_length(ok, path, styles or route_styles(df), y="pct_bw", ylabel="% of measured copy bandwidth",
                       suptitle="Achieved bandwidth: bytes floor B·H·N·(2D+2E)·bytes / time", logy=False,
                       decorate=_bandwidth_axes)


def _tolerance(ax: plt.Axes, key: dict, sel: pd.DataFrame) -> None:
    tol = DEFAULT_TOLERANCES.get(TOLERANCE_KEY.get(key["precision"], ""), math.nan)
    if math.isfinite(tol):
        ax.axhline(tol, color="black", linewidth=1.2, linestyle="--", label="tolerance")


def error_vs_length(df: pd.DataFrame, path: Path, styles: dict | None = None) -> bool:
    ran = df[df["status"].isin(("ok", "inaccurate")) & (df["mode"] == "prefill")].copy()
    err = pd.to_numeric(ran["worst_head_rel_err"], errors="coerce").fillna(pd.to_numeric(ran["rel_err"], errors="coerce"))
    ran = ran.assign(err=err.clip(lower=1e-17))[err.notna()]  # exact results still show on a log axis
    return _per_length(ran, path, styles or route_styles(df), y="err", ylabel="worst head's rel_err vs float64",
                       suptitle="Accuracy: ‖o − ref‖ / ‖ref‖ of the worst (batch, head)", decorate=_tolerance)


def speedup(board: Leaderboard, path: Path, styles: dict) -> bool:
    panels = speedup_bars(board)
    if not panels:
        return False
    tallest = max(len(t) for _, t in panels)
    fig, axes = _grid(len(panels), width=6.0, height=0.32 * tallest + 1.4)
    for ax, (key, t) in zip(axes, panels):
        y = np.arange(len(t))
        st = [styles.get(m, {"color": "grey", "alpha": 1.0, "kind": "zoo"}) for m in t["method"]]
        err = np.vstack([(t["speedup"] - t["speedup_lo"]).clip(lower=0), (t["speedup_hi"] - t["speedup"]).clip(lower=0)])
        bars = ax.barh(y, t["speedup"], xerr=err, capsize=2, error_kw={"elinewidth": 1})
        for bar, s in zip(bars, st):  # the route's colour; ours outlined, the zoo faded, as in the line plots
            bar.set(facecolor=s["color"], alpha=max(s["alpha"], 0.45), edgecolor="black",
                    linewidth=1.5 if s["kind"] == "ours" else 0, hatch="//" if s["kind"] == "peer" else None)
        ax.set_yticks(y, [m + (" (ours)" if s["kind"] == "ours" else "") for m, s in zip(t["method"], st)], fontsize=8)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        lim = (0.7 * float(t["speedup_lo"].min()), 3.0 * float(t["speedup_hi"].max()))
        ax.set_xlim(*lim)
        if lim[1] / lim[0] < 100:  # under two decades: label 1, 2, 5 of each, or the axis shows one tick
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for yi, r in zip(y, t.to_dict("records")):
            rank = f"={r['rank']}" if r["tied"] else f"#{r['rank']}"
            ax.text(r["speedup_hi"], yi, f" {rank} {r['speedup']:.2f}×", va="center", fontsize=7)
        ax.set_xlabel(f"speed-up over {key['baseline']} ({key['common']} common problems)", fontsize=8)
        ax.set_title(f"{panel_title(key)} · {key['mode']}", fontsize=9)
    fig.suptitle("Leaderboard per class (=k: shared rank, intervals overlap)", fontsize=11)
    _save(fig, path)
    return True


def winners_map(board: Leaderboard, path: Path, styles: dict) -> bool:
    panels, left_out = _winner_panels(board.winners, MAP_PANELS)
    if not panels:
        return False
    colors = winner_colors(panels, styles)
    widest = max(c["length"].nunique() for _, c in panels)
    tallest = max(c["batch"].nunique() for _, c in panels)
    fig, axes = _grid(len(panels), width=1.15 * widest + 1.3, height=0.85 * tallest + 1.3)
    for ax, (title, cells) in zip(axes, panels):
        ns, bs = sorted(cells["length"].unique()), sorted(cells["batch"].unique())
        for c in cells.to_dict("records"):
            x, y = ns.index(c["length"]), bs.index(c["batch"])
            ax.add_patch(plt.Rectangle((x - 0.48, y - 0.48), 0.96, 0.96, facecolor=colors[c["method"]],
                                       alpha=0.3 if c["tie"] else 0.75, hatch="//" if c["tie"] else None,
                                       edgecolor="white"))
            ax.text(x, y, c["label"], ha="center", va="center", fontsize=7)
        ax.set_xlim(-0.5, len(ns) - 0.5)
        ax.set_ylim(-0.5, len(bs) - 0.5)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns], fontsize=8)
        ax.set_yticks(range(len(bs)), [str(b) for b in bs], fontsize=8)
        ax.set(xlabel="sequence length N", ylabel="batch B")
        ax.set_title(title, fontsize=9)
    fig.legend([Patch(facecolor=c, alpha=0.75) for c in colors.values()], list(colors), loc="outside right center",
               fontsize=8, title="fastest route", title_fontsize=8)
    fig.suptitle("Fastest correct route per shape: % of the bandwidth floor, lead over the runner-up "
                 "(hatched: a tie, 95% intervals overlap)"
                 + (f"\n{left_out} smaller panels not shown (other H, D, E, λ or initial state): leaderboard.md "
                    "and .html list every problem's winner" if left_out else ""), fontsize=10)
    _save(fig, path)
    return True


def decode_latency(df: pd.DataFrame, path: Path, styles: dict | None = None) -> bool:
    ok = df[(df["status"] == "ok") & (df["mode"] == "decode")]
    if ok.empty:
        return False
    styles = styles or route_styles(df)
    panels = class_panels(ok)
    fig, axes = _grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        for method, gm in g.groupby("method"):
            per_b = gm.groupby("batch")["time_ms"].median()
            ax.plot(per_b.index, per_b.values, label=method, **_line_style(styles[method]))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="batch B", ylabel="per-token latency (ms)")
        ax.set_title(f"{panel_title(key)} · H={g['heads'].iloc[0]} D={g['dim'].iloc[0]}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes, styles)
    fig.suptitle("Decode: one token with the state carried", fontsize=11)
    _save(fig, path)
    return True


def write_all(df: pd.DataFrame, board: Leaderboard, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    styles = route_styles(df)
    made = []
    for name, draw in [("time_vs_length", lambda p: time_vs_length(df, p, styles)),
                       ("winners", lambda p: winners_map(board, p, styles)),
                       ("bandwidth", lambda p: bandwidth(df, p, styles)),
                       ("speedup", lambda p: speedup(board, p, styles)),
                       ("error_vs_length", lambda p: error_vs_length(df, p, styles)),
                       ("decode_latency", lambda p: decode_latency(df, p, styles))]:
        path = folder / f"{name}.png"
        if draw(path):
            made.append(path)
    return made
