"""The peer adapters (methods/peer_*.py) and their conversion cache (leetbench/adapters.py), on the CPU.

The peers themselves need CUDA, so here they are replaced by fake modules that implement the operator in
each peer's own convention (layout, decay as log λ, rate −log λ or λ itself, no scale) by calling the float64
reference. An adapter that converts correctly then matches the reference to float64 rounding; one that
swaps a layout, a sign of the decay, the heads or the scale is off by O(1).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fake_module

from leetbench import Problem, extension_builds, load_methods
from leetbench.adapters import cached, fingerprint, prescaled, time_major
from leetbench.execute import verify
from leetbench.inputs import make_inputs
from leetbench.problem import Inputs
from leetbench.reference import reference

F64 = torch.float64

FLA = ("fla_chunk", "fla_fused_chunk", "fla_fused_recurrent", "fla_parallel")
LIGHTNING = ("lightning_attn2",)
SEED = ("seed_causal_dot_product", "seed_block_based", "seed_recursion", "seed_fleet_attention",
        "seed_fleet_attention_triton", "seed_lightning_attn2", "seed_lightning_attn2_torch")
PEER_MODULES = ("fla", "lightning_attn", "leetDecoding", "triton", "pycuda")


@pytest.fixture(scope="module")
def registry():
    return load_methods(entry_points=False)


pytestmark = pytest.mark.usefixtures("fresh_adapter_cache")  # every test starts and ends with an empty cache


def _exact_log_decays(heads: int) -> torch.Tensor:
    """λ_h = exp(−2^-(5+h)): log λ is exact in float32, so float32 g_gamma or rate loses nothing."""
    g = -torch.pow(2.0, -5.0 - torch.arange(heads, dtype=F64))
    return torch.exp(g)


def _check(method, problem: Problem, tol: float = 1e-13):
    """Run `method` on `problem`'s inputs with exact-log decays; its errors against the float64 reference."""
    inputs = make_inputs(problem)
    inputs.decay = _exact_log_decays(problem.heads)
    outcome = verify(method, problem, {"float64": tol, "float32": 1e-5}, inputs=inputs)
    assert outcome.status == "ok", outcome
    assert outcome.rel_err < tol
    return outcome


def _reference(q, k, v, lam, initial_state=None, scale=1.0):
    """Outputs [B, H, N, E] and final state of the operator on [B, H, N, ·] tensors, in float64."""
    return reference(Inputs(q.to(F64), k.to(F64), v.to(F64), lam.to(F64), scale,
                            None if initial_state is None else initial_state.to(F64)))


# ---- (1) without the packages: registered, and skipped with the reason ---------------------------------

@pytest.mark.parametrize("names, needs", [(FLA, "fla"), (LIGHTNING, "lightning_attn"), (SEED, "leetDecoding")])
def test_peers_are_registered_and_skipped_when_missing(registry, monkeypatch, names, needs):
    for module in PEER_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # find_spec → None: "not installed" on every machine
    problem = Problem(batch=1, heads=4, length=64, dim=64, dtype="float32", device="cuda")
    for name in names:
        assert name in registry, f"{name} not registered; load failures: {registry.failures}"
        method = registry[name]
        assert method.family.startswith("peer:")
        assert method.summary and method.complexity
        reason = method.why_not(problem)
        assert reason is not None and reason.startswith("needs ") and reason.endswith("(not installed)")
        assert needs in reason


def test_peer_files_load_without_their_packages(registry):
    assert not [f for f in registry.failures if "peer_" in f.source], registry.failures


