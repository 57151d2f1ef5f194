"""How a row is judged (docs/design.md §4): errors against the float64 reference, per (batch, head), and
the tolerance per precision.

- `rel_err` = ‖o − ref‖_F / ‖ref‖_F over the whole output (reported);
- `worst_head_rel_err` = the same per (batch, head), the largest: this one decides. With multiscale decays
  the heads' output energies differ ~100×, so a global norm hides one wrong head;
- `worst_head_max_err` = per (batch, head), max|o − ref| / max|ref|, the largest: it must stay within
  `MAX_ERR_FACTOR` × the tolerance. It catches a few wrong or unwritten elements (one token, a tail) that a
  norm averages away, while leaving ordinary rounding (a few units of the dtype) far inside;
- the same for the final state when the method returns it;
- NaN or Inf anywhere is `inaccurate`.

The reference is stored in float64 (float32 for 16-bit problems, whose errors are 1e4× that rounding), on
the GPU or in pinned host memory; errors are computed in float64, a segment of tokens at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from leetbench.results import Status

# Default tolerances on the worst head's rel_err; `tf32` applies to float32 rows of methods declaring TF32.
DEFAULT_TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-5,
    "tf32": 5e-3,
    "float16": 5e-3,
    "bfloat16": 2e-2,
}
MAX_ERR_FACTOR = 10.0
_SEGMENT_ELEMENTS = 1 << 25  # float64 elements compared at once (256 MB)


@dataclass(frozen=True)
class Errors:
    rel_err: float
    max_err: float
    worst_head_rel_err: float
    worst_head_max_err: float

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.rel_err, self.max_err, self.worst_head_rel_err,
                                              self.worst_head_max_err))


NAN_ERRORS = Errors(math.nan, math.nan, math.nan, math.nan)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den elementwise, with 0/0 = 0 and x/0 = inf."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.where(num > 0, torch.full_like(num, math.inf), num * 0))


def errors(out: torch.Tensor, ref: torch.Tensor, sign: int = 1) -> Errors:
    """Errors of `out` [B, H, T, X] against `sign`·`ref` (same shape, any dtype or device), in float64.

    Compared a segment of T at a time on out's device, so a reference kept in host memory streams through.
    """
    if out.dim() < 3:
        out, ref = out.reshape(1, 1, *out.shape[-1:], 1), ref.reshape(1, 1, *ref.shape[-1:], 1)
    B, H, T = out.shape[:3]
    per_token = max(1, out[0, 0, 0].numel()) * B * H
    seg = max(1, _SEGMENT_ELEMENTS // per_token)
    dev = out.device
    dd = torch.zeros(B, H, dtype=torch.float64, device=dev)
    rr, dmax, rmax = dd.clone(), dd.clone(), dd.clone()
    for a in range(0, T, seg):
        o = out[:, :, a:a + seg].to(torch.float64)
        r = ref[:, :, a:a + seg].to(dev, non_blocking=True).to(torch.float64)
        if sign != 1:
            r = r * sign
        d = (o - r).reshape(B, H, -1)
        r = r.reshape(B, H, -1)
        dd += (d * d).sum(-1)
        rr += (r * r).sum(-1)
        dmax = torch.maximum(dmax, d.abs().amax(-1)) if d.shape[-1] else dmax
        rmax = torch.maximum(rmax, r.abs().amax(-1)) if r.shape[-1] else rmax
    if not bool(torch.isfinite(dd).all()) or not bool(torch.isfinite(dmax).all()):
        return NAN_ERRORS
    head_rel = _ratio(dd.sqrt(), rr.sqrt())
    head_max = _ratio(dmax, rmax)
    glob_rel = _ratio(dd.sum().sqrt(), rr.sum().sqrt())
    glob_max = _ratio(dmax.max(), rmax.max())
    return Errors(float(glob_rel), float(glob_max), float(head_rel.max()), float(head_max.max()))


def tolerance(dtype: str, tf32: bool = False, overrides: Mapping[str, float] | None = None) -> float:
    table = {**DEFAULT_TOLERANCES, **(overrides or {})}
    if dtype == "float32" and tf32:
        return float(table["tf32"])
    return float(table[dtype])


@dataclass(frozen=True)
class Verdict:
    status: Status
    message: str = ""


def _why(errs: Errors, tol: float, what: str) -> str | None:
    """Why `errs` fail the tolerance (None when they pass)."""
    if not errs.finite:
        return f"{what} has NaN or Inf"
    if errs.worst_head_rel_err > tol:
        return (f"{what} rel_err {errs.worst_head_rel_err:.3g} in its worst (batch, head) above tolerance "
                f"{tol:.3g} (overall {errs.rel_err:.3g})")
    if errs.worst_head_max_err > MAX_ERR_FACTOR * tol:
        return (f"{what} max_err {errs.worst_head_max_err:.3g} in its worst (batch, head) above "
                f"{MAX_ERR_FACTOR:g} × tolerance {tol:.3g}: a few elements are far off")
    return None


def judge(out: Errors, tol: float, state: Errors | None = None, call: str = "") -> Verdict:
    """`ok` when the output (and the final state, when returned) pass; else `inaccurate` with the reason."""
    for errs, what in ((out, "output"), (state, "final state")):
        if errs is None:
            continue
        reason = _why(errs, tol, f"{call}{what}")
        if reason:
            return Verdict(Status.INACCURATE, reason)
    return Verdict(Status.OK)
