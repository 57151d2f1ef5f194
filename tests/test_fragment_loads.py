"""The register fragments chunk_wg2 loads with ldmatrix (wg_load_q: Q for QREG; wg_decayed_vt: Ṽᵀ for TST), on
the CPU.

Both helpers compute, per lane, the shared address of one row of each 8 × 8 matrix that `ldmatrix.x4` (and its
`.trans` form) gathers into a wgmma A fragment, from swizzled tiles laid out as the producer writes them. A wrong
row, piece, block or matrix order would only show on a GPU as wrong numbers; here the helpers (and `swz`) are cut
from the sources as they are and compiled for the host with an `ldmatrix` that follows the PTX description:
every lane's addresses are recorded first, then each lane gets the elements the 32 addresses select. Each
fragment register is compared with the m16k16 A layout (register r: row + 8 for odd r, column + 8 for r ≥ 2, the
lane's two elements at row lane/4, columns 2·(lane mod 4) and + 1), and Ṽᵀ's token weights λ^(n-1-t) with
tokens from n on zeroed. Planted faults show the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (CXX, KERNELS, assert_no_mismatch, assert_planted_fault_caught, cut_definition,
                      run_host_program)

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def helper_source() -> str:
    wg = (KERNELS / "chunked_wg.cu").read_text()
    swz = cut_definition((KERNELS / "hopper.cuh").read_text(), "template <int RB>\n__device__ __forceinline__ u32 swz(")
    q = cut_definition(wg, "template <int D>\n__device__ __forceinline__ void wg_load_q(")
    vt = cut_definition(wg, "template <bool BF16>\n__device__ __forceinline__ void wg_decayed_vt(")
    return "\n".join((swz, q, vt))


PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include <initializer_list>
#define WG_QKT (64 * 128)

static unsigned char smem[4 * WG_QKT];
static int g_phase, g_lane, g_call;       // phase 0: record each lane's addresses; 1: hand out the registers
static u32 g_addr[32][64];
static bool g_trans[64];
static u32 g_regs[32][64][4];

static u16 at(u32 a) { u16 v; memcpy(&v, smem + a, 2); return v; }
static void ldsm(u32 addr, u32 (&r)[4], bool trans) {
  if (g_phase == 0) {
    g_addr[g_lane][g_call] = addr;
    g_trans[g_call] = trans;
    r[0] = r[1] = r[2] = r[3] = 0;
  } else {
    for (int i = 0; i < 4; ++i) r[i] = g_regs[g_lane][g_call][i];
  }
  ++g_call;
}
static void ldsm_x4(u32 a, u32 (&r)[4]) { ldsm(a, r, false); }
static void ldsm_x4_t(u32 a, u32 (&r)[4]) { ldsm(a, r, true); }
// ldmatrix .x4: lanes 8m..8m+7 give the rows of matrix m; lane l receives register m = its two elements at row
// l/4, columns 2(l%4), +1 of matrix m (of the transposed matrix with .trans).
static void resolve(int calls) {
  for (int c = 0; c < calls; ++c)
    for (int l = 0; l < 32; ++l)
      for (int m = 0; m < 4; ++m) {
        u16 lo, hi;
        if (!g_trans[c]) {
          lo = at(g_addr[8 * m + l / 4][c] + 4 * (l % 4));
          hi = at(g_addr[8 * m + l / 4][c] + 4 * (l % 4) + 2);
        } else {
          lo = at(g_addr[8 * m + 2 * (l % 4)][c] + 2 * (l / 4));
          hi = at(g_addr[8 * m + 2 * (l % 4) + 1][c] + 2 * (l / 4));
        }
        g_regs[l][c][m] = lo | (u32)hi << 16;
      }
}
// 16-bit values as small integers (exact in float, products taken modulo 2^16 alike on both sides)
template <bool BF16> void unpack2(u32 r, float& x, float& y) { x = (float)(r & 0xffff); y = (float)(r >> 16); }
template <bool BF16> u32 pack2(float x, float y) { return ((u32)x & 0xffff) | (((u32)y & 0xffff) << 16); }

HELPERS

// A tile's element (row, col) as the producer places it: 64-column blocks of WG_QKT bytes, 128-byte swizzled rows.
static u32 place(int row, int col) { return (col / 64) * WG_QKT + swz<128>(row, (col % 64) / 8) + 2 * (col % 8); }
static u16 value(int row, int col) { return (u16)(row * 256 + col); }
static void fill(int cols) {
  memset(smem, 0, sizeof smem);
  for (int row = 0; row < 64; ++row)
    for (int col = 0; col < cols; ++col) { u16 v = value(row, col); memcpy(smem + place(row, col), &v, 2); }
}
static u32 pair(u32 lo, u32 hi) { return (lo & 0xffff) | (hi & 0xffff) << 16; }

template <int D>
static int check_q() {  // Q's rows 16w.., k step ks: A(row, k) = Q[16w + row][16ks + k]
  fill(D);
  int bad = 0;
  for (int w = 0; w < 4; ++w) {
    u32 qa[32][D / 16][4];
    for (g_phase = 0; g_phase < 2; ++g_phase) {
      if (g_phase == 1) resolve(D / 16);
      for (g_lane = 0; g_lane < 32; ++g_lane) { g_call = 0; wg_load_q<D>(qa[g_lane], 0, w, g_lane); }
    }
    for (int l = 0; l < 32; ++l)
      for (int ks = 0; ks < D / 16; ++ks)
        for (int r = 0; r < 4; ++r) {
          const int row = 16 * w + l / 4 + ((r & 1) ? 8 : 0), col = 16 * ks + 2 * (l % 4) + ((r & 2) ? 8 : 0);
          bad += qa[l][ks][r] != pair(value(row, col), value(row, col + 1));
        }
  }
  printf("q D=%d %d\n", D, bad);
  return bad;
}

static int check_vt(int nv) {  // Ṽᵀ of a 64-column V slice, warp w's rows 16w..: A(e, t) = V[t][16w + e]·wt(t)
  fill(64);
  float tab[65];
  for (int i = 0; i < 65; ++i) tab[i] = (float)(i + 1);  // λ^i stand-ins, distinct per distance
  int bad = 0;
  for (int w = 0; w < 4; ++w) {
    u32 va[32][4][4];
    for (g_phase = 0; g_phase < 2; ++g_phase) {
      if (g_phase == 1) resolve(4);
      for (g_lane = 0; g_lane < 32; ++g_lane) { g_call = 0; wg_decayed_vt<true>(va[g_lane], 0, tab, nv, w, g_lane); }
    }
    for (int l = 0; l < 32; ++l)
      for (int kk = 0; kk < 4; ++kk)
        for (int r = 0; r < 4; ++r) {
          const int e = 16 * w + l / 4 + ((r & 1) ? 8 : 0), t = 16 * kk + 2 * (l % 4) + ((r & 2) ? 8 : 0);
          u32 want[2];
          for (int x = 0; x < 2; ++x) {
            const float wt = t + x < nv ? tab[nv - 1 - (t + x)] : 0.f;
            want[x] = (u32)(value(t + x, e) * wt);
          }
          bad += va[l][kk][r] != pair(want[0], want[1]);
        }
  }
  printf("vt n=%d %d\n", nv, bad);
  return bad;
}

int main() {
  int bad = check_q<64>() + check_q<128>();
  for (int nv : {64, 37, 1}) bad += check_vt(nv);
  return bad ? 1 : 0;
}
"""


def run_comparison(helper: str, tmp_path: Path) -> tuple[int, str]:
    return run_host_program(PROGRAM.replace("HELPERS", helper), tmp_path, "fragments")


def test_fragments_follow_the_a_layout(tmp_path: Path) -> None:
    assert_no_mismatch(*run_comparison(helper_source(), tmp_path), rows=5)


# Each replacement plants a fault in a helper's text; the comparison must see it.
FAULTS = {
    "Q: the row and column halves of the matrices swapped": ("((m & 1) ? 8 : 0) + (l & 7)",
                                                             "((m & 2) ? 8 : 0) + (l & 7)"),
    "Q: the 64-column block dropped": ("(ks / 4) * WG_QKT + ", ""),
    "Vt: the columns of the odd matrices not moved": ("piece = 2 * w + (m & 1)", "piece = 2 * w"),
    "Vt: weights by token, not by distance to the end": ("tab[nv - 1 - tok]", "tab[tok]"),
    "Vt: the second pair's weights for the first": ("a * wt[r & 2]", "a * wt[(r & 2) ^ 2]"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_is_caught(fault: str, tmp_path: Path) -> None:
    assert_planted_fault_caught(helper_source(), *FAULTS[fault], lambda helper: run_comparison(helper, tmp_path))
