"""scripts/timeline.py: the per-role timeline of one chunk_wg2 CTA, read from its clock64 stamps.

On the CPU: the steps and leads computed from synthetic stamps whose every interval is known. On a Hopper GPU:
the LB_TIMELINE build of the rule's B=1 plan stamps every event of every chunk in order.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "timeline.py"
PERIOD = 3000
OFFSETS = {"outputs": (0, 100, 300, 900, 1200, 1700, 2000),
           "state": (0, 50, 400, 800, 850, 1500, 1600),
           "producer": (0, 1000, 1200, 1800)}
BASE = {"outputs": 5000, "state": 4000, "producer": 1000}  # the state warps 1000 cycles ahead, the producer 4000


def _timeline():
    spec = importlib.util.spec_from_file_location("timeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _stamps(chunks: int = 100) -> np.ndarray:
    """Chunks 0..chunks-1 stamped every PERIOD cycles at the OFFSETS; the filling chunks 0-3 take longer; the
    last chunk's state copy is never published (as in the kernel); the rows past `chunks` unstamped."""
    s = np.zeros((3, 512, 8), dtype=np.uint64)
    for r, role in enumerate(OFFSETS):
        for c in range(chunks):
            fill = 7000 * (4 - c) if c < 4 else 0  # later chunks start on time, the first ones drag
            for e, off in enumerate(OFFSETS[role]):
                s[r, c, e] = BASE[role] + PERIOD * c + off + (fill if e else fill // 2) + 10**6
    s[1, chunks - 1, 5:7] = 0
    return s


def test_steps_are_the_median_intervals_between_a_roles_events():
    tl = _timeline()
    got = {(st.role, st.step): st for st in tl.steps(_stamps())}
    for role, offs in OFFSETS.items():
        names = tl.EVENTS[role]
        assert len(names) == len(offs)
        for e in range(1, len(offs)):
            st = got[(role, f"{names[e - 1]} → {names[e]}")]
            assert st.cycles == offs[e] - offs[e - 1]
            assert st.share == pytest.approx((offs[e] - offs[e - 1]) / PERIOD)
        assert got[(role, f"{names[-1]} → next chunk")].cycles == PERIOD - offs[-1]
        assert got[(role, "chunk period")].cycles == PERIOD


def test_the_filling_chunks_are_left_out_only_when_asked():
    tl = _timeline()
    skipped = {(st.role, st.step): st.cycles for st in tl.steps(_stamps(8), skip=4)}
    kept = {(st.role, st.step): st.cycles for st in tl.steps(_stamps(8), skip=0)}
    assert skipped[("outputs", "begun → slot full")] == 100
    assert kept[("outputs", "begun → slot full")] > 100  # half of the 8 chunks drag: the median moves


def test_leads_say_how_far_the_state_and_producer_run_ahead():
    tl = _timeline()
    lead = tl.leads(_stamps())
    # copy c published (state row c-1, event 6) vs outputs' slot c full (row c, event 1)
    assert lead["state copy"] == (BASE["outputs"] + OFFSETS["outputs"][1]) - (
        BASE["state"] - PERIOD + OFFSETS["state"][6])
    assert lead["producer"] == BASE["outputs"] - (BASE["producer"] + OFFSETS["producer"][3])
    table = tl.table(_stamps())
    assert "state copy ready" in table and "ahead of the output warps: state copy 2500 cycles" in table


def test_without_a_hopper_gpu_the_script_says_so_in_one_line(tmp_path):
    """On a machine without CuPy and a Hopper GPU (CI's), the script ends with one line naming what it needs;
    a malformed --dims is named too."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "timeline.py: needs a Hopper GPU (compute capability 9.0) with CuPy: it stamps chunk_wg2"]
    bad = subprocess.run([sys.executable, str(SCRIPT), "--dims", "128"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "timeline.py: --dims '128': expected DxE, e.g. 128x128"
    assert not any(tmp_path.iterdir())


needs_wg = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability(0) != (9, 0),
                              reason="needs a Hopper GPU (chunk_wg2)")


@needs_wg
@pytest.mark.parametrize("tstate, tma", [(False, None), (True, None), (None, False)])
def test_the_timeline_build_stamps_every_event_in_order(tstate, tma):
    """In the rule's chunk_wg2 (its output warps pipelined: chunk c's outputs stored while chunk c + 1's products
    run; its producer loading through tensor maps) with its state held transposed (TST) and not, and with its
    producer copying by cp.async."""
    pytest.importorskip("cupy")
    tl = _timeline()
    stamps, plan = tl.record(1, 32, 16384, 128, 128, "bf16", 0, tstate, tma)
    assert plan.wg2 and plan.tstate == (True if tstate is None else tstate) and plan.tma == (tma is None)
    assert plan.name.startswith("chunk_wg2_tma<" if plan.tma else "chunk_wg2<")
    chunks = 16384 // 2 // 64  # two segments at B=1, H=32 (the rule), 64-token chunks
    for r, role in enumerate(tl.ROLES):
        t = stamps[r, :chunks, :len(tl.EVENTS[role])].astype(np.int64)
        if role == "state":
            t = t[:-1]  # the last chunk publishes no copy
        assert (t > 0).all(), role
        assert (np.diff(t, axis=1) >= 0).all() and (np.diff(t[:, 0]) > 0).all(), role
    assert not stamps[:, chunks:].any()
    assert all(np.isfinite(st.cycles) for st in tl.steps(stamps))
