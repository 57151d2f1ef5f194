"""The messages between the runner's process and the measuring worker (docs/design.md §7).

One JSON object per line, `{"kind": <message class>, ...fields}`. Requests go to the worker's stdin; replies
come back on a private pipe (the worker's own stdout and stderr are its log). Between a `Run` request and its
reply the worker may send `Phase` notes (e.g. its `setup=` finished), which the supervisor uses for the
setup time limit.

    Hello    → Ready      load the plugin files, describe the machine, list what each method can run
    Prepare  → Prepared   a problem's float64 reference (kept by the worker for the methods that follow)
    Run      → Outcome    one method on the prepared problem: check, time, check a timed call
    any      → Failure    the request raised (status classified), or the worker must be restarted
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union

from leetbench.results import Status


@dataclass
class Hello:
    """Load the plugins (reporting each file before importing it, as a `Phase`), describe the machine, and say
    which method can run which of `problems` (their `supports=` are plugin code too, so they run here)."""

    device: str
    threads: int | None = None
    methods_dirs: list[str] = field(default_factory=list)
    builtin: bool = True
    entry_points: bool = True
    skip: list[str] = field(default_factory=list)  # plugin files found to kill or hang the worker at import
    problems: list[dict[str, Any]] = field(default_factory=list)
    measure_bandwidth: bool = True


@dataclass
class Environment:
    """Who measured: written into every row."""

    host: str = ""
    gpu: str = ""
    torch: str = ""
    cupy: str = ""
    cpu: str = ""  # the host's processor model: launch-bound rows measure it
    os: str = ""   # kernel release: lent machines of one name differ here (a VM's runtime shows in it)
    threads: int = 0
    copy_gbps: float = math.nan
    launch_floor_ms: float = math.nan
    mem_total_bytes: float = math.nan


@dataclass
class Ready:
    env: Environment
    catalog: dict[str, Any]  # a `leetbench.discovery.Catalog`


@dataclass
class Prepare:
    problem: dict[str, Any]


@dataclass
class Prepared:
    reference_s: float


@dataclass
class Run:
    method: str
    timing: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one run of one method on one problem gave (a failed run has only status and error)."""

    status: str
    error: str = ""
    rel_err: float = math.nan
    max_err: float = math.nan
    worst_head_rel_err: float = math.nan
    worst_head_max_err: float = math.nan
    state_rel_err: float = math.nan
    state_max_err: float = math.nan
    state_worst_head_rel_err: float = math.nan
    peak_mem_mb: float = math.nan
    samples_ms: list[float] = field(default_factory=list)
    host_samples_ms: list[float] = field(default_factory=list)  # GPU: the host's time inside each timed call
    gpu_waited: list[bool] = field(default_factory=list)  # GPU: per timed call, did the GPU wait for the host
    prepare_s: float = math.nan
    setup_s: float = math.nan
    check_s: float = math.nan
    timing_s: float = math.nan
    measured_s: float = math.nan
    traceback: str = ""  # for errors.log, not for rows

    @property
    def ran(self) -> bool:
        return self.status in (Status.OK, Status.INACCURATE, Status.SUSPECT)


@dataclass
class Failure:
    status: str
    error: str
    traceback: str = ""
    restart: bool = False  # the worker cannot go on (a lost CUDA context): it exits after replying

    def outcome(self) -> Outcome:
        return Outcome(status=self.status, error=self.error, traceback=self.traceback)


@dataclass
class Phase:
    name: str


Message = Union[Hello, Ready, Prepare, Prepared, Run, Outcome, Failure, Phase]
_KINDS = {cls.__name__: cls for cls in (Hello, Ready, Prepare, Prepared, Run, Outcome, Failure, Phase)}


def encode(message: Message) -> bytes:
    return (json.dumps({"kind": type(message).__name__, **asdict(message)}, default=float) + "\n").encode()


def decode(line: bytes | str) -> Message:
    """A message from one protocol line; ValueError for anything else."""
    try:
        data = json.loads(line)
        cls = _KINDS[data.pop("kind")]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a protocol message: {str(line)[:200]!r}") from exc
    names = {f.name for f in fields(cls)}
    body = {k: v for k, v in data.items() if k in names}
    if cls is Ready:
        body["env"] = Environment(**body["env"])
    return cls(**body)
