// ---- one kernel, a look-back between pieces (KERNEL_NOTES v48) --------------------------------------------------
// The sequence-parallel passes (segments.py) read k and v of every segment but the last twice from DRAM, once for
// the state pass and once for the outputs: at B=1, H=32, D=E=128 in 16 bits at two segments, a quarter more bytes
// than the operator's q, k, v and o. chunk_wg2lb reads them from DRAM once. Persistent CTAs (one an SM, chunk_wg2's
// roles: warps 0-3 the outputs, 4-7 the state, warp 8 the producer) take work items by an atomic ticket. Item t is
// piece p = t / (BH·NSL) (L tokens from p·L) of the pair (head bh, E slice s) numbered t mod BH·NSL, so the piece
// before it on the same pair was taken BH·NSL tickets earlier, by a CTA already running. Per item:
//   walk 1, the state warps (K and V copied):  S_own = Σ_j λ^(n-1-j) k_jᵀ v_j over the piece, from zero; the
//             output warps only see each chunk's slot filled and release it, so that every role meets every
//             phase of every slot barrier (a waiter that skipped one could mistake a phase two ahead for its own);
//   the link: S_in = S0 (or 0) for p = 0, else the inclusive state piece p - 1 published (acquired on its flag);
//             S_inc = λ^n S_in + S_own is published for piece p + 1 (released), or is the final state at the end;
//   walk 2, chunk_wg2's output warps and state chain over the piece from S_in (Q, K and V copied: K and V, read
//             one walk earlier, mostly from L2).
// Each pair has a ring of two published states: piece p + 2 rewrites entry p mod 2 only after it has seen piece
// p + 1's flag, which piece p + 1 set after it had read entry p mod 2. A flag holds p + 1; the launcher clears the
// flags and the ticket counter behind them. No CTA waits on a ticket not yet taken, and the CTA holding a taken
// ticket is running, so the chain always moves. λ is the item's head's: the producer writes each item's λ^j table
// (one of two, by the item's parity) and λ^n before it hands the ticket over, and the consumers hand the ticket's
// entry back once done with the item.

// chunk_wg2's layout at ES = 64, and in its head behind the copy barriers the tickets' barriers — full [2] (the
// producer's 32 lanes, after the ticket and the table are written) and empty [2] (the eight consumer warps, done
// with the item) — and the two tickets; the second λ table behind the tiles.
template <int D, int STAGES>
struct WgLbSmem : Wg2Smem<D, 64, STAGES> {
  using Base = Wg2Smem<D, 64, STAGES>;
  static constexpr int TBAR = Base::UP + 8;  // behind the copies' two scales
  static constexpr int TK = TBAR + 4 * 8;
  static constexpr int TAB2 = Base::BYTES;
  static constexpr int BYTES = TAB2 + 2 * TAB_LO * 4;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(TK + 2 * 4 <= WG_HEAD, "ticket barriers overlap the tiles");
};
constexpr int LB_LAMN = CH + 8;  // λ^n of the item's piece, in its table behind λ^0..λ^C

__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned x;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(x) : "l"(p) : "memory");
  return x;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned x) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(x) : "memory");
}

// Where item t works: its piece (Seg: idx = bh·RUNS + p), E slice, pair and piece index.
struct LbItem {
  Seg seg;
  int e0, pair, p;
};
struct LbWork {
  int pairs;  // BH·NSL
  int nsl, runs, L, N;
  u32 items;  // pairs·runs
  __device__ __forceinline__ LbItem item(u32 t) const {
    LbItem it;
    it.p = (int)(t / (u32)pairs);
    it.pair = (int)(t - (u32)it.p * (u32)pairs);
    const int bh = it.pair / nsl;
    it.e0 = (it.pair - bh * nsl) * 64;
    it.seg = seg_of(bh * runs + it.p, runs, L, N);
    return it;
  }
};

