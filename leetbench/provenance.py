"""Who measured, with what: the commit of the leetbench checkout and the machine's environment."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

import leetbench
from leetbench.protocol import Environment
from leetbench.timing import copy_bandwidth_gbps, launch_floor_ms


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha(package_root: Path | None = None) -> str:
    """The commit of the repository that holds the leetbench package (+dirty), or '' when it is not in one.

    `$LEETBENCH_GIT_SHA` wins when set (a tree copied to a GPU box without its .git folder: whoever copies it
    knows the commit). A checkout inside another repository's folder does not borrow that one's commit.
    """
    given = os.environ.get("LEETBENCH_GIT_SHA", "").strip()
    if given:
        return given
    here = (package_root or Path(leetbench.__file__).parent.parent).resolve()
    top = _git(here, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != here:
        return ""
    sha = _git(here, "rev-parse", "--short=12", "HEAD")
    if not sha:
        return ""
    dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    return sha + ("+dirty" if dirty else "")


def _cupy_version() -> str:
    try:
        import cupy  # noqa: PLC0415 - optional

        return str(cupy.__version__)
    except Exception:
        return ""


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, measure: bool) -> Environment:
    """Host, device name, library versions, threads, memory; and (when `measure`) the copy bandwidth and the
    launch floor of the device."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda" means the current device; CUDA queries want an index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        gpu, mem = torch.cuda.get_device_name(dev), float(torch.cuda.mem_get_info(dev)[1])
    else:
        gpu, mem = "", float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    env = Environment(host=socket.gethostname(), gpu=gpu, torch=torch.__version__, cupy=_cupy_version(),
                      cpu=cpu_model(), os=f"{platform.system()} {platform.release()}",
                      threads=torch.get_num_threads(), mem_total_bytes=mem)
    if measure:  # else left NaN: a restarted worker keeps the first measurement
        env.copy_gbps = copy_bandwidth_gbps(dev)
        env.launch_floor_ms = launch_floor_ms(dev)
    return env
