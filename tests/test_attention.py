"""`leetbench.decay_attention` / `decay_attention_step` / `explain` and the dispatcher behind them (CPU).

Numbers: both functions against the float64 literal definition on awkward shapes in float64, float32 and
bfloat16; N decode steps against one call; gradients against float64 autograd of `reference.literal`, for
the operator and for every PyTorch route registered `differentiable=True`. Dispatch: planted routes from a
plugin folder, steered by explicit tables (nearest entry, TF32 policy, state out, grad, a missing package, a
route failing on its first call), the user cache over the shipped table, `leetbench tune`, the shipped H200
table remade from the published results. And the README's retention layer, trained and decoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leetbench
from leetbench import attention, decay_attention, decay_attention_step, explain, load_methods
from leetbench import dispatch as dispatch_mod
from leetbench.dispatch import FORMAT, Call, Dispatcher, Entry, Route, Table, merge_tables, tables_from_results
from leetbench.problem import Inputs, ProblemError, decay_profile
from leetbench.registry import RegistryError
from leetbench.reference import literal
from conftest import run_cli, write_plugin

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}

PLANTED = '''
import torch
from leetbench import register
from leetbench.problem import Inputs
from leetbench.reference import recurrence

SETUPS = []


def _make(name, **declared):
    def fn(q, k, v, decay, *, scale, initial_state=None):
        fn.calls += 1
        if name == "planted_boom":
            raise RuntimeError("boom: a broken install")
        o, s = recurrence(Inputs(q, k, v, decay, scale, initial_state))
        o = o.to(v.dtype)
        if name == "planted_nostate":
            return o
        return o, s.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    fn.calls = 0
    register(name=name, family="test", modes=("prefill", "decode"), setup=SETUPS.append, **declared)(fn)


_make("planted", differentiable=True)


def _exact(q, k, v, decay, scale, s0):
    o, s = recurrence(Inputs(q, k, v, decay, scale, s0))
    return o.to(v.dtype), s.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def _step_route(name, fail=False):
    def step(q, k, v, decay, *, scale, state):
        step.calls += 1
        if fail:
            raise RuntimeError("boom: a broken step")
        o, s = _exact(q[:, :, None], k[:, :, None], v[:, :, None], decay, scale, state)
        return o[:, :, 0], s
    def fn(q, k, v, decay, *, scale, initial_state=None):
        fn.calls += 1
        return _exact(q, k, v, decay, scale, initial_state)
    step.calls = fn.calls = 0
    register(name=name, family="test", modes=("prefill", "decode"), step=step)(fn)


_step_route("planted_step")
_step_route("planted_step_boom", fail=True)
_make("planted_nograd")
_make("planted_tf32", tf32=True, differentiable=True)
_make("planted_missing", requires=("leetbench_no_such_module",), differentiable=True)
_make("planted_boom", differentiable=True)
_make("planted_nostate", differentiable=True)
'''


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user cache of the machine running the tests, and a fresh default dispatcher."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(attention, "_default", None)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plugins")
    write_plugin(folder, "planted.py", PLANTED)
    return folder


def entry(*routes: str | tuple[str, dict], mode: str = "prefill", dtype: str = "float32", B: int = 1, H: int = 2,
          N: int = 64, D: int = 8, E: int = 8, s0: bool = False) -> dict[str, Any]:
    rs = [dict(method=r, time_ms=0.1 * (i + 1)) if isinstance(r, str)
          else dict(method=r[0], time_ms=0.1 * (i + 1), **r[1]) for i, r in enumerate(routes)]
    return dict(mode=mode, dtype=dtype, initial_state=s0, batch=B, heads=H, length=N, dim=D, dim_v=E, routes=rs)


def table(*entries: dict, device: str = "cpu") -> dict[str, Any]:
    return {"format": FORMAT, "device": device, "entries": list(entries)}


def planted_dispatcher(plugins: Path, *entries: dict) -> Dispatcher:
    return Dispatcher([table(*entries)], methods_dirs=[plugins], user_cache=False, shipped=False)


def inputs(B: int, H: int, N: int, D: int, E: int, dtype: torch.dtype = torch.float32, s0: bool = False,
           seed: int = 0, grad: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=F64).to(dtype) for _ in range(2))
    v = torch.randn(B, H, N, E, generator=g, dtype=F64).to(dtype)
    s = torch.randn(B, H, D, E, generator=g, dtype=F64).to(dtype) if s0 else None
    if grad:
        for t in (q, k, v, s):
            if t is not None:
                t.requires_grad_(True)
    return q, k, v, s


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to(F64), b.detach().to(F64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def ref(q, k, v, decay, s0=None, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    H, D = q.shape[1], q.shape[-1]
    lam = decay.to(F64) if isinstance(decay, torch.Tensor) else decay_profile(decay, H)
    return literal(Inputs(q, k, v, lam, D ** -0.5 if scale is None else scale, s0))


# ---- numbers -----------------------------------------------------------------------------------------------

CASES = {
    "N1": dict(B=1, H=1, N=1, D=4, E=4, decay=0.9, s0=False),
    "N1-S0-D3E5": dict(B=2, H=2, N=1, D=3, E=5, decay="retnet", s0=True),
    "N131prime-B2H3-D8E5-S0": dict(B=2, H=3, N=131, D=8, E=5, decay="retnet", s0=True),
    "lambda1-S0": dict(B=1, H=2, N=97, D=8, E=8, decay=1.0, s0=True),
    "lambda1e-6-S0": dict(B=1, H=2, N=67, D=6, E=4, decay=1e-6, s0=True),
    "multiscale-tensor-D6E9": dict(B=1, H=4, N=200, D=6, E=9, decay="tensor:multiscale", s0=False),
    "alibi-D4E12-S0": dict(B=2, H=4, N=77, D=4, E=12, decay="alibi", s0=True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_decay_attention_matches_the_float64_definition(case: str, dtype: torch.dtype) -> None:
    c = CASES[case]
    q, k, v, s0 = inputs(c["B"], c["H"], c["N"], c["D"], c["E"], dtype, c["s0"])
    decay = c["decay"]
    if isinstance(decay, str) and decay.startswith("tensor:"):
        decay = decay_profile(decay[7:], c["H"])
    o, state = decay_attention(q, k, v, decay, initial_state=s0, output_final_state=True)
    ro, rs = ref(q, k, v, decay, s0)
    assert o.shape == ro.shape and o.dtype == dtype
    assert state.shape == rs.shape and state.dtype == (F64 if dtype == F64 else torch.float32)
    assert rel(o, ro) <= TOL[dtype] and rel(state, rs) <= TOL[dtype]
    assert torch.equal(decay_attention(q, k, v, decay, initial_state=s0), o)  # o alone: the same numbers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_n_steps_equal_one_call(dtype: torch.dtype) -> None:
    B, H, N, D, E = 2, 3, 23, 5, 3
    q, k, v, s0 = inputs(B, H, N, D, E, dtype, s0=True, seed=1)
    o, final = decay_attention(q, k, v, "multiscale", initial_state=s0, output_final_state=True, scale=0.7)
    state, outs = s0, []
    for t in range(N):
        o_t, state = decay_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], "multiscale", state, scale=0.7)
        assert o_t.shape == (B, H, E) and o_t.dtype == dtype and state.dtype == final.dtype
        outs.append(o_t)
    steps = torch.stack(outs, dim=2)
    ro, rs = ref(q, k, v, "multiscale", s0, scale=0.7)
    assert rel(steps, ro) <= TOL[dtype] and rel(state, rs) <= TOL[dtype]
    assert rel(steps, o) <= (1e-12 if dtype == F64 else TOL[dtype])
    assert rel(state, final) <= (1e-12 if dtype == F64 else 1e-5)
    first, s1 = decay_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], 0.5, None)  # state None: zeros
    r1, rs1 = ref(q[:, :, :1], k[:, :, :1], v[:, :, :1], 0.5)
    assert rel(first, r1[:, :, 0]) <= TOL[dtype] and rel(s1, rs1) <= TOL[dtype]


def grads(fn, q, k, v, s0, seed: int = 5) -> list[torch.Tensor]:
    o, s = fn(q, k, v, s0)
    g = torch.Generator().manual_seed(seed)
    go, gs = torch.randn(o.shape, generator=g, dtype=F64), torch.randn(s.shape, generator=g, dtype=F64)
    loss = (o.to(F64) * go).sum() + (s.to(F64) * gs).sum()
    return list(torch.autograd.grad(loss, [t for t in (q, k, v, s0) if t is not None]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_gradients_match_float64_autograd_of_the_definition(dtype: torch.dtype) -> None:
    q, k, v, s0 = inputs(2, 3, 37, 5, 7, dtype, s0=True, seed=2, grad=True)
    got = grads(lambda *a: decay_attention(*a[:3], "retnet", initial_state=a[3], output_final_state=True),
                q, k, v, s0)
    q64, k64, v64, s64 = (t.detach().to(F64).requires_grad_(True) for t in (q, k, v, s0))
    want = grads(lambda *a: ref(*a[:3], "retnet", a[3]), q64, k64, v64, s64)
    tol = {F64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip("qkvs", got, want):
        assert a.dtype == dtype and rel(a, b) <= tol, name


def test_gradcheck_of_the_operator() -> None:
    q, k, v, s0 = inputs(1, 2, 5, 3, 2, F64, s0=True, seed=3, grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: decay_attention(*a[:3], "retnet", initial_state=a[3], output_final_state=True), (q, k, v, s0))
    q, k, v, _ = inputs(1, 2, 1, 3, 2, F64, seed=4, grad=True)
    s = torch.randn(1, 2, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: decay_attention_step(*a[:3], 0.9, a[3]), (q[:, :, 0], k[:, :, 0],
                                                                                        v[:, :, 0], s))


DIFFERENTIABLE = sorted(n for n, m in load_methods().methods.items()
                        if m.differentiable and "cpu" in m.devices and not m.family.startswith("peer"))


@pytest.mark.parametrize("route", DIFFERENTIABLE)
def test_every_differentiable_cpu_route_has_exact_gradients(route: str) -> None:
    """`differentiable=True` on the PyTorch routes is checked: dispatched to each through a table, float64."""
    d = Dispatcher([table(entry(route, dtype="float64", B=2, H=3, N=37, D=5, E=7, s0=True))],
                   user_cache=False, shipped=False)
    for decay, seed in (("retnet", 6), (1.0, 7), (1e-6, 8)):
        q, k, v, s0 = inputs(2, 3, 37, 5, 7, F64, s0=True, seed=seed, grad=True)
        fn = lambda *a: d.attention(*a[:3], decay, initial_state=a[3], output_final_state=True)  # noqa: E731
        assert d.explain(q, k, v, decay, initial_state=s0, output_final_state=True).route == route
        got = grads(fn, q, k, v, s0)
        want = grads(lambda *a: ref(*a[:3], decay, a[3]), q, k, v, s0)
        for name, a, b in zip("qkvs", got, want):
            assert rel(a, b) <= 1e-10, (route, decay, name)


# ---- dispatch ----------------------------------------------------------------------------------------------

def test_a_table_steers_the_choice_and_explain_reports_it(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry("planted_missing", "planted", "chunked"))
    planted = d.registry["planted"].fn
    q, k, v, _ = inputs(1, 2, 64, 8, 8)
    o = leetbench.decay_attention(q, k, v, 0.9, dispatcher=d)
    assert planted.calls == 1 and rel(o, ref(q, k, v, 0.9)[0]) <= 1e-5
    decay_attention(q, k, v, 0.9, dispatcher=d)
    setups = d.registry["planted"].fn.__globals__["SETUPS"]
    assert planted.calls == 2 and len(setups) == 1  # decided and set up once per call key
    why = explain(q, k, v, 0.9, dispatcher=d)
    assert why.route == "planted" and not why.fallback
    assert why.passed_over == (("planted_missing", "needs leetbench_no_such_module (not installed)"),)
    text = str(why)
    for part in ("route:  planted", "<dict> (explicit", "entry:  prefill float32 B=1 H=2 N=64 D=8 E=8",
                 "shape distance 0.00", "passed over: planted_missing: needs leetbench_no_such_module"):
        assert part in text, (part, text)


def test_the_nearest_measured_shape_decides(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry("planted", N=64), entry("planted_nograd", N=4096),
                           entry("planted_tf32", N=4096, D=64, E=64), entry("planted_nostate", N=64, s0=True))
    q, k, v, s0 = inputs(1, 2, 3000, 8, 8, s0=True)
    assert explain(q, k, v, 0.9, dispatcher=d).route == "planted_nograd"
    assert explain(q[:, :, :100], k[:, :, :100], v[:, :, :100], 0.9, dispatcher=d).route == "planted"
    q2, k2, v2, _ = inputs(2, 2, 3000, 48, 64)  # |log2| B·H 1 + N 0.45 + D 0.42 + E 0 from the D=E=64 entry
    why = explain(q2, k2, v2, 0.9, dispatcher=d, allow_tf32=True)
    assert why.route == "planted_tf32" and "shape distance 1.86" in str(why)
    assert explain(q[:, :, :64], k[:, :, :64], v[:, :, :64], 0.9, initial_state=s0, dispatcher=d).route == \
        "planted_nostate"  # the entry measured with an initial state


def test_precision_policy_state_out_and_gradients_filter_routes(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry(("planted_tf32", {"tf32": True}), "planted"),
                           entry(("planted_tf32", {"tf32": True}), "planted", dtype="bfloat16"),
                           entry(("planted_nostate", {"final_state": False}), "planted_nograd", "planted", N=512))
    q, k, v, _ = inputs(1, 2, 64, 8, 8)
    assert explain(q, k, v, 0.9, dispatcher=d, allow_tf32=False).route == "planted"
    assert explain(q, k, v, 0.9, dispatcher=d, allow_tf32=True).route == "planted_tf32"
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert explain(q, k, v, 0.9, dispatcher=d).route == "planted_tf32"  # follows torch's flag by default
        torch.backends.cuda.matmul.allow_tf32 = False
        why = explain(q, k, v, 0.9, dispatcher=d)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert why.route == "planted" and "TF32 is not allowed" in why.passed_over[0][1]
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    assert explain(qb, kb, vb, 0.9, dispatcher=d).route == "planted_tf32"  # TF32 is a float32 matter only
    q5, k5, v5, _ = inputs(1, 2, 512, 8, 8, grad=True)
    with torch.no_grad():
        assert explain(q5, k5, v5, 0.9, dispatcher=d).route == "planted_nostate"
        assert explain(q5, k5, v5, 0.9, dispatcher=d, output_final_state=True).route == "planted_nograd"
    why = explain(q5, k5, v5, 0.9, dispatcher=d, output_final_state=True)
    assert why.route == "planted"
    assert dict(why.passed_over) == {"planted_nostate": "returns no final state",
                                     "planted_nograd": "has no backward (not registered differentiable=True) and "
                                                       "an input requires grad"}
    o, s = decay_attention(q5, k5, v5, 0.9, dispatcher=d, output_final_state=True)
    (o.sum() + s.sum()).backward()
    assert q5.grad is not None and d.registry["planted"].fn.calls >= 1


def test_an_unavailable_route_falls_through_to_the_fallback(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry("ghost", "planted_missing"),
                           entry("ghost_step", mode="decode", dtype="float32"))
    q, k, v, s0 = inputs(1, 2, 64, 8, 8, s0=True)
    why = explain(q, k, v, "retnet", dispatcher=d)
    assert why.route == "chunked" and why.fallback
    assert [n for n, _ in why.passed_over] == ["ghost", "planted_missing"]
    assert why.passed_over[0][1].startswith("not registered here")
    assert "no route of the nearest entry can take this call" in str(why)
    o, s = decay_attention(q, k, v, "retnet", initial_state=s0, output_final_state=True, dispatcher=d)
    ro, rs = ref(q, k, v, "retnet", s0)
    assert rel(o, ro) <= 1e-5 and rel(s, rs) <= 1e-5
    step = explain(q[:, :, 0], k[:, :, 0], v[:, :, 0], "retnet", initial_state=s0, dispatcher=d)
    assert step.route == "recurrent" and step.fallback  # decode falls back to the recurrence
    qd = q.double()
    assert "no float64 prefill entries" in explain(qd, qd, v.double(), 0.5, dispatcher=d).reason
    assert "no dispatch table for cpu" in explain(q, k, v, 0.5, dispatcher=Dispatcher(shipped=False)).reason


def test_a_route_failing_on_its_first_call_is_passed_over(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry("planted_boom", "planted"))
    q, k, v, _ = inputs(1, 2, 64, 8, 8)
    with pytest.warns(RuntimeWarning, match="planted_boom failed on its first call"):
        o = decay_attention(q, k, v, 0.9, dispatcher=d)
    assert rel(o, ref(q, k, v, 0.9)[0]) <= 1e-5
    why = explain(q, k, v, 0.9, dispatcher=d)
    assert why.route == "planted" and why.passed_over == (("planted_boom", "failed here: RuntimeError: boom: a "
                                                                           "broken install"),)


def test_decode_steps_dispatch_from_decode_entries(plugins: Path) -> None:
    d = planted_dispatcher(plugins, entry("planted", mode="decode", B=8, N=1024))
    q, k, v, s0 = inputs(2, 2, 3, 8, 8, s0=True)
    why = explain(q[:, :, 0], k[:, :, 0], v[:, :, 0], 0.9, initial_state=s0, dispatcher=d)
    assert why.route == "planted" and "decode float32 B=8 H=2 D=8 E=8" in str(why)
    o, s = decay_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], 0.9, s0, dispatcher=d)
    assert d.registry["planted"].fn.calls == 1
    ro, rs = ref(q[:, :, :1], k[:, :, :1], v[:, :, :1], 0.9, s0)
    assert rel(o, ro[:, :, 0]) <= 1e-5 and rel(s, rs) <= 1e-5


def test_a_decode_step_goes_through_the_routes_step_entry(plugins: Path) -> None:
    """A route's `step=` takes [B,H,D] tensors: the dispatcher calls it (no views, `fn` untouched); one that
    fails on its first call is passed over like any broken route."""
    d = planted_dispatcher(plugins, entry("planted_step_boom", "planted_step", "planted", mode="decode", N=1))
    step, fn = d.registry["planted_step"].step, d.registry["planted_step"].fn
    q, k, v, s0 = inputs(2, 2, 5, 8, 6, s0=True)
    state, outs = s0, []
    for t in range(5):
        o_t, state = decay_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], 0.9, state, dispatcher=d)
        outs.append(o_t)
    assert step.calls == 5 and fn.calls == 0 and d.registry["planted_step_boom"].step.calls == 1
    ro, rs = ref(q, k, v, 0.9, s0)
    assert rel(torch.stack(outs, dim=2), ro) <= 1e-5 and rel(state, rs) <= 1e-5
    why = explain(q[:, :, 0], k[:, :, 0], v[:, :, 0], 0.9, initial_state=s0, dispatcher=d)
    assert why.route == "planted_step" and why.passed_over[0][0] == "planted_step_boom"


def test_a_step_entry_needs_the_decode_mode() -> None:
    with pytest.raises(RegistryError, match="step= must be a function, and the method must declare"):
        leetbench.register(name="prefill_only", step=lambda *a, **kw: None)


def test_bad_calls_are_refused_with_a_reason() -> None:
    q, k, v, s0 = inputs(1, 2, 8, 4, 3, s0=True)
    with pytest.raises(ValueError, match=r"q, k \[B,H,N,D\]"):
        decay_attention(q, k[:, :, :5], v, 0.9)
    with pytest.raises(TypeError, match="one dtype"):
        decay_attention(q, k.double(), v, 0.9)
    with pytest.raises(ProblemError, match="outside"):
        decay_attention(q, k, v, 1.5)
    with pytest.raises(ProblemError, match="unknown decay profile"):
        decay_attention(q, k, v, "retnett")
    with pytest.raises(TypeError, match="decay must be"):
        decay_attention(q, k, v, True)
    with pytest.raises(ValueError, match="tensor \\[H\\]"):
        decay_attention(q, k, v, torch.ones(3))
    with pytest.raises(ProblemError, match=r"\(0, 1\]"):
        decay_attention(q, k, v, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="no route computes its gradient"):
        decay_attention(q, k, v, torch.full((2,), 0.5, requires_grad=True))
    with pytest.raises(ValueError, match="initial_state must be"):
        decay_attention(q, k, v, 0.9, initial_state=s0[:, :, :2])
    with pytest.raises(ValueError, match="decay_attention_step"):
        decay_attention_step(q, k, v, 0.9, s0)


# ---- tables: user cache, shipped, tune -----------------------------------------------------------------------

def test_the_user_cache_takes_precedence_over_the_shipped_table(tmp_path: Path, plugins: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "cpu.json").write_text(json.dumps(table(entry("recursion"), entry("planted_nograd", N=65))))
    monkeypatch.setattr(dispatch_mod, "SHIPPED_DIR", shipped)
    user = tmp_path / "xdg" / "leetbench" / "dispatch-cpu.json"  # XDG_CACHE_HOME is tmp_path/xdg (fixture)
    user.parent.mkdir(parents=True)
    user.write_text(json.dumps(table(entry("quadratic"), entry("planted", N=65))))
    q, k, v, _ = inputs(1, 2, 64, 8, 8)
    why = explain(q, k, v, 0.9)  # the default dispatcher: builtin routes
    assert why.route == "quadratic" and "(user cache;" in str(why)
    d = Dispatcher(methods_dirs=[plugins])
    q65, k65, v65, _ = inputs(1, 2, 65, 8, 8)
    assert d.explain(q65, k65, v65, 0.9).route == "planted"
    user.unlink()
    attention.default_dispatcher().reload()
    d.reload()
    why = explain(q, k, v, 0.9)
    assert why.route == "recursion" and "(shipped;" in str(why)
    assert d.explain(q65, k65, v65, 0.9).route == "planted_nograd"
    assert rel(decay_attention(q, k, v, 0.9), ref(q, k, v, 0.9)[0]) <= 1e-5


def test_a_broken_user_table_is_ignored_with_a_warning(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "leetbench" / "dispatch-cpu.json"
    user.parent.mkdir(parents=True)
    user.write_text("{not json")
    q, k, v, _ = inputs(1, 2, 16, 4, 4)
    with pytest.warns(RuntimeWarning, match="is not usable and is ignored"):
        assert explain(q, k, v, 0.9).route == "chunked"


def test_the_shipped_h200_table_is_the_published_results_and_steers_an_h200() -> None:
    shipped = Table.load(dispatch_mod.SHIPPED_DIR / "NVIDIA_H200.json")
    remade = tables_from_results([ROOT / "results" / "gpu-NVIDIA-H200" / "results.csv"])
    assert [t.device for t in remade] == ["NVIDIA H200"]
    assert [e.as_json() for e in remade[0].entries] == [e.as_json() for e in shipped.entries]
    d = Dispatcher(user_cache=False)
    call = Call("prefill", torch.device("cuda:0"), torch.bfloat16, 1, 32, 3000, 128, 128, False, False, False,
                False, "multiscale")
    why = d.decide(call, device_name="NVIDIA H200")
    assert why.table and "shipped" in why.table and why.entry == "prefill bfloat16 B=1 H=32 N=4096 D=128 E=128"
    assert why.ranked[0][0] == "cupy_chunked"
    problem = call.problem()
    runnable = [n for n, _ in why.ranked if n in d.registry and d.registry[n].why_not(problem) is None]
    # the fastest route that can run on this machine, or the PyTorch fallback when none of the table's can
    assert why.route == (runnable[0] if runnable else "chunked")


def test_tune_merges_re_measured_routes_into_a_table() -> None:
    def ent(routes: dict[str, float], not_ok: dict[str, str] | None = None, N: int = 64) -> Entry:
        return Entry("prefill", "float32", False, 1, 2, N, 8, 8,
                     tuple(Route(m, t) for m, t in sorted(routes.items(), key=lambda x: x[1])), not_ok or {})
    old = Table("cpu", (ent({"a": 1.0, "b": 2.0, "c": 3.0}), ent({"a": 5.0}, N=128)))
    new = Table("cpu", (ent({"c": 0.5}, {"a": "inaccurate"}), ent({"b": 1.0}, N=256)))
    merged = {e.length: e for e in merge_tables(old, new).entries}
    assert [(r.method, r.time_ms) for r in merged[64].routes] == [("c", 0.5), ("b", 2.0)]
    assert dict(merged[64].not_ok) == {"a": "inaccurate"}
    assert [r.method for r in merged[128].routes] == ["a"] and [r.method for r in merged[256].routes] == ["b"]


@pytest.mark.slow  # the console script and its measuring worker: about 6 s of the CPU
def test_leetbench_tune_writes_the_users_table(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    r = run_cli("tune", "sweep=tiny", "methods=[quadratic,chunked]", "sweep.length=[32]", "plots=false",
                f"out={tmp_path / 'run'}", cwd=tmp_path, env={"XDG_CACHE_HOME": str(xdg)})
    assert r.returncode == 0, r.stderr
    path = xdg / "leetbench" / "dispatch-cpu.json"
    assert f"dispatch table for cpu: 1 entries, 2 routes → {path}" in r.stdout
    written = Table.load(path)
    (only,) = written.entries
    assert (only.mode, only.dtype, only.batch, only.heads, only.length, only.dim) == \
        ("prefill", "float32", 1, 2, 32, 16)
    q, k, v, _ = inputs(1, 2, 32, 16, 16)
    why = explain(q, k, v, "retnet")
    assert why.route == only.routes[0].method and "(user cache;" in str(why)


# ---- the README's model -----------------------------------------------------------------------------------

class Retention(nn.Module):
    """RetNet-style multi-scale retention: per-head decays λ_h = 1 − 2^(−5−h), group norm, swish gate."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [B, N, dim] → q, k, v [B, H, N, d]
        B, N, _ = x.shape
        return self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def _mix(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # o [B, H, N, d], x [B, N, dim]
        B, N, dim = x.shape
        o = F.group_norm(o.transpose(1, 2).reshape(B * N, dim), self.heads).view(B, N, dim)
        return self.out(o * F.silu(self.gate(x)))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and prefill: x [B, N, dim] → (y [B, N, dim], the state after the last token)."""
        q, k, v = self._heads(x)
        o, state = decay_attention(q, k, v, "retnet", initial_state=state, output_final_state=True)
        return self._mix(o, x), state

    def step(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation: one token x [B, dim] and the state → (y [B, dim], the new state)."""
        q, k, v = (t[:, :, 0] for t in self._heads(x[:, None]))
        o, state = decay_attention_step(q, k, v, "retnet", state)
        return self._mix(o[:, :, None], x[:, None])[:, 0], state


def test_the_readme_retention_layer_trains_and_decodes() -> None:
    torch.manual_seed(0)
    layer = Retention(dim=64, heads=4)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    x = torch.randn(2, 96, 64)
    target = torch.randn(2, 96, 64)
    losses = []
    for _ in range(3):  # training: gradients flow through decay_attention
        y, _ = layer(x)
        loss = F.mse_loss(y, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(p.grad is not None for p in layer.parameters())
    with torch.no_grad():  # generation: prefill the prompt, then one token at a time
        full, _ = layer(x)
        y, state = layer(x[:, :80])
        for t in range(80, 96):
            y_t, state = layer.step(x[:, t], state)
            assert rel(y_t, full[:, t]) <= 1e-5
