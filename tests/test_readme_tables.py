"""scripts/readme_tables.py: README's published tables come from a results.csv, with the leaderboard's verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from leetbench.problem import Problem
from leetbench.results import Row

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "readme_tables.py"


def _row(method: str, N: int, ms: float, dtype: str = "bfloat16", status: str = "ok", spread: float = 0.01,
         waited: float = 0.0, tf32: bool = False) -> dict:
    p = Problem(batch=1, heads=2, length=N, dim=16, decay="multiscale", dtype=dtype)
    ok = status == "ok"
    extra = dict(time_ms=ms, time_ms_lo=ms * (1 - spread), time_ms_hi=ms * (1 + spread), gpu_waited=waited,
                 copy_gbps=100.0, gpu="Card X", git_sha="abcdef0123", tf32=tf32) if ok else dict(gpu="Card X")
    return Row.for_problem(method, "f", p, status, **extra).as_dict()


def _tables(tmp_path: Path, rows: list[dict], *args: str) -> str:
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path), "--heads", "2", "--dim", "16", "--dim-v", "16",
                           "--methods", "ours,peer", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cells_carry_the_winner_ties_host_bound_rows_and_failures(tmp_path: Path) -> None:
    rows = [_row("ours", 64, 1.0), _row("peer", 64, 2.0, waited=0.9),        # ours wins; peer host-bound
            _row("ours", 128, 1.0, spread=0.2), _row("peer", 128, 1.1),      # intervals overlap: a tie
            _row("ours", 256, 3.0), _row("peer", 256, 0.0, status="oom")]    # peer failed
    out = _tables(tmp_path, rows, "--dtypes", "bfloat16")
    lines = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| 1 |")}
    assert lines["64"].startswith("| 1 | 64 | **1.00** (") and "| 2.00 † |" in lines["64"]
    assert lines["128"].count("**") == 4                                    # both tied methods bold
    assert "| **3.00** (" in lines["256"] and "| `oom` |" in lines["256"]
    assert "Card X" in out and "commit abcdef0" in out


def test_float32_columns_name_their_precision_class(tmp_path: Path) -> None:
    """IEEE and TF32 routes rank apart: each class has its own bold winner, and the header says which is which."""
    rows = [_row("ours", 64, 5.0, dtype="float32"), _row("peer", 64, 1.0, dtype="float32", tf32=True)]
    out = _tables(tmp_path, rows, "--dtypes", "float32")
    assert "| `ours` fp32 | `peer` tf32 |" in out
    line = next(x for x in out.splitlines() if x.startswith("| 1 | 64 |"))
    assert line.count("**") == 4                                            # each the winner of its class


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.csv")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "none.csv" in proc.stderr


ROOT = SCRIPT.parent.parent
PUBLISHED = ROOT / "results" / "gpu-NVIDIA-H200" / "results.csv"


def table_lines(text: str) -> dict[str, dict[tuple[str, str], str]]:
    """The (B, N) lines of each markdown table in `text`, by dtype and (B, N): a header naming `` fp32`` columns
    starts float32's table, any other bfloat16's (README's published section shows those two)."""
    tables: dict[str, dict[tuple[str, str], str]] = {}
    dtype = None
    for line in text.splitlines():
        if line.startswith("| B | N |"):
            dtype = "float32" if "` fp32" in line else "bfloat16"
            tables[dtype] = {}
        elif dtype and line.startswith("| ") and not line.startswith("|---"):
            tables[dtype][tuple(line.split(" | ")[:2])] = line
        elif not line.startswith("|"):
            dtype = None
    return tables


def test_readme_published_tables_are_the_published_rows() -> None:
    """Each (B, N) line of README's published tables is the line readme_tables.py prints for it from the published
    results.csv — a hand edit or a republish without its tables fails here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Published leaderboard: NVIDIA H200\n", 1)[1].split("\n## ", 1)[0]
    readme = table_lines(section)
    assert set(readme) == {"bfloat16", "float32"} and all(len(t) >= 8 for t in readme.values()), readme
    proc = subprocess.run([sys.executable, str(SCRIPT), str(PUBLISHED), "--dtypes", "bfloat16,float32", "--methods",
                           "cupy_chunked,cupy_recurrent,fla_chunk,lightning_attn2,mamba2_ssd"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = table_lines(proc.stdout)
    wrong = [f"{dtype}: README {line!r}\n  rows   {printed[dtype].get(bn)!r}"
             for dtype, table in readme.items() for bn, line in table.items() if printed[dtype].get(bn) != line]
    assert not wrong, "\n".join(wrong)
