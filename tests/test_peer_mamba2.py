"""The Mamba-2 SSD adapter (methods/peer_mamba2.py), on the CPU.

mamba-ssm's kernel needs CUDA, so here a fake `mamba_ssm.ops.triton.ssd_combined` implements
`mamba_chunk_scan_combined` in Mamba's own convention (layout [batch, seqlen, heads, ·], per-step decay
exp(dt·A), input dt·x_tᵀB_t, state h = [headdim, dstate], output h_t C_t) by calling the float64 reference.
An adapter that converts correctly then matches the reference to float64 rounding; a swapped state layout or
swapped B/C roles are off by O(1). The tests call the method as the harness does: setup, prepare, call.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import fake_module
from torch.utils._python_dispatch import TorchDispatchMode

from leetbench import Problem, load_methods
from leetbench.problem import Inputs
from leetbench.reference import reference
from leetbench.registry import Method

F64 = torch.float64
NAMES = ("mamba2_ssd", "mamba2_ssd_c64", "mamba2_ssd_c256")
CHUNK = {"mamba2_ssd": 128, "mamba2_ssd_c64": 64, "mamba2_ssd_c256": 256}
PLUGIN = Path(__file__).resolve().parent.parent / "methods" / "peer_mamba2.py"


@pytest.fixture(scope="module")
def registry():
    return load_methods(files=[PLUGIN], entry_points=False)


pytestmark = pytest.mark.usefixtures("fresh_adapter_cache")  # every test starts and ends with an empty cache


# ---- the fake kernel, in Mamba's convention ----------------------------------------------------------------

class FakeSSD:
    """`mamba_chunk_scan_combined` by the float64 reference; `wrong` names a deliberate convention error."""

    def __init__(self, wrong: str = ""):
        self.wrong = wrong
        self.calls: list[dict] = []
        self.inside = False  # True while the kernel runs (its own torch ops are not the adapter's)

    def __call__(self, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                 seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                 return_final_states=False, return_varlen_states=False):
        self.inside = True
        try:
            self.calls.append(dict(x=x, dt=dt, A=A, B=B, C=C, chunk_size=chunk_size, s0=initial_states))
            return self._run(x, dt, A, B, C, chunk_size, initial_states, return_final_states,
                             (D, z, dt_bias, seq_idx, cu_seqlens, dt_softplus, dt_limit, return_varlen_states))
        finally:
            self.inside = False

    def _run(self, x, dt, A, B, C, chunk_size, s0, return_final_states, unused):
        b, l, h, p = x.shape
        g, n = B.shape[2:]
        assert unused == (None, None, None, None, None, False, (0.0, math.inf), False)
        assert chunk_size in (64, 128, 256)
        assert B.shape == C.shape == (b, l, g, n) and h % g == 0 and dt.shape == (b, l, h) and A.shape == (h,)
        assert A.dtype == torch.float32 and (A <= 0).all(), "A = log λ ≤ 0, float32"
        assert dt.dtype == torch.float32
        for t in (x, B, C, dt):
            assert t.is_contiguous(), "anything else is copied inside the timed call"
        step = dt[:1, :1]
        assert torch.equal(dt, step.expand_as(dt)), "the float64 reference takes one decay per head"
        lam = torch.exp(step.reshape(h).to(F64) * A.to(F64))  # exp(dt·A): the per-step decay
        per_head = lambda t: t.to(F64).repeat_interleave(h // g, dim=2).transpose(1, 2)  # noqa: E731
        keys, queries = (per_head(C), per_head(B)) if self.wrong == "swap_BC" else (per_head(B), per_head(C))
        values = (x.to(F64) * dt.to(F64)[..., None]).transpose(1, 2)  # dt·x
        state_in = None
        if s0 is not None:
            assert s0.shape == (b, h, p, n) and s0.is_contiguous()
            state_in = s0 if self.wrong == "state_layout" else s0.transpose(-1, -2)  # Mamba's h = Sᵀ
        o, state = reference(Inputs(queries, keys, values, lam, 1.0, state_in))
        out = o.transpose(1, 2).to(x.dtype).contiguous()  # as the kernel's torch.empty(b, l, h, p)
        if not return_final_states:
            return out
        final = state if self.wrong == "state_layout" else state.transpose(-1, -2)
        # Mamba returns the final state in float32; float64 here keeps the check at float64 rounding.
        return out, final.contiguous().to(F64 if x.dtype == F64 else torch.float32)


@pytest.fixture
def fake(monkeypatch) -> FakeSSD:
    return _install(monkeypatch, FakeSSD())


def _install(monkeypatch, kernel: FakeSSD) -> FakeSSD:
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"):
        fake_module(monkeypatch, name)
    fake_module(monkeypatch, "mamba_ssm.ops.triton.ssd_combined", mamba_chunk_scan_combined=kernel)
    return kernel


# ---- running a method as the harness does ------------------------------------------------------------------

def _exact_log_decays(heads: int) -> torch.Tensor:
    """λ_h = exp(−2^-(4+2h)): log λ is exact in float32, so A loses nothing."""
    return torch.exp(-torch.pow(2.0, -4.0 - 2.0 * torch.arange(heads, dtype=F64)))


def _inputs(p: Problem, decay: torch.Tensor) -> Inputs:
    gen = torch.Generator().manual_seed(p.seed)
    B, H, N, D, E = p.batch, p.heads, p.length, p.dim, p.E
    q, k = (torch.randn(B, H, N, D, generator=gen, dtype=F64).to(p.torch_dtype) for _ in range(2))
    v = torch.randn(B, H, N, E, generator=gen, dtype=F64).to(p.torch_dtype)
    state_dtype = F64 if p.dtype == "float64" else torch.float32
    s0 = (torch.randn(B, H, D, E, generator=gen, dtype=F64) * D ** -0.5).to(state_dtype) if p.initial_state else None
    return Inputs(q, k, v, decay, p.scale, s0)


def _call(method: Method, x: Inputs, prepare: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if prepare:
        method.prepare(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state)
    return method.fn(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state)


def _worst_head(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max over (batch, head) of ‖out − ref‖ / ‖ref‖ (the harness judges the worst head)."""
    d = (out.to(F64) - ref).flatten(2).norm(dim=-1)
    return (d / ref.flatten(2).norm(dim=-1)).max().item()