// The item a consumer warp takes i-th (0, 1, …): its ticket, once the producer has handed it over.
template <class LY>
__device__ __forceinline__ u32 lb_ticket(unsigned char* smem, int i) {
  mbar_wait(smem_u32(smem) + LY::TBAR + 8 * (i & 1), (i >> 1) & 1);
  return reinterpret_cast<volatile u32*>(smem + LY::TK)[i & 1];
}
template <class LY>
__device__ __forceinline__ const float* lb_table(unsigned char* smem, int i) {
  return reinterpret_cast<const float*>(smem + ((i & 1) ? LY::TAB2 : LY::TAB));
}
// Item i done with (its ticket entry and table free), by one lane of each consumer warp.
template <class LY>
__device__ __forceinline__ void lb_done(unsigned char* smem, int i, int l) {
  if (l == 0) mbar_arrive(smem_u32(smem) + LY::TBAR + 8 * (2 + (i & 1)));
}

// The producer's g-th chunk through the slots: slot g mod STAGES awaited free, the piece's chunk from token row t0
// (nv tokens) copied, chunk g - 1 announced once its copies have landed (as wg_producer does).
template <class LY, int D, int STAGES, bool LOADQ>
__device__ __forceinline__ void lb_produce(const u16* q, const u16* k, const u16* v, u64 t0, int nv, int E, int e0,
                                           int lane, u32 sbase, int g) {
  const int slot = g % STAGES;
  if (g >= STAGES) mbar_wait(sbase + LY::BAR + 8 * (STAGES + slot), ((g / STAGES) + 1) & 1);
  wg_copy_chunk<LY, D, STAGES, LOADQ>(q, k, v, t0, nv, E, e0, lane, sbase, slot);
  cp_async_commit();
  if (g > 0) {
    cp_async_wait<1>();
    fence_async_smem();
    mbar_arrive(sbase + LY::BAR + 8 * ((g - 1) % STAGES));
  }
}

// The producer warp: a ticket per item (the next one taken while the item's chunks are copied), the item's table,
// then its chunks through the slots — walk 1's K and V, walk 2's Q, K and V — the last announced when no item is
// left.
template <class LY, int D, int STAGES>
__device__ __forceinline__ void lb_producer(const u16* q, const u16* k, const u16* v, const double* lam, int H, int E,
                                            const LbWork& W, unsigned* ticket, unsigned char* smem, int lane) {
  const u32 sbase = smem_u32(smem);
  int g = 0;  // chunks through the slots
  u32 t = 0;
  if (lane == 0) t = atomicAdd(ticket, 1u);
  t = __shfl_sync(0xffffffffu, t, 0);
  for (int i = 0;; ++i) {
    const int b = i & 1;
    if (i >= 2) mbar_wait(sbase + LY::TBAR + 8 * (2 + b), ((i >> 1) + 1) & 1);  // item i - 2 done with
    const bool more = t < W.items;
    const LbItem it = W.item(more ? t : 0u);
    if (more) {
      float* tab = reinterpret_cast<float*>(smem + (b ? LY::TAB2 : LY::TAB));
      const double lm = lam[it.seg.bh % H];
      for (int j = lane; j <= CH; j += 32) decay_table_entry(tab, lm, j);
      if (lane == 0) tab[LB_LAMN] = (float)exp(log(lm) * (double)it.seg.n);
    }
    if (lane == 0) reinterpret_cast<volatile u32*>(smem + LY::TK)[b] = t;
    mbar_arrive(sbase + LY::TBAR + 8 * b);  // every lane, after its own table entries
    if (!more) break;
    u32 next = 0;
    if (lane == 0) next = atomicAdd(ticket, 1u);  // its latency hidden behind the item's copies
    const int nch = (it.seg.n + CH - 1) / CH;
    for (int c = 0; c < nch; ++c, ++g)
      lb_produce<LY, D, STAGES, false>(q, k, v, it.seg.tok0 + (u64)c * CH, min(CH, it.seg.n - c * CH), E, it.e0, lane,
                                       sbase, g);
    for (int c = 0; c < nch; ++c, ++g)
      lb_produce<LY, D, STAGES, true>(q, k, v, it.seg.tok0 + (u64)c * CH, min(CH, it.seg.n - c * CH), E, it.e0, lane,
                                      sbase, g);
    t = __shfl_sync(0xffffffffu, next, 0);
  }
  if (g > 0) {
    cp_async_wait<0>();
    fence_async_smem();
    mbar_arrive(sbase + LY::BAR + 8 * ((g - 1) % STAGES));
  }
}

