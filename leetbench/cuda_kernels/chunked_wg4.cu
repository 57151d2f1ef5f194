// ---- two E slices on one CTA, the scores shared (KERNEL_NOTES v25) ------------------------------------------------
// Every generation-2 kernel above forms a chunk's P = (Q Kᵀ) ⊙ M once per E slice of ES columns, so at E = 2·ES
// the tensor cores do Q Kᵀ twice per chunk (v24: ≈ 265 TFLOPS of products on every shape not bandwidth-bound;
// Q Kᵀ is 2/7 of them at D=E=128). chunk_wg4 covers two slices with one CTA and forms P once:
//   warps 0-3, outputs: per chunk Q Kᵀ, Q S_in of both slices (from their state copies), P, then
//                       O_s = c·diag(λ^(i+1)) Q S_in,s + P V_s for s = 0, 1, both stored (2·ES columns);
//   warps 4-7 and 8-11: the state chain of slice 0 and of slice 1, each chunk_wg2's state warpgroup (WgSplit's
//                       state) on its own tiles, copies, copy barriers, scales and named barrier (1 and 2);
//   warp 12: the producer, Q and K once, V of both slices.
// A slot is released by the four output warps and the eight state warps; a state copy of slice s by the four
// output warps. The mask is formed per chunk from the λ table inside the product with the scores (no registers
// held across chunks: two output accumulators already take 64 a thread). Grid: B·H·RUNS·NSL CTAs of 416
// threads (NSL = E / (2·ES)), one per SM (≤ 152 registers a thread).

// Shared memory: the head (slot barriers, both slices' float16 scales at SM_SCL + 16·s, the λ table, then each
// slice's copy barriers [full 2, empty 2] and copy scales [2] at CBAR + 40·s), Q and K tiles once, then per slice
// its V tiles, Ṽ, two state copies and output staging. QSTAGE (KERNEL_NOTES v27): no output staging of its own;
// each output warp stages its 16 rows, one slice after the other, in the Q tile of the chunk's slot, which only
// the output warps read and which is not released before the outputs are stored (the producer's next cp.async
// into it, generic writes as these are, is ordered after them by the slot's empty barrier): 18 KB fewer at
// ES = 64, room for a third stage at D = 128. DIRECT (KERNEL_NOTES v53) takes the same layout: its outputs leave
// straight from the accumulators (wg_store_direct), staged nowhere. NOSTAGE: the layout without output staging.
template <int D, int ES, int STAGES, bool NOSTAGE = false>
struct Wg4Smem {
  using W = WgSmem<D, ES, STAGES>;
  static constexpr int DB = W::DB, QKT = W::QKT, VRB = W::VRB, VT = W::VT, OP = W::OP;
  static constexpr int BAR = 0, TAB = SM_TAB;
  static constexpr int CBAR = SM_HEAD;
  static constexpr int QS = WG_HEAD;
  static constexpr int KS = QS + STAGES * DB * QKT;
  static constexpr int VS = KS + STAGES * DB * QKT;  // slice s's V tiles at VS + s·STAGES·VT
  static constexpr int VD = VS + 2 * STAGES * VT;    // slice s's Ṽ at VD + s·VT
  static constexpr int SB = VD + 2 * VT;             // slice s's copies at SB + 2s·D·VRB and one D·VRB further
  static constexpr int OS = SB + 4 * D * VRB;        // slice s's output staging [64][OP] at OS + s·64·OP·2
  static constexpr int BYTES = NOSTAGE ? OS : OS + 2 * 64 * OP * 2;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(CBAR + 2 * 40 <= WG_HEAD, "copy barriers overlap the tiles");
  static_assert(SM_SCL + 2 * 16 <= SM_TAB, "the slices' float16 scales overlap the λ table");
};