def _errors(method: Method, p: Problem, decay: torch.Tensor | None = None) -> tuple[float, float]:
    x = _inputs(p, _exact_log_decays(p.heads) if decay is None else decay)
    method.setup(p)
    o, state = _call(method, x)
    assert o.shape == (p.batch, p.heads, p.length, p.E) and o.dtype == x.v.dtype
    assert state.shape == (p.batch, p.heads, p.dim, p.E)
    ref_o, ref_s = reference(Inputs(x.q.to(F64), x.k.to(F64), x.v.to(F64), x.decay, x.scale,
                                    None if x.initial_state is None else x.initial_state.to(F64)))
    return _worst_head(o, ref_o), _worst_head(state, ref_s)


# ---- (1) declarations, and skipped without the package --------------------------------------------------

def test_registered_and_skipped_without_the_package(registry, monkeypatch):
    assert not registry.failures, registry.failures
    for module in ("mamba_ssm", "triton", "einops"):
        monkeypatch.setitem(sys.modules, module, None)  # find_spec → None: "not installed" on every machine
    problem = Problem(batch=1, heads=4, length=64, dim=64, dtype="bfloat16", device="cuda")
    for name in NAMES:
        method = registry[name]
        assert method.family == "peer:mamba2" and method.summary and f"C={CHUNK[name]}" in method.complexity
        assert method.devices == ("cuda",) and method.dtypes == ("float32", "float16", "bfloat16")
        assert method.tf32 and method.differentiable and method.modes == ("prefill",)
        assert method.setup is not None and method.prepare is not None
        reason = method.why_not(problem)
        assert reason is not None and reason.startswith("needs ") and reason.endswith("(not installed)")
        assert "mamba_ssm" in reason and "triton" in reason


