"""Dispatch tables and the dispatcher behind `leetbench.decay_attention` (the operator, `leetbench.attention`).

A dispatch table says, for one device (a GPU name as `torch.cuda.get_device_name` gives it, or `cpu`), which
routes ran `ok` at each measured shape and how fast: an entry per (mode, dtype, initial state, B, H, N, D, E),
its routes sorted by median time, each with its precision (TF32 or not) and whether it returned a final
state. Tables are made from results.csv files (`tables_from_results`): the shipped one
(`leetbench/dispatch_tables/*.json`) from the published leaderboard, and user tables by `leetbench tune …`
(a sweep, then `tune_from_run`), kept in the user cache folder ($XDG_CACHE_HOME/leetbench, or
~/.cache/leetbench) as `dispatch-<device>.json`.

A `Dispatcher` answers one call in this order:
1. tables: explicit ones (given to the dispatcher), then the user cache (newest first), then the shipped ones;
   the first table for the call's device that has entries of the call's mode and dtype decides;
2. entry: among those, entries with the call's initial-state flag (all of them if none has it), the nearest
   by shape: |log2| ratios of B·H, N (prefill only), D and E, summed;
3. route: the fastest route of the entry that is allowed and can run here: TF32 routes only for float32
   calls that allow TF32 (`allow_tf32`, default torch.backends.cuda.matmul.allow_tf32); a route that returns
   a final state when one is asked for; a `differentiable` route when an input requires grad; a registered
   route whose `why_not(problem)` accepts the call on this machine (a missing package falls through);
4. fallback: `chunked` for prefill, `recurrent` for decode (CPU, unknown card, no table, nothing eligible).

The decision is cached per call key (shapes, dtypes, device, decay kind, state in/out, grad, TF32 policy,
scale), so a warm call costs a dict lookup and the route's own call. A route that raises on its first call
for a key (a broken install, a compile failure) is passed over from then on, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from leetbench.inputs import state_dtype
from leetbench.problem import DTYPES, MODES, Problem, ProblemError, decay_profile
from leetbench.registry import Method, Registry

FORMAT = "leetbench-dispatch-table/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "dispatch_tables"
USER_PREFIX = "dispatch-"
FALLBACK = {"prefill": "chunked", "decode": "recurrent"}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ENTRY_KEY = ("mode", "dtype", "initial_state", "batch", "heads", "length", "dim", "dim_v")


# ---- tables ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One route of an entry: its median time there and what it computes."""

    method: str
    time_ms: float
    tf32: bool = False
    final_state: bool = True
    rel_err: float = math.nan


@dataclass(frozen=True)
class Entry:
    """One measured shape of a table and its routes, fastest first; `not_ok`: routes that ran and failed."""

    mode: str
    dtype: str
    initial_state: bool
    batch: int
    heads: int
    length: int
    dim: int
    dim_v: int
    routes: tuple[Route, ...]
    not_ok: Mapping[str, str] = field(default_factory=dict)

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in ENTRY_KEY)

    def label(self) -> str:
        s0 = " S0" if self.initial_state else ""
        n = "" if self.mode == "decode" else f" N={self.length}"
        return f"{self.mode} {self.dtype}{s0} B={self.batch} H={self.heads}{n} D={self.dim} E={self.dim_v}"

    def distances(self, B: int, H: int, N: int, D: int, E: int) -> tuple[float, float, float, float]:
        """|log2| ratios of B·H, N (0 for decode: the prefix length does not matter), D and E."""
        def d(a: int, b: int) -> float:
            return abs(math.log2(a / b))
        return (d(B * H, self.batch * self.heads), 0.0 if self.mode == "decode" else d(N, self.length),
                d(D, self.dim), d(E, self.dim_v))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ENTRY_KEY}
        out["routes"] = [{"method": r.method, "time_ms": _round(r.time_ms), "tf32": r.tf32,
                          "final_state": r.final_state, "rel_err": None if math.isnan(r.rel_err) else _round(r.rel_err)}
                         for r in self.routes]
        if self.not_ok:
            out["not_ok"] = dict(sorted(self.not_ok.items()))
        return out

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> "Entry":
        mode, dtype = str(d["mode"]), str(d["dtype"])
        if mode not in MODES or dtype not in DTYPES:
            raise ValueError(f"entry with mode {mode!r} and dtype {dtype!r}")
        sizes = {k: int(d[k]) for k in ("batch", "heads", "length", "dim", "dim_v")}
        if min(sizes.values()) <= 0:
            raise ValueError(f"entry with a size ≤ 0: {sizes}")
        routes = tuple(Route(str(r["method"]), float(r["time_ms"]), bool(r.get("tf32", False)),
                             bool(r.get("final_state", True)),
                             math.nan if r.get("rel_err") is None else float(r["rel_err"]))
                       for r in d["routes"])
        routes = tuple(sorted(routes, key=lambda r: r.time_ms))
        return cls(mode, dtype, bool(d.get("initial_state", False)), routes=routes,
                   not_ok={str(k): str(v) for k, v in dict(d.get("not_ok") or {}).items()}, **sizes)


