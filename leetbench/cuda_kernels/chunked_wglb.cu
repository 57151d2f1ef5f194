// ---- one kernel, a look-back between pieces (KERNEL_NOTES v48-v50) --------------------------------------------
// The sequence-parallel passes (segments.py) read k and v of every segment but the last twice from DRAM, once for
// the state pass and once for the outputs: at B=1, H=32, D=E=128 in 16 bits at two segments, a quarter more bytes
// than the operator's q, k, v and o. chunk_wg2lb means to read them from DRAM once (it does not yet: v50 found its
// second walk reading them from DRAM again, 20% slower than the passes at best). Persistent CTAs (one an SM) take work
// items by an atomic ticket. Item t is piece p = t / (BH·NSL) (L tokens from p·L) of the pair (head bh, E slice s)
// numbered t mod BH·NSL, so the piece before it on the same pair was taken BH·NSL tickets earlier, by a CTA already
// running. Per item:
//   walk 1 (K, V through ring B):  S_own = Σ_j λ^(n-1-j) k_jᵀ v_j over the piece, from zero;
//   the link: S_in = S0 (or 0) for p = 0, else the inclusive state piece p - 1 published (acquired on its flag);
//             S_inc = λ^n S_in + S_own is published for piece p + 1 (released), or is the final state at the end;
//   walk 2 (Q, K, V through ring A; K and V read a walk earlier, meant to come from L2): chunk_wg2's output warps
//             and state chain over the piece from S_in.
// Roles: warps 0-3 the outputs and 4-7 the state chain (walk 2 of item i), warps 8-11 walk 1 and the link (of item
// i + 1 meanwhile; S_in handed to the state warps through a scratch of the CTA's), warp 12 ring A's producer, warp
// 13 ring B's, which also takes the tickets and writes each item's λ table and λ^n before handing its ticket over
// (four in flight); every warp that takes an item hands its ticket back when done with it. setmaxnreg gives the
// consumer warpgroups 152 registers a thread and the producers' 56.
// Each pair has a ring of two published states ([D·64] float32 in per-thread order — entry (32·nb + j)·128 + t
// holds thread t's Sᵀ[nb][j] — so a warp reads and writes whole 128-byte lines; the CTAs' S_in hand-over alike):
// piece p + 2 rewrites entry p mod 2 only after it has seen piece p + 1's flag, which piece p + 1 set after it had
// read entry p mod 2. A flag holds p + 1; the launcher clears the flags and the ticket counter behind them. No CTA
// waits on a ticket not yet taken, and the CTA holding a taken ticket is running, so the chain always moves.

