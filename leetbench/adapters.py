"""Shared pieces of the peer adapters (methods/peer_*.py): converted inputs, made once per input tensor.

A peer library wants its inputs in its own convention (fla: [B, T, H, D] and g_gamma = log λ; lightning-attn:
the rate s = −log λ; kernels without a `scale` argument: q·c). A user of that library holds its inputs in
that convention already, so converting our [B, H, N, D] tensors inside the timed call would charge the peer
for work its users never do. `cached(t, convert, *tag)` therefore keeps `convert(t)` per source tensor and
returns it again while the source is unchanged: the first (untimed, checked) call converts, the timed calls
reuse it. An entry is reused only for the same tensor object (held weakly, so the cache never keeps a tensor
alive, and an entry goes when its source does) with the same data pointer, shape, strides, dtype, device and
version counter; any in-place write bumps `t._version`, so a modified tensor is converted afresh. A
conversion that is only a view of its source (already in the wanted layout) is returned, not kept.

Tensors without a version counter (made under `torch.inference_mode`) are converted on every call.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from leetbench.decay import log_decay

_entries: WeakIdKeyDictionary = WeakIdKeyDictionary()


def fingerprint(t: torch.Tensor) -> tuple | None:
    """What must not change for a conversion of `t` to stay valid; None when `t` has no version counter."""
    try:
        version = t._version
    except RuntimeError:  # inference tensors track no version
        return None
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device, version)


def cached(t: torch.Tensor, convert: Callable[..., Any], *tag: Any) -> Any:
    """`convert(t, *tag)`, computed once per (tensor, convert, tag) while `t` is unchanged."""
    stamp = fingerprint(t)
    if stamp is None:
        return convert(t, *tag)
    per_tensor = _entries.get(t)
    if per_tensor is None:
        per_tensor = _entries[t] = {}
    key = (convert, tag)
    hit = per_tensor.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = convert(t, *tag)
    if isinstance(value, torch.Tensor) and _shares_memory(value, t):
        return value  # a view of t costs nothing to remake, and caching it would keep t alive
    per_tensor[key] = (stamp, value)
    return value


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def clear() -> None:
    """Drop every cached conversion."""
    _entries.clear()


# ---- the conversions the adapters share ------------------------------------------------------------

def _time_major(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()


def time_major(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, X] → contiguous [B, N, H, X] (fla's layout), cached."""
    return cached(x, _time_major)


def _scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x * scale).contiguous()


def prescaled(q: torch.Tensor, scale: float) -> torch.Tensor:
    """q · c rounded to q's dtype, cached: for kernels without a `scale` argument.

    A model folds c into its query projection, so a user of such a kernel does not pay this multiply;
    the result is rounded once more to q's dtype, which adds about one unit of that dtype's rounding
    (exact when c is a power of two, e.g. D = 64 or 256).
    """
    if scale == 1.0:
        return q
    return cached(q, _scaled, float(scale))


