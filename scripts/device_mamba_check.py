"""On a GPU: Mamba-2's SSD kernel through methods/peer_mamba2.py against the float64 reference, one line a case.

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/mamba_ssm-*.whl
    PYTHONPATH=/tmp/site python3 scripts/device_mamba_check.py [all | big]

Imports `mamba_ssm.ops.triton.ssd_combined` the adapter's way (`ssd_module`, past the package's failing
`__init__`), then runs `leetbench.execute.verify` (first call autotunes, as `setup` does in a sweep) on three
small problems: every route at bfloat16, `mamba2_ssd` at float16 and float32 (`all`: every route and dtype).
`big` (instead): B=8, H=32, N=65536, D=E=128 bf16, each route in its own process (a wrapped 32-bit offset
can lose the CUDA context): c128 (largest buffers exactly 2^31 elements) must pass; `supports` refuses the
others, which are run anyway to show what the refusal avoids.
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from leetbench import Problem  # noqa: E402
from leetbench.discovery import load_methods  # noqa: E402
from leetbench.execute import verify  # noqa: E402

ROUTES = ("mamba2_ssd", "mamba2_ssd_c64", "mamba2_ssd_c256")
SMALL = (dict(batch=1, heads=4, length=1000, dim=64, decay="multiscale"),
         dict(batch=2, heads=3, length=4099, dim=64, decay=1.0, initial_state=True),
         dict(batch=1, heads=2, length=509, dim=64, dim_v=32, decay="retnet", initial_state=True))
BIG = dict(batch=8, heads=32, length=65536, dim=128, decay="multiscale", dtype="bfloat16", device="cuda")
DEADLINE_S = 540.0
T0 = time.time()
REG = load_methods(files=[ROOT / "methods" / "peer_mamba2.py"], entry_points=False)


def check(name: str, problem: Problem) -> None:
    t = time.time()
    try:
        out = verify(REG[name], problem)
        worst = getattr(out, "worst_head_rel_err", float("nan"))
        line = (f"{out.status:10s} rel_err {out.rel_err:.2e} worst head {worst:.2e} "
                f"state {out.state_rel_err:.2e} {out.error}")
    except Exception as exc:  # one failing case must not hide the others
        line = f"{'error':10s} {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    print(f"{name:16s} {problem.label():48s} {line} ({time.time() - t:.1f} s)", flush=True)


def main(args: list[str]) -> None:
    if args[:1] == ["one"]:  # a child of `big`
        return check(args[1], Problem(**BIG))
    if "big" in args:
        for name in ("mamba2_ssd", "mamba2_ssd_c256", "mamba2_ssd_c64"):
            print(f"{name}: supports → {REG[name].supports(Problem(**BIG))}", flush=True)
            subprocess.run([sys.executable, __file__, "one", name], check=False)
        return
    plugin = sys.modules[REG["mamba2_ssd"].fn.__module__]
    ssd = plugin.ssd_module()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {metadata.version('triton')} "
          f"mamba-ssm {metadata.version('mamba_ssm')}: {ssd.__file__} "
          f"(package __init__ {'run' if hasattr(sys.modules['mamba_ssm'], '__version__') else 'bypassed'})")
    for dtype in ("bfloat16", "float16", "float32"):
        for name in ROUTES if dtype == "bfloat16" or "all" in args else ROUTES[:1]:
            for kw in SMALL:
                problem = Problem(**kw, dtype=dtype, device="cuda")
                if time.time() - T0 > DEADLINE_S:
                    print(f"{name:16s} {problem.label():48s} not run (past {DEADLINE_S:.0f} s)", flush=True)
                    continue
                check(name, problem)


if __name__ == "__main__":
    main(sys.argv[1:])
