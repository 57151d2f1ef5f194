"""Inputs and what the harness holds: seeded, rounded, copied per method; sign flips; the memory estimate
behind `skipped` rows checked against what a worker really allocates."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from leetbench.inputs import SIGN_CYCLE, Signs, draw, harness_bytes, make_inputs
from leetbench.problem import Problem
from leetbench.reference import reference


def test_cpu_inputs_are_fresh_copies_of_the_kept_draws() -> None:
    p = Problem(1, 2, 33, 8, dtype="float32", initial_state=True)
    d = draw(p)
    a, b = make_inputs(p, draws=d), make_inputs(p, draws=d)
    a.q.neg_(), a.initial_state.neg_()  # a method (or a sign flip) writing into its inputs...
    assert torch.equal(b.q, d.tensors["q"]) and torch.equal(b.initial_state, d.tensors["s0"])  # ...changes no other


def test_sign_flips_walk_the_cycle_with_known_answers() -> None:
    p = Problem(1, 2, 40, 4, dtype="float64", initial_state=True, decay="multiscale")
    x = make_inputs(p)
    ref_o, ref_s = reference(x)
    signs = Signs(x)
    for step in range(1, 9):
        signs.advance()
        o, s = reference(x)
        assert torch.allclose(o, signs.output_sign * ref_o, rtol=0, atol=0)
        assert torch.allclose(s, signs.v_sign * ref_s, rtol=0, atol=0)
        assert (signs.q_sign, signs.v_sign) == SIGN_CYCLE[step % 4]
    signs.goto(1)
    assert torch.equal(reference(x)[0], -ref_o) and torch.equal(reference(x)[1], -ref_s)


_PROBE = """
import json, sys, torch
from leetbench.inputs import make_inputs
from leetbench.problem import Problem
from leetbench.protocol import Prepare
from leetbench.worker import Worker
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
p = Problem(**json.loads(sys.argv[1]))
w = Worker()
w.env.mem_total_bytes = 1e12
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
w.prepare(Prepare(p.as_dict()))
x = make_inputs(p, "cpu", w.draws)
out = torch.empty_like(x.v)  # one output alive, as while a method runs
print(json.dumps({"measured": rss("VmHWM") - base}))
"""


def test_the_memory_estimate_covers_what_the_worker_allocates() -> None:
    """The estimate used to skip problems (B=120, N=65536 was estimated 1.6× too low before): now measured."""
    p = Problem(2, 4, 32768, 32, dtype="float32")
    got = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(p.as_dict())], capture_output=True, text=True,
                         check=True)
    measured = json.loads(got.stdout.strip().splitlines()[-1])["measured"]
    estimate = harness_bytes(p, 1e12)
    assert measured <= estimate <= 2.0 * measured, (measured / 1e6, estimate / 1e6)
