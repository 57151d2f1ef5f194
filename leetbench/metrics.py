"""Accuracy against the float64 reference, tolerances per dtype, and what a row's status is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

# Default rel_err tolerances (DESIGN.md §2); `tf32` applies to float32 methods that declare TF32 use.
DEFAULT_TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-5,
    "tf32": 5e-3,
    "float16": 5e-3,
    "bfloat16": 2e-2,
}
STATUSES = ("ok", "inaccurate", "skipped", "error", "timeout", "crashed", "oom")


@dataclass(frozen=True)
class Errors:
    rel_err: float  # ‖o − ref‖_F / ‖ref‖_F
    max_err: float  # max|o − ref| / max|ref|

    @property
    def finite(self) -> bool:
        return math.isfinite(self.rel_err) and math.isfinite(self.max_err)


def errors(out: torch.Tensor, ref: torch.Tensor) -> Errors:
    """Relative Frobenius and max errors of `out` against the float64 `ref` (NaN/Inf propagate)."""
    diff = out.to(torch.float64) - ref
    ref_norm = torch.linalg.vector_norm(ref).item()
    ref_max = ref.abs().max().item() if ref.numel() else 0.0
    diff_norm = torch.linalg.vector_norm(diff).item()
    diff_max = diff.abs().max().item() if diff.numel() else 0.0
    if not math.isfinite(diff_norm):
        return Errors(math.nan, math.nan)
    rel = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
    mx = diff_max / ref_max if ref_max > 0 else (0.0 if diff_max == 0 else math.inf)
    return Errors(rel, mx)


def tolerance(dtype: str, tf32: bool = False, overrides: Mapping[str, float] | None = None) -> float:
    table = {**DEFAULT_TOLERANCES, **(overrides or {})}
    if dtype == "float32" and tf32:
        return float(table["tf32"])
    return float(table[dtype])


def judge(errs: Errors, tol: float, state_errs: Errors | None = None) -> str:
    """`ok` when outputs (and the final state, when returned) are finite and within tolerance."""
    for e in (errs, state_errs):
        if e is None:
            continue
        if not e.finite or e.rel_err > tol:
            return "inaccurate"
    return "ok"