// Shared memory. The head: ring A's slot barriers (full [SA]: its producer's lanes; empty [SA]: the output and state
// warps), the float16 scales, λ table 0, the state copies' barriers and scales (chunk_wg2's), ring B's slot barriers
// (full [2]: its producer's lanes; empty [2]: walk 1's warps), the tickets' barriers (full [4]: ring B producer's
// lanes, once the ticket and its table are written; empty [4]: every warp that took the item, done with it), the
// four tickets and the S_in hand-over's barriers. Then ring A's Q, K and V tiles (walk 2), ring B's K and V tiles
// (walk 1), the two state copies, the output staging and λ tables 1-3. chunk_wg2's Ṽ tile is not needed (the
// state held transposed forms Ṽᵀ in registers).
template <int D, int SA>
struct WgLbSmem {
  static constexpr int DB = D / 64, QKT = WG_QKT, VRB = 128, VT = 64 * VRB, OP = 64 + 8;
  static constexpr int BAR = 0, SCL = SM_SCL, TAB = SM_TAB;
  static constexpr int CBAR = SM_HEAD, UP = CBAR + 4 * 8;
  static constexpr int BBAR = UP + 8;
  static constexpr int TBAR = BBAR + 4 * 8;
  static constexpr int TK = TBAR + 8 * 8;
  static constexpr int SINBAR = TK + 4 * 4;  // S_in handed over: full [2], empty [2]
  static constexpr int QS = WG_HEAD;
  static constexpr int KS = QS + SA * DB * QKT;
  static constexpr int VS = KS + SA * DB * QKT;
  static constexpr int KB = VS + SA * VT;
  static constexpr int VB = KB + 2 * DB * QKT;
  static constexpr int SB = VB + 2 * VT;
  static constexpr int SB2 = SB + D * VRB;
  static constexpr int OS = SB2 + D * VRB;
  static constexpr int TABS = OS + 64 * OP * 2;
  static constexpr int BYTES = TABS + 3 * 2 * TAB_LO * 4;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(2 * SA * 8 <= SM_SCL, "ring A's barriers overlap the scales");
  static_assert(SINBAR + 4 * 8 <= WG_HEAD, "the head's barriers overlap the tiles");
};
// Ring B as the producer's copies see a layout: K and V tiles only (no Q).
template <class LY>
struct LbRingB {
  static constexpr int DB = LY::DB, QKT = LY::QKT, VRB = LY::VRB, VT = LY::VT;
  static constexpr int BAR = LY::BBAR, QS = LY::KB, KS = LY::KB, VS = LY::VB;
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

// The item a warp takes i-th (0, 1, …): its ticket, once ring B's producer has handed it over (entry i mod 4), and
// its λ table.
template <class LY>
__device__ __forceinline__ u32 lb_ticket(unsigned char* smem, int i) {
  mbar_wait(smem_u32(smem) + LY::TBAR + 8 * (i & 3), (i >> 2) & 1);
  return reinterpret_cast<volatile u32*>(smem + LY::TK)[i & 3];
}
template <class LY>
__device__ __forceinline__ float* lb_table(unsigned char* smem, int i) {
  const int e = i & 3;
  return reinterpret_cast<float*>(smem + (e == 0 ? LY::TAB : LY::TABS + (e - 1) * 2 * TAB_LO * 4));
}
// Both at once for a consumer warp (ok false once no item is left).
struct LbTaken {
  bool ok;
  LbItem it;
  const float* tab;
};
template <class LY>
__device__ __forceinline__ LbTaken lb_take(unsigned char* smem, int i, const LbWork& W) {
  const u32 tk = lb_ticket<LY>(smem, i);
  return {tk < W.items, W.item(tk < W.items ? tk : 0u), lb_table<LY>(smem, i)};
}

// Item i done with (its ticket entry and table free), by one lane of each warp that took it.
template <class LY>
__device__ __forceinline__ void lb_done(unsigned char* smem, int i, int l) {
  if (l == 0) mbar_arrive(smem_u32(smem) + LY::TBAR + 8 * (4 + (i & 3)));
}

// One producer's g-th chunk through its ring R (ring A: the layout itself; ring B: LbRingB) of STAGES slots: the
// slot awaited free, the piece's chunk from token row t0 (nv tokens) copied, chunk g - 1 announced once its copies
// have landed (as wg_producer does).
template <class R, int D, int STAGES, bool LOADQ>
__device__ __forceinline__ void lb_produce(const u16* q, const u16* k, const u16* v, const LbItem& it, int c, int E,
                                           int lane, u32 sbase, int g) {
  const int slot = g % STAGES;
  if (g >= STAGES) mbar_wait(sbase + R::BAR + 8 * (STAGES + slot), ((g / STAGES) + 1) & 1);
  wg_copy_chunk<R, D, STAGES, LOADQ>(q, k, v, it.seg.tok0 + (u64)c * CH, min(CH, it.seg.n - c * CH), E, it.e0,
                                     lane, sbase, slot);
  cp_async_commit();
  if (g > 0) {
    cp_async_wait<1>();
    fence_async_smem();
    mbar_arrive(sbase + R::BAR + 8 * ((g - 1) % STAGES));
  }
}
// The last chunk a producer copied (g of them), announced.
template <class R, int STAGES>
__device__ __forceinline__ void lb_produced(u32 sbase, int g) {
  if (g == 0) return;
  cp_async_wait<0>();
  fence_async_smem();
  mbar_arrive(sbase + R::BAR + 8 * ((g - 1) % STAGES));
}

// The tickets, handed over by ring B's producer: item i's (entry i mod 4; ticket t, item `it` where ok) with its
// λ table and λ^n, once every warp that took item i - 4 is done with it.
template <class LY>
__device__ __forceinline__ void lb_hand_over(unsigned char* smem, int i, u32 t, bool ok, const LbItem& it,
                                             const double* lam, int H, int lane) {
  const u32 sbase = smem_u32(smem);
  if (i >= 4) mbar_wait(sbase + LY::TBAR + 8 * (4 + (i & 3)), ((i >> 2) + 1) & 1);  // item i - 4 done with
  if (ok) {
    float* tab = lb_table<LY>(smem, i);
    const double lm = lam[it.seg.bh % H];
    for (int j = lane; j <= CH; j += 32) decay_table_entry(tab, lm, j);
    if (lane == 0) tab[LB_LAMN] = (float)exp(log(lm) * (double)it.seg.n);
  }
  if (lane == 0) reinterpret_cast<volatile u32*>(smem + LY::TK)[i & 3] = t;
  mbar_arrive(sbase + LY::TBAR + 8 * (i & 3));  // every lane, after its own table entries
}

// Ring B's producer (warp 13): the tickets (the next one taken while an item's chunks are copied) and walk 1 of
// every item, K and V; it runs ahead of walk 1's warps by ring B's two slots.
template <class LY, int D>
__device__ __forceinline__ void lb_producer_b(const u16* k, const u16* v, const double* lam, int H, int E,
                                              const LbWork& W, unsigned* ticket, unsigned char* smem, int lane) {
  using RB = LbRingB<LY>;
  const u32 sbase = smem_u32(smem);
  int g = 0;
  u32 t = 0;
  if (lane == 0) t = atomicAdd(ticket, 1u);
  t = __shfl_sync(0xffffffffu, t, 0);
  for (int i = 0;; ++i) {
    const bool ok = t < W.items;
    const LbItem it = W.item(ok ? t : 0u);
    lb_hand_over<LY>(smem, i, t, ok, it, lam, H, lane);
    if (!ok) break;
    u32 next = 0;
    if (lane == 0) next = atomicAdd(ticket, 1u);  // its latency hidden behind the copies
    for (int c = 0, n = (it.seg.n + CH - 1) / CH; c < n; ++c, ++g)
      lb_produce<RB, D, 2, false>(nullptr, k, v, it, c, E, lane, sbase, g);
    t = __shfl_sync(0xffffffffu, next, 0);
  }
  lb_produced<RB, 2>(sbase, g);
}

// Ring A's producer (warp 12): walk 2 of every item, Q, K and V, as its ticket comes (it takes part in the tickets'
// hand-back).
template <class LY, int D, int SA>
__device__ __forceinline__ void lb_producer_a(const u16* q, const u16* k, const u16* v, int E, const LbWork& W,
                                              unsigned char* smem, int lane) {
  const u32 sbase = smem_u32(smem);
  int g = 0;
  for (int i = 0;; ++i) {
    const u32 t = lb_ticket<LY>(smem, i);
    if (t >= W.items) break;
    const LbItem it = W.item(t);
    for (int c = 0, n = (it.seg.n + CH - 1) / CH; c < n; ++c, ++g)
      lb_produce<LY, D, SA, true>(q, k, v, it, c, E, lane, sbase, g);
    lb_done<LY>(smem, i, lane);
  }
  lb_produced<LY, SA>(sbase, g);
}

// The link of item `it` (the state warps, t = 0..127): S_in (into Sin) = S0 for the first piece, else the inclusive
// state the piece before published (acquired on its flag); S_inc = λ^n S_in + S_own (formed in So) published for
// the piece after (released), or stored as the final state.
template <class SP, int D, int BARID>
__device__ __forceinline__ void lb_link(const LbItem& it, float (&Sin)[D / 64][32], float (&So)[D / 64][32],
                                        float an, const float* __restrict__ s0, float* __restrict__ sN,
                                        float* __restrict__ ring, unsigned* __restrict__ flags, int E, int t) {
  constexpr int DB = D / 64;
  const int r0 = 16 * (t >> 5) + ((t & 31) >> 2), c0 = 2 * (t & 3);
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
#pragma unroll
  for (int nb = 0; nb < DB; ++nb)
#pragma unroll
    for (int x = 0; x < 32; ++x) So[nb][x] = fmaf(an, Sin[nb][x], So[nb][x]);  // S_inc
  if (it.seg.last) {
    SP::C1::template store_state<true>(So, sN, it.seg, it.e0, E, r0, c0);
    return;
  }
  const int e = pair2 + (it.p & 1);
  float* dst = ring + (u64)e * (D * 64);
#pragma unroll
  for (int nb = 0; nb < DB; ++nb)
#pragma unroll
    for (int x = 0; x < 32; ++x) __stcg(dst + (32 * nb + x) * 128 + t, So[nb][x]);
  __threadfence();
  wg_sync<BARID>();  // every thread's entries written and fenced
  if (t == 0) st_release_gpu(flags + e, (unsigned)it.p + 1u);
}

// Walk 1's warps (t = 0..127): per item its own end state through ring B, the link, and S_in handed to the state
// warps through this CTA's scratch [2][D·64] (entry i mod 2, in the ring's per-thread order) behind the barriers at
// SINBAR: full [2] (its 128 threads), empty [2] (the state warps' 128, once read).
template <class SP, class LY, int D>
__device__ __forceinline__ void lb_walk1(unsigned char* smem, const float* __restrict__ s0, float* __restrict__ sN,
                                         float* __restrict__ ring, unsigned* __restrict__ flags,
                                         float* __restrict__ scratch, const LbWork& W, int E, int t) {
  constexpr int DB = D / 64;
  const u32 sbase = smem_u32(smem);
  const int w = t >> 5, l = t & 31;
  int g = 0;  // chunks through ring B
  for (int i = 0;; ++i) {
    const auto [ok, it, tab] = lb_take<LY>(smem, i, W);
    if (!ok) break;
    // No further than one item ahead of walk 2 (S_in(i - 1) read: walk 2 of item i - 1 begun), so that this walk's
    // K and V are still in L2 when walk 2 reads them again an item later.
    if (i >= 1) mbar_wait(sbase + LY::SINBAR + 8 * (2 + ((i - 1) & 1)), ((i - 1) >> 1) & 1);
    float So[DB][32], Sin[DB][32];
#pragma unroll
    for (int nb = 0; nb < DB; ++nb)
#pragma unroll
      for (int x = 0; x < 32; ++x) So[nb][x] = 0.f;
    const int n = (it.seg.n + CH - 1) / CH;
    for (int c = 0; c < n; ++c, ++g)  // So = λ^n So + Kᵀ Ṽ over ring B's g-th chunk
      SP::template state_chunk<LbRingB<LY>, 2>(So, smem, sbase, tab, g, it.seg.n - c * CH, w, l, t);
    lb_link<SP, D, 2>(it, Sin, So, tab[LB_LAMN], s0, sN, ring, flags, E, t);
    float* dst = scratch + (u64)(i & 1) * (D * 64);
#pragma unroll
    for (int nb = 0; nb < DB; ++nb)
#pragma unroll
      for (int x = 0; x < 32; ++x) dst[(32 * nb + x) * 128 + t] = Sin[nb][x];
    mbar_arrive(sbase + LY::SINBAR + 8 * (i & 1));
    lb_done<LY>(smem, i, l);
  }
}

// The state warps (t = 0..127): per item the chain of walk 2 from the S_in walk 1's warps handed over, each chunk's
// 16-bit copy published for the output warps.
template <class SP, class LY, int D>
__device__ __forceinline__ void lb_state(unsigned char* smem, const float* __restrict__ scratch, const LbWork& W,
                                         int t) {
  constexpr int DB = D / 64;
  const u32 sbase = smem_u32(smem);
  const int w = t >> 5, l = t & 31;
  const int r0 = 16 * w + (l >> 2);
  int g = 0;  // chunks through ring A (and state copies: one each)
  for (int i = 0;; ++i) {
    const auto [ok, it, tab] = lb_take<LY>(smem, i, W);
    if (!ok) break;
    float S[DB][32];
    mbar_wait(sbase + LY::SINBAR + 8 * (i & 1), (i >> 1) & 1);
    const float* src = scratch + (u64)(i & 1) * (D * 64);
#pragma unroll
    for (int nb = 0; nb < DB; ++nb)
#pragma unroll
      for (int x = 0; x < 32; ++x) S[nb][x] = __ldcg(src + (32 * nb + x) * 128 + t);
    mbar_arrive(sbase + LY::SINBAR + 8 * (2 + (i & 1)));
    g += SP::state_walk(S, smem, sbase, tab, g, it.seg.n, w, l, r0, t);
    lb_done<LY>(smem, i, l);
  }
}

// The output warps (t = 0..127): walk 2 of every item, as chunk_wg2's output warps walk a piece.
template <class SP, class LY, int D>
__device__ __forceinline__ void lb_outputs(unsigned char* smem, u16* __restrict__ o, const LbWork& W, int E,
                                           float scale, int t) {
  const int w = t >> 5, l = t & 31;
  const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
  u16* ow = reinterpret_cast<u16*>(smem + LY::OS) + 16 * w * LY::OP;
  int g = 0;  // chunks through ring A (and state copies: one each)
  for (int i = 0;; ++i) {
    const auto [ok, it, tab] = lb_take<LY>(smem, i, W);
    if (!ok) break;
    float mask[32];
    wg_decay_mask(mask, tab, scale, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    const int n = (it.seg.n + CH - 1) / CH;
    for (int c = 0; c < n; ++c) {
      float acc_a[32], acc_o[32];
      const int nv = SP::chunk_products(smem, it.seg.n - c * CH, g + c, acc_a, acc_o, mask, scale, f0, f1, l, r0,
                                        c0, [] {});
      SP::store(acc_o, ow, o, it.seg.tok0 + (u64)c * CH + 16 * w, E, it.e0, 16 * w, nv, l, c0);
    }
    g += n;
    lb_done<LY>(smem, i, l);
  }
  SP::finish(l);
}

// The registers a warpgroup's threads may hold from here on (all four warps of it execute this): the consumer
// warpgroups' states and accumulators take more than the 128 a thread of a 512-thread CTA gets, the producers less.
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}

// Grid: min(SMs, BH·NSL·RUNS) CTAs of 512 threads (warpgroups: outputs, the state chain, walk 1, the two producer
// warps and two idle ones), one per SM; ES = 64 (the state held transposed), SA stages in ring A, two in ring B.
// Arguments as chunk_wg2's (pieces of L tokens, RUNS = ⌈N / L⌉ of them per head), then BH = B·H, the ring of
// published states [BH·NSL][2][D·64] float32, the flags [BH·NSL][2] with the ticket counter behind them (the flags
// and the counter zero), and a scratch [grid][2][D·64] float32 for each CTA's S_in hand-over.
template <int D, int NSL, int SA, bool BF16>
__global__ void __launch_bounds__(512, 1)
    chunk_wg2lb(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
                const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
                int E, float scale, int L, int RUNS, int BH, float* __restrict__ ring, unsigned* __restrict__ flags,
                float* __restrict__ scratch) {
  using LY = WgLbSmem<D, SA>;
  using SP = WgSplit<D, 64, SA, BF16, true, false, LY, 1, true>;  // the mask held, the state transposed
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  const u32 sbase = smem_u32(smem);
  if (threadIdx.x == 0) {
    // (full: who arrives once a slot is filled; empty: once it has been read)
    ring_barriers_init(sbase + LY::BAR, SA, 32, 8);       // ring A: its producer's lanes; the output, state warps
    wg_copy_barriers_init(sbase + LY::CBAR);
    ring_barriers_init(sbase + LY::BBAR, 2, 32, 4);       // ring B: its producer's lanes; walk 1's warps
    ring_barriers_init(sbase + LY::SINBAR, 2, 128, 128);  // S_in: walk 1's threads; the state threads
    ring_barriers_init(sbase + LY::TBAR, 4, 32, 13);      // tickets: ring B producer's lanes; the 13 warps taking each
    fence_mbar_init();
  }
  __syncthreads();
  const LbWork W{BH * NSL, NSL, RUNS, L, N, (u32)(BH * NSL * RUNS)};
  const int warp = warp_index(), tid = threadIdx.x;
  float* own = scratch + (u64)blockIdx.x * 2 * (D * 64);
  if (warp < 12) {  // each role's code inside its own register budget
    setmaxnreg_inc<152>();
    if (warp < 4) lb_outputs<SP, LY, D>(smem, o, W, E, scale, tid);
    else if (warp < 8) lb_state<SP, LY, D>(smem, own, W, tid - 128);
    else lb_walk1<SP, LY, D>(smem, s0, sN, ring, flags, own, W, E, tid - 256);
  } else {
    setmaxnreg_dec<56>();  // 128 · 56 + 384 · 152 ≤ 65536 (ptxas -v: 8 bytes of the consumers' spill)
    if (warp == 12) lb_producer_a<LY, D, SA>(q, k, v, E, W, smem, tid & 31);
    else if (warp == 13) lb_producer_b<LY, D>(k, v, lam, H, E, W, flags + 2 * W.pairs, smem, tid & 31);
  }
}

template <int D, int SA>
__global__ void chunk_wg2lb_layout(int* out) {
  out[0] = WgLbSmem<D, SA>::ALLOC;
}
