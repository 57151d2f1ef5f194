"""Plots a person would put in a paper, from results rows (any number of runs merged).

time_vs_length.png   median time vs N, log-log, one line per method, one panel per (device, dtype)
bandwidth.png        % of the measured copy bandwidth vs N (bytes floor / time)
error_vs_length.png  rel_err vs N with the dtype tolerance, one panel per dtype
speedup.png          leaderboard speed-up over the baseline (bars)
decode_latency.png   per-token latency vs batch (decode rows only)

Each panel shows one problem shape (the one with the most rows) and says which in its title, so lines are
never averages over different shapes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from leetbench.leaderboard import Leaderboard  # noqa: E402
from leetbench.verdict import DEFAULT_TOLERANCES  # noqa: E402

SHAPE = ["batch", "heads", "dim", "dim_v", "decay", "initial_state", "mode", "steps"]


def _style_for(methods: list[str]) -> dict[str, dict]:
    cmap = plt.get_cmap("tab20")
    markers = "os^vD<>pP*hX"
    return {m: {"color": cmap(i % 20), "marker": markers[i % len(markers)]} for i, m in enumerate(sorted(methods))}


def _main_shape(g: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    counts = g.groupby(SHAPE, dropna=False).size().sort_values(ascending=False, kind="stable")
    key = counts.index[0]
    mask = pd.Series(True, index=g.index)
    for col, val in zip(SHAPE, key):
        mask &= (g[col] == val) if not (isinstance(val, float) and math.isnan(val)) else g[col].isna()
    sel = g[mask]
    b, h, d, e, lam = key[:5]
    return sel, f"B={b} H={h} D={d} E={e} λ={lam}"


def _panels(df: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in df.groupby(keys, sort=True)]


def _device_name(g: pd.DataFrame) -> str:
    gpu = str(g["gpu"].iloc[0]) if "gpu" in g and str(g["gpu"].iloc[0]) else ""
    return gpu or "CPU"


def _save(fig: plt.Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(ax: plt.Axes) -> None:
    """Inside the axes for a few lines; beside them, out of the data's way, for many."""
    if len(ax.get_legend_handles_labels()[0]) > 8:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, ncol=2)


def _lines(ax: plt.Axes, sel: pd.DataFrame, y: str, styles: dict, statuses=("ok",)) -> None:
    for method, g in sel[sel["status"].isin(statuses)].groupby("method"):
        per_n = g.groupby("length")[y].median().dropna()
        if per_n.empty:
            continue
        ax.plot(per_n.index, per_n.values, label=method, linewidth=1.6, markersize=4, **styles[method])


def _per_length(rows: pd.DataFrame, path: Path, styles: dict, *, panel_by: list[str], y: str, ylabel: str,
                title: Callable[[tuple, pd.DataFrame], str], suptitle: str, logy: bool = True,
                statuses: tuple[str, ...] = ("ok",),
                decorate: Callable[[plt.Axes, tuple], None] | None = None) -> bool:
    """One panel per `panel_by` value: `y` against N on log axes, one line per method."""
    if rows.empty:
        return False
    panels = _panels(rows, panel_by)
    fig, axes = _grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        sel, shape = _main_shape(g)
        _lines(ax, sel, y, styles, statuses)
        if decorate is not None:
            decorate(ax, key)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title(key, g)}\n{shape}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    fig.suptitle(suptitle, fontsize=11)
    _save(fig, path)
    return True


def time_vs_length(df: pd.DataFrame, path: Path) -> bool:
    return _per_length(
        df[(df["status"] == "ok") & (df["mode"] == "prefill")], path, _style_for(list(df["method"].unique())),
        panel_by=["device", "dtype"], y="time_ms", ylabel="median time (ms)",
        title=lambda key, g: f"{_device_name(g)} · {key[1]}",
        suptitle="Time vs sequence length (only rows within tolerance)")


def bandwidth(df: pd.DataFrame, path: Path) -> bool:
    def title(key: tuple, g: pd.DataFrame) -> str:
        copy = pd.to_numeric(g["copy_gbps"], errors="coerce").median()
        return f"{_device_name(g)} · {key[1]} · copy {copy:.0f} GB/s"

    return _per_length(
        df[(df["status"] == "ok") & df["pct_bw"].notna() & (df["mode"] == "prefill")], path,
        _style_for(list(df["method"].unique())), panel_by=["device", "dtype"], y="pct_bw",
        ylabel="% of measured copy bandwidth", title=title, logy=False,
        suptitle="Achieved bandwidth: bytes floor B·H·N·(2D+2E)·bytes / time",
        decorate=lambda ax, key: ax.axhline(100, color="black", linewidth=0.8, linestyle="--"))


def error_vs_length(df: pd.DataFrame, path: Path) -> bool:
    ran = df[df["status"].isin(("ok", "inaccurate")) & df["rel_err"].notna() & (df["mode"] == "prefill")].copy()
    ran["rel_err"] = ran["rel_err"].clip(lower=1e-17)  # exact results still show on a log axis
    return _per_length(
        ran, path, _style_for(list(df["method"].unique())), panel_by=["dtype"], y="rel_err",
        ylabel="rel_err vs float64 reference", title=lambda key, g: key[0], statuses=("ok", "inaccurate"),
        suptitle="Accuracy: ‖o − ref‖ / ‖ref‖",
        decorate=lambda ax, key: ax.axhline(DEFAULT_TOLERANCES[key[0]], color="red", linewidth=1,
                                            linestyle="--", label="tolerance"))


def speedup(board: Leaderboard, path: Path) -> bool:
    t = board.table[board.table["speedup"].notna()]
    if t.empty:
        return False
    t = t.sort_values("speedup")
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(t) + 1.5), layout="constrained")
    colors = ["tab:green" if m == board.baseline else "tab:blue" for m in t["method"]]
    ax.barh(t["method"], t["speedup"], color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"geometric-mean speed-up over {board.baseline} (problems both ran ok)")
    for y, (v, n) in enumerate(zip(t["speedup"], t["common_problems"])):
        ax.text(v, y, f" {v:.2f}× ({n})", va="center", fontsize=7)
    ax.set_title("Leaderboard", fontsize=11)
    _save(fig, path)
    return True


def decode_latency(df: pd.DataFrame, path: Path) -> bool:
    ok = df[(df["status"] == "ok") & (df["mode"] == "decode")]
    if ok.empty:
        return False
    styles = _style_for(list(df["method"].unique()))
    panels = _panels(ok, ["device", "dtype"])
    fig, axes = _grid(len(panels))
    for ax, ((device, dtype), g) in zip(axes, panels):
        for method, gm in g.groupby("method"):
            per_b = gm.groupby("batch")["time_ms"].median()
            ax.plot(per_b.index, per_b.values, label=method, **styles[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch B")
        ax.set_ylabel("per-token latency (ms)")
        h, d = g["heads"].iloc[0], g["dim"].iloc[0]
        ax.set_title(f"{_device_name(g)} · {dtype} · H={h} D={d}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    fig.suptitle("Decode: one token with the state carried", fontsize=11)
    _save(fig, path)
    return True


def write_all(df: pd.DataFrame, board: Leaderboard, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, draw in [("time_vs_length", lambda p: time_vs_length(df, p)), ("bandwidth", lambda p: bandwidth(df, p)),
                       ("error_vs_length", lambda p: error_vs_length(df, p)), ("speedup", lambda p: speedup(board, p)),
                       ("decode_latency", lambda p: decode_latency(df, p))]:
        path = folder / f"{name}.png"
        if draw(path):
            made.append(path)
    return made

