"""The look-back kernel's work items (chunked_wglb.cu's LbWork::item, with chunked.cu's seg_of), on the CPU.

chunk_wg2lb hands work out by ticket: item t must be a piece of one (head, E slice) pair, every (pair, piece)
exactly once, and the piece before it on the same pair must be item t − pairs — the one its look-back waits for,
taken earlier by a running CTA (a later ticket there could deadlock the chain). Its Seg must be the piece's
tokens (first row, count, whether it ends the sequence). The helpers are cut from the sources as they are and
compiled for the host; each line of the program's output counts the mismatches of one geometry, and planted
faults show that the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (CXX, KERNELS, assert_no_mismatch, assert_planted_fault_caught, cut_definition,
                      run_host_program)

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")

GEOMETRIES = ((1, 2, 16, 1024, 16384), (3, 3, 5, 256, 1100), (2, 1, 1, 2048, 131), (32, 2, 16, 1024, 16384),
              (5, 4, 3, 64, 150))  # (B·H, NSL, RUNS, L, N)


def helper_source() -> str:
    chunked = (KERNELS / "chunked.cu").read_text()
    lb = (KERNELS / "chunked_wglb.cu").read_text()
    seg = cut_definition(chunked, "struct Seg {", "\n};\n")
    seg_of = cut_definition(chunked, "__device__ __forceinline__ Seg seg_of(")
    item = cut_definition(lb, "struct LbItem {", "\n};\n")
    work = cut_definition(lb, "struct LbWork {", "\n};\n")
    return "\n".join((seg, seg_of, item, work))


PROGRAM = r"""
#include <cstdio>
#include <vector>
#include <algorithm>
using std::min;
HELPERS

int main() {
  const int geo[][5] = {GEOMETRIES};
  int bad_total = 0;
  for (const auto& g : geo) {
    const int BH = g[0], NSL = g[1], RUNS = g[2], L = g[3], N = g[4];
    const LbWork W{BH * NSL, NSL, RUNS, L, N, (u32)(BH * NSL * RUNS)};
    std::vector<int> seen(BH * NSL * RUNS, 0);
    int bad = 0;
    for (u32 t = 0; t < W.items; ++t) {
      const LbItem it = W.item(t);
      const int bh = it.seg.bh, s = it.e0 / 64, p = it.p;
      if (bh < 0 || bh >= BH || s < 0 || s >= NSL || p < 0 || p >= RUNS || it.e0 % 64) { ++bad; continue; }
      ++seen[(bh * NSL + s) * RUNS + p];
      bad += it.pair != bh * NSL + s;
      bad += it.seg.tok0 != (u64)bh * N + (u64)p * L;
      bad += it.seg.n != min(L, N - p * L) || it.seg.n <= 0;
      bad += it.seg.last != (p == RUNS - 1);
      bad += it.seg.idx != bh * RUNS + p;
      if (p > 0) {  // the piece before, on the same pair: exactly `pairs` tickets earlier
        const LbItem pr = W.item(t - (u32)W.pairs);
        bad += pr.pair != it.pair || pr.p != p - 1;
      } else {
        bad += t >= (u32)W.pairs;
      }
    }
    for (int c : seen) bad += c != 1;
    printf("BH=%d NSL=%d RUNS=%d L=%d N=%d mismatches %d\n", BH, NSL, RUNS, L, N, bad);
    bad_total += bad;
  }
  return bad_total ? 1 : 0;
}
"""


def compare(helpers: str, tmp_path: Path) -> tuple[int, str]:
    geometries = ", ".join("{" + ", ".join(map(str, g)) + "}" for g in GEOMETRIES)
    source = PROGRAM.replace("HELPERS", helpers).replace("GEOMETRIES", geometries)
    return run_host_program(source, tmp_path, "lookback_items")


def test_work_items_cover_every_piece_once_after_their_predecessor(tmp_path):
    assert_no_mismatch(*compare(helper_source(), tmp_path), rows=len(GEOMETRIES))


@pytest.mark.parametrize("good, bad", [
    ("it.p = (int)(t / (u32)pairs);", "it.p = (int)(t % (u32)runs);"),  # slice-major order: look-backs wait late
    ("it.e0 = (it.pair - bh * nsl) * 64;", "it.e0 = (it.pair - bh * nsl) * 32;"),  # the wrong E slice
    ("it.seg = seg_of(bh * runs + it.p, runs, L, N);", "it.seg = seg_of(bh * runs, runs, L, N);"),  # piece 0 always
])
def test_planted_faults_are_caught(tmp_path, good, bad):
    assert_planted_fault_caught(helper_source(), good, bad, lambda h: compare(h, tmp_path))
