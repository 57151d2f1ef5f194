"""The plugin contract: registration, discovery (folders, entry points), failures, selection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import TINY, results, run_cli, write_plugin
from leetbench import Problem, RegistryError, load_methods, register
from leetbench.execute import verify

# The example of docs/design.md §3 (and the README), with its body filled in.
MY_SCAN = '''
import torch
from leetbench import register

@register(name="my_scan", family="recurrent", complexity="O(N·D·E)",
          devices=("cpu", "cuda"), dtypes=("float32", "float64"))
def my_scan(q, k, v, decay, *, scale, initial_state=None):
    B, H, N, D = q.shape
    s = torch.zeros(B, H, D, v.shape[-1], dtype=q.dtype) if initial_state is None else initial_state.clone()
    lam = decay.to(q.dtype)[None, :, None, None]
    o = torch.empty_like(v)
    for t in range(N):
        s = lam * s + k[:, :, t, :, None] * v[:, :, t, None, :]
        o[:, :, t] = scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], s)
    return o
'''

# Forgets the decay: a deliberately wrong method.
NO_DECAY = '''
import torch
from leetbench import register

@register(name="no_decay", family="wrong", complexity="O(N²·D)")
def no_decay(q, k, v, decay, *, scale, initial_state=None):
    n = q.shape[2]
    mask = torch.ones(n, n, dtype=q.dtype).tril()
    return scale * ((q @ k.transpose(-1, -2)) * mask) @ v
'''


def test_design_example_plugin_is_discovered_and_measured(tmp_path: Path, plugins: Path) -> None:
    write_plugin(plugins, "my_scan.py", MY_SCAN)
    reg = load_methods([plugins])
    assert "my_scan" in reg and reg["my_scan"].family == "recurrent" and reg["my_scan"].source.endswith("my_scan.py")
    assert len(reg["my_scan"].source_hash) == 12
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"methods_dirs=[{plugins}]", "methods=[my_scan]", "dtypes=[float32,float64]",
                   f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = results(out)
    assert set(df["method"]) == {"my_scan"} and (df["status"] == "ok").all()
    assert (df["time_ms"] > 0).all() and (df["rel_err"] < 1e-5).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_method_is_flagged_inaccurate(plugins: Path, dtype: str) -> None:
    write_plugin(plugins, "no_decay.py", NO_DECAY)
    reg = load_methods([plugins], builtin=False)
    outcome = verify(reg["no_decay"], Problem(1, 2, 64, 8, decay=0.9, dtype=dtype))
    assert outcome.status == "inaccurate" and outcome.rel_err > 0.1
    assert "above tolerance" in outcome.error


def test_duplicate_names_are_an_error_naming_both_files(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", "one.py", MY_SCAN)
    write_plugin(tmp_path / "b", "two.py", MY_SCAN)
    with pytest.raises(RegistryError, match=r"'my_scan' is registered twice: in .*one\.py and in .*two\.py"):
        load_methods([tmp_path / "a", tmp_path / "b"], builtin=False)


def test_a_broken_plugin_is_reported_and_the_others_load(plugins: Path) -> None:
    write_plugin(plugins, "my_scan.py", MY_SCAN)
    write_plugin(plugins, "broken.py", "def oops(:\n")
    write_plugin(plugins, "raises.py", "raise RuntimeError('plugin exploded')\n")
    write_plugin(plugins, "_helper.py", "raise RuntimeError('never imported')\n")
    reg = load_methods([plugins], builtin=False)
    assert reg.names() == ["my_scan"]
    errors = {Path(f.source).name: f.error for f in reg.failures}
    assert set(errors) == {"broken.py", "raises.py"}
    assert errors["broken.py"].startswith("SyntaxError") and "plugin exploded" in errors["raises.py"]


def test_one_file_may_register_many_methods(plugins: Path) -> None:
    write_plugin(plugins, "family.py", '''
        from leetbench import register
        for c in (16, 32):
            def make(c):
                def fn(q, k, v, decay, *, scale, initial_state=None):
                    return v
                return fn
            register(name=f"variant_{c}", family="f")(make(c))
    ''')
    assert load_methods([plugins], builtin=False).names() == ["variant_16", "variant_32"]


def test_builtin_methods_and_selection() -> None:
    reg = load_methods()
    assert {"quadratic", "recurrent"} <= set(reg.names())
    assert [m.name for m in reg.select(["quad*"])] == ["quadratic"]
    assert "quadratic" not in [m.name for m in reg.select([], ["quadratic"])]
    with pytest.raises(RegistryError, match=r"unknown method 'nope' in methods; known methods: .*quadratic"):
        reg.select(["nope"])


def test_capabilities_become_skip_reasons(plugins: Path) -> None:
    write_plugin(plugins, "picky.py", '''
        from leetbench import register
        @register(name="gpu_only", devices=("cuda",))
        def a(q, k, v, decay, *, scale, initial_state=None): return v
        @register(name="needs_pkg", requires=("surely_not_installed_pkg",))
        def b(q, k, v, decay, *, scale, initial_state=None): return v
        @register(name="small_d", supports=lambda p: "D must be ≤ 16" if p.dim > 16 else None,
                  dtypes=("float32",))
        def c(q, k, v, decay, *, scale, initial_state=None): return v
    ''')
    reg = load_methods([plugins], builtin=False)
    p = Problem(1, 1, 8, 32)
    assert reg["gpu_only"].why_not(p) == "runs on cuda, not cpu"
    assert reg["needs_pkg"].why_not(p) == "needs surely_not_installed_pkg (not installed)"
    assert reg["small_d"].why_not(p) == "D must be ≤ 16"
    assert reg["small_d"].why_not(Problem(1, 1, 8, 16, dtype="float64")) == "supports dtypes float32, not float64"
    assert reg["small_d"].why_not(Problem(1, 1, 8, 16)) is None
    assert reg["small_d"].why_not(Problem(1, 1, 8, 16, mode="decode", steps=2)).startswith("supports mode prefill")


def test_register_rejects_bad_declarations() -> None:
    with pytest.raises(RegistryError, match="unknown dtypes"):
        register(name="x", dtypes=("float8",))
    with pytest.raises(RegistryError, match="unknown devices"):
        register(name="x", devices=("tpu",))
    for bad in ("has space", "pipe|name", "new\nline", "", "`tick`"):
        with pytest.raises(RegistryError, match="letters, digits"):
            register(name=bad)
    with pytest.raises(RegistryError, match="family"):
        register(name="ok_name", family="x | fake row")


def test_method_hash_covers_sources_and_changes_with_them(plugins: Path) -> None:
    """An edited kernel source (named in `sources=`) makes a new method version, so resume re-measures."""
    write_plugin(plugins, "kernel.cu", "// v1\n")
    write_plugin(plugins, "with_src.py", MY_SCAN.replace('dtypes=("float32", "float64"))',
                                                         'dtypes=("float32", "float64"), sources=["kernel.cu"])'))
    first = load_methods([plugins], builtin=False)["my_scan"]
    assert first.sources == (str((plugins / "kernel.cu").resolve()),)
    write_plugin(plugins, "kernel.cu", "// v2\n")
    second = load_methods([plugins], builtin=False)["my_scan"]
    assert len(first.source_hash) == 12 and first.source_hash != second.source_hash


def test_entry_point_plugins_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package exposing the `leetbench.methods` entry-point group."""
    site = tmp_path / "site"
    write_plugin(site, "ep_methods.py", MY_SCAN.replace("my_scan", "ep_scan"))
    dist = site / "ep_methods-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-methods\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[leetbench.methods]\nep = ep_methods\n")
    monkeypatch.syspath_prepend(str(site))
    reg = load_methods(builtin=False)
    assert "ep_scan" in reg and reg["ep_scan"].source.startswith("entry point ep")
    sys.modules.pop("ep_methods", None)


def test_the_contributor_template_runs_as_it_is(plugins: Path) -> None:
    template = Path(__file__).resolve().parent.parent / "scripts" / "method_template.py"
    write_plugin(plugins, "my_method.py", template.read_text())
    reg = load_methods([plugins], builtin=False)
    for dtype, kw in [("float64", dict(initial_state=True, decay="multiscale")), ("float32", dict(decay=1.0)),
                      ("bfloat16", dict(decay=1e-6))]:
        outcome = verify(reg["my_method"], Problem(2, 3, 131, 8, dim_v=5, dtype=dtype, **kw))
        assert outcome.status == "ok", (dtype, outcome)
    assert verify(reg["my_method"], Problem(1, 2, 100, 8, dtype="float64")).rel_err < 1e-12
