"""One benchmark problem: its sizes, decay, dtype and device; and `Inputs`, the tensors a method receives.

A problem is the unit every method is measured on. It validates itself on construction, so a bad sweep fails
before any work starts. Its seeded inputs are made by `leetbench.inputs` (docs/design.md §2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DECAY_PROFILES = ("retnet", "multiscale", "alibi")
MODES = ("prefill", "decode")


class ProblemError(ValueError):
    """A problem (or a sweep axis value) that cannot be run, with a one-line reason."""


def decay_profile(decay: float | str, heads: int) -> torch.Tensor:
    """λ_h for every head as float64 [H]: a number in (0, 1] for all heads, or a named profile."""
    if isinstance(decay, str):
        name = decay.strip().lower()
        h = torch.arange(heads, dtype=torch.float64)
        if name == "retnet":
            return 1.0 - torch.pow(2.0, -5.0 - h)
        if name == "multiscale":
            spread = 7.0 * h / (heads - 1) if heads > 1 else torch.zeros_like(h)
            return 1.0 - torch.pow(2.0, -5.0 - spread)
        if name == "alibi":
            return torch.exp(-torch.pow(2.0, -8.0 * (h + 1) / heads))
        try:
            decay = float(name)
        except ValueError:
            raise ProblemError(
                f"unknown decay profile {decay!r}: use a number in (0, 1] or one of {', '.join(DECAY_PROFILES)}"
            ) from None
    value = float(decay)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ProblemError(f"decay {value!r} is outside (0, 1]: λ must satisfy 0 < λ ≤ 1")
    return torch.full((heads,), value, dtype=torch.float64)


def normalize_decay(decay: Any) -> float | str:
    """The canonical form of a decay axis value: a float, or a lower-case profile name."""
    if isinstance(decay, bool):
        raise ProblemError(f"decay {decay!r} is not a number in (0, 1] or a profile name")
    if isinstance(decay, (int, float)):
        decay_profile(float(decay), 1)
        return float(decay)
    if isinstance(decay, str):
        try:
            return normalize_decay(float(decay))
        except ValueError:
            pass
        decay_profile(decay, 1)
        return decay.strip().lower()
    raise ProblemError(f"decay {decay!r} is not a number in (0, 1] or one of {', '.join(DECAY_PROFILES)}")


def parse_device(device: str) -> str:
    """Validate a concrete device string: 'cpu', 'cuda' or 'cuda:N'."""
    d = str(device).strip().lower()
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return d
    raise ProblemError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Problem:
    """Sizes, decay, dtype and device of one measurement; `dim_v=None` means E = D.

    In `decode` mode, `length` is the prefix already folded into the initial state and `steps` new tokens
    are processed one at a time with the state carried.
    """

    batch: int
    heads: int
    length: int
    dim: int
    dim_v: int | None = None
    decay: float | str = "retnet"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    initial_state: bool = False
    mode: str = "prefill"
    steps: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "length", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ProblemError(f"{name}={value!r} must be a positive integer")
        if self.dim_v is not None and (not isinstance(self.dim_v, int) or self.dim_v <= 0):
            raise ProblemError(f"dim_v={self.dim_v!r} must be a positive integer or null (= dim)")
        if self.dtype not in DTYPES:
            raise ProblemError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        object.__setattr__(self, "decay", normalize_decay(self.decay))
        object.__setattr__(self, "device", parse_device(self.device))
        if self.mode not in MODES:
            raise ProblemError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.mode == "decode":
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0:
                raise ProblemError(f"steps={self.steps!r} must be a positive integer in decode mode")
        elif self.steps:
            object.__setattr__(self, "steps", 0)

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def E(self) -> int:
        return self.dim if self.dim_v is None else self.dim_v

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def scale(self) -> float:
        return self.dim ** -0.5

    @property
    def tokens(self) -> int:
        """Tokens whose outputs are computed: all of them in prefill, the new ones in decode."""
        return self.steps if self.mode == "decode" else self.length

    @property
    def has_initial_state(self) -> bool:
        return self.initial_state or self.mode == "decode"

    def bytes_floor(self) -> int:
        """Fewest bytes one timed call must move (docs/design.md §5): what `gbps` and `pct_bw` divide by.

        Prefill: read q, k, v and write o for all N tokens. Decode (timed per token): read and write the
        state once (float32, float64 for float64 problems) besides q, k, v and o of that one token.
        """
        item = torch.empty((), dtype=self.torch_dtype).element_size()
        B, H, D, E = self.batch, self.heads, self.dim, self.E
        if self.mode == "decode":
            return B * H * (2 * D + 2 * E) * item + 2 * B * H * D * E * max(item, 4)
        return B * H * self.length * (2 * D + 2 * E) * item

    def flops(self) -> int:
        """Useful arithmetic of one timed call (docs/design.md §5): the recurrent form's state update k_tᵀ v_t
        and read-out q_t S_t, a multiply and an add per element each: 4·D·E per token and head."""
        return 4 * self.batch * self.heads * (1 if self.mode == "decode" else self.length) * self.dim * self.E

    def label(self) -> str:
        e = "" if self.dim_v is None else f" E{self.dim_v}"
        extra = f" decode×{self.steps}" if self.mode == "decode" else ""
        s0 = " S0" if self.initial_state and self.mode == "prefill" else ""
        return f"B{self.batch} H{self.heads} N{self.length} D{self.dim}{e} λ={self.decay} {self.dtype}{s0}{extra}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> tuple:
        """Identity of a problem within one sweep (the results key adds host and GPU: `results.problem_key`)."""
        return (
            self.device, self.dtype, self.batch, self.heads, self.length, self.dim, self.E,
            str(self.decay), self.initial_state, self.mode, self.steps,
        )

    @property
    def id(self) -> str:
        """`key()` as one string (JSON-safe), e.g. for tables of per-problem facts."""
        return "|".join(str(x) for x in self.key())

    def shape_key(self) -> tuple:
        """Everything that names the problem but its length (and seed): longer N of one shape share a fate."""
        return tuple(v for k, v in self.as_dict().items() if k not in ("length", "seed"))

    # ---- inputs ------------------------------------------------------------------------------------
    def decay_values(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return decay_profile(self.decay, self.heads).to(device)


@dataclass
class Inputs:
    """The tensors a method receives (docs/design.md §3)."""

    q: torch.Tensor  # [B, H, N, D]
    k: torch.Tensor  # [B, H, N, D]
    v: torch.Tensor  # [B, H, N, E]
    decay: torch.Tensor  # [H] float64 λ
    scale: float
    initial_state: torch.Tensor | None  # [B, H, D, E] or None

    def to(self, dtype: torch.dtype) -> "Inputs":
        s0 = None if self.initial_state is None else self.initial_state.to(dtype)
        return Inputs(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), self.decay, self.scale, s0)
