"""One benchmark problem: its sizes, decay, dtype and device, and its seeded inputs.

A problem is the unit every method is measured on. It validates itself on construction, so a bad sweep
fails before any work starts, and it makes the same inputs for every method (DESIGN.md §2): drawn in
float32 on the CPU from a seed, rounded to the problem's dtype, then moved to the device.
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


@dataclass
class Inputs:
    """The tensors a method receives (DESIGN.md §3)."""

    q: torch.Tensor  # [B, H, N, D]
    k: torch.Tensor  # [B, H, N, D]
    v: torch.Tensor  # [B, H, N, E]
    decay: torch.Tensor  # [H] float64 λ
    scale: float
    initial_state: torch.Tensor | None  # [B, H, D, E] or None

    def to(self, dtype: torch.dtype) -> "Inputs":
        s0 = None if self.initial_state is None else self.initial_state.to(dtype)
        return Inputs(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), self.decay, self.scale, s0)


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
        """Fewest bytes one timed call must move (DESIGN.md §5): what `gbps` and `pct_bw` divide by.

        Prefill: read q, k, v and write o for all N tokens. Decode (timed per token): read and write the
        state once (float32, float64 for float64 problems) besides q, k, v and o of that one token.
        """
        item = torch.empty((), dtype=self.torch_dtype).element_size()
        B, H, D, E = self.batch, self.heads, self.dim, self.E
        if self.mode == "decode":
            return B * H * (2 * D + 2 * E) * item + 2 * B * H * D * E * max(item, 4)
        return B * H * self.length * (2 * D + 2 * E) * item

    def estimate_bytes(self) -> int:
        """Memory a measurement needs at least: the inputs and a method's copy of them, the float64
        reference output, the method's output, and a few states."""
        B, H, N, D, E = self.batch, self.heads, self.tokens, self.dim, self.E
        item = torch.empty((), dtype=self.torch_dtype).element_size()
        inputs = B * H * N * (2 * D + E) * item
        return 2 * inputs + B * H * N * E * (8 + item) + B * H * D * E * 8 * 4

    def label(self) -> str:
        e = "" if self.dim_v is None else f" E{self.dim_v}"
        extra = f" decode×{self.steps}" if self.mode == "decode" else ""
        s0 = " S0" if self.initial_state and self.mode == "prefill" else ""
        return f"B{self.batch} H{self.heads} N{self.length} D{self.dim}{e} λ={self.decay} {self.dtype}{s0}{extra}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> tuple:
        """Identity of a problem in results.csv (seed excluded: a sweep has one seed)."""
        return (
            self.device, self.dtype, self.batch, self.heads, self.length, self.dim, self.E,
            str(self.decay), self.initial_state, self.mode, self.steps,
        )

    # ---- inputs --------------------------------------------------------------------------------
    def decay_values(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return decay_profile(self.decay, self.heads).to(device)

    def draw_key(self) -> tuple:
        """What the random draws depend on: problems differing only in dtype, decay or device share them."""
        return (self.batch, self.heads, self.length, self.dim, self.E, self.seed, self.initial_state, self.mode,
                self.steps)

    def draw(self) -> dict[str, torch.Tensor]:
        """The seeded float32 CPU draws behind `make_inputs` (q, k, v; a raw initial state or a prefix)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        B, H, N, D, E = self.batch, self.heads, self.length, self.dim, self.E
        n_tokens = self.steps if self.mode == "decode" else N
        draws = {"q": torch.randn(B, H, n_tokens, D, generator=gen),
                 "k": torch.randn(B, H, n_tokens, D, generator=gen),
                 "v": torch.randn(B, H, n_tokens, E, generator=gen)}
        if self.mode == "decode":
            draws["k_prefix"] = torch.randn(B, H, N, D, generator=gen)
            draws["v_prefix"] = torch.randn(B, H, N, E, generator=gen)
        elif self.initial_state:
            draws["s0"] = torch.randn(B, H, D, E, generator=gen) * (D ** -0.5)
        return draws

    def make_inputs(self, device: str | None = None, draws: dict[str, torch.Tensor] | None = None) -> Inputs:
        """Seeded inputs: float32 on the CPU, rounded to the dtype, on the device.

        q, k and v are unit normal (so c·q·k is O(1)). A prefill initial state, when asked for, is normal
        with standard deviation 1/sqrt(D). In decode mode the initial state is the exact float64 state a
        seeded prefix of `length` tokens leaves, rounded to the state dtype. `draws` (from `draw()` of a
        problem with the same `draw_key()`) saves drawing again.
        """
        d = draws if draws is not None else self.draw()
        dev = device or self.device
        dt = self.torch_dtype
        to = lambda t: t.to(dt).to(dev)  # noqa: E731 - round on the CPU, then move
        s0 = d.get("s0")
        if self.mode == "decode":
            from leetbench.reference import prefix_state

            s0 = prefix_state(to(d["k_prefix"]), to(d["v_prefix"]), self.decay_values(dev))
        # The state stays float32 for low-precision dtypes: models carry it in float32.
        state_dt = torch.float64 if dt == torch.float64 else torch.float32
        return Inputs(
            q=to(d["q"]), k=to(d["k"]), v=to(d["v"]), decay=self.decay_values(dev), scale=self.scale,
            initial_state=None if s0 is None else s0.to(state_dt).to(dev),
        )