def test_capabilities(registry):
    s0 = Problem(batch=1, heads=4, length=64, dim=64, dtype="float32", device="cuda", initial_state=True)
    dec = Problem(batch=1, heads=4, length=64, dim=64, dtype="float32", device="cuda", mode="decode", steps=2)
    for name in LIGHTNING + SEED + ("fla_parallel",):
        assert "initial state" in registry[name].supports(s0)
    for name in ("fla_chunk", "fla_fused_chunk", "fla_fused_recurrent"):
        assert registry[name].supports is None
    assert registry["fla_fused_recurrent"].modes == ("prefill", "decode")
    assert "decode" not in registry["fla_chunk"].modes
    assert dec.mode not in registry["lightning_attn2"].modes
    assert {n for n in FLA + LIGHTNING + SEED if registry[n].tf32} == {
        "fla_chunk", "fla_fused_chunk", "fla_parallel", "lightning_attn2", "seed_lightning_attn2"}
    assert registry["seed_causal_dot_product"].dtypes == ("float32", "float16")
    lightning = registry["lightning_attn2"].supports
    assert lightning(Problem(batch=1, heads=2, length=8, dim=96, device="cuda")).startswith("D must")
    assert lightning(Problem(batch=1, heads=2, length=8, dim=64, dim_v=40, device="cuda")).startswith("E must")
    assert lightning(Problem(batch=1, heads=2, length=8, dim=128, dim_v=96, device="cuda")) is None
    # 32-bit offsets: ((B·H − 1)·N + 1)·max(D, E) ≤ 2^31 ran on an H200 (B=8, H=32, N=65536, D=E=128), the
    # 2^32-element v of B=8, H=32, N=65536, D=64, E=256 ended in an illegal address
    assert lightning(Problem(batch=8, heads=32, length=65536, dim=128, device="cuda")) is None
    why = lightning(Problem(batch=8, heads=32, length=65536, dim=64, dim_v=256, device="cuda"))
    assert why.startswith("its 32-bit offsets overflow") and "E=256" in why
    assert lightning(Problem(batch=8, heads=32, length=32768, dim=64, dim_v=256, device="cuda")) is None  # wide
    fleet = registry["seed_fleet_attention_triton"].supports
    assert fleet(Problem(batch=1, heads=2, length=8, dim=16, device="cuda")).startswith("E must")


# ---- (2) conversions, against fakes in each peer's own convention -------------------------------------

def _fla_gate(g_gamma, heads):
    assert g_gamma.dtype == torch.float32 and g_gamma.shape == (heads,)
    assert (g_gamma <= 0).all(), "g_gamma is log λ ≤ 0"
    return torch.exp(g_gamma.to(F64))


def _fla_stateful(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                  **kwargs):
    """fla's simple-GLA contract: [B, T, H, ·] inputs, g_gamma = log λ [H], scale, state [N, H, K, V]."""
    B, T, H, K = q.shape
    assert g is None and not kwargs
    for x in (q, k, v):
        assert x.is_contiguous() and x.shape[:3] == (B, T, H), "fla wants contiguous [B, T, H, ·]"
    lam = _fla_gate(g_gamma, H)
    o, state = _reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lam, initial_state, scale)
    return o.transpose(1, 2).to(q.dtype), (state if output_final_state else None)


def _fla_parallel(q, k, v, g=None, scale=None, output_attentions=False, **kwargs):
    B, T, H, K = q.shape
    assert g.shape == (B, T, H) and g.dtype == torch.float32 and not kwargs
    assert torch.equal(g, g[:1, :1].expand_as(g)), "a constant gate per head"
    lam = _fla_gate(g[0, 0].contiguous(), H)
    o, _ = _reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lam, None, scale)
    return o.transpose(1, 2).to(q.dtype), None


@pytest.fixture
def fake_fla(monkeypatch):
    fake_module(monkeypatch, "fla")
    fake_module(monkeypatch, "fla.ops")
    return fake_module(monkeypatch, "fla.ops.simple_gla", chunk_simple_gla=_fla_stateful,
                    fused_chunk_simple_gla=_fla_stateful, fused_recurrent_simple_gla=_fla_stateful,
                    parallel_simple_gla=_fla_parallel)


@pytest.mark.parametrize("name", FLA)
@pytest.mark.parametrize("initial_state", [False, True])
def test_fla_conversion(registry, fake_fla, name, initial_state):
    method = registry[name]
    problem = Problem(batch=2, heads=3, length=37, dim=8, dim_v=5, dtype="float64", initial_state=initial_state)
    if method.supports is not None and method.supports(problem):
        pytest.skip(method.supports(problem))
    out = _check(method, problem)
    if name != "fla_parallel":
        assert out.state_rel_err < 1e-13


