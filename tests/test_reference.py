"""The problem, its inputs, the decay helpers and the float64 reference against the literal definitions."""

from __future__ import annotations

import math

import pytest
import torch

from leetbench.decay import decay_mask, decay_powers, log_decay
from leetbench.inputs import make_inputs
from leetbench.problem import Problem, ProblemError, decay_profile
from leetbench.reference import literal, recurrence, reference

EDGE_CASES = [
    dict(batch=2, heads=3, length=1, dim=4),  # N = 1
    dict(batch=1, heads=2, length=131, dim=8, dim_v=5),  # N prime, not a multiple of the chunk; D ≠ E
    dict(batch=2, heads=2, length=200, dim=6, decay=1.0, initial_state=True),  # λ = 1
    dict(batch=1, heads=2, length=77, dim=8, decay=1e-6, initial_state=True),  # tiny λ
    dict(batch=1, heads=4, length=150, dim=8, decay="multiscale", initial_state=True),
    dict(batch=1, heads=4, length=64, dim=8, decay="alibi"),  # exactly one chunk
    dict(batch=3, heads=5, length=129, dim=4, dim_v=9, decay="retnet", initial_state=True),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item() if b.norm() > 0 else (a - b).norm().item()


@pytest.mark.parametrize("kw", EDGE_CASES, ids=lambda kw: Problem(**kw).label())
@pytest.mark.parametrize("chunk", [16, 64])
def test_reference_matches_literal_and_recurrence(kw: dict, chunk: int) -> None:
    inputs = make_inputs(Problem(dtype="float64", **kw))
    out, state = reference(inputs, chunk=chunk)
    lit_out, lit_state = literal(inputs)
    rec_out, rec_state = recurrence(inputs)
    assert out.dtype == torch.float64 and out.shape == lit_out.shape
    assert state.shape == (kw["batch"], kw["heads"], kw["dim"], kw.get("dim_v") or kw["dim"])
    assert rel(out, lit_out) < 1e-12 and rel(state, lit_state) < 1e-12
    assert rel(out, rec_out) < 1e-12 and rel(state, rec_state) < 1e-12


def test_literal_and_recurrence_agree_with_a_hand_computed_case() -> None:
    """N=2, one head, D=E=1: o1 = c·q1·k1·v1, o2 = c·q2·(λ·k1·v1 + k2·v2)."""
    from leetbench.problem import Inputs

    q = torch.tensor([[[[2.0], [3.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[5.0], [7.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[11.0], [13.0]]]], dtype=torch.float64)
    lam, c = 0.5, 0.25
    x = Inputs(q, k, v, torch.tensor([lam], dtype=torch.float64), c, None)
    expect = torch.tensor([c * 2 * 5 * 11, c * 3 * (lam * 5 * 11 + 7 * 13)], dtype=torch.float64)
    for fn in (literal, recurrence, reference):
        o, s = fn(x)
        assert torch.allclose(o.flatten(), expect, rtol=1e-15)
        assert s.item() == pytest.approx(lam * 5 * 11 + 7 * 13)


def test_reference_on_long_sequence_near_one_has_no_overflow() -> None:
    inputs = make_inputs(Problem(1, 1, 20000, 2, decay=1 - 2 ** -16, dtype="float64"))
    out, state = reference(inputs)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    rec_out, rec_state = recurrence(make_inputs(Problem(1, 1, 20000, 2, decay=1 - 2 ** -16, dtype="float64")))
    assert rel(out, rec_out) < 1e-12


def test_decay_profiles() -> None:
    assert torch.allclose(decay_profile("retnet", 3), torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7],
                                                                   dtype=torch.float64))
    ms = decay_profile("multiscale", 8)
    assert ms[0] == 1 - 2 ** -5 and ms[-1] == 1 - 2 ** -12
    alibi = decay_profile("alibi", 4)
    assert alibi[0].item() == pytest.approx(math.exp(-(2 ** -2)))
    assert decay_profile(0.9, 2).tolist() == [0.9, 0.9]
    assert decay_profile("multiscale", 1).tolist() == [1 - 2 ** -5]


@pytest.mark.parametrize("bad, message", [
    (dict(length=0), "length=0"), (dict(decay=1.5), "outside (0, 1]"), (dict(decay=0.0), "outside (0, 1]"),
    (dict(decay="nope"), "unknown decay profile 'nope'"), (dict(dtype="float8"), "unknown dtype 'float8'"),
    (dict(device="tpu"), "unknown device 'tpu'"), (dict(dim_v=-1), "dim_v=-1"),
    (dict(mode="decode", steps=0), "steps=0"),
])
def test_problem_validates_itself(bad: dict, message: str) -> None:
    kw = dict(batch=1, heads=1, length=4, dim=4) | bad
    with pytest.raises(ProblemError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        Problem(**kw)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_inputs_are_seeded_rounded_and_deterministic(dtype: str) -> None:
    p = Problem(2, 3, 17, 8, dim_v=5, dtype=dtype, seed=7, initial_state=True)
    a, b = make_inputs(p), make_inputs(p)
    assert a.q.dtype == p.torch_dtype and a.v.shape == (2, 3, 17, 5)
    assert torch.equal(a.q, b.q) and torch.equal(a.v, b.v) and torch.equal(a.initial_state, b.initial_state)
    assert a.decay.dtype == torch.float64
    c = make_inputs(Problem(2, 3, 17, 8, dim_v=5, dtype=dtype, seed=8))
    assert not torch.equal(a.q, c.q)
    f32 = make_inputs(Problem(2, 3, 17, 8, dim_v=5, dtype="float32", seed=7))
    assert torch.equal(a.q, f32.q.to(p.torch_dtype))  # drawn in float32, then rounded


def test_decode_problem_state_is_the_prefix_state() -> None:
    p = Problem(1, 2, 40, 4, mode="decode", steps=3, dtype="float64")
    x = make_inputs(p)
    assert x.q.shape[2] == 3 and x.initial_state.shape == (1, 2, 4, 4)
    assert x.initial_state.abs().sum() > 0


def test_decay_helpers_never_overflow() -> None:
    ll = log_decay(torch.tensor([1e-6, 1.0, 0.5], dtype=torch.float64))
    assert ll[1] == 0.0
    m = decay_mask(ll, 300)
    assert torch.isfinite(m).all() and (m.triu(1) == 0).all() and (m.diagonal(dim1=1, dim2=2) == 1).all()
    p = decay_powers(ll, 5000, start=1)
    assert torch.isfinite(p).all() and (p <= 1).all()
    assert decay_powers(ll, 4, reverse=True)[2].tolist() == pytest.approx([0.125, 0.25, 0.5, 1.0], rel=1e-15)
    with pytest.raises(ValueError):
        decay_powers(ll, 3, start=-1)


def test_bytes_floor_counts_one_timed_call() -> None:
    prefill = Problem(2, 4, 100, 8, dim_v=16, dtype="bfloat16")
    assert prefill.bytes_floor() == 2 * 4 * 100 * (2 * 8 + 2 * 16) * 2
    decode = Problem(2, 4, 100, 8, dim_v=16, dtype="bfloat16", mode="decode", steps=7)
    # one token's q, k, v, o plus the float32 state read and written once, whatever `steps` is
    assert decode.bytes_floor() == 2 * 4 * (2 * 8 + 2 * 16) * 2 + 2 * 2 * 4 * 8 * 16 * 4