@dataclass(frozen=True)
class Table:
    """A dispatch table for one device; `origin` is explicit, user cache or shipped."""

    device: str
    entries: tuple[Entry, ...]
    origin: str = "explicit"
    path: str = "<dict>"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Mapping[str, Any], origin: str = "explicit", path: str = "<dict>") -> "Table":
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        entries = tuple(Entry.of(e) for e in data["entries"])
        meta = {k: v for k, v in data.items() if k not in ("entries", "device", "format")}
        return cls(str(data["device"]), entries, origin, path, meta)

    @classmethod
    def load(cls, path: str | Path, origin: str = "explicit") -> "Table":
        with open(path, encoding="utf-8") as f:
            return cls.of(json.load(f), origin, str(path))

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, **self.meta,
                "entries": [e.as_json() for e in sorted(self.entries, key=_entry_order)]}

    def label(self) -> str:
        return f"{self.path} ({self.origin}; {len(self.entries)} entries for {self.device})"


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _entry_order(e: Entry) -> tuple:
    return (e.mode, e.dtype, e.initial_state, e.batch, e.heads, e.dim, e.dim_v, e.length)


def dumps(table: Table | Mapping[str, Any]) -> str:
    """A table as JSON text: one line per entry, so a re-tune shows as a readable diff."""
    data = table.as_json() if isinstance(table, Table) else dict(table)
    head = {k: v for k, v in data.items() if k != "entries"}
    lines = [json.dumps(e, ensure_ascii=False) for e in data.get("entries", [])]
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    return text + ',\n "entries": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def device_slug(device: str) -> str:
    """A file-name form of a device name: `NVIDIA H200` → `NVIDIA_H200`."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", device).strip("_") or "device"


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/leetbench (when set to an absolute path), else ~/.cache/leetbench."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "leetbench"


def tables_from_results(paths: Iterable[str | Path]) -> list[Table]:
    """Dispatch tables from results.csv files, one per device (GPU name, or `cpu`).

    A re-measured (method, problem) counts once (its newest row). At each entry shape a route is listed when
    every row it has there (all decays, hosts) is `ok`, with the median of their times; a route with any row
    that ran and was not ok there is listed under `not_ok` instead. Skipped rows are ignored.
    """
    from leetbench.results import KEY_COLUMNS
    from leetbench.store import read_results

    paths = [Path(p) for p in paths]
    df = read_results(paths)
    if df.empty:
        return []
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(subset=KEY_COLUMNS, keep="last")
    df = df[df["status"] != "skipped"].copy()
    df["device_name"] = [g if str(d).startswith("cuda") and g else "cpu" for d, g in zip(df["device"], df["gpu"])]
    df.loc[df["mode"] == "decode", "initial_state"] = False  # a decode problem always carries a state
    tables = []
    for name, rows in df.groupby("device_name", sort=True):
        entries = []
        for key, at in rows.groupby(list(ENTRY_KEY), sort=True):
            routes, not_ok = [], {}
            for method, r in at.groupby("method", sort=True):
                bad = r[r["status"] != "ok"]
                if len(bad):
                    not_ok[str(method)] = str(bad["status"].iloc[-1])
                    continue
                routes.append(Route(str(method), float(statistics.median(r["time_ms"])), bool(r["tf32"].any()),
                                    bool(r["state_rel_err"].notna().all()), float(r["rel_err"].max())))
            if routes or not_ok:
                values = dict(zip(ENTRY_KEY, key))
                entries.append(Entry(str(values["mode"]), str(values["dtype"]), bool(values["initial_state"]),
                                     *(int(values[k]) for k in ("batch", "heads", "length", "dim", "dim_v")),
                                     routes=tuple(sorted(routes, key=lambda x: x.time_ms)), not_ok=not_ok))
        ok = rows[rows["status"] == "ok"]
        meta = {
            "generated_by": "leetbench.dispatch.tables_from_results",
            "sources": [str(p) for p in paths],
            "rows": int(len(rows)),
            "measured": [str(ok["timestamp"].min()), str(ok["timestamp"].max())] if len(ok) else [],
            "hosts": sorted(set(rows["host"])),
            "torch": sorted(set(rows["torch"])),
            "git_sha": sorted(set(rows["git_sha"]) - {""}),
        }
        tables.append(Table(str(name), tuple(sorted(entries, key=_entry_order)), "built", "<built>", meta))
    return tables


def merge_tables(old: Table, new: Table) -> Table:
    """`new` measured over `old` (same device): per entry, re-measured routes replace old ones, routes that
    failed in `new` are dropped, routes only `old` measured are kept."""
    merged = {e.key(): e for e in old.entries}
    for e in new.entries:
        prev = merged.get(e.key())
        if prev is not None:
            fresh = {r.method for r in e.routes} | set(e.not_ok)
            kept = [r for r in prev.routes if r.method not in fresh]
            not_ok = {**{k: v for k, v in prev.not_ok.items() if k not in fresh}, **e.not_ok}
            e = Entry(*(getattr(e, k) for k in ENTRY_KEY), routes=tuple(sorted(kept + list(e.routes),
                                                                               key=lambda r: r.time_ms)),
                      not_ok=not_ok)
        merged[e.key()] = e
    return Table(new.device, tuple(sorted(merged.values(), key=_entry_order)), new.origin, new.path,
                 {**new.meta, "sources": list(dict.fromkeys(list(old.meta.get("sources", []))
                                                            + list(new.meta.get("sources", []))))})


def write_table(table: Table, path: str | Path) -> Path:
    from leetbench.store import atomic_write

    path = Path(path)
    atomic_write(path, dumps(table))
    return path


def tune_from_run(folder: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """After `leetbench tune …`: the run's results.csv as dispatch tables in the user cache (merged into the
    table already there for that device, under a lock: the jobs of a multirun may finish together). Returns
    the files written; prints one line per file."""
    import fcntl

    folder = Path(folder)
    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    written = []
    tables = tables_from_results([folder / "results.csv"])
    if tables:
        cache.mkdir(parents=True, exist_ok=True)
    for table in tables:
        path = cache / f"{USER_PREFIX}{device_slug(table.device)}.json"
        with open(cache / ".dispatch.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                try:
                    table = merge_tables(Table.load(path, "user cache"), table)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    print(f"leetbench: warning: replacing unreadable dispatch table {path}: {exc}", file=sys.stderr)
            written.append(write_table(table, path))
        routes = len({r.method for e in table.entries for r in e.routes})
        print(f"leetbench: dispatch table for {table.device}: {len(table.entries)} entries, {routes} routes → {path}")
    if not written:
        print(f"leetbench: warning: no rows in {folder / 'results.csv'}; no dispatch table written", file=sys.stderr)
    return written


# ---- decisions -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Which route a call runs and why: what `leetbench.explain` returns (`str()` of it reads as a report)."""

    route: str
    call: str
    fallback: bool = False
    reason: str = ""
    table: str | None = None
    entry: str | None = None
    distance: tuple[float, float, float, float] | None = None
    ranked: tuple[tuple[str, float], ...] = ()
    passed_over: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        lines = [f"route:  {self.route}" + (" (fallback)" if self.fallback else ""), f"call:   {self.call}"]
        if self.table:
            lines.append(f"table:  {self.table}")
        if self.entry:
            d = self.distance or (0.0, 0.0, 0.0, 0.0)
            lines.append(f"entry:  {self.entry} (shape distance {sum(d):.2f}: |log2| of B·H {d[0]:.2f}, "
                         f"N {d[1]:.2f}, D {d[2]:.2f}, E {d[3]:.2f})")
        if self.ranked:
            lines.append("ranked: " + ", ".join(f"{n} {t:.4g} ms" for n, t in self.ranked))
        for name, why in self.passed_over:
            lines.append(f"passed over: {name}: {why}")
        if self.reason:
            lines.append(f"why:    {self.reason}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Call:
    """What a decision depends on, besides the tables and the machine."""

    mode: str
    device: torch.device
    dtype: torch.dtype
    B: int
    H: int
    N: int
    D: int
    E: int
    state_in: bool
    state_out: bool
    grad: bool
    allow_tf32: bool
    decay: float | str | None  # None: a tensor (its values are not read)

    def problem(self) -> Problem | None:
        """The harness's problem for `why_not`; None on a device the harness does not know."""
        if self.device.type == "cpu":
            dev = "cpu"
        elif self.device.type == "cuda":
            dev = "cuda" if self.device.index is None else f"cuda:{self.device.index}"
        else:
            return None
        decode = self.mode == "decode"
        return Problem(batch=self.B, heads=self.H, length=1 if decode else self.N, dim=self.D,
                       dim_v=None if self.E == self.D else self.E,
                       decay="retnet" if self.decay is None else self.decay, dtype=DTYPE_NAMES[self.dtype],
                       device=dev, initial_state=self.state_in and not decode, mode=self.mode,
                       steps=1 if decode else 0)

    def describe(self, device_name: str) -> str:
        n = "" if self.mode == "decode" else f" N={self.N}"
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        return (f"{self.mode} on {self.device} ({device_name}), {DTYPE_NAMES[self.dtype]}, B={self.B} H={self.H}{n} "
                f"D={self.D} E={self.E}, state in: {yn(self.state_in)}, out: {yn(self.state_out)}, "
                f"grad: {yn(self.grad)}, TF32: {'allowed' if self.allow_tf32 else 'no'}")


@dataclass
class Plan:
    """A cached decision with everything its calls need."""

    decision: Decision
    method: Method
    call: Call
    problem: Problem | None
    scale: float
    decay: torch.Tensor | None  # λ [H] float64 on the call's device, for number and profile decays
    cast_decay: bool  # a decay tensor not float64 on the call's device
    state_dtype: torch.dtype
    alias: bool  # a peer under autograd: fresh views, so adapters' per-tensor caches keep no graph alive
    warm: bool = False
    fn: Callable[..., Any] = field(init=False)
    direct: bool = field(init=False)  # no prepare= and no aliasing: the warm path calls `fn` itself
    step: Callable[..., Any] | None = field(init=False)  # a decode call's route's own step on [B, H, D]

    def __post_init__(self) -> None:
        self.fn = self.method.fn
        self.direct = self.method.prepare is None and not self.alias
        self.step = self.method.step if self.call.mode == "decode" and not self.alias else None


_cublas_tf32 = getattr(torch._C, "_get_cublas_allow_tf32", None)  # what torch.backends.cuda.matmul.allow_tf32 reads


def _tf32_default() -> bool:
    """torch.backends.cuda.matmul.allow_tf32 (read through torch's own getter: a tenth of the cost)."""
    return bool(_cublas_tf32()) if _cublas_tf32 is not None else bool(torch.backends.cuda.matmul.allow_tf32)


class Dispatcher:
    """Picks and calls a route per call from dispatch tables (module docstring); caches its decisions.

    tables: explicit tables (paths, JSON dicts or `Table`s), before the user cache and the shipped ones.
    methods_dirs / registry: where routes come from (default: `load_methods()`, builtin and entry points).
    user_cache / shipped: whether to read the user cache folder (`cache_dir`, default `user_cache_dir()`)
    and the tables shipped in the package. Everything is loaded on the first decision; `reload()` forgets.
    """

    def __init__(self, tables: Sequence[str | Path | Mapping[str, Any] | Table] = (), *,
                 methods_dirs: Sequence[str | Path] = (), registry: Registry | None = None,
                 user_cache: bool = True, shipped: bool = True, cache_dir: str | Path | None = None,
                 max_plans: int = 4096) -> None:
        self._explicit = list(tables)
        self._methods_dirs = list(methods_dirs)
        self._given_registry = registry
        self._user_cache, self._shipped = user_cache, shipped
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self._max_plans = max_plans
        self.reload()

    def reload(self) -> None:
        """Forget tables, methods, decisions and failed routes: the next call reads everything again."""
        self._registry: Registry | None = self._given_registry
        self._tables: list[Table] | None = None
        self._plans: dict[tuple, Plan] = {}
        self._names: dict[torch.device, str] = {}
        self._broken: dict[str, str] = {}
        self.warnings: list[str] = []

    # -- what it knows ---------------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from leetbench.discovery import load_methods

            self._registry = load_methods(self._methods_dirs)
        return self._registry

    def tables(self) -> list[Table]:
        """Every table, in precedence order: explicit, user cache (newest first), shipped."""
        if self._tables is None:
            found: list[Table] = []
            for t in self._explicit:
                found.append(t if isinstance(t, Table) else Table.of(t) if isinstance(t, Mapping)
                             else Table.load(t, "explicit"))
            if self._user_cache:
                folder = self._cache_dir or user_cache_dir()
                files = sorted(folder.glob(f"{USER_PREFIX}*.json"), key=lambda p: p.stat().st_mtime, reverse=True) \
                    if folder.is_dir() else []
                found += self._load_quietly(files, "user cache")
            if self._shipped:
                found += self._load_quietly(sorted(SHIPPED_DIR.glob("*.json")), "shipped")
            self._tables = found
        return self._tables

    def _load_quietly(self, files: Iterable[Path], origin: str) -> list[Table]:
        out = []
        for f in files:
            try:
                out.append(Table.load(f, origin))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._warn(f"dispatch table {f} is not usable and is ignored: {type(exc).__name__}: {exc}")
        return out

    def device_name(self, device: torch.device) -> str:
        """The name tables are keyed by: the GPU's name, `cpu`, or the device type."""
        name = self._names.get(device)
        if name is None:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
            self._names[device] = name
        return name

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(f"leetbench: {message}", RuntimeWarning, stacklevel=4)

    # -- the operator --------------------------------------------------------------------------------------
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any, *,
                  scale: float | None = None, initial_state: torch.Tensor | None = None,
                  output_final_state: bool = False, allow_tf32: bool | None = None) -> Any:
        """`leetbench.decay_attention` through this dispatcher."""
        s0 = initial_state
        tf32 = _tf32_default() if allow_tf32 is None else bool(allow_tf32)
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                            or (s0 is not None and s0.requires_grad))
        key = _call_key("prefill", q, k, v, decay, s0, bool(output_final_state), grad, tf32, scale)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._new_plan(key, "prefill", q, k, v, decay, scale, s0, bool(output_final_state), grad, tf32)
        o, state = self._run(plan, key, q, k, v, decay, s0)
        if not output_final_state:
            return o
        if state is None:
            raise RuntimeError(f"route {plan.method.name} returned no final state")
        return o, (state if state.dtype == plan.state_dtype else state.to(plan.state_dtype))

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any, state: torch.Tensor | None, *,
             scale: float | None = None, allow_tf32: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`leetbench.decay_attention_step` through this dispatcher."""
        tf32 = _tf32_default() if allow_tf32 is None else bool(allow_tf32)
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                            or (state is not None and state.requires_grad))
        key = _call_key("decode", q, k, v, decay, state, True, grad, tf32, scale)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._new_plan(key, "decode", q, k, v, decay, scale, state, True, grad, tf32)
        if state is None:
            state = torch.zeros(q.shape[0], q.shape[1], q.shape[2], v.shape[-1], dtype=plan.state_dtype,
                                device=q.device)
        elif state.dtype != plan.state_dtype:
            state = state.to(plan.state_dtype)
        lam = plan.decay if plan.decay is not None else _lam(plan, decay, q)
        if not plan.warm:
            o, new = self._first_call(plan, key, lambda p: self._decode_call(p, q, k, v, lam, state))
        elif plan.step is not None:  # the warm path of a generation loop: no views, no copies
            o, new = plan.step(q, k, v, lam, scale=plan.scale, state=state)
        else:
            o, new = self._decode_call(plan, q, k, v, lam, state)
        if new is None:
            raise RuntimeError(f"route {plan.method.name} returned no state")
        return (o if o.dtype == v.dtype else o.to(v.dtype)), \
            (new if new.dtype == plan.state_dtype else new.to(plan.state_dtype))

    def explain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any, *, scale: float | None = None,
                initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                allow_tf32: bool | None = None) -> Decision:
        """The decision a call with these arguments gets (3-D q, k, v: a decode step, `initial_state` its
        state). Nothing runs; a decision not yet cached is made and not stored."""
        decode = q.dim() == 3
        mode = "decode" if decode else "prefill"
        tf32 = _tf32_default() if allow_tf32 is None else bool(allow_tf32)
        s0 = initial_state
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, s0))
        key = _call_key(mode, q, k, v, decay, s0, True if decode else bool(output_final_state), grad, tf32, scale)
        plan = self._plans.get(key)
        if plan is not None:
            return plan.decision
        if decode:
            q, k, v = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2)
        call = self._validate(mode, q, k, v, decay, s0, True if decode else bool(output_final_state), grad, tf32)
        return self._decide(call)[0]

    def decide(self, call: Call, device_name: str | None = None) -> Decision:
        """The decision for a call described without tensors, e.g. what an H200 would run, asked on a CPU:
        `decide(Call("prefill", torch.device("cuda:0"), torch.bfloat16, 1, 32, 4096, 128, 128, False, False,
        False, False, "multiscale"), device_name="NVIDIA H200")` (`why_not` is still asked on this machine)."""
        return self._decide(call, device_name)[0]

    # -- calls -------------------------------------------------------------------------------------------------
    def _run(self, plan: Plan, key: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any,
             s0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        lam = plan.decay if plan.decay is not None else _lam(plan, decay, q)
        if s0 is not None:
            if s0.dtype != plan.state_dtype:
                s0 = s0.to(plan.state_dtype)
            s0 = s0.contiguous()
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if not plan.warm:
            o, state = self._first_call(plan, key, lambda p: _split(self._call(p, q, k, v, lam, s0)))
        elif plan.direct:
            out = plan.fn(q, k, v, lam, scale=plan.scale, initial_state=s0)
            o, state = (out[0], out[1]) if type(out) is tuple and len(out) == 2 else _split(out)
        else:
            o, state = _split(self._call(plan, q, k, v, lam, s0))
        return (o if o.dtype == v.dtype else o.to(v.dtype)), state

    def _decode_call(self, plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
                     state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token through the route's `step=`, or through its function at N = 1 ([B, H, 1, ·] views)."""
        if plan.step is not None:
            return _split(plan.step(q, k, v, lam, scale=plan.scale, state=state))
        o, new = _split(self._call(plan, q.unsqueeze(2).contiguous(), k.unsqueeze(2).contiguous(),
                                   v.unsqueeze(2).contiguous(), lam, state.contiguous()))
        return o.squeeze(2), new

    def _first_call(self, plan: Plan, key: tuple,
                    invoke: Callable[[Plan], tuple[torch.Tensor, torch.Tensor | None]]
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first call of a decision (`invoke(plan)`), after the route's setup; a route that fails is
        marked broken and the call is decided again (the fallback's own failure is raised)."""
        while True:
            try:
                if plan.method.setup is not None and plan.problem is not None:
                    plan.method.setup(plan.problem)
                out = invoke(plan)
                plan.warm = True
                return out
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                if plan.decision.fallback:
                    raise
                first_line = (str(exc).splitlines() or [""])[0]
                self._broken[plan.method.name] = f"failed here: {type(exc).__name__}: {first_line}"
                self._warn(f"route {plan.method.name} failed on its first call ({type(exc).__name__}: {first_line}); "
                           "dispatching past it")
                plan = self._replan(key, plan)

    @staticmethod
    def _call(plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
              s0: torch.Tensor | None) -> Any:
        if plan.alias:
            q, k, v = q.view_as(q), k.view_as(k), v.view_as(v)
            s0 = None if s0 is None else s0.view_as(s0)
        m = plan.method
        if m.prepare is not None:
            m.prepare(q, k, v, lam, scale=plan.scale, initial_state=s0)
        return m.fn(q, k, v, lam, scale=plan.scale, initial_state=s0)

    # -- decisions ---------------------------------------------------------------------------------------------
    def _new_plan(self, key: tuple, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any,
                  scale: float | None, s0: torch.Tensor | None, state_out: bool, grad: bool, tf32: bool) -> Plan:
        if mode == "decode":
            q, k, v = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2)
        call = self._validate(mode, q, k, v, decay, s0, state_out, grad, tf32)
        decision, method = self._decide(call)
        c = float(call.D ** -0.5 if scale is None else scale)
        if not math.isfinite(c):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        lam = None
        if call.decay is not None:
            lam = decay_profile(call.decay, call.H).to(q.device)
        plan = Plan(decision, method, call, call.problem(), c, lam,
                    isinstance(decay, torch.Tensor) and (decay.dtype != torch.float64 or decay.device != q.device),
                    state_dtype(q.dtype), grad and method.family.startswith("peer"))
        if len(self._plans) >= self._max_plans:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _replan(self, key: tuple, plan: Plan) -> Plan:
        """The plan of `key` decided again (after its route failed and was marked broken)."""
        decision, method = self._decide(plan.call)
        new = Plan(decision, method, plan.call, plan.problem, plan.scale, plan.decay, plan.cast_decay,
                   plan.state_dtype, plan.call.grad and method.family.startswith("peer"))
        self._plans[key] = new
        return new

    def _validate(self, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any,
                  s0: torch.Tensor | None, state_out: bool, grad: bool, tf32: bool) -> Call:
        what = "decay_attention_step: q, k [B,H,D], v [B,H,E]" if mode == "decode" else \
            "decay_attention: q, k [B,H,N,D], v [B,H,N,E]"
        if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
            shapes = [tuple(t.shape[:2]) + tuple(t.shape[3:]) if mode == "decode" else tuple(t.shape)
                      for t in (q, k, v)]
            raise ValueError(f"{what}; got q {shapes[0]}, k {shapes[1]}, v {shapes[2]}")
        if q.dtype not in DTYPE_NAMES or k.dtype != q.dtype or v.dtype != q.dtype:
            raise TypeError(f"q, k, v must share one dtype of {', '.join(DTYPES)}; got {q.dtype}, {k.dtype}, {v.dtype}")
        if k.device != q.device or v.device != q.device:
            raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
        B, H, N, D = q.shape
        E = v.shape[-1]
        if min(B, H, N, D, E) <= 0:
            raise ValueError(f"{what}: every size must be positive; got B={B} H={H} N={N} D={D} E={E}")
        if s0 is not None:
            if tuple(s0.shape) != (B, H, D, E) or s0.device != q.device or not s0.is_floating_point():
                raise ValueError(f"the {'state' if mode == 'decode' else 'initial_state'} must be a floating "
                                 f"tensor [B,H,D,E] = {[B, H, D, E]} on {q.device}; got {list(s0.shape)} "
                                 f"{s0.dtype} on {s0.device}")
        value: float | str | None
        if isinstance(decay, torch.Tensor):
            if decay.shape not in ((), (H,)) or not decay.is_floating_point():
                raise ValueError(f"decay must be a float, a profile name or a float tensor [H] = [{H}]; "
                                 f"got a {decay.dtype} tensor of shape {list(decay.shape)}")
            if decay.requires_grad and torch.is_grad_enabled():
                raise ValueError("decay is a constant of the operator: no route computes its gradient "
                                 "(pass decay.detach(), or a tensor that does not require grad)")
            if decay.device.type == "cpu":
                lam = decay.detach().double()
                if not bool(((lam > 0) & (lam <= 1)).all()):
                    raise ProblemError(f"decay values must lie in (0, 1]; got {lam.tolist()}")
            value = None
        elif isinstance(decay, (bool, type(None))) or not isinstance(decay, (int, float, str)):
            raise TypeError(f"decay must be a float in (0, 1], a profile name or a float tensor [H]; got {decay!r}")
        else:
            decay_profile(decay, H)  # raises ProblemError with the reason
            value = decay.strip().lower() if isinstance(decay, str) else float(decay)
        return Call(mode, q.device, q.dtype, B, H, N if mode == "prefill" else 1, D, E,
                    s0 is not None or mode == "decode", state_out, grad, tf32, value)

    def _decide(self, call: Call, device_name: str | None = None) -> tuple[Decision, Method]:
        """The decision for a call, and the method it names (a fallback when no table entry gives one)."""
        name = device_name or self.device_name(call.device)
        described = call.describe(name)
        problem = call.problem()

        def fallback(reason: str, **found: Any) -> tuple[Decision, Method]:
            route = FALLBACK[call.mode]
            return Decision(route, described, True, reason, **found), self._fallback_method(route)

        if problem is None:
            return fallback(f"device type {call.device.type!r} has no dispatch tables")
        tables = [t for t in self.tables() if t.device == name]
        if not tables:
            known = sorted({f"{t.device} ({t.origin})" for t in self.tables()})
            return fallback(f"no dispatch table for {name}" + (f"; tables found: {', '.join(known)}" if known
                                                               else "; no tables found"))
        dtype = DTYPE_NAMES[call.dtype]
        for table in tables:
            entries = [e for e in table.entries if e.mode == call.mode and e.dtype == dtype]
            if entries:
                break
        else:
            return fallback(f"the tables for {name} have no {dtype} {call.mode} entries")
        note = ""
        if call.mode == "prefill":
            same = [e for e in entries if e.initial_state == call.state_in]
            if not same:
                note = (f"no entry measured {'with' if call.state_in else 'without'} an initial state; "
                        "using the nearest of the others")
            entries = same or entries
        entry = min(entries, key=lambda e: (sum(e.distances(call.B, call.H, call.N, call.D, call.E)), -e.length))
        found = dict(table=table.label(), entry=entry.label(),
                     distance=entry.distances(call.B, call.H, call.N, call.D, call.E),
                     ranked=tuple((r.method, r.time_ms) for r in entry.routes))
        passed: list[tuple[str, str]] = []
        for r in entry.routes:
            why = self._why_not(r, call, problem)
            if why is None:
                return Decision(r.method, described, False, note, passed_over=tuple(passed),
                                **found), self.registry[r.method]
            passed.append((r.method, why))
        reason = ("no route of the nearest entry can take this call" if entry.routes
                  else "the nearest entry lists no route that ran ok")
        return fallback("; ".join(x for x in (reason, note) if x), passed_over=tuple(passed), **found)

    def _why_not(self, route: Route, call: Call, problem: Problem) -> str | None:
        if route.method in self._broken:
            return self._broken[route.method]
        if route.tf32 and call.dtype == torch.float32 and not call.allow_tf32:
            return "a TF32 route, and TF32 is not allowed (torch.backends.cuda.matmul.allow_tf32 / allow_tf32=)"
        if call.state_out and not route.final_state:
            return "returns no final state"
        if route.method not in self.registry:
            failed = [Path(f.source).name for f in self.registry.failures]
            return "not registered here" + (f" (plugins that failed to load: {', '.join(failed)})" if failed else "")
        method = self.registry[route.method]
        if call.grad and not method.differentiable:
            return "has no backward (not registered differentiable=True) and an input requires grad"
        return method.why_not(problem)

    def _fallback_method(self, name: str) -> Method:
        if name in self.registry:
            return self.registry[name]
        from leetbench.discovery import builtin_methods_dir, load_file

        builtin = Registry()
        load_file(builtin_methods_dir() / f"{name}.py", builtin)
        return builtin[name]


_PLAIN = (str, float)  # decays that are their own key (int and bool are not: 1 == 1.0 == True)


def _call_key(mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: Any, s0: torch.Tensor | None,
              final: bool, grad: bool, tf32: bool, scale: float | None) -> tuple:
    """What a decision depends on: the key of the decision cache (built on every call, so kept cheap)."""
    return (mode, q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            decay if type(decay) in _PLAIN else _decay_key(decay),
            None if s0 is None else (s0.shape, s0.device, s0.is_floating_point()), final, grad, tf32, scale)


def _decay_key(decay: Any) -> tuple:
    """The part of a call key that a decay gives: a tensor's kind (not its values), or the value itself."""
    if isinstance(decay, torch.Tensor):
        return ("tensor", decay.shape, decay.dtype, decay.device, decay.requires_grad)
    if isinstance(decay, (int, float, str)):
        return ("value", decay, type(decay))
    return ("other", type(decay))


def _lam(plan: Plan, decay: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """λ [H] float64 on q's device from a decay tensor ([H] or a scalar) the plan could not keep."""
    lam = decay.to(device=q.device, dtype=torch.float64) if plan.cast_decay else decay
    return lam.expand(q.shape[1]) if lam.dim() == 0 else lam


def _split(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A route's result as (o, final state or None)."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m leetbench.dispatch_tables RESULTS.csv… [-o FOLDER]`: write the dispatch tables of results
    files (how leetbench/dispatch_tables/ is made from the published leaderboard)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leetbench.dispatch_tables", description=main.__doc__)
    parser.add_argument("results", nargs="+", help="results.csv files")
    parser.add_argument("-o", "--out", default=str(SHIPPED_DIR), help="folder for <device>.json (default: shipped)")
    args = parser.parse_args(argv)
    for table in tables_from_results(args.results):
        path = write_table(table, Path(args.out) / f"{device_slug(table.device)}.json")
        print(f"{table.device}: {len(table.entries)} entries → {path}")
    return 0
