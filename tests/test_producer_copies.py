"""The producer's whole-chunk copies (chunked_wg.cu's wg_copy_rows) against the plain loop, on the CPU.

wg_copy_rows replaces, for every chunk but a piece's partial last one, the loop that computed each 16-byte
piece's shared and global offsets with divisions and XORs (row idx / PC, piece idx % PC, swizzle) by offsets
precomputed per lane. A wrong offset there would put a piece in the wrong place of a swizzled tile, which
only a GPU run would show as wrong numbers; here the helper and `swz` are taken from the sources as they
are, compiled for the host with the system's C++ compiler, and every (layout, lane) compared with the plain
loop, piece by piece and in order. The planted faults show the comparison can fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import (CXX, KERNELS, assert_no_mismatch, assert_planted_fault_caught, cut_definition,
                      run_host_program)

# (RB, PC, BLK) as wg_producer uses them: Q / K rows of D = 64, 128, 256 (128-byte tile rows, D/64 blocks of
# WG_QKT bytes) and V row slices of ES = 64 and 32 (128- and 64-byte rows, one block).
LAYOUTS = [(128, 8, 8192), (128, 16, 8192), (128, 32, 8192), (128, 8, 0), (64, 4, 0)]
STRIDES = [128, 384]  # elements between source rows: D, or an E that is not a power of two


def helper_source() -> str:
    wg = (KERNELS / "chunked_wg.cu").read_text()
    hopper = (KERNELS / "hopper.cuh").read_text()
    swz = cut_definition(hopper, "template <int RB>\n__device__ __forceinline__ u32 swz(")
    copy = cut_definition(wg, "template <int RB, int PC, int BLK, class F>\n"
                               "__device__ __forceinline__ void wg_copy_rows(")
    return swz + "\n" + copy


PROGRAM = r"""
#include <cstdio>
#define CH 64
HELPER

template <int RB, int PC, int BLK>
static int check(u64 stride) {
  int bad = 0;
  for (int lane = 0; lane < 32; ++lane) {
    u32 so[CH * 32]; u64 off[CH * 32]; int n = 0;
    wg_copy_rows<RB, PC, BLK>(lane, stride, [&](u32 s, u64 o) { so[n] = s; off[n] = o; ++n; });
    int m = 0;
    for (int idx = lane; idx < CH * PC; idx += 32, ++m) {  // the plain loop of wg_producer
      const int row = idx / PC, p = idx % PC, ppr = RB / 16;
      const u32 want_so = (u32)((p / ppr) * BLK) + swz<RB>(row, p % ppr);
      const u64 want_off = (u64)row * stride + p * 8;
      if (m >= n || so[m] != want_so || off[m] != want_off) ++bad;
    }
    if (n != m) ++bad;
  }
  printf("%d %d %d %llu %d\n", RB, PC, BLK, stride, bad);
  return bad;
}

int main() {
  int bad = 0;
CALLS
  return bad ? 1 : 0;
}
"""


def run_comparison(helper: str, tmp_path: Path) -> tuple[int, str]:
    calls = "\n".join(f"  bad += check<{rb}, {pc}, {blk}>({s}ull);" for rb, pc, blk in LAYOUTS for s in STRIDES)
    return run_host_program(PROGRAM.replace("HELPER", helper).replace("CALLS", calls), tmp_path, "copies")


pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def test_whole_chunk_copies_match_the_plain_loop(tmp_path: Path) -> None:
    assert_no_mismatch(*run_comparison(helper_source(), tmp_path), rows=len(LAYOUTS) * len(STRIDES))


# Each replacement plants a fault in the helper's text; the comparison must see it.
FAULTS = {
    "one period for every row step": ("PERIOD = RPI >= 8 ? 1 : 8 / RPI", "PERIOD = 1"),
    "the precomputed row not taken back": (" - (u32)(j * RPI * RB)", ""),
    "the block of a piece dropped": ("(u32)((p / PPR) * BLK) + ", ""),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_is_caught(fault: str, tmp_path: Path) -> None:
    assert_planted_fault_caught(helper_source(), *FAULTS[fault], lambda helper: run_comparison(helper, tmp_path))


def test_the_helper_is_found_in_the_sources() -> None:
    assert re.search(r"wg_copy_rows<128, QPC, L::QKT>", (KERNELS / "chunked_wg.cu").read_text())
