"""chunk_wg2_tma's and chunk_wg_state_tma's producer (chunked_wg.cu's wg_producer_tma) on the CPU: which boxes it
asks the copy engine for.

Per chunk c the producer's lane 0 arms slot c mod STAGES's full barrier with the chunk's bytes and issues one box
of 64 tokens × 64 columns per 64-column block of Q (LOADQ: the output kernel's, not the state pass's) and of K and
one for the CTA's V slice, each to its tile in the slot; the whole warp first waits for the slot to be released (from chunk STAGES on, at the empty barrier's parity).
A box sent to the wrong tile or coordinates, or bytes that do not match the boxes, would show on a GPU only as
wrong numbers or a hang; here the helper is cut from the source as it is and compiled for the host with the
barrier and copy instructions recording what they are given, and every call compared with what the layout asks.
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
                          "template <class L, int D, int STAGES, bool LOADQ = true>\n"
                          "__device__ __forceinline__ void wg_producer_tma(")


PROGRAM = r"""
#include <cstdio>
#include <vector>
constexpr int CH = 64;
struct TensorMap { int id; };

struct Call { int lane, kind; u32 a, b; const TensorMap* m; int x, y, z; };  // kind 0 wait, 1 expect, 2 load
static std::vector<Call> g_calls;
static int g_lane;
static void mbar_wait(u32 bar, u32 parity) { g_calls.push_back({g_lane, 0, bar, parity, nullptr, 0, 0, 0}); }
static void mbar_expect_tx(u32 bar, u32 bytes) { g_calls.push_back({g_lane, 1, bar, bytes, nullptr, 0, 0, 0}); }
static void tma_load_3d(u32 dst, const TensorMap* m, int x, int y, int z, u32 bar) {
  g_calls.push_back({g_lane, 2, dst, bar, m, x, y, z});
}
static void tma_prefetch(const TensorMap*) {}
static void __syncwarp() {}

template <int D, int STAGES>
struct Layout {  // Wg2Smem's offsets that matter here, at ES = 64
  static constexpr int DB = D / 64, QKT = 64 * 128, VRB = 128, VT = 64 * VRB;
  static constexpr int BAR = 0, QS = 1024, KS = QS + STAGES * DB * QKT, VS = KS + STAGES * DB * QKT;
};

HELPERS

template <int D, int STAGES, bool LOADQ = true>
static int check(int n, int t0, int bh, int e0) {
  using L = Layout<D, STAGES>;
  const TensorMap tq{0}, tk{1}, tv{2};
  const u32 sbase = 1 << 20;
  g_calls.clear();
  for (g_lane = 0; g_lane < 32; ++g_lane) wg_producer_tma<L, D, STAGES, LOADQ>(&tq, &tk, &tv, bh, t0, n, e0, g_lane, sbase);
  std::vector<Call> want;  // lane by lane: lane 0's waits, arms and loads in order, then each other lane's waits
  const int nchunks = (n + CH - 1) / CH;
  for (int lane = 0; lane < 32; ++lane)
    for (int c = 0; c < nchunks; ++c) {
      const int slot = c % STAGES;
      if (c >= STAGES) want.push_back({lane, 0, sbase + 8u * (STAGES + slot), (u32)(((c / STAGES) + 1) & 1)});
      if (lane) continue;
      const u32 full = sbase + 8u * slot;
      // every box: 64 × 64 16-bit elements
      want.push_back({0, 1, full, (u32)(((LOADQ ? 2 : 1) * L::DB + 1) * 64 * 64 * 2)});
      for (int b = 0; b < L::DB; ++b) {
        if (LOADQ)
          want.push_back({0, 2, sbase + L::QS + (slot * L::DB + b) * L::QKT, full, &tq, 64 * b, t0 + 64 * c, bh});
        want.push_back({0, 2, sbase + L::KS + (slot * L::DB + b) * L::QKT, full, &tk, 64 * b, t0 + 64 * c, bh});
      }
      want.push_back({0, 2, sbase + L::VS + slot * L::VT, full, &tv, e0, t0 + 64 * c, bh});
    }
  int bad = g_calls.size() != want.size();
  for (size_t i = 0; i < g_calls.size() && i < want.size(); ++i) {
    const Call &g = g_calls[i], &w = want[i];
    bad += g.lane != w.lane || g.kind != w.kind || g.a != w.a || g.b != w.b || g.m != w.m || g.x != w.x ||
           g.y != w.y || g.z != w.z;
  }
  printf("D=%d STAGES=%d LOADQ=%d n=%d %d\n", D, STAGES, LOADQ, n, bad);
  return bad;
}

int main() {
  int bad = check<128, 4>(1000, 4096, 5, 64) + check<128, 2>(64, 0, 0, 0) + check<64, 4>(300, 128, 2, 192) +
            check<64, 2>(1, 0, 7, 0) + check<128, 4, false>(1000, 4096, 5, 64) + check<64, 2, false>(130, 64, 3, 0);
  return bad ? 1 : 0;
}
"""


def run_comparison(helper: str, tmp_path: Path) -> tuple[int, str]:
    return run_host_program(PROGRAM.replace("HELPERS", helper), tmp_path, "tma_producer")


def test_the_producer_asks_for_each_chunks_boxes(tmp_path: Path) -> None:
    assert_no_mismatch(*run_comparison(helper_source(), tmp_path), rows=6)


# Each replacement plants a fault in the helper's text; the comparison must see it.
FAULTS = {
    "the V slice's bytes not expected": ("* L::DB * L::QKT + L::VT;", "* L::DB * L::QKT;"),
    "Q's bytes expected without Q": ("(LOADQ ? 2 : 1) * L::DB", "2 * L::DB"),
    "Q loaded without Q": ("if (LOADQ) tma_load_3d(", "tma_load_3d("),
    "K's boxes into Q's tiles": ("sbase + L::KS + (slot", "sbase + L::QS + (slot"),
    "the token coordinate not moving with the chunk": ("const int t = t0 + c * CH;", "const int t = t0;"),
    "the slot's block offset dropped": ("(slot * L::DB + b) * L::QKT, tq", "b * L::QKT, tq"),
    "the empty barrier's parity inverted": ("((c / STAGES) + 1) & 1", "(c / STAGES) & 1"),
    "every lane issuing the copies": ("if (lane == 0) {\n      const u32 full", "if (true) {\n      const u32 full"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_is_caught(fault: str, tmp_path: Path) -> None:
    assert_planted_fault_caught(helper_source(), *FAULTS[fault], lambda helper: run_comparison(helper, tmp_path))
