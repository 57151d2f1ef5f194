"""The real peer libraries on a GPU (skipped without one, or without the library): every adapter's plumbing
works on small problems, the good routes are within tolerance, and the seed library's known faults show up
as rows that never pass. (On the CPU, tests/test_peers.py checks the same conversions against fakes.)"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from leetbench import Problem, load_methods  # noqa: E402
from leetbench.execute import verify  # noqa: E402

# Routes expected within tolerance on small problems, by dtype (float32 prefill of fla_fused_recurrent is
# known inaccurate: its per-token approximate exp compounds past 1e-5).
GOOD = {
    "fla_chunk": ("bfloat16", "float16", "float32"), "fla_fused_chunk": ("bfloat16", "float16", "float32"),
    "fla_parallel": ("bfloat16", "float16", "float32"), "fla_fused_recurrent": ("bfloat16", "float16"),
    "lightning_attn2": ("bfloat16", "float16", "float32"), "seed_lightning_attn2_torch": ("float32",),
    "mamba2_ssd": ("bfloat16", "float16", "float32"), "mamba2_ssd_c64": ("bfloat16",),
    "mamba2_ssd_c256": ("bfloat16",),
}
# Known wrong in the seed library (README, "Published leaderboard"): never `ok`.
WRONG = {"seed_causal_dot_product": "float32", "seed_fleet_attention": "float32",
         "seed_fleet_attention_triton": "float32"}


@pytest.fixture(scope="module")
def registry():
    return load_methods(entry_points=False)


def _problem(dtype: str, s0: bool = False, N: int = 1000) -> Problem:
    return Problem(batch=1, heads=4, length=N, dim=64, decay="multiscale", dtype=dtype, device="cuda",
                   initial_state=s0, seed=3)


@pytest.mark.parametrize("name, dtype", [(n, dt) for n, dts in GOOD.items() for dt in dts])
@pytest.mark.parametrize("s0", [False, True])
def test_good_peers_are_within_tolerance(registry, name: str, dtype: str, s0: bool) -> None:
    if name not in registry:
        pytest.skip(f"{name} not registered")
    method, problem = registry[name], _problem(dtype, s0)
    reason = method.why_not(problem)
    if reason:
        pytest.skip(reason)
    out = verify(method, problem)
    assert out.status == "ok", (name, problem.label(), out.error)


@pytest.mark.parametrize("name, dtype", list(WRONG.items()))
def test_the_seed_librarys_known_faults_never_pass(registry, name: str, dtype: str) -> None:
    method, problem = registry[name], _problem(dtype)
    reason = method.why_not(problem)
    if reason:
        pytest.skip(reason)
    try:
        out = verify(method, problem)
    except Exception as exc:  # noqa: BLE001 - a crash of the seed's code is as good a "not ok" as any
        pytest.xfail(f"{type(exc).__name__}: {exc}")
    assert out.status != "ok", (name, out.rel_err)


def test_fla_decode_step(registry) -> None:
    method = registry["fla_fused_recurrent"]
    problem = Problem(batch=2, heads=4, length=100, dim=64, decay="multiscale", dtype="bfloat16", device="cuda",
                      mode="decode", steps=3)
    if method.why_not(problem):
        pytest.skip(method.why_not(problem))
    assert verify(method, problem).status == "ok"


@pytest.mark.parametrize("name, package", [("fla_chunk", "fla"), ("mamba2_ssd", "mamba_ssm")])
def test_autotuned_peers_tune_at_every_problems_shape(registry, name: str, package: str) -> None:
    """Each problem's setup re-benchmarks the peer's Triton autotuners (their keys leave N out), in memory."""
    from leetbench.adapters import triton_autotuners

    if name not in registry or registry[name].why_not(_problem("bfloat16")):
        pytest.skip(f"{name} not here")
    method = registry[name]

    def tuned() -> dict[int, tuple]:  # id → (autotuner, its last benchmark's timings), both held: no id is reused
        return {id(t): (t, t.configs_timings) for t in triton_autotuners((package,))
                if getattr(t, "configs_timings", None) is not None}

    def moved(a: dict, b: dict) -> list[int]:  # tuners of b whose timings are not a's: they benchmarked between
        return [t for t in b if t not in a or b[t][1] is not a[t][1]]

    def named(tuners: dict, ids: list[int]) -> list[str]:
        return sorted(getattr(getattr(tuners[i][0], "base_fn", None), "__name__", "?") for i in ids)

    # the tuners this route's setup benchmarks, not those an earlier test in this process left timings on (the
    # package's other routes share its modules)
    before = tuned()
    method.setup(_problem("bfloat16", N=256))
    after = tuned()
    first = {t: after[t] for t in moved(before, after)}
    method.setup(_problem("bfloat16", N=2048))
    second = tuned()
    kept = [t for t in first if t not in moved(first, second)]
    assert first and not kept, f"{len(kept)} of {len(first)} autotuners kept their N=256 choice: {named(first, kept)}"
    method.setup(_problem("bfloat16", N=256))  # a shape met before: its choices come back, nothing re-benchmarks
    third = tuned()
    again = moved(second, third)
    assert set(third) == set(second) and not again, f"{len(again)} benchmarked again at N=256: {named(third, again)}"