@pytest.mark.parametrize("name", ["fla_chunk", "fla_parallel"])
def test_fla_conversions_happen_in_prepare_not_in_the_timed_call(registry, fake_fla, monkeypatch, name):
    """The harness flips input signs in place between calls; `prepare=` re-converts, untimed."""
    from leetbench import adapters
    from leetbench.inputs import Signs

    method = registry[name]
    problem = Problem(batch=1, heads=2, length=40, dim=8, dtype="float64")
    x = make_inputs(problem)
    x.decay = _exact_log_decays(problem.heads)
    signs = Signs(x)
    expected, _ = _reference(x.q, x.k, x.v, x.decay, None, x.scale)
    conversions = []
    real = adapters._time_major
    monkeypatch.setattr(adapters, "_time_major", lambda t: conversions.append(1) or real(t))
    for _ in range(3):
        signs.advance()
        method.prepare(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=None)
        before = len(conversions)
        o = method.fn(x.q, x.k, x.v, x.decay, scale=x.scale, initial_state=None)
        assert len(conversions) == before, "converted inside the call"
        o = o[0] if isinstance(o, tuple) else o
        assert torch.allclose(o, signs.output_sign * expected, rtol=1e-12, atol=1e-12)
    assert len(conversions) == 3 + 2  # the first prepare converts q, k, v; each later flip re-converts one


def test_fla_decode(registry, fake_fla):
    problem = Problem(batch=2, heads=3, length=20, dim=8, dim_v=6, dtype="float64", mode="decode", steps=4)
    out = _check(registry["fla_fused_recurrent"], problem)
    assert out.state_rel_err < 1e-13


def test_fla_half_precision_keeps_dtype(registry, fake_fla):
    problem = Problem(batch=1, heads=2, length=33, dim=16, dtype="bfloat16", initial_state=True)
    out = verify(registry["fla_chunk"], problem)
    assert out.status == "ok" and out.rel_err < 1e-2


def _lightning_attn2(q, k, v, s):
    """lightning-attn's contract: [B, H, N, ·], the rate s = −log λ as [H, 1, 1], no scale, no state."""
    H = q.shape[1]
    assert s.dtype == torch.float32 and s.shape == (H, 1, 1) and (s >= 0).all()
    o, _ = _reference(q, k, v, torch.exp(-s.view(-1).to(F64)))
    return o.to(q.dtype)


def test_lightning_conversion(registry, monkeypatch):
    fake_module(monkeypatch, "lightning_attn")
    fake_module(monkeypatch, "lightning_attn.ops", lightning_attn2=_lightning_attn2)
    _check(registry["lightning_attn2"], Problem(batch=2, heads=3, length=150, dim=16, dim_v=32, dtype="float64"))


def _seed_fake(takes: str, decay_dtype: str, returns_float32: bool = False):
    """A seed route: q, k, v [B, H, N, ·], decay as λ ('lambda') or rate γ = −log λ ('rate'), no scale.

    `decay_dtype` is 'input' (the route computes in the input dtype) or 'float32'.
    """

    def route(q, k, v, gamma):
        want = q.dtype if decay_dtype == "input" else torch.float32
        assert gamma.dtype == want and gamma.shape == (q.shape[1],), (gamma.dtype, gamma.shape)
        g = gamma.to(F64)
        lam = g if takes == "lambda" else torch.exp(-g)
        assert ((lam > 0) & (lam <= 1)).all()
        o, _ = _reference(q, k, v, lam)
        return o.to(torch.float32 if returns_float32 else q.dtype)

    return route


SEED_FAKES = {
    "causal_dot_product": ("causal_dot_product", _seed_fake("lambda", "input", returns_float32=True)),
    "BlockBased": ("blockBased", _seed_fake("rate", "input")),
    "Recursion": ("recursion", _seed_fake("rate", "input")),
    "FleetAttention": ("FleetAttention", _seed_fake("lambda", "input")),
    "FleetAttention_triton": ("FleetAttention_triton", _seed_fake("lambda", "float32")),
    "lightningAttention2": ("lightning_attn2", _seed_fake("rate", "input")),
    "lightningAttention2_torch": ("lightningAttention2_torch", _seed_fake("rate", "float32")),
}


@pytest.fixture
def fake_seed(monkeypatch):
    fake_module(monkeypatch, "leetDecoding")
    fake_module(monkeypatch, "leetDecoding.methods")
    for module, (attr, fn) in SEED_FAKES.items():
        fake_module(monkeypatch, f"leetDecoding.methods.{module}", **{attr: fn})


# Routes whose own convention rounds to float32 (λ read as float32, or a float32 result) at float64 inputs.
FLOAT32_BOUND = {"seed_causal_dot_product", "seed_fleet_attention_triton"}