// Slice SL of Wg4Smem under Wg2Smem's names, for WgSplit's state warpgroup and the output staging.
template <int D, int ES, int STAGES, int SL>
struct Wg4Slice {
  using W = Wg4Smem<D, ES, STAGES>;
  static constexpr int DB = W::DB, QKT = W::QKT, VRB = W::VRB, VT = W::VT, OP = W::OP;
  static constexpr int BAR = W::BAR, TAB = W::TAB, SCL = SM_SCL + 16 * SL;
  static constexpr int QS = W::QS, KS = W::KS;
  static constexpr int VS = W::VS + SL * STAGES * VT, VD = W::VD + SL * VT;
  static constexpr int SB = W::SB + 2 * SL * D * VRB, SB2 = SB + D * VRB;
  static constexpr int OS = W::OS + SL * 64 * OP * 2;
  static constexpr int CBAR = W::CBAR + 40 * SL, UP = CBAR + 32;
};

// P = (Q Kᵀ) ⊙ M with M's entries (scale·λ^(i-j) on and below the diagonal) formed from the λ table as they are
// used, packed into the A operand of P V: wg_decay_mask and wg_masked_scores in one pass.
template <bool BF16>
__device__ __forceinline__ void wg_scores_masked(const float (&acc)[32], const float* tab, float scale, int r0,
                                                 int c0, u32 (&pa)[4][4]) {
  auto m = [&](int e) { return wg_mask_entry(tab, scale, r0, c0, e); };
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = 8 * kk + 2 * r;
      pa[kk][r] = pack2<BF16>(acc[e] * m(e), acc[e + 1] * m(e + 1));
    }
}

// WIDE (KERNEL_NOTES v30): the output warps' Q S_in and P V of both slices as one product each of N = 2·ES
// columns (m64n128 at ES = 64) — Q's tiles read once for both slices, half as many wgmma instructions. The two
// slices' state copies (and V tiles) are one MN-major operand: slice 1's tile at a fixed distance past slice
// 0's (the descriptor's LBO), and the accumulator holds slice 0's columns in its first ES/2 values.
template <int D, int ES, int STAGES, bool BF16, bool QSTAGE = false, bool WIDE = false, bool DIRECT = false>
struct WgPair {
  static_assert(!(QSTAGE && DIRECT), "the outputs are staged in Q or not staged at all");
  using LY = Wg4Smem<D, ES, STAGES, QSTAGE || DIRECT>;
  static_assert(!QSTAGE || 4 * 16 * LY::OP * 2 <= LY::DB * LY::QKT, "four warps' output staging does not fit a Q tile");
  using S0 = Wg4Slice<D, ES, STAGES, 0>;
  using S1 = Wg4Slice<D, ES, STAGES, 1>;
  using C1 = WgConsumer<D, ES, STAGES, BF16>;  // its output store (the staging pitch OP is the same)
  static constexpr int DB = LY::DB, NA = ES / 2;

  // WIDE: each product's second slice (its state copy, its V tile) at a fixed distance past slice 0's
  static constexpr u32 COPY_LBO = S1::SB - S0::SB;  // the same for both copies (SB2 = SB + D·VRB in each slice)
  static constexpr u32 V_LBO = S1::VS - S0::VS;     // STAGES·VT
  // WIDE: the accumulator's rows scaled, slice 0's columns by g0 (row r0), g1 (row r0 + 8) and slice 1's by h0, h1
  static __device__ __forceinline__ void scale_both(float (&o)[2 * NA], float g0, float g1, float h0, float h1) {
#pragma unroll
    for (int j = 0; j < NA / 2; ++j) {
      const float a = j < NA / 4 ? g0 : h0, b = j < NA / 4 ? g1 : h1;
      o[4 * j] *= a; o[4 * j + 1] *= a;
      o[4 * j + 2] *= b; o[4 * j + 3] *= b;
    }
  }

