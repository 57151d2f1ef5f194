"""The seed library, LeetDecoding 0.0.3 (`leetDecoding`): its decayed causal linear attention routes.

    O = ((Q Kᵀ) ⊙ M) V,    M[t, u] = λ_h^(t − u) for u ≤ t    (no scale, no initial state, no final state)

Routes, each from its own module `leetDecoding.methods.X` (imported one by one, never through
`leetDecoding.efficient_linear_decoding`, which needs pynvml and pycuda):
- seed_causal_dot_product — `causal_dot_product` (CUDA, compiled by torch.utils.cpp_extension.load when the
  module is imported: nvcc and ninja needed, minutes the first time; done in `setup`, the three extensions
  side by side). Token-by-token state in CUDA: the float32 "with_decay" kernel (NVIDIA's low/high-occupancy
  paths, fallback above E = 256) and a float16 kernel that keeps the state in half precision and reads λ in
  half (λ > 1 − 2^-12 rounds to 1). Always returns float32. Multiplies the state by a float32 λ every token,
  so λ's rounding compounds over a head's memory. O(N·D·E).
- seed_block_based — `BlockBased.blockBased` (torch): blocks of 32 tokens, state carried. O(N·(C·D + D·E)).
- seed_recursion — `Recursion.recursion` (torch): divide and conquer over the sequence down to blocks of 4,
  each level one low-rank product. O(N·log N·D·E).
  (BlockBased and Recursion import causal_dot_product: their setup builds its extensions too, side by
  side.)
- seed_fleet_attention — `FleetAttention.FleetAttention` (torch): a discounted cumulative sum per key
  coordinate, in log space (log of k·v, which is negative half the time: NaN). O(N·D·E).
- seed_fleet_attention_triton — `FleetAttention_triton.FleetAttention_triton` (Triton): one program per key
  coordinate and 32 values, each adding into the output with a plain load-add-store (a race). O(N·D·E).
- seed_lightning_attn2 — `lightningAttention2.lightning_attn2` (Triton copy of Lightning Attention-2;
  imports pycuda at module level and picks its block size from a table of four GPU names). O(N·(C·D + D·E)).
- seed_lightning_attn2_torch — `lightningAttention2_torch.lightningAttention2_torch` (torch, blocks of
  256, float32 state). O(N·(C·D + D·E)).

Conventions converted here (read off each route and its own test, leetDecoding/test/test_method.py): the
CUDA causal_dot_product and both FleetAttentions take λ itself (their kernels multiply the state by it);
BlockBased, Recursion and both lightning routes take the rate γ = −log λ (weights exp(−γ·n)). Both come
from float64 λ; they are rounded to the input dtype where the route computes with them in that dtype (as
its own test passes them; mixed dtypes fail in its einsums, and the float16 CUDA kernel reads a half λ),
and kept float32 where the route reads them as float32 anyway (FleetAttention_triton, the torch lightning
route). The layout is ours ([B, H, N, D]). No route has a scale, so q is given as q·c, made once per input
tensor by `leetbench.adapters.prescaled` (cached, outside the timed calls). None takes an initial state or
returns a final state, so problems with an initial state (and decode) are refused.

The library has known wrong results (FleetAttention_triton's race and FleetAttention's NaN, above; earlier
H200 publications also found causal_dot_product wrong at B = 1); they are not worked around here: the
harness judges every route's output, and they show up as `inaccurate` rows.

Source: https://github.com/Computational-Machine-Intelligence/LeetDecoding (leetDecoding/methods/*).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from leetbench import register
from leetbench.adapters import decay_as, prepare_prescaled, prescaled, rate_as, warm_up
from leetbench.extension_builds import exclusive_builds

ALL = ("float64", "float32", "float16", "bfloat16")
HALF_AND_SINGLE = ("float32", "float16", "bfloat16")


def _module(name: str):
    """leetDecoding.methods.<name>, imported on its own (the package __init__ files are empty)."""
    return importlib.import_module(f"leetDecoding.methods.{name}")


# causal_dot_product.py compiles these three extensions one after another when it is imported (in a row they
# ran past 2.5 minutes on an H200 box; side by side, 55-65 s); built side by side first, the import finds
# them in torch's extension cache. Names and files as in the module's own load() calls, so the keys match.
_CDP_EXTENSIONS = {
    "causal_product_cuda_with_decay_fp32_cuda": "causal_product_cuda_with_decay_fp32.cu",
    "causal_product_cuda_with_decay_fp16_cuda": "causal_product_cuda_with_decay_fp16.cu",
    "causal_dot_product_cuda": "causal_product_cuda.cu",
}
_BUILD_ONE = "import sys; from torch.utils.cpp_extension import load; load(name=sys.argv[1], sources=sys.argv[2])"


def _build_side_by_side(module: str = "causal_dot_product", extensions: dict[str, str] = _CDP_EXTENSIONS) -> None:
    """Compile a seed module's CUDA extensions in parallel processes, where its sources are on disk."""
    if f"leetDecoding.methods.{module}" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(f"leetDecoding.methods.{module}")
    except (ImportError, ValueError):
        return
    if spec is None or spec.origin is None:
        return
    folder = Path(spec.origin).parent
    sources = {name: folder / file for name, file in extensions.items()}
    if not all(path.exists() for path in sources.values()):
        return
    builds = {name: subprocess.Popen([sys.executable, "-c", _BUILD_ONE, name, str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for name, path in sources.items()}
    try:
        for name, build in builds.items():
            _, err = build.communicate()
            if build.returncode:
                raise RuntimeError(f"building the seed's CUDA extension {name} failed: {err.strip()[-2000:]}")
    finally:  # one failed, or this process is being stopped: the others stop too instead of running on unowned
        for build in builds.values():
            if build.poll() is None:
                build.kill()
                build.wait()


def _setup_for(name: str, builds_cuda: bool = False):
    """A setup that imports the seed module `name`; `builds_cuda`: it imports causal_dot_product (itself,
    BlockBased and Recursion do), whose CUDA extensions are then built side by side first."""
    def setup(problem) -> None:
        if not builds_cuda:
            _module(name)
            return
        # builds and the import's own load() calls under leetbench's build lock, torch's stale locks cleared
        with exclusive_builds(_CDP_EXTENSIONS):
            _build_side_by_side()
            _module(name)  # compiles what is not built yet, outside the timed calls

    return setup


def _stateless(problem) -> str | None:
    if problem.has_initial_state:
        return "takes no initial state and returns no final state"
    return None


def _cdp_supports(problem) -> str | None:
    if problem.E > 1024:
        return f"E must be ≤ 1024 (one CUDA thread per value column), got {problem.E}"
    return _stateless(problem)


def _block_based_supports(problem) -> str | None:
    if problem.heads < 2:
        return "needs H ≥ 2 (BlockBased squeezes the head axis of its block decay away when H = 1)"
    return _stateless(problem)


def _fleet_triton_supports(problem) -> str | None:
    if problem.E % 32:
        return f"E must be a multiple of 32 (FleetAttention_triton's grid is E // 32 slices), got {problem.E}"
    return _stateless(problem)


_SEED = dict(family="peer:seed", requires=("leetDecoding",), prepare=prepare_prescaled)


@register(name="seed_causal_dot_product", complexity="O(N·D·E)", devices=("cuda",),
          dtypes=("float32", "float16"), supports=_cdp_supports, setup=_setup_for("causal_dot_product", builds_cuda=True), **_SEED)
def seed_causal_dot_product(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding causal_dot_product: token-by-token state (CUDA), λ in the input dtype."""
    o = _module("causal_dot_product").causal_dot_product(prescaled(q, scale), k, v, decay_as(decay, q.dtype))
    return o.to(v.dtype)  # float32 always; a no-op for float32 inputs


@register(name="seed_block_based", complexity="O(N·(C·D + D·E)), C=32", devices=("cuda",), dtypes=ALL,
          supports=_block_based_supports, setup=_setup_for("BlockBased", builds_cuda=True), **_SEED)
def seed_block_based(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding BlockBased: blocks of 32, state carried (torch), rate γ in the input dtype."""
    return _module("BlockBased").blockBased(prescaled(q, scale), k, v, rate_as(decay, q.dtype))


@register(name="seed_recursion", complexity="O(N·log N·D·E)", devices=("cuda",), dtypes=ALL,
          supports=_stateless, setup=_setup_for("Recursion", builds_cuda=True), **_SEED)
def seed_recursion(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding Recursion: divide and conquer over the sequence (torch), rate γ in the input dtype."""
    return _module("Recursion").recursion(prescaled(q, scale), k, v, rate_as(decay, q.dtype))


@register(name="seed_fleet_attention", complexity="O(N·D·E)", devices=("cpu", "cuda"), dtypes=ALL,
          supports=_stateless, setup=_setup_for("FleetAttention"), **_SEED)
def seed_fleet_attention(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding FleetAttention: log-space discounted cumulative sums (torch), λ in the input dtype."""
    return _module("FleetAttention").FleetAttention(prescaled(q, scale), k, v, decay_as(decay, q.dtype))


@register(name="seed_fleet_attention_triton", complexity="O(N·D·E)", devices=("cuda",), dtypes=HALF_AND_SINGLE,
          supports=_fleet_triton_supports, setup=warm_up(lambda: seed_fleet_attention_triton),
          family="peer:seed", requires=("leetDecoding", "triton"), prepare=prepare_prescaled)
def seed_fleet_attention_triton(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding FleetAttention_triton: one program per key coordinate (Triton), λ in float32."""
    return _module("FleetAttention_triton").FleetAttention_triton(prescaled(q, scale), k, v,
                                                                  decay_as(decay, torch.float32))


@register(name="seed_lightning_attn2", complexity="O(N·(C·D + D·E))", devices=("cuda",), dtypes=HALF_AND_SINGLE,
          tf32=True, supports=_stateless, setup=warm_up(lambda: seed_lightning_attn2),
          family="peer:seed", requires=("leetDecoding", "triton", "pycuda"), prepare=prepare_prescaled)
def seed_lightning_attn2(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding lightning_attn2: Lightning Attention-2 copy (Triton, TF32 dots), rate γ in the input dtype."""
    return _module("lightningAttention2").lightning_attn2(prescaled(q, scale), k, v, rate_as(decay, q.dtype))


@register(name="seed_lightning_attn2_torch", complexity="O(N·(C·D + D·E)), C=256", devices=("cpu", "cuda"),
          dtypes=HALF_AND_SINGLE, supports=_stateless, setup=_setup_for("lightningAttention2_torch"), **_SEED)
def seed_lightning_attn2_torch(q, k, v, decay, *, scale, initial_state=None):
    """LeetDecoding lightningAttention2_torch: blocks of 256, float32 state (torch), rate γ in float32."""
    return _module("lightningAttention2_torch").lightningAttention2_torch(prescaled(q, scale), k, v,
                                                                          rate_as(decay, torch.float32))