@pytest.mark.parametrize("name", SEED)
def test_seed_conversion(registry, fake_seed, name):
    method = registry[name]
    problem = Problem(batch=2, heads=3, length=45, dim=8, dim_v=32, dtype="float64")
    method.setup(problem)
    _check(method, problem, tol=1e-6 if name in FLOAT32_BOUND else 1e-13)


@pytest.mark.parametrize("name", ["seed_causal_dot_product", "seed_fleet_attention_triton"])
def test_seed_conversion_float32(registry, fake_seed, name):
    # causal_dot_product returns float32 whatever the input; the adapter gives back v's dtype
    _check(registry[name], Problem(batch=1, heads=2, length=30, dim=16, dim_v=32, dtype="float32"), tol=1e-5)


@pytest.mark.parametrize("route", ["seed_causal_dot_product", "seed_block_based", "seed_recursion"])
def test_seed_cuda_extensions_build_side_by_side_and_a_failed_build_names_its_extension(
        registry, tmp_path, monkeypatch, route):
    # A stand-in seed package on disk whose causal_dot_product sources do not compile (and, on the CPU, no
    # nvcc): setup starts the three builds and reports the failure by extension name, before any import.
    # BlockBased and Recursion import causal_dot_product: their setup must build it side by side too (one by
    # one, at import, the builds took 2.5 minutes on an H200 box and stalled a paper sweep).
    _seed_package_that_does_not_compile(tmp_path)
    for name in [m for m in sys.modules if m.startswith("leetDecoding")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    with pytest.raises(RuntimeError, match="building the seed's CUDA extension causal_product_cuda_with_decay"):
        registry[route].setup(Problem(batch=2, heads=2, length=16, dim=8, dtype="float32"))


def _seed_package_that_does_not_compile(root: Path) -> None:
    methods = root / "leetDecoding" / "methods"
    methods.mkdir(parents=True)
    for init in (methods.parent / "__init__.py", methods / "__init__.py"):
        init.write_text("")
    for module in ("causal_dot_product", "BlockBased", "Recursion"):
        (methods / f"{module}.py").write_text("raise AssertionError('imported before its build')\n")
    for source in ("causal_product_cuda_with_decay_fp32.cu", "causal_product_cuda_with_decay_fp16.cu",
                   "causal_product_cuda.cu"):
        (methods / source).write_text("this is not CUDA\n")


def test_seed_setup_clears_the_lock_of_a_killed_build(registry, tmp_path, monkeypatch):
    # A build killed midway (a worker killed at its setup timeout, an interrupted sweep) leaves torch's lock
    # file in the extension's folder, and every later load() of it polls forever: the next run's setup must
    # clear it and reach the build (here: its failure) instead of waiting out setup_timeout_s.
    _seed_package_that_does_not_compile(tmp_path)
    for name in [m for m in sys.modules if m.startswith("leetDecoding")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    extensions = tmp_path / "extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    for name in ("causal_product_cuda_with_decay_fp32_cuda", "causal_product_cuda_with_decay_fp16_cuda",
                 "causal_dot_product_cuda"):
        (extensions / name).mkdir(parents=True)
        (extensions / name / "lock").write_text("")
    (extensions / "someone_elses_extension").mkdir()
    (extensions / "someone_elses_extension" / "lock").write_text("")

    def stuck(signum, frame):
        raise TimeoutError("setup waited on a dead build's lock")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(120)  # without the clearing the builds would wait forever: fail instead of hanging CI
    try:
        with pytest.raises(RuntimeError, match="building the seed's CUDA extension"):
            registry["seed_block_based"].setup(Problem(batch=2, heads=2, length=16, dim=8, dtype="float32"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (extensions / "someone_elses_extension" / "lock").exists()  # only the seed's extensions are touched


def test_exclusive_builds_waits_for_a_live_builder_and_clears_only_stale_locks(tmp_path):
    # One torch version folder down (the default cache layout) and directly under $TORCH_EXTENSIONS_DIR.
    deep = tmp_path / "py312_cu130" / "ext_a" / "lock"
    flat = tmp_path / "ext_b" / "lock"
    for lock in (deep, flat):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    released = tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; from pathlib import Path\n"
        f"h = open({str(tmp_path / extension_builds.LOCK_NAME)!r}, 'a'); fcntl.flock(h, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(1.0)\n"
        f"Path({str(released)!r}).write_text('done'); h.close()\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with extension_builds.exclusive_builds(["ext_a", "ext_b", "ext_c"], root=tmp_path) as cleared:
            assert released.exists()  # entered only once the live builder let go
            assert sorted(cleared) == sorted([deep, flat])
            assert not deep.exists() and not flat.exists()
    finally:
        holder.wait(timeout=30)
    # a builder that dies holding it does not block the next one (the OS drops a dead process's flock)
    killed = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, time\n"
        f"h = open({str(tmp_path / extension_builds.LOCK_NAME)!r}, 'a'); fcntl.flock(h, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with extension_builds.exclusive_builds(["ext_a"], root=tmp_path) as cleared:
        assert cleared == []


def test_seed_lightning_torch_runs_for_real_on_cpu_shapes(registry, fake_seed):
    """The torch routes are CPU-capable; the fakes stand in for them here (the real ones need the package)."""
    assert "cpu" in registry["seed_lightning_attn2_torch"].devices
    assert "cpu" in registry["seed_fleet_attention"].devices
    assert registry["seed_causal_dot_product"].devices == ("cuda",)


# ---- (3) the conversion cache ------------------------------------------------------------------------

def test_cache_reuses_until_an_inplace_write():
    calls = []

    def convert(t):
        calls.append(1)
        return t * 2

    x = torch.randn(3, 4)
    a = cached(x, convert)
    assert cached(x, convert) is a and len(calls) == 1
    x.add_(1.0)  # bumps x._version
    b = cached(x, convert)
    assert b is not a and len(calls) == 2
    assert torch.equal(b, x * 2)
    x[0, 0] = 5.0  # an indexed write bumps it too
    assert cached(x, convert) is not b and len(calls) == 3


def test_cache_keys_on_the_tensor_and_the_tag():
    x = torch.randn(2, 3, 5, 4)
    y = x.clone()  # same values, another tensor
    q1 = prescaled(x, 0.5)
    assert prescaled(x, 0.5) is q1
    assert prescaled(y, 0.5) is not q1
    assert prescaled(x, 0.25) is not q1
    assert prescaled(x, 1.0) is x
    t = time_major(x)
    assert t.shape == (2, 5, 3, 4) and t.is_contiguous() and torch.equal(t, x.transpose(1, 2))
    assert time_major(x) is t


def test_cache_holds_no_tensor_alive():
    from leetbench import adapters

    x = torch.randn(2, 3, 5, 4)
    time_major(x)
    assert len(adapters._entries) == 1
    del x
    assert len(adapters._entries) == 0
    # a conversion that is only a view of its source is not kept (it would keep the source alive)
    one_head = torch.randn(2, 1, 5, 4)
    assert time_major(one_head).data_ptr() == one_head.data_ptr()
    assert len(adapters._entries) == 0 or not any(adapters._entries.values())


def test_cache_converts_inference_tensors_every_time():
    with torch.inference_mode():
        x = torch.randn(3, 4)
    assert fingerprint(x) is None
    assert cached(x, lambda t: t * 2) is not cached(x, lambda t: t * 2)


def _fake_triton(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """triton.runtime's autotuner classes, as far as `forget_autotuning` sees them: tuners wrap through .fn."""

    class KernelInterface:
        def __init__(self, fn=None):
            self.fn = fn

    class Autotuner(KernelInterface):
        """Tunes once per key (head size only, as fla's keys leave N out) and records the length it tuned at."""

        def __init__(self, fn=None):
            super().__init__(fn)
            self.cache, self.cache_results, self.tuned_at = {}, True, []

        def run(self, q):
            key = q.shape[-1]
            if key not in self.cache:
                self.tuned_at.append(q.shape[2])
                self.cache[key] = q.shape[2]
            return self.cache[key]

    class Heuristics(KernelInterface):
        pass

    fake_module(monkeypatch, "triton")
    fake_module(monkeypatch, "triton.runtime")
    fake_module(monkeypatch, "triton.runtime.autotuner", Autotuner=Autotuner)
    fake_module(monkeypatch, "triton.runtime.jit", KernelInterface=KernelInterface)
    return Autotuner, Heuristics


def test_warm_up_retunes_the_named_packages_autotuners_at_every_problem(monkeypatch) -> None:
    from leetbench.adapters import forget_autotuning, warm_up

    Autotuner, Heuristics = _fake_triton(monkeypatch)
    ours, theirs, lookalike = Autotuner(), Autotuner(), Autotuner()
    fake_module(monkeypatch, "tunedlib")
    fake_module(monkeypatch, "tunedlib.ops.chunk", kernel=Heuristics(fn=ours), helper=len)
    fake_module(monkeypatch, "otherlib.ops", kernel=theirs)
    fake_module(monkeypatch, "tunedlibx", kernel=lookalike)  # shares a prefix, not the package

    def method(q, k, v, decay, *, scale, initial_state=None):
        for tuner in (ours, theirs, lookalike):
            tuner.run(q)
        return v

    for n in (17, 50, 50):
        warm_up(lambda: method, retune=("tunedlib",))(Problem(1, 2, n, 8))
    assert ours.tuned_at == [17, 50] and ours.cache_results is False  # and never from Triton's disk cache
    assert theirs.tuned_at == lookalike.tuned_at == [17] and theirs.cache_results is True
    # a shape met before gets its own choice back (also with an initial state), a new one tunes
    for n, s0 in ((17, False), (50, True), (80, False)):
        warm_up(lambda: method, retune=("tunedlib",))(Problem(1, 2, n, 8, initial_state=s0))
        assert ours.run(torch.zeros(1, 2, n, 8)) == n, f"N={n} ran with the choice made at another N"
    assert ours.tuned_at == [17, 50, 80]
    warm_up(lambda: method, retune=("tunedlib",))(Problem(2, 2, 80, 8))  # another batch is another shape
    assert ours.tuned_at == [17, 50, 80, 80]
    assert forget_autotuning(("tunedlib", "otherlib")) == 2
    for n in (17, 50):
        warm_up(lambda: method)(Problem(1, 2, n, 8))  # without retune= the first shape's choice stays
    assert ours.tuned_at == [17, 50, 80, 80, 17]


def test_warm_up_tunes_a_package_imported_inside_the_first_call_at_that_shape(monkeypatch) -> None:
    """fla and Mamba-2 import their kernels inside the route's first call, so their autotuners appear only
    then, with Triton's disk cache on: the setup has them choose again in memory at the problem's own shape (not
    the disk's choice made at another N), and keeps that choice for a later problem of the same shape."""
    from leetbench.adapters import warm_up

    Autotuner, _ = _fake_triton(monkeypatch)
    disk: dict = {}

    class DiskTuner(Autotuner):  # Triton's disk cache: a choice per key, whatever N it was made at
        def run(self, q):
            if self.cache_results and q.shape[-1] in disk and q.shape[-1] not in self.cache:
                self.cache[q.shape[-1]] = disk[q.shape[-1]]
            return super().run(q)

    tuner = DiskTuner()
    disk[8] = 999  # an earlier worker's choice, made at N=999

    def method(q, k, v, decay, *, scale, initial_state=None):
        fake_module(monkeypatch, "lazylib.ops", kernel=tuner)  # the package's modules appear on the call
        tuner.run(q)
        return v

    for n in (17, 50, 17):
        warm_up(lambda: method, retune=("lazylib",))(Problem(1, 2, n, 8))
        assert tuner.run(torch.zeros(1, 2, n, 8)) == n, f"N={n} ran with the choice made at another N"
    assert tuner.tuned_at == [17, 50] and tuner.cache_results is False


def test_forget_autotuning_without_triton_does_nothing(monkeypatch) -> None:
    from leetbench.adapters import forget_autotuning

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    assert forget_autotuning(("fla",)) == 0


def test_warm_up_setup_calls_the_method_once_on_the_problem_shape() -> None:
    from leetbench import Problem
    from leetbench.adapters import warm_up

    seen = []

    def method(q, k, v, decay, *, scale, initial_state=None):
        seen.append((tuple(q.shape), tuple(v.shape), q.dtype, decay.shape,
                     None if initial_state is None else tuple(initial_state.shape)))
        return v

    warm_up(lambda: method)(Problem(2, 3, 17, 8, dim_v=4, dtype="bfloat16", initial_state=True))
    warm_up(lambda: method)(Problem(1, 2, 50, 8, mode="decode", steps=4))
    import torch
    assert seen == [((2, 3, 17, 8), (2, 3, 17, 4), torch.bfloat16, (3,), (2, 3, 8, 4)),
                    ((1, 2, 1, 8), (1, 2, 1, 8), torch.float32, (2,), (1, 2, 8, 8))]
