"""Every registered method that runs on the CPU, checked against the float64 reference on awkward problems.

The methods are found the way the harness finds them (`load_methods`), so a method added later is covered
without editing this file. Each check goes through `leetbench.execute.verify` (the harness's own path: a
fresh seeded problem, the float64 reference, shape/dtype checks of the output) and then asserts on the
numbers themselves, not only on the status: float64 to 1e-10 and every other dtype to its default
tolerance, for the outputs and for the final state whenever a method returns one.

Peer adapters (family `peer:*`) are left out: a peer library's accuracy is what the harness reports about
it (several are known to be wrong: README, "Published leaderboard"), not something leetbench's tests can assert.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import pytest
import torch

from leetbench import Method, Problem, load_methods
from leetbench.execute import verify
from leetbench.protocol import Outcome
from leetbench.verdict import DEFAULT_TOLERANCES

REGISTRY = load_methods()
METHODS = [m for m in REGISTRY.methods.values() if not m.family.startswith("peer")]
ZOO = ("block_based", "chunked", "lightning2", "recursion", "fleet_lowrank", "fft_toeplitz", "assoc_scan")
# The block keyword of each zoo method, and small odd values that make every tail and level path run:
# a block of 1, blocks that divide nothing, more blocks than the prefix-scan block (16), odd group counts.
BLOCK_KEYWORDS = {
    "block_based": [{"block": 1}, {"block": 7}],
    "chunked": [{"chunk": 1}, {"chunk": 5}, {"chunk": 7}],
    "lightning2": [{"block": 1}, {"block": 7}],
    "recursion": [{"leaf": 1}, {"leaf": 3}, {"leaf": 5}],
    "fleet_lowrank": [{"block": 2}, {"block": 5, "group": 3}],
    "fft_toeplitz": [{"group": 1}, {"group": 7}, {"precise": False}],
    "assoc_scan": [{"chunk": 1}, {"chunk": 5}, {"chunk": 6}],
}

# Problems chosen to break block, tail and decay handling (ids say what each one is for).
FLOAT64_CASES = {
    "N1": dict(batch=1, heads=1, length=1, dim=4),
    "N1-S0-D3E5": dict(batch=2, heads=2, length=1, dim=3, dim_v=5, initial_state=True),
    "N2-lambda1": dict(batch=1, heads=1, length=2, dim=2, decay=1.0),
    "N131prime-B2H3-D8E5-S0": dict(batch=2, heads=3, length=131, dim=8, dim_v=5, decay="retnet",
                                   initial_state=True),
    "N200-D6E9-multiscale-S0": dict(batch=1, heads=4, length=200, dim=6, dim_v=9, decay="multiscale",
                                    initial_state=True),
    "N256-lambda1-S0": dict(batch=2, heads=2, length=256, dim=8, decay=1.0, initial_state=True),
    "N300-lambda1e-6-S0": dict(batch=1, heads=2, length=300, dim=8, decay=1e-6, initial_state=True),
    "N77-alibi-D4E12": dict(batch=2, heads=4, length=77, dim=4, dim_v=12, decay="alibi"),
    "N97-D12E3-lambda0.9": dict(batch=1, heads=1, length=97, dim=12, dim_v=3, decay=0.9),
    "N2100-multiscale-S0": dict(batch=1, heads=3, length=2100, dim=4, dim_v=3, decay="multiscale",
                                initial_state=True),
}
LOW_PRECISION_CASES = {
    "N131prime-B2H3-D8E5-S0": FLOAT64_CASES["N131prime-B2H3-D8E5-S0"],
    "N200-D6E9-multiscale-S0": FLOAT64_CASES["N200-D6E9-multiscale-S0"],
    "N256-lambda1-S0": FLOAT64_CASES["N256-lambda1-S0"],
    "N300-lambda1e-6-S0": FLOAT64_CASES["N300-lambda1e-6-S0"],
    "N77-alibi-D4E12": FLOAT64_CASES["N77-alibi-D4E12"],
}
# Long sequences: λ close to 1 (no power of λ may overflow, a rounded λ or λ^C must not compound), λ = 1
# (outputs grow like √N), a tiny λ (everything but the last token underflows) and per-head profiles whose λ
# are not representable in float32.
LONG_CASES = {
    "N65536-lambda1-2^-16-S0": dict(batch=1, heads=1, length=65536, dim=4, decay=1 - 2.0 ** -16,
                                    initial_state=True),
    "N65536-lambda1-S0": dict(batch=1, heads=1, length=65536, dim=4, decay=1.0, initial_state=True),
    "N65536-lambda1e-6-S0": dict(batch=1, heads=1, length=65536, dim=4, decay=1e-6, initial_state=True),
    "N8192-multiscale-H4-S0": dict(batch=1, heads=4, length=8192, dim=4, dim_v=2, decay="multiscale",
                                   initial_state=True),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: loops of small ops (block by block, token by token) otherwise stall on thread
    barriers whenever another process holds a core (32 s instead of 0.2 s seen on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(methods: list[Method]) -> list[str]:
    return [m.name for m in methods]


def assert_accurate(method: Method, problem: Problem, outcome: Outcome) -> None:
    """The outcome is `ok` and its errors (outputs, and the final state if returned) are within tolerance."""
    tol = DEFAULT_TOLERANCES["tf32" if method.tf32 and problem.dtype == "float32" else problem.dtype]
    where = f"{method.name} on {problem.label()}"
    assert outcome.status == "ok", f"{where}: {outcome.status} ({outcome.error})"
    assert math.isfinite(outcome.rel_err) and outcome.rel_err <= tol, f"{where}: rel_err {outcome.rel_err:.3g}"
    assert outcome.max_err <= 100 * tol, f"{where}: max_err {outcome.max_err:.3g}"
    if not math.isnan(outcome.state_rel_err):  # NaN: the method returned no state
        assert outcome.state_rel_err <= tol, f"{where}: final state rel_err {outcome.state_rel_err:.3g}"


def check(method: Method, **problem: object) -> None:
    p = Problem(**problem)
    reason = method.why_not(p)
    if reason is not None:
        pytest.skip(f"{method.name}: {reason}")
    assert_accurate(method, p, verify(method, p))


def test_registry_loads_every_plugin() -> None:
    assert not REGISTRY.failures, "; ".join(f"{f.source}: {f.error}" for f in REGISTRY.failures)
    assert set(ZOO) <= set(REGISTRY.names())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_method_declares_itself(name: str) -> None:
    """Each zoo method states its equation, complexity and source, and has a block-size keyword."""
    method = REGISTRY[name]
    module_doc = inspect.getmodule(method.fn).__doc__ or ""
    assert "Complexity:" in module_doc and "Source:" in module_doc
    assert method.complexity.startswith("O(")
    params = inspect.signature(method.fn).parameters
    assert "initial_state" in params and params["scale"].kind is inspect.Parameter.KEYWORD_ONLY
    for kw in BLOCK_KEYWORDS[name][0]:
        assert kw in params and params[kw].default is not inspect.Parameter.empty


@pytest.mark.parametrize("case", FLOAT64_CASES.values(), ids=FLOAT64_CASES.keys())
@pytest.mark.parametrize("method", METHODS, ids=_ids(METHODS))
def test_float64_matches_reference(method: Method, case: dict) -> None:
    check(method, dtype="float64", **case)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES.values(), ids=LOW_PRECISION_CASES.keys())
@pytest.mark.parametrize("method", METHODS, ids=_ids(METHODS))
def test_low_precision_within_tolerance(method: Method, case: dict, dtype: str) -> None:
    check(method, dtype=dtype, **case)


_VARIANTS = [(name, kw) for name in ZOO for kw in BLOCK_KEYWORDS[name]]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, keywords", _VARIANTS, ids=[f"{n}-{kw}" for n, kw in _VARIANTS])
def test_block_keywords(name: str, keywords: dict, dtype: str) -> None:
    """Non-default block sizes: tails, single-token blocks and multi-level prefix scans."""
    method = REGISTRY[name]
    variant = dataclasses.replace(method, fn=functools.partial(method.fn, **keywords))
    for case in ("N1-S0-D3E5", "N131prime-B2H3-D8E5-S0", "N300-lambda1e-6-S0", "N77-alibi-D4E12"):
        check(variant, dtype=dtype, **FLOAT64_CASES[case])
    check(variant, dtype=dtype, batch=1, heads=2, length=700, dim=3, dim_v=2, decay=1.0, initial_state=True)


_LONG_METHODS = [m for m in METHODS if "N²" not in m.complexity]  # quadratic ones take minutes at N = 65536


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("case", LONG_CASES.values(), ids=LONG_CASES.keys())
@pytest.mark.parametrize("method", _LONG_METHODS, ids=_ids(_LONG_METHODS))
def test_long_sequences(method: Method, case: dict, dtype: str) -> None:
    check(method, dtype=dtype, **case)


# ---- the checks above must fail for a wrong method -------------------------------------------------------

def _slightly_wrong_decay(q, k, v, decay, *, scale, initial_state=None):
    """λ^1.001 instead of λ: errors of about 1e-4, finite everywhere, status-only checks at float16 pass."""
    return REGISTRY["chunked"].fn(q, k, v, decay ** 1.001, scale=scale, initial_state=initial_state)


def _state_without_s0(q, k, v, decay, *, scale, initial_state=None):
    """Right outputs, but the final state leaves out λ^N·S0."""
    o, _ = REGISTRY["chunked"].fn(q, k, v, decay, scale=scale, initial_state=initial_state)
    return o, REGISTRY["chunked"].fn(q, k, v, decay, scale=scale, initial_state=None)[1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_wrong_output_fails(dtype: str) -> None:
    wrong = Method(name="wrong_decay", fn=_slightly_wrong_decay, family="test")
    with pytest.raises(AssertionError, match="inaccurate"):
        check(wrong, dtype=dtype, **FLOAT64_CASES["N131prime-B2H3-D8E5-S0"])


def test_a_wrong_final_state_fails() -> None:
    wrong = Method(name="wrong_state", fn=_state_without_s0, family="test")
    with pytest.raises(AssertionError, match="final state"):
        check(wrong, dtype="float64", **FLOAT64_CASES["N131prime-B2H3-D8E5-S0"])


def test_rel_err_is_asserted_not_only_status() -> None:
    """An outcome marked ok whose numbers are off (e.g. a looser tolerance passed to verify) still fails."""
    method = REGISTRY["chunked"]
    p = Problem(batch=1, heads=1, length=8, dim=2, dtype="float64")
    with pytest.raises(AssertionError, match="rel_err"):
        assert_accurate(method, p, Outcome(status="ok", rel_err=1e-6, max_err=1e-6))
    with pytest.raises(AssertionError, match="final state"):
        assert_accurate(method, p, Outcome(status="ok", rel_err=0.0, max_err=0.0, state_rel_err=1e-6))