  // The output warps' loop: both slices of every chunk, e0 the CTA's first column.
  static __device__ __forceinline__ void outputs(unsigned char* smem, u16* __restrict__ o, const Seg& seg, int e0,
                                                 int E, float scale, int t) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + LY::TAB);
    const float* up0 = reinterpret_cast<const float*>(smem + S0::UP);
    const float* up1 = reinterpret_cast<const float*>(smem + S1::UP);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    // each slice's own staging; unused under QSTAGE and DIRECT (Wg4Slice::OS lies past that layout's allocation)
    u16* ow0 = reinterpret_cast<u16*>(smem + S0::OS) + 16 * w * LY::OP;
    u16* ow1 = reinterpret_cast<u16*>(smem + S1::OS) + 16 * w * LY::OP;
    const int nchunks = (seg.n + CH - 1) / CH;
    for (int c = 0; c < nchunks; ++c) {
      const int slot = c % STAGES, buf = c & 1;
      mbar_wait(sbase + LY::BAR + 8 * slot, (c / STAGES) & 1);
      const int nv = min(CH, seg.n - c * CH);
      const u32 qs = sbase + LY::QS + slot * DB * LY::QKT;
      wg_fence();
      float acc_a[32], o0[NA], o1[NA];
      float ob[WIDE ? 2 * NA : 1];  // WIDE: both slices' outputs, slice 0's columns first
      wg_scores<D, BF16>(acc_a, qs, sbase + LY::KS + slot * DB * LY::QKT, false);  // needs only the slot
      wg_commit();
      mbar_wait(sbase + S0::CBAR + 8 * buf, (c >> 1) & 1);  // copy c of each slice from its state warps
      mbar_wait(sbase + S1::CBAR + 8 * buf, (c >> 1) & 1);
      wg_fence();
      if constexpr (WIDE) {
        wg_query_state<D, ES, BF16, 2>(ob, qs, sbase + (buf ? S0::SB2 : S0::SB), false, COPY_LBO);
      } else {
        wg_query_state<D, ES, BF16>(o0, qs, sbase + (buf ? S0::SB2 : S0::SB), false);
        wg_query_state<D, ES, BF16>(o1, qs, sbase + (buf ? S1::SB2 : S1::SB), false);
      }
      wg_commit();
      wg_wait<1>();
      wg_pin(acc_a);
      u32 pa[4][4];
      wg_scores_masked<BF16>(acc_a, tab, scale, r0, c0, pa);
      wg_wait<0>();
      if constexpr (WIDE) {
        wg_pin(ob);
      } else {
        wg_pin(o0);
        wg_pin(o1);
      }
      const float u0 = up0[buf], u1 = up1[buf];  // read before the copies are released: copy c + 2 rewrites them
      if (l == 0) {  // this warp's share of Q S_in read copy c of both slices
        mbar_arrive(sbase + S0::CBAR + 8 * (2 + buf));
        mbar_arrive(sbase + S1::CBAR + 8 * (2 + buf));
      }
      if constexpr (WIDE) {
        scale_both(ob, f0 * u0, f1 * u0, f0 * u1, f1 * u1);
        wg_fence();
        wg_values<ES, BF16, 2>(ob, pa, sbase + S0::VS + slot * LY::VT, V_LBO);
      } else {
        wg_scale_rows(o0, f0 * u0, f1 * u0);
        wg_scale_rows(o1, f0 * u1, f1 * u1);
        wg_fence();
        wg_values<ES, BF16>(o0, pa, sbase + S0::VS + slot * LY::VT);
        wg_values<ES, BF16>(o1, pa, sbase + S1::VS + slot * LY::VT);
      }
      wg_commit();
      wg_wait<0>();
      if constexpr (WIDE) {
        wg_pin(ob);
#pragma unroll
        for (int i = 0; i < NA; ++i) o0[i] = ob[i], o1[i] = ob[NA + i];
      } else {
        wg_pin(o0);
        wg_pin(o1);
      }
      const u64 trow = seg.tok0 + (u64)c * CH + 16 * w;
      if constexpr (DIRECT) {
        if (l == 0) mbar_arrive(sbase + LY::BAR + 8 * (STAGES + slot));  // this warp's share no longer reads it
        wg_store_direct<ES, BF16>(o0, o, trow, E, e0, 16 * w, nv, l);
        wg_store_direct<ES, BF16>(o1, o, trow, E, e0 + ES, 16 * w, nv, l);
      } else if constexpr (QSTAGE) {
        // every output warp's products that read this Q tile are complete before any warp writes into it
        wg_sync<3>();
        u16* ow = reinterpret_cast<u16*>(smem + LY::QS + slot * DB * LY::QKT) + 16 * w * LY::OP;
        C1::store_outputs(o0, ow, o, trow, E, e0, 16 * w, nv, l, c0);  // ends with __syncwarp: ow is free again
        C1::store_outputs(o1, ow, o, trow, E, e0 + ES, 16 * w, nv, l, c0);
        if (l == 0) mbar_arrive(sbase + LY::BAR + 8 * (STAGES + slot));  // staging read back: the slot is free
      } else {
        if (l == 0) mbar_arrive(sbase + LY::BAR + 8 * (STAGES + slot));  // this warp's share no longer reads it
        C1::store_outputs(o0, ow0, o, trow, E, e0, 16 * w, nv, l, c0);
        C1::store_outputs(o1, ow1, o, trow, E, e0 + ES, 16 * w, nv, l, c0);
      }
    }
  }
};

