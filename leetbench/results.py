"""The results schema (docs/design.md §5): a row's columns, the statuses, the problem key and the derived
columns. Every module that writes or reads rows uses these definitions; `leetbench.store` reads and writes
the files.

A new column is added here (a field of `Row`, and in `derive` when it is computed from others), and in the
one place that measures it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Mapping

from leetbench.problem import Problem


class Status(str, Enum):
    """What happened to one (method, problem). Only `ok` rows rank."""

    OK = "ok"                  # within tolerance of the float64 reference, on the checked and a timed call
    INACCURATE = "inaccurate"  # above tolerance, NaN/Inf, or a timed call disagreed with its known answer
    SUSPECT = "suspect"        # correct, but faster than physics allows (above the copy bandwidth or the launch floor)
    SKIPPED = "skipped"        # cannot run this problem (declared, missing package, memory), or ruled out
    ERROR = "error"            # raised, or returned the wrong shape/dtype/device
    TIMEOUT = "timeout"        # ran past timeout_s (or setup past setup_timeout_s)
    CRASHED = "crashed"        # its process died, or the CUDA context was lost
    OOM = "oom"                # ran out of memory (the method alone: the harness keeps only what checking needs)

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)
FAILED = (Status.ERROR, Status.TIMEOUT, Status.CRASHED, Status.OOM)
RAN = (Status.OK, Status.INACCURATE, Status.SUSPECT) + FAILED  # the method was called
# A skipped row's error starts with this when an earlier timeout/oom of the shape ruled it out (not a
# property of the method): `rerun=failed` measures it again.
RULED_OUT = "ruled out:"

# Precision classes: methods rank only against methods computing at the same precision.
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16")


def precision(dtype: str, tf32: bool) -> str:
    """The precision class of a row: a float32 row of a method that declares TF32 is `tf32`, not `fp32`."""
    if dtype == "float32":
        return "tf32" if tf32 else "fp32"
    return {"float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}[dtype]


@dataclass
class Row:
    """One line of results.csv: the method and problem, the verdict, the speed, the wall time, provenance."""

    method: str
    family: str
    device: str
    dtype: str
    batch: int
    heads: int
    length: int
    dim: int
    dim_v: int
    decay: str
    status: str
    rel_err: float = math.nan          # ‖o − ref‖ / ‖ref‖ over everything
    max_err: float = math.nan          # max|o − ref| / max|ref| over everything
    time_ms: float = math.nan          # median
    time_ms_p20: float = math.nan
    time_ms_p80: float = math.nan
    peak_mem_mb: float = math.nan
    gbps: float = math.nan
    pct_bw: float = math.nan
    error: str = ""
    host: str = ""
    gpu: str = ""
    torch: str = ""
    cupy: str = ""
    cpu: str = ""                      # the host's processor model
    os: str = ""                       # its kernel release
    leetbench: str = ""
    git_sha: str = ""
    timestamp: str = ""
    # the problem, beyond the sizes
    mode: str = "prefill"
    steps: int = 0
    initial_state: bool = False
    seed: int = 0
    # the verdict, in full (docs/design.md §4)
    precision: str = ""
    worst_head_rel_err: float = math.nan
    worst_head_max_err: float = math.nan
    state_rel_err: float = math.nan
    state_max_err: float = math.nan
    state_worst_head_rel_err: float = math.nan
    # the speed, in full
    time_ms_lo: float = math.nan       # 95% confidence interval of the median
    time_ms_hi: float = math.nan
    host_ms: float = math.nan          # GPU: median host time inside a timed call (its enqueue)
    gpu_waited: float = math.nan       # GPU: share of timed calls the GPU waited for the host to issue; host_bound
    reps: int = 0
    rounds: int = 0
    tflops: float = math.nan
    bytes_floor: int = 0
    copy_gbps: float = math.nan
    launch_floor_ms: float = math.nan
    # where the wall time went (seconds)
    prepare_s: float = math.nan        # this row's inputs (and the problem's reference, on its first row)
    setup_s: float = math.nan
    check_s: float = math.nan
    timing_s: float = math.nan
    measured_s: float = math.nan       # inside the timed calls
    # the method and the machine
    complexity: str = ""
    tf32: bool = False
    method_hash: str = ""
    threads: int = 0
    row_id: str = ""

    @classmethod
    def for_problem(cls, method: str, family: str, problem: Problem, status: str, **extra: Any) -> "Row":
        row = cls(method=method, family=family, device=problem.device, dtype=problem.dtype,
                  batch=problem.batch, heads=problem.heads, length=problem.length, dim=problem.dim,
                  dim_v=problem.E, decay=str(problem.decay), status=str(status), mode=problem.mode,
                  steps=problem.steps, initial_state=problem.initial_state, seed=problem.seed,
                  bytes_floor=problem.bytes_floor(), **extra)
        row.row_id = row.row_id or uuid.uuid4().hex[:12]
        return derive(row, problem)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = [f.name for f in fields(Row)]
# The columns a run measures in the worker (`protocol.Outcome` carries them under the same names): errors
# (the largest over a row's rounds), peak memory, and wall seconds (summed over rounds).
ERROR_COLUMNS = ("rel_err", "max_err", "worst_head_rel_err", "worst_head_max_err", "state_rel_err",
                 "state_max_err", "state_worst_head_rel_err", "peak_mem_mb")
WALL_COLUMNS = ("prepare_s", "setup_s", "check_s", "timing_s", "measured_s")
NUMERIC = [f.name for f in fields(Row) if f.type in ("float", "int")]
INTEGER = [f.name for f in fields(Row) if f.type == "int"]
TEXT = [f.name for f in fields(Row) if f.type == "str"]

# A GPU row is host-bound when in at least this share of its timed calls the GPU had already reached the
# call's start when the host finished issuing it (`gpu_waited`): the GPU waited for the CPU inside the timed
# region, so the time is the host's.
HOST_BOUND = 0.5


def host_bound(gpu_waited: float) -> bool:
    """True when the row's time is what the CPU takes to issue the call (gpu_waited ≥ HOST_BOUND): it says
    little about the GPU kernel and moves with the host's state. False on the CPU and for rows without it."""
    try:
        w = float(gpu_waited)
    except (TypeError, ValueError):  # pd.NA, an empty cell
        return False
    return math.isfinite(w) and w >= HOST_BOUND