def test_runs_where_the_package_is(registry, fake, monkeypatch):
    for name in ("triton", "einops"):  # only here: torch probes a `triton` module when it has one
        fake_module(monkeypatch, name)
    problem = Problem(batch=1, heads=32, length=65536, dim=128, dtype="bfloat16", device="cuda",
                      initial_state=True)
    assert all(registry[name].why_not(problem) is None for name in NAMES)


def test_refuses_what_32_bit_offsets_cannot_address(registry):
    # B=8, N=65536, H=32, D=E=128: the C·Bᵀ scores of chunks of 256 are 8·256·32·256² = 2^32 elements.
    big = Problem(batch=8, heads=32, length=65536, dim=128, dtype="bfloat16", device="cuda")
    reason = registry["mamba2_ssd_c256"].supports(big)
    assert "C·Bᵀ scores" in reason and "4294967296" in reason and "2^31" in reason and "#1015" in reason
    assert "chunk states" in registry["mamba2_ssd_c64"].supports(big)  # 8·1024·32·128² = 2^32
    assert registry["mamba2_ssd"].supports(big) is None  # chunks of 128: every buffer 2^31, offsets < 2^31
    assert registry["mamba2_ssd_c256"].supports(Problem(batch=4, heads=32, length=65536, dim=128)) is None


# ---- (2) conversions, against the fake in Mamba's convention ------------------------------------------

