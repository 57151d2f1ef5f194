"""chunk_wg2's and chunk_wg4's output rows stored straight from the accumulator (wg_store_direct, DIRECT), on the CPU.

Each lane holds two rows' columns 8j + 2·(lane mod 4) and + 1 of every 8-column group j; one shuffle with the
neighbouring lane gives each lane four consecutive columns, written as one 8-byte store. A wrong partner, word
order or column would only show on a GPU as wrong numbers (tests/test_cupy_kernels.py compares DIRECT with the
staged store bit for bit there); here the helper is cut from the source as it is and compiled for the host with a
`__shfl_xor_sync` that runs the 32 lanes in two passes (each lane's sends recorded first, then each lane given its
partner's), every output element checked against the accumulator's layout, rows past the piece's end left alone.
Planted faults show the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (CXX, KERNELS, assert_no_mismatch, assert_planted_fault_caught, cut_definition,
                      run_host_program)

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def helper_source() -> str:
    return cut_definition((KERNELS / "chunked_wg.cu").read_text(),
                          "template <int ES, bool BF16>\n__device__ __forceinline__ void wg_store_direct(")


PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include <initializer_list>
#define __restrict__
struct uint2 { u32 x, y; };
static uint2 make_uint2(u32 x, u32 y) { return {x, y}; }
// 16-bit values as small integers
template <bool BF16> u32 pack2(float x, float y) { return ((u32)x & 0xffff) | (((u32)y & 0xffff) << 16); }

static int g_phase, g_lane, g_call;  // phase 0: record what each lane sends; 1: hand each lane its partner's
static u32 g_sent[32][64];
static u32 __shfl_xor_sync(u32, u32 v, int mask) {
  if (g_phase == 0) { g_sent[g_lane][g_call++] = v; return 0; }
  return g_sent[g_lane ^ mask][g_call++];
}

HELPERS

constexpr int ROWS = 48, SENTINEL = 0xffff;
static u16 value(int row, int col) { return (u16)(row * 64 + col + 1); }

// Warp rows rows_before.. of a piece of nv rows, stored from row trow of o (E columns, the slice at column e0).
template <int ES>
static int check(int rows_before, int nv) {
  const int E = 2 * ES + 8, e0 = ES + 8, trow = 7;
  static u16 o[ROWS * 200], scratch[ROWS * 200];
  for (u16& x : o) x = SENTINEL;
  float acc[32][ES / 2];
  for (int l = 0; l < 32; ++l)  // accumulator layout: row l/4 (+ 8 for x ≥ 2), column 8j + 2(l mod 4) (+ 1 if x odd)
    for (int j = 0; j < ES / 8; ++j)
      for (int x = 0; x < 4; ++x)
        acc[l][4 * j + x] = value(l / 4 + ((x & 2) ? 8 : 0), 8 * j + 2 * (l % 4) + (x & 1));
  for (g_phase = 0; g_phase < 2; ++g_phase)
    for (g_lane = 0; g_lane < 32; ++g_lane) {
      g_call = 0;
      wg_store_direct<ES, true>(acc[g_lane], g_phase ? o : scratch, trow, E, e0, rows_before, nv, g_lane);
    }
  int bad = 0;
  for (int row = 0; row < ROWS; ++row)
    for (int col = 0; col < E; ++col) {
      const int r = row - trow, c = col - e0;
      const bool mine = r >= 0 && r < 16 && rows_before + r < nv && c >= 0 && c < ES;
      bad += o[row * E + col] != (mine ? value(r, c) : SENTINEL);
    }
  printf("ES=%d rows_before=%d nv=%d %d\n", ES, rows_before, nv, bad);
  return bad;
}

int main() {
  int bad = 0;
  for (int nv : {64, 21, 16, 3}) bad += check<64>(16, nv) + check<32>(0, nv);
  return bad ? 1 : 0;
}
"""


def run_comparison(helper: str, tmp_path: Path) -> tuple[int, str]:
    return run_host_program(PROGRAM.replace("HELPERS", helper), tmp_path, "stores")


def test_direct_stores_follow_the_accumulator_layout(tmp_path: Path) -> None:
    assert_no_mismatch(*run_comparison(helper_source(), tmp_path), rows=8)


# Each replacement plants a fault in the helper's text; the comparison must see it.
FAULTS = {
    "the odd lanes' two words in the wrong order": ("make_uint2(got, y)", "make_uint2(y, got)"),
    "the odd lanes' words left in their own group": ("+ 8 * odd", ""),
    "the shuffle's partner two lanes away": ("odd ? x : y, 1)", "odd ? x : y, 2)"),
    "rows past the piece's end written": ("if (rows_before + row < nv)", "if (true)"),
    "the second row of a lane from the first row's values": ("acc[4 * j + 2 * h + 1]", "acc[4 * j + 1]"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_is_caught(fault: str, tmp_path: Path) -> None:
    assert_planted_fault_caught(helper_source(), *FAULTS[fault], lambda helper: run_comparison(helper, tmp_path))
