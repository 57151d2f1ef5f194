"""GPU pinning for scale-out: each multirun job takes one GPU of its host from a pool of lock files.

Hydra's joblib launcher runs jobs in reused loky processes, so a CUDA_VISIBLE_DEVICES set per job would
only hold for a process's first job, and `job.num % GPUs` can put two jobs on one GPU. Instead a job takes
the first free GPU by an exclusive lock on `<sweep folder>/.gpus/<host>-<gpu>.lock`, holds it while it
measures, and starts its measuring worker with only that GPU visible.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence


def visible_gpus() -> list[str]:
    """Physical ids of the GPUs this process may use (honouring an inherited CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:
        ids = [x.strip() for x in inherited.split(",") if x.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


@contextmanager
def gpu_slot(lock_dir: Path, gpus: Sequence[str], poll_s: float = 0.5) -> Iterator[str]:
    """Hold an exclusive lock on one GPU of `gpus` (waiting until one is free); yield its id."""
    if not gpus:
        raise ValueError("no GPUs to choose from")
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    while True:
        for gpu in gpus:
            fd = os.open(lock_dir / f"{host}-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                yield gpu
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)