// Grid: B·H·RUNS·NSL CTAs of 416 threads, one per SM; arguments as chunk_wg's (NSL = E / (2·ES)). QSTAGE:
// outputs staged in the slot's Q tile (Wg4Smem); EARLY: a chunk announced before the producer waits for a slot
// (wg_producer); WIDE: the output warps' products over both slices at once (WgPair); DIRECT: outputs stored from
// the accumulators, QSTAGE's layout without its staging (WgPair).
template <int D, int ES, int NSL, int STAGES, bool BF16, bool QSTAGE = false, bool EARLY = false,
          bool WIDE = false, bool DIRECT = false>
__global__ void __launch_bounds__(416, 1)
    chunk_wg4(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
              const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
              int E, float scale, int L, int RUNS) {
  using LY = Wg4Smem<D, ES, STAGES, QSTAGE || DIRECT>;
  static_assert(Wg4Slice<D, ES, STAGES, 1>::VS - Wg4Slice<D, ES, STAGES, 0>::VS == STAGES * LY::VT,
                "wg_producer puts slice 1's V tiles STAGES·VT after slice 0's");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  WgCta cta = wg_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H, 32, 12);
  cta.e0 *= 2;  // wg_cta's slice index times ES: this CTA's two slices start at 2·ES times it
  if (threadIdx.x == 0) {
    for (int sl = 0; sl < 2; ++sl) wg_copy_barriers_init(cta.sbase + LY::CBAR + 40 * sl);  // per slice
    fence_mbar_init();
  }
  __syncthreads();
  const int tid = threadIdx.x, warp = warp_index();
  if (warp < 4) {
    WgPair<D, ES, STAGES, BF16, QSTAGE, WIDE, DIRECT>::outputs(cta.smem, o, cta.seg, cta.e0, E, scale, tid);
  } else if (warp < 8) {
    WgSplit<D, ES, STAGES, BF16, true, false, Wg4Slice<D, ES, STAGES, 0>, 1>::state(cta.smem, s0, sN, cta.seg,
                                                                                    cta.e0, E, tid - 128);
  } else if (warp < 12) {
    WgSplit<D, ES, STAGES, BF16, true, false, Wg4Slice<D, ES, STAGES, 1>, 2>::state(cta.smem, s0, sN, cta.seg,
                                                                                    cta.e0 + ES, E, tid - 256);
  } else {
    wg_producer<Wg4Slice<D, ES, STAGES, 0>, D, STAGES, true, 2, EARLY>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0,
                                                                 tid & 31, cta.sbase);
  }
}

template <int D, int ES, int STAGES, bool NOSTAGE = false>
__global__ void chunk_wg4_layout(int* out) {
  out[0] = Wg4Smem<D, ES, STAGES, NOSTAGE>::ALLOC;
}