// The state warps (t = 0..127): walk 1, the link, walk 2 (SP: chunk_wg2's WgSplit with its state held transposed).
template <class SP, class LY, int D>
__device__ __forceinline__ void lb_state(unsigned char* smem, const float* __restrict__ s0, float* __restrict__ sN,
                                         float* __restrict__ ring, unsigned* __restrict__ flags, const LbWork& W,
                                         int E, int t) {
  constexpr int DB = D / 64;
  const u32 sbase = smem_u32(smem);
  const int w = t >> 5, l = t & 31;
  const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
  int g = 0, j = 0;  // chunks through the slots, state copies
  for (int i = 0;; ++i) {
    const u32 tk = lb_ticket<LY>(smem, i);
    if (tk >= W.items) break;
    const LbItem it = W.item(tk);
    const float* tab = lb_table<LY>(smem, i);
    const int nch = (it.seg.n + CH - 1) / CH;
    float S[DB][32];
#pragma unroll
    for (int nb = 0; nb < DB; ++nb)
#pragma unroll
      for (int x = 0; x < 32; ++x) S[nb][x] = 0.f;
    for (int c = 0; c < nch; ++c)
      SP::state_chunk(S, smem, sbase, tab, g + c, it.seg.n - c * CH, w, l, t);
    g += nch;

    float Sin[DB][32];  // the state entering the piece
    const int pair2 = 2 * it.pair;
    if (it.p == 0) {
      Seg s = it.seg;
      s.idx = s.bh;  // S0 is [B·H, D, E]
      SP::C1::template load_state<true>(Sin, s0, s, it.e0, E, r0, c0);
    } else {
      const int e = pair2 + ((it.p - 1) & 1);
      while (ld_acquire_gpu(flags + e) != (unsigned)it.p) {
      }
      const float* src = ring + (u64)e * (D * 64);
#pragma unroll
      for (int nb = 0; nb < DB; ++nb)
#pragma unroll
        for (int x = 0; x < 32; ++x) Sin[nb][x] = __ldcg(src + (32 * nb + x) * 128 + t);
    }
    const float an = tab[LB_LAMN];
#pragma unroll
    for (int nb = 0; nb < DB; ++nb)
#pragma unroll
      for (int x = 0; x < 32; ++x) S[nb][x] = fmaf(an, Sin[nb][x], S[nb][x]);  // S_inc
    if (it.seg.last) {
      SP::C1::template store_state<true>(S, sN, it.seg, it.e0, E, r0, c0);
    } else {
      const int e = pair2 + (it.p & 1);
      float* dst = ring + (u64)e * (D * 64);
#pragma unroll
      for (int nb = 0; nb < DB; ++nb)
#pragma unroll
        for (int x = 0; x < 32; ++x) __stcg(dst + (32 * nb + x) * 128 + t, S[nb][x]);
      __threadfence();
      wg_sync<1>();  // every state thread's entries written and fenced
      if (t == 0) st_release_gpu(flags + e, (unsigned)it.p + 1u);
    }

    SP::publish(Sin, smem, j, w, l, r0, t);
    for (int c = 0; c < nch; ++c) {
      SP::state_chunk(Sin, smem, sbase, tab, g + c, it.seg.n - c * CH, w, l, t);
      if (c + 1 < nch) SP::publish(Sin, smem, j + c + 1, w, l, r0, t);
    }
    g += nch;
    j += nch;
    lb_done<LY>(smem, i, l);
  }
}

