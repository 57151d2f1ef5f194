"""The disk cache of cubins leetbench compiles itself (leetbench/cuda_kernels/cubin_cache.py), with a stand-in
compiler: what is compiled when, what a later process finds, and what a broken entry or folder costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from leetbench.cuda_kernels import cubin_cache as cc


class FakeCompiler:
    """Records each call; its cubin names the instances it was asked for."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, names: list[str]) -> cc.Compiled:
        self.calls.append(list(names))
        return cc.Compiled(cubin=("cubin:" + ",".join(names)).encode(), log="ptxas info: fine",
                           lowered={n: f"_Z{len(n)}{n.replace('<', '_').replace('>', '')}" for n in names})


ARGS = dict(options=("-std=c++17", "--gpu-architecture=sm_90a"), arch="sm_90a", toolchain="nvrtc 13.0")


def test_a_second_process_finds_every_instance(tmp_path: Path):
    comp = FakeCompiler()
    names = ["k<1>", "k<2>"]
    first = cc.compile_cached("src", names, compile_fn=comp, folder=tmp_path, **ARGS)
    assert comp.calls == [names]                                   # one compiler run for the missing ones
    assert first["k<1>"].lowered["k<1>"] == "_Z4k_1" and first["k<2>"].cubin == b"cubin:k<1>,k<2>"
    again = cc.compile_cached("src", names, compile_fn=comp, folder=tmp_path, **ARGS)
    assert comp.calls == [names]                                   # nothing compiled the second time
    assert {n: (c.cubin, c.lowered[n], c.log) for n, c in again.items()} == \
        {n: (c.cubin, c.lowered[n], c.log) for n, c in first.items()}
    more = cc.compile_cached("src", ["k<2>", "k<3>"], compile_fn=comp, folder=tmp_path, **ARGS)
    assert comp.calls[-1] == ["k<3>"] and more["k<2>"].cubin == b"cubin:k<1>,k<2>"


@pytest.mark.parametrize("change", ["source", "options", "arch", "toolchain"])
def test_anything_the_machine_code_depends_on_is_in_the_key(tmp_path: Path, change: str):
    comp = FakeCompiler()
    cc.compile_cached("src", ["k<1>"], compile_fn=comp, folder=tmp_path, **ARGS)
    args = dict(ARGS)
    src = "src"
    if change == "source":
        src = "src // edited"
    elif change == "options":
        args["options"] = ("-std=c++17", "--gpu-architecture=sm_90a", "-lineinfo")
    else:
        args[change] = args[change] + "x"
    cc.compile_cached(src, ["k<1>"], compile_fn=comp, folder=tmp_path, **args)
    assert len(comp.calls) == 2


def test_a_broken_entry_is_a_miss_and_is_rewritten(tmp_path: Path):
    comp = FakeCompiler()
    cc.compile_cached("src", ["k<1>"], compile_fn=comp, folder=tmp_path, **ARGS)
    (meta,) = tmp_path.glob("*.json")
    meta.write_text("{not json")
    cc.compile_cached("src", ["k<1>"], compile_fn=comp, folder=tmp_path, **ARGS)
    assert len(comp.calls) == 2
    (cubin,) = tmp_path.glob("*.cubin")
    cubin.write_bytes(b"")                                           # an empty cubin is no entry either
    cc.compile_cached("src", ["k<1>"], compile_fn=comp, folder=tmp_path, **ARGS)
    assert len(comp.calls) == 3
    assert not list(tmp_path.glob("*.cubin.*")) and not list(tmp_path.glob("*.json.*"))  # no temporaries left


def test_an_unwritable_folder_costs_only_the_compilation(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    comp = FakeCompiler()
    out = cc.compile_cached("src", ["k<1>"], compile_fn=comp, folder=blocked / "leetbench", **ARGS)
    assert out["k<1>"].cubin == b"cubin:k<1>" and len(comp.calls) == 1


def test_the_cache_lives_in_cupys_kernel_cache_folder(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path))
    assert cc.cache_dir() == tmp_path / "leetbench"
    monkeypatch.delenv("CUPY_CACHE_DIR")
    assert cc.cache_dir() == Path.home() / ".cupy" / "kernel_cache" / "leetbench"