CASES = {  # awkward shapes: D ≠ E both ways, prime N, one head, several batches
    "D>E": dict(batch=2, heads=3, length=37, dim=8, dim_v=5),
    "D<E, prime N": dict(batch=1, heads=2, length=131, dim=4, dim_v=12),
    "one head": dict(batch=3, heads=1, length=29, dim=6, dim_v=6),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("initial_state", [False, True])
def test_conversion(registry, fake, name, case, initial_state):
    problem = Problem(**CASES[case], dtype="float64", initial_state=initial_state)
    out_err, state_err = _errors(registry[name], problem)
    assert out_err < 1e-13 and state_err < 1e-13
    assert {call["chunk_size"] for call in fake.calls} == {CHUNK[name]}


@pytest.mark.parametrize("decay", [1.0, math.exp(-16.0)])  # log λ exact in float32; λ ≈ 1.1e-7
def test_plain_causal_and_tiny_decay(registry, fake, decay):
    problem = Problem(batch=2, heads=3, length=41, dim=8, dim_v=3, dtype="float64", initial_state=True)
    out_err, state_err = _errors(registry["mamba2_ssd"], problem, torch.full((3,), decay, dtype=F64))
    assert out_err < 1e-13 and state_err < 1e-13


@pytest.mark.parametrize("profile", ["retnet", "multiscale", "alibi"])
def test_decay_profiles(registry, fake, profile):
    # A = log λ rounded to float32 (as the kernel takes it): a relative error of 2^-24 in log λ
    problem = Problem(batch=1, heads=4, length=300, dim=8, dim_v=4, decay=profile, dtype="float64",
                      initial_state=True)
    out_err, state_err = _errors(registry["mamba2_ssd_c64"], problem, problem.decay_values())
    assert out_err < 1e-7 and state_err < 1e-7


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtypes_and_views(registry, fake, dtype):
    problem = Problem(batch=2, heads=2, length=50, dim=8, dim_v=4, dtype=dtype, initial_state=True)
    x = _inputs(problem, _exact_log_decays(2))
    o, state = _call(registry["mamba2_ssd"], x)
    assert o.dtype == x.v.dtype and state.dtype == torch.float32
    call = fake.calls[-1]
    assert o.data_ptr() != x.v.data_ptr() and not o.is_contiguous() and o.transpose(1, 2).is_contiguous()
    assert call["x"].dtype == call["B"].dtype == call["C"].dtype == x.v.dtype
    assert call["s0"].dtype == torch.float32 and call["s0"].shape == (2, 2, 4, 8)
    assert torch.equal(call["C"], (x.q * problem.scale).transpose(1, 2)), "c·q rounded once to q's dtype"


@pytest.mark.parametrize("wrong", ["state_layout", "swap_BC"])
def test_a_wrong_convention_is_caught(registry, monkeypatch, wrong):
    _install(monkeypatch, FakeSSD(wrong))
    problem = Problem(batch=2, heads=3, length=40, dim=6, dtype="float64", initial_state=True)  # D = E
    out_err, state_err = _errors(registry["mamba2_ssd"], problem)
    assert max(out_err, state_err) > 1e-2


# ---- (3) prepare: the timed call only reads the cache -----------------------------------------------------

class AdapterOps(TorchDispatchMode):
    """The torch ops run outside the fake kernel (the adapter's own work)."""

    def __init__(self, kernel: FakeSSD):
        super().__init__()
        self.kernel, self.ops = kernel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.kernel.inside:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_prepare_leaves_only_views_to_the_call_and_follows_in_place_sign_flips(registry, fake):
    method = registry["mamba2_ssd"]
    problem = Problem(batch=2, heads=3, length=33, dim=8, dim_v=5, dtype="float64", initial_state=True)
    x = _inputs(problem, _exact_log_decays(3))
    ref_o, ref_s = reference(x)
    # the harness's sign walk: negate v and S0, then q, then v and S0 again, each in place
    flips = [lambda: None, lambda: (x.v.neg_(), x.initial_state.neg_()), lambda: x.q.neg_(),
             lambda: (x.v.neg_(), x.initial_state.neg_())]
    signs = [(1, 1), (-1, -1), (1, -1), (-1, 1)]  # (output, final state)
    for flip, (o_sign, s_sign) in zip(flips, signs):
        flip()
        method.prepare(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state)
        with AdapterOps(fake) as seen:
            o, state = method.fn(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=x.initial_state)
        assert set(seen.ops) <= {"transpose"}, seen.ops  # no copy, scale or cast in the timed call
        assert _worst_head(o, o_sign * ref_o) < 1e-13 and _worst_head(state, s_sign * ref_s) < 1e-13


def test_without_prepare_the_call_converts_itself(registry, fake):
    method = registry["mamba2_ssd"]
    problem = Problem(batch=1, heads=2, length=20, dim=4, dim_v=6, dtype="float64", initial_state=True)
    x = _inputs(problem, _exact_log_decays(2))
    ref_o, _ = reference(x)
    _call(method, x)
    x.v.neg_()
    x.initial_state.neg_()
    o, _ = _call(method, x, prepare=False)
    assert _worst_head(o, -ref_o) < 1e-13


# ---- (4) importing the kernel without mamba_ssm/__init__.py ------------------------------------------------

@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """A mamba_ssm on disk whose __init__ fails as a build without CUDA extensions does."""
    kernel_dir = tmp_path / "mamba_ssm" / "ops" / "triton"
    kernel_dir.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("import selective_scan_cuda_not_built\n")
    for init in (kernel_dir.parent / "__init__.py", kernel_dir / "__init__.py"):
        init.write_text("")
    (kernel_dir / "ssd_combined.py").write_text("def mamba_chunk_scan_combined(*args, **kwargs):\n    pass\n")
    before = {m for m in sys.modules if m.split(".")[0] == "mamba_ssm"}
    for name in before:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm"]:
        del sys.modules[name]


def test_kernel_module_imports_past_a_failing_package_init(registry, broken_package):
    ssd_module = registry["mamba2_ssd"].fn.__globals__["ssd_module"]
    with pytest.raises(ImportError):
        __import__("mamba_ssm")
    module = ssd_module()
    assert module.__file__ == str(broken_package / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py")
    assert list(sys.modules["mamba_ssm"].__path__) == [str(broken_package / "mamba_ssm")]
    assert ssd_module() is module


# ---- (5) through the harness's own check ------------------------------------------------------------------

def test_harness_verify(registry, fake):
    from leetbench.execute import verify

    # one decay with log λ = −1/16 exact in float32; the harness draws the inputs and calls prepare itself
    problem = Problem(batch=2, heads=3, length=37, dim=8, dim_v=5, decay=math.exp(-1 / 16), dtype="float64",
                      initial_state=True)
    outcome = verify(registry["mamba2_ssd"], problem, {"float64": 1e-12})
    assert outcome.status == "ok", outcome
    assert outcome.rel_err < 1e-13 and outcome.state_rel_err < 1e-13