// The output warps (t = 0..127): walk 2 of every item, as chunk_wg2's output warps walk a piece.
template <class SP, class LY, int D, int STAGES>
__device__ __forceinline__ void lb_outputs(unsigned char* smem, u16* __restrict__ o, const LbWork& W, int E,
                                           float scale, int t) {
  const int w = t >> 5, l = t & 31;
  const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
  u16* ow = reinterpret_cast<u16*>(smem + LY::OS) + 16 * w * LY::OP;
  int g = 0, j = 0;
  for (int i = 0;; ++i) {
    const u32 tk = lb_ticket<LY>(smem, i);
    if (tk >= W.items) break;
    const LbItem it = W.item(tk);
    const float* tab = lb_table<LY>(smem, i);
    float mask[32];
    wg_decay_mask(mask, tab, scale, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    const int nch = (it.seg.n + CH - 1) / CH;
    for (int c = 0; c < nch; ++c, ++g) {  // walk 1: the state warps' products; each slot seen filled, released
      mbar_wait(smem_u32(smem) + LY::BAR + 8 * (g % STAGES), (g / STAGES) & 1);
      if (l == 0) mbar_arrive(smem_u32(smem) + LY::BAR + 8 * (STAGES + g % STAGES));
    }
    for (int c = 0; c < nch; ++c) {
      float acc_a[32], acc_o[32];
      const int nv = SP::chunk_products(smem, it.seg.n - c * CH, g + c, j + c, acc_a, acc_o, mask, scale, f0, f1, l,
                                        r0, c0, [] {});
      SP::store(acc_o, ow, o, it.seg.tok0 + (u64)c * CH + 16 * w, E, it.e0, 16 * w, nv, l, c0);
    }
    g += nch;
    j += nch;
    lb_done<LY>(smem, i, l);
  }
  SP::finish(l);
}

// Grid: min(SMs, BH·NSL·RUNS) CTAs of 288 threads, one per SM; ES = 64 (the state held transposed). Arguments as
// chunk_wg2's (pieces of L tokens, RUNS = ⌈N / L⌉ of them per head), then BH = B·H, the ring of published states
// [BH·NSL][2][D·64] float32 and the flags [BH·NSL][2] with the ticket counter behind them, all three zero.
template <int D, int NSL, int STAGES, bool BF16>
__global__ void __launch_bounds__(288, 1)
    chunk_wg2lb(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
                const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
                int E, float scale, int L, int RUNS, int BH, float* __restrict__ ring, unsigned* __restrict__ flags) {
  using LY = WgLbSmem<D, STAGES>;
  using SP = WgSplit<D, 64, STAGES, BF16, true, false, LY, 1, true>;  // the mask held, the state transposed
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  const u32 sbase = smem_u32(smem);
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(sbase + LY::BAR + 8 * s, 32);            // full: the producer's lanes
      mbar_init(sbase + LY::BAR + 8 * (STAGES + s), 8);  // empty: the eight consumer warps
    }
    wg_copy_barriers_init(sbase + LY::CBAR);
    for (int b = 0; b < 2; ++b) {
      mbar_init(sbase + LY::TBAR + 8 * b, 32);       // ticket handed over: the producer's lanes
      mbar_init(sbase + LY::TBAR + 8 * (2 + b), 8);  // item done with: the eight consumer warps
    }
    fence_mbar_init();
  }
  __syncthreads();
  const LbWork W{BH * NSL, NSL, RUNS, L, N, (u32)(BH * NSL * RUNS)};
  const int warp = warp_index(), tid = threadIdx.x;
  if (warp < 4) lb_outputs<SP, LY, D, STAGES>(smem, o, W, E, scale, tid);
  else if (warp < 8) lb_state<SP, LY, D>(smem, s0, sN, ring, flags, W, E, tid - 128);
  else lb_producer<LY, D, STAGES>(q, k, v, lam, H, E, W, flags + 2 * W.pairs, smem, tid & 31);
}

template <int D, int STAGES>
__global__ void chunk_wg2lb_layout(int* out) {
  out[0] = WgLbSmem<D, STAGES>::ALLOC;
}