# A problem's identity wherever rows are compared, pivoted or merged: the machine is part of it, so rows of
# two cards (or two hosts) are never pooled.
PROBLEM_COLUMNS = ["host", "gpu", "device", "dtype", "batch", "heads", "length", "dim", "dim_v", "decay",
                   "initial_state", "mode", "steps"]
KEY_COLUMNS = ["method"] + PROBLEM_COLUMNS
SHAPE_COLUMNS = [c for c in PROBLEM_COLUMNS if c != "length"]


def _canon(col: str, v: Any) -> str:
    if col == "decay":
        try:
            return repr(float(v))
        except (TypeError, ValueError):
            return str(v)
    if col == "initial_state":
        return str(str(v).strip().lower() in ("true", "1", "1.0"))
    if isinstance(v, float):
        return "" if math.isnan(v) else str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def problem_key(values: Mapping[str, Any]) -> tuple:
    """The identity of a row's problem, normalised to strings so CSV-read and fresh rows compare equal."""
    return tuple(_canon(c, values.get(c, "")) for c in PROBLEM_COLUMNS)


def problem_values(problem: Problem) -> dict[str, Any]:
    """A problem's fields under the rows' column names (`dim_v` the E it runs with, `decay` as text), as
    `problem_key` reads them: the key of a problem not measured yet."""
    return {**problem.as_dict(), "dim_v": problem.E, "decay": str(problem.decay)}


def row_key(values: Mapping[str, Any]) -> tuple:
    """(method,) + problem_key: one (method, problem) pair, for resume and merging."""
    return (str(values.get("method", "")),) + problem_key(values)


# ---- derived columns ----------------------------------------------------------------------------------

def derive(row: Row, problem: Problem) -> Row:
    """Fill the columns computed from others: precision, bytes and FLOP rates, and the physics check.

    `gbps` = bytes floor / time; `pct_bw` = that over the measured copy bandwidth; `tflops` = the operator's
    useful FLOPs (`Problem.flops`) / time. An `ok` row above 100% of the copy bandwidth, or at or below the
    launch floor (an empty timed region), is `suspect`: it cannot have done the work it claims.
    """
    row.precision = precision(row.dtype, row.tf32)
    row.bytes_floor = problem.bytes_floor()
    t = row.time_ms
    if isinstance(t, (int, float)) and math.isfinite(t) and t > 0:
        row.gbps = row.bytes_floor / (t * 1e-3) / 1e9
        copy = row.copy_gbps
        row.pct_bw = 100.0 * row.gbps / copy if math.isfinite(copy) and copy > 0 else math.nan
        row.tflops = problem.flops() / (t * 1e-3) / 1e12
        if row.status == Status.OK:
            if math.isfinite(row.pct_bw) and row.pct_bw > 100.0:
                row.status, row.error = str(Status.SUSPECT), (
                    f"faster than physics: {row.pct_bw:.0f}% of the measured copy bandwidth")
            elif math.isfinite(row.launch_floor_ms) and t <= row.launch_floor_ms:
                row.status, row.error = str(Status.SUSPECT), (
                    f"faster than physics: {t:.4g} ms is at the launch floor ({row.launch_floor_ms:.4g} ms, "
                    "an empty timed region)")
    return row
