"""The measuring worker: a long-lived child process that runs methods for the runner.

Started as `python -m leetbench.worker` (a plain subprocess, so it works under every Hydra launcher,
loky included). It speaks JSON lines on a private copy of its stdout; the real stdout and stderr both go to
the worker log, so a plugin that prints cannot break the protocol. One problem's inputs and float64
reference are kept between requests, so all methods of a problem share them.

Requests: {"op": "hello", ...}, {"op": "prepare", "problem": {...}}, {"op": "run", "method": ..., ...}.
Every reply is one JSON object on one line.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from typing import Any, Callable, TextIO

import torch

from leetbench.execute import Outcome, classify, run_method
from leetbench.problem import Inputs, Problem
from leetbench.reference import reference
from leetbench.discovery import load_methods
from leetbench.registry import Registry
from leetbench.timing import TimingConfig, copy_bandwidth_gbps


def _clone(inputs: Inputs) -> Inputs:
    """A fresh copy for each method, so one that writes into its inputs cannot change the next's."""
    s0 = None if inputs.initial_state is None else inputs.initial_state.clone()
    return Inputs(inputs.q.clone(), inputs.k.clone(), inputs.v.clone(), inputs.decay.clone(), inputs.scale, s0)


def environment(device: str, measure_bandwidth: bool) -> dict[str, Any]:
    """Who measured: host, device name, library versions, threads, and the copy bandwidth."""
    try:
        import cupy  # noqa: F401

        cupy_version = cupy.__version__
    except Exception:
        cupy_version = ""
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda" means the current device; CUDA queries want an index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        gpu = torch.cuda.get_device_name(dev)
        mem_total = torch.cuda.mem_get_info(dev)[1]
    else:
        gpu = ""
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    env = {
        "host": socket.gethostname(),
        "gpu": gpu,
        "torch": torch.__version__,
        "cupy": cupy_version,
        "threads": torch.get_num_threads(),
        "copy_gbps": float("nan"),
        "mem_total_bytes": mem_total,
    }
    if measure_bandwidth:
        env["copy_gbps"] = copy_bandwidth_gbps(dev)
    return env


class Worker:
    def __init__(self, send: Callable[[dict], None] = lambda message: None) -> None:
        self.send = send  # writes one protocol line (progress notes between request and reply)
        self.registry: Registry | None = None
        self.device = "cpu"
        self.problem: Problem | None = None
        self.inputs: Inputs | None = None
        self.ref: tuple[torch.Tensor, torch.Tensor] | None = None
        self.draws: tuple[tuple, dict[str, torch.Tensor]] | None = None  # reused across dtypes and decays

    def hello(self, req: dict) -> dict:
        self.device = req.get("device", "cpu")
        threads = req.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.registry = load_methods(req.get("methods_dirs", []))
        env = environment(self.device, bool(req.get("measure_bandwidth", True)))
        return {"ok": True, "env": env, "methods": self.registry.names()}

    def prepare(self, req: dict) -> dict:
        problem = Problem(**req["problem"])
        self.problem = self.inputs = self.ref = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if self.draws is None or self.draws[0] != problem.draw_key():
            self.draws = None
            self.draws = (problem.draw_key(), problem.draw())
        inputs = problem.make_inputs(self.device, self.draws[1])
        self.ref = reference(inputs)
        self.problem, self.inputs = problem, inputs
        return {"ok": True}

    def run(self, req: dict) -> dict:
        assert self.registry is not None and self.inputs is not None and self.ref is not None
        method = self.registry[req["method"]]
        timing = TimingConfig(**req.get("timing", {}))
        outcome = run_method(method, self.problem, _clone(self.inputs), self.ref, timing, req.get("tolerances"),
                             on_setup_done=lambda: self.send({"phase": "setup done"}))
        return {"ok": True, "outcome": outcome.as_dict()}

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        try:
            if op == "hello":
                return self.hello(req)
            if op == "prepare":
                return self.prepare(req)
            if op == "run":
                return self.run(req)
            return {"ok": False, "status": "error", "error": f"unknown op {op!r}"}
        except BaseException as exc:  # noqa: BLE001 - everything becomes a reply
            if isinstance(exc, KeyboardInterrupt):
                raise
            status, message = classify(exc)
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            outcome = Outcome(status=status, error=message).as_dict()
            # a lost CUDA context cannot be used again: reply, then let the runner restart us
            return {"ok": False, "status": status, "error": message, "traceback": tb, "outcome": outcome,
                    "restart": status == "crashed"}


def _protocol_stream() -> TextIO:
    """Keep a private duplicate of stdout for replies; point fd 1 at stderr for everything else."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def main() -> int:
    out = _protocol_stream()

    def send(message: dict) -> None:
        out.write(json.dumps(message, default=float) + "\n")
        out.flush()

    worker = Worker(send)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        reply = worker.handle(json.loads(line))
        send(reply)
        if reply.get("restart"):
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
