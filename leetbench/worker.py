"""The measuring worker: a long-lived child process that runs methods for the runner (docs/design.md §7).

Started as `python -m leetbench.worker` (a plain subprocess, so it works under every Hydra launcher, loky
included). It reads `leetbench.protocol` requests on stdin and answers on a private duplicate of its stdout;
its real stdout and stderr go to the supervisor, which writes them to the worker log, so a plugin that
prints cannot break the protocol. A prepared problem's float64 reference is kept for the methods that
follow; every method gets freshly made inputs after its `setup=` (drawn again on a GPU; from kept draws on
the CPU).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import BinaryIO, Callable

import torch

from leetbench.discovery import Catalog, MethodInfo, load_methods
from leetbench.execute import Reference, build_reference, classify, run_method
from leetbench.inputs import Draws, draw, draw_key, make_inputs
from leetbench.problem import Problem
from leetbench.protocol import (Environment, Failure, Hello, Message, Outcome, Phase, Prepare, Prepared,
                                Ready, Run, decode, encode)
from leetbench.provenance import environment
from leetbench.registry import Registry, RegistryError
from leetbench.results import Status
from leetbench.timing import TimingConfig


class Worker:
    def __init__(self, send: Callable[[Message], None] = lambda message: None) -> None:
        self.send = send  # writes one protocol line (progress notes between request and reply)
        self.registry: Registry | None = None
        self.env = Environment()
        self.device = "cpu"
        self.problem: Problem | None = None
        self.ref: Reference | None = None
        self.draws: Draws | None = None  # the CPU path keeps a problem's float32 draws
        self.prepare_s = 0.0

    def hello(self, req: Hello) -> Ready:
        self.device = req.device
        if req.threads:
            torch.set_num_threads(int(req.threads))
        self.registry = load_methods(req.methods_dirs, builtin=req.builtin, entry_points=req.entry_points,
                                     skip=req.skip, on_load=lambda source: self.send(Phase(f"importing {source}")))
        self.env = environment(self.device, req.measure_bandwidth)
        problems = [Problem(**d) for d in req.problems]
        reasons = {}
        for name, method in self.registry.methods.items():
            self.send(Phase(f"checking {method.source}"))  # supports= is plugin code: it may hang too
            reasons[name] = {p.id: method.why_not(p) for p in problems}
        catalog = Catalog({n: MethodInfo.of(m) for n, m in self.registry.methods.items()}, reasons,
                          failures=self.registry.failures, host=self.env.host, gpu=self.env.gpu)
        return Ready(self.env, catalog.as_dict())

    def prepare(self, req: Prepare) -> Prepared:
        t0 = time.perf_counter()
        problem = Problem(**req.problem)
        self.problem = self.ref = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if problem.device == "cpu" and (self.draws is None or self.draws.key != draw_key(problem)):
            self.draws = None
            self.draws = draw(problem)
        inputs = make_inputs(problem, self.device, self.draws)
        self.ref = build_reference(problem, inputs, self.env.mem_total_bytes)
        self.problem = problem
        return Prepared(reference_s=time.perf_counter() - t0)

    def run(self, req: Run) -> Outcome:
        assert self.registry is not None and self.problem is not None and self.ref is not None
        method = self.registry[req.method]
        problem, draws = self.problem, self.draws
        # made after the method's setup (run_method): a warm-up there must not find ours alive beside its own
        return run_method(method, problem, lambda: make_inputs(problem, self.device, draws), self.ref,
                          TimingConfig(**req.timing), req.tolerances,
                          on_setup_done=lambda: self.send(Phase("setup done")))

    def handle(self, req: Message) -> Message:
        try:
            if isinstance(req, Hello):
                return self.hello(req)
            if isinstance(req, Prepare):
                return self.prepare(req)
            if isinstance(req, Run):
                return self.run(req)
            return Failure(str(Status.ERROR), f"unknown request {type(req).__name__}")
        except KeyboardInterrupt:
            raise
        except RegistryError as exc:  # a plugin set that cannot be used: the user's to fix, one line
            return Failure(str(Status.ERROR), str(exc))
        except BaseException as exc:  # noqa: BLE001 - everything becomes a reply
            status, message = classify(exc)
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            # a lost CUDA context cannot be used again: reply, then let the supervisor restart us
            return Failure(str(status), message, tb, restart=status == Status.CRASHED)


def _protocol_stream() -> BinaryIO:
    """Keep a private duplicate of stdout for replies; point fd 1 at stderr for everything else."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0)


def main() -> int:
    out = _protocol_stream()

    def send(message: Message) -> None:
        out.write(encode(message))

    worker = Worker(send)
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        reply = worker.handle(decode(line))
        send(reply)
        if isinstance(reply, Failure) and reply.restart:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