def _log_decay(decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return log_decay(decay).to(dtype)


def log_decay_as(decay: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log λ [H] (fla's g_gamma), computed in float64 then rounded to `dtype`, cached."""
    return cached(decay, _log_decay, dtype)


def _rate(decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (-log_decay(decay)).to(dtype)


def rate_as(decay: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The rate s = −log λ ≥ 0 [H] (lightning-attn's `s`, the seed's `gamma`), in float64 then `dtype`, cached."""
    return cached(decay, _rate, dtype)


def _decay_as(decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return decay.to(torch.float64).to(dtype).contiguous()


def decay_as(decay: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """λ itself [H] in `dtype` (rounded from float64), cached."""
    return cached(decay, _decay_as, dtype)


def _per_token_log_decay(decay: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    g = _log_decay(decay, torch.float32)
    return g.view(1, 1, -1).expand(batch, length, -1).contiguous()


def per_token_log_decay(decay: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """log λ broadcast to a per-token gate [B, T, H] float32 (fla's `g`), cached."""
    return cached(decay, _per_token_log_decay, batch, length)


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


# Peers whose Triton kernels index with 32-bit integers (program ids times int arguments) fault past this
# offset instead of failing cleanly; their `supports=` refuse such sizes beforehand.
INT32_MAX = 2 ** 31 - 1


# ---- prepare: the conversions a user of the library holds already, made before each call, untimed -----

def prepare_prescaled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
                      initial_state: torch.Tensor | None = None) -> None:
    """A `prepare=` for kernels without a scale argument: q·c made (cached) before the timed call."""
    prescaled(q, scale)


def prepare_time_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float,
                       initial_state: torch.Tensor | None = None) -> None:
    """A `prepare=` for [B, T, H, ·] kernels (fla): the transposed q, k, v and log λ made (cached) untimed."""
    for x in (q, k, v):
        time_major(x)
    log_decay_as(decay)


# ---- setup: compile and autotune outside the measured calls -----------------------------------------

def triton_autotuners(packages: Sequence[str]) -> list[Any]:
    """The Triton autotuners in the loaded modules of `packages`, also those under @heuristics; [] without Triton."""
    try:
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import KernelInterface
    except ImportError:
        return []
    found: dict[int, Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in packages):
            continue
        for obj in list(vars(module).values()):
            while isinstance(obj, KernelInterface):  # @heuristics and @autotune wrap each other through .fn
                if isinstance(obj, Autotuner):
                    found[id(obj)] = obj
                obj = getattr(obj, "fn", None)
    return list(found.values())


def forget_autotuning(packages: Sequence[str], shape: tuple | None = None, new_only: bool = False) -> int:
    """Make the Triton autotuners of `packages` (their loaded modules) choose at `shape` on their next call.

    A Triton autotuner keeps one choice per key, and fla's and Mamba-2's keys name head sizes and block shapes,
    not B or N: without this, a worker's first problem would choose the configuration for every later shape
    — by timing microsecond kernels when that problem is short, a choice that was up to 3× slower elsewhere
    (design §6). So each autotuner keeps the choices it made at each problem shape it met (on the tuner, for
    the life of the worker process): at a shape met before they are restored, at a new one (or with `shape`
    None) it starts empty and tunes at its next call, as a model's first call at that shape would. Problems
    that differ only in the initial state share a shape, and a kernel whose key the initial state changes
    (Triton adds the dtypes of the tensor arguments present) tunes for it anyway. Reads of choices from
    Triton's disk cache are turned off (fla 0.6 writes them there by default). `new_only`: only the tuners
    this never met (a package imported inside the call that followed the last one). Returns how many autotuners.
    """
    tuners = [t for t in triton_autotuners(packages) if not new_only or "leetbench_shape" not in t.__dict__]
    for tuner in tuners:
        seen = tuner.__dict__.setdefault("leetbench_choices", {})
        made_at = tuner.__dict__.get("leetbench_shape")
        if made_at is not None:
            seen[made_at] = dict(tuner.cache)
        tuner.cache.clear()
        if shape is not None:
            tuner.cache.update(seen.get(shape, {}))
        tuner.leetbench_shape = shape
        tuner.cache_results = False
    return len(tuners)


def tuning_shape(problem: Any) -> tuple:
    """What an autotuner's choice may depend on: the call's tensor shapes and dtype (not λ, the initial state's
    presence, or the seed)."""
    tokens = problem.tokens if problem.mode == "prefill" else 1
    return (problem.batch, problem.heads, tokens, problem.dim, problem.E, problem.dtype)


def warm_up(get_fn: Callable[[], Callable[..., Any]], retune: Sequence[str] = ()) -> Callable[[Any], None]:
    """A `setup=` that calls the method once on random inputs of the problem's shape, dtype and device.

    JIT peers (Triton) compile and autotune on their first call — fla's autotuning takes tens of seconds per
    (H, D, E, dtype) — so doing that call in `setup` puts it under `setup_timeout_s` and outside the checked
    and timed calls. `get_fn` is called then, so a method can name itself before it is defined. `retune`
    names packages whose Triton autotuners choose at this problem's shape first (`forget_autotuning`), so that
    every problem is measured with the configuration tuned at its own shape; tuners that first appear during
    that call (the package imports its kernels there) are set to this shape and the call is made once more.
    """

    def setup(problem: Any) -> None:
        fn, shape = get_fn(), tuning_shape(problem)
        forget_autotuning(retune, shape)
        device = torch.device(problem.device)
        gen = torch.Generator(device=device).manual_seed(problem.seed + 1)
        B, H, D, E = problem.batch, problem.heads, problem.dim, problem.E
        n = problem.tokens if problem.mode == "prefill" else 1
        dt = problem.torch_dtype
        q, k = (torch.randn(B, H, n, D, generator=gen, device=device).to(dt) for _ in range(2))
        v = torch.randn(B, H, n, E, generator=gen, device=device).to(dt)
        s0 = None
        if problem.has_initial_state:
            state_dt = torch.float64 if dt == torch.float64 else torch.float32
            s0 = torch.zeros(B, H, D, E, device=device, dtype=state_dt)
        decay = problem.decay_values(device)
        fn(q, k, v, decay, scale=problem.scale, initial_state=s0)
        if forget_autotuning(retune, shape, new_only=True):  # the package was imported inside that call: its
            # tuners chose there unseen (perhaps from Triton's disk cache, made at another N); once more, in memory
            fn(q, k, v, decay, scale=problem.scale, initial_state=s0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return setup
