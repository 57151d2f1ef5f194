// Chunked decay attention, second generation: Hopper warpgroup products (wgmma, sm_90a), 16-bit inputs.
//
// The same operator, work split and arguments as chunk_fwd in chunked.cu (one CTA per (b, h, piece of the
// sequence, ES columns of E); the sequence-parallel passes around it are shared), per chunk of C = 64 tokens:
//   O     = c·[((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in],   M[i, j] = λ^(i-j) (j ≤ i), else 0
//   S_out = λ^n S_in + Kᵀ Ṽ,   Ṽ[j] = λ^(n-1-j) v_j       (n = tokens in the chunk)
//
// Inside a CTA: warps 0-3 form one consumer warpgroup, warp 4 is the producer. Each chunk is four warpgroup
// products, issued back to back and waited for in order — Q Kᵀ (64 × 64, K = D), Q S_in (64 × ES, K = D),
// Kᵀ Ṽ into the state (D × ES, K = 64, accumulated in the float32 registers that hold S), then P V
// (64 × ES, K = 64) with P, the masked scores, taken from registers as the A operand. Every operand tile is
// read by the tensor cores straight from swizzled shared memory (hopper.cuh): one instruction per 16 k,
// instead of chunked.cu's ldmatrix + 8-column mma.sync per warp, which left those consumers issue-bound.
// One layout of the K tile serves both Q Kᵀ (K-major) and Kᵀ Ṽ (M-major); V serves P V and, decayed into
// Ṽ by the consumers, Kᵀ Ṽ (both N-major). The 16-bit copy of S (N-major, [D][ES]) is rewritten after every
// chunk; for float16 it is scaled by a power of two 2^-s so that it never overflows (|S| > 65504 at λ = 1
// with mean-shifted inputs), and Q S_in is multiplied back by 2^s in float32 (exact).
//
// The producer copies each chunk with 16-byte cp.async into the swizzled tiles (zero-filling rows past the
// piece's end), waits for them one chunk behind, makes them visible to the tensor cores' proxy and arrives on
// the slot's full barrier; the consumers release the slot when the chunk's products are done. The consumers
// meet at named barrier 1 before a chunk's products (Ṽ and the state copy written) and after them (each warp
// waits only for its own share of a product, and every share reads all of B); the four warps reach each
// barrier through the same instruction, so compute-sanitizer's synccheck holds. scripts/KERNEL_NOTES.md (v8)
// has the measurements, and the designs tried and dropped.

#define WG_HEAD 1024  // first tile: 1024-byte aligned, as the 128-byte swizzle needs
#define WG_QKT (64 * 128)  // a block of a Q or K tile: 64 tokens × 64 16-bit columns

// Per-role timeline of one CTA (scripts/timeline.py). Compiled with LB_TIMELINE=b (a block index), lane 0 of
// chunk_wg2's first output warp, first state warp and producer (threads 0, 128, 256: role = thread / 128) in CTA b
// writes clock64() at each of its events of the first LB_TL_CHUNKS chunks into lb_timeline[role][chunk][event]
// (in the kernels of more threads, thread 384 on writes nothing); without it LB_STAMP is nothing. Events per role,
// in order (timeline.py's EVENTS names them):
//   outputs:  0 begun, 1 slot full, 2 state copy ready, 3 Q Kᵀ done, 4 Q S_in done, 5 P V done, 6 stored (PIPE:
//             while chunk c + 1's products run)
//   state:    0 begun, 1 slot full, 2 Ṽ formed (warpgroup met), 3 Kᵀ Ṽ done, 4 met again, 5 copy buffer free,
//             6 copy of the next state published
//   producer: 0 begun, 1 slot free, 2 copies issued, 3 announced (chunk_wg2_tma: its lane 0 arms the slot's barrier
//             with the chunk's bytes and issues the copies, the copy engine completes the barrier — 2 and 3 at once)
#ifdef LB_TIMELINE
#define LB_TL_CHUNKS 512
#define LB_TL_EVENTS 8
__device__ unsigned long long lb_timeline[3][LB_TL_CHUNKS][LB_TL_EVENTS];
#define LB_STAMP(c, ev)                                                                                  \
  do {                                                                                                   \
    const int lb_c = (c);                                                                                \
    if (blockIdx.x == (LB_TIMELINE) && (threadIdx.x & 127) == 0 && threadIdx.x < 384 && lb_c >= 0 &&   \
        lb_c < LB_TL_CHUNKS)                                                                             \
      lb_timeline[threadIdx.x >> 7][lb_c][ev] = clock64();                                               \
  } while (0)
#else
#define LB_STAMP(c, ev) \
  do {                  \
  } while (0)
#endif

template <int D, int ES, int STAGES>
struct WgSmem {
  static constexpr int DB = D / 64;      // 64-column blocks of a Q / K row
  static constexpr int QKT = WG_QKT;     // one block of a chunk: 64 tokens × 128 bytes
  static constexpr int VRB = ES * 2;     // bytes per V row slice, per state-copy row (128 or 64)
  static constexpr int VT = 64 * VRB;    // one V tile
  static constexpr int OP = ES + 8;      // output staging pitch (elements)
  static constexpr int BAR = 0;
  static constexpr int SCL = SM_SCL;     // float16 state-copy exponents, one per consumer warp
  static constexpr int TAB = SM_TAB;
  static constexpr int QS = WG_HEAD;
  static constexpr int KS = QS + STAGES * DB * QKT;
  static constexpr int VS = KS + STAGES * DB * QKT;
  static constexpr int VD = VS + STAGES * VT;  // Ṽ of the chunk being consumed
  static constexpr int SB = VD + VT;           // 16-bit state copy [D][ES]
  static constexpr int OS = SB + D * VRB;      // output staging [64][OP]
  static constexpr int BYTES = OS + 64 * OP * 2;
  static constexpr int ALLOC = BYTES + 1024;  // the launch's dynamic shared memory: room to align the base
  static_assert(SM_HEAD <= WG_HEAD, "table overlaps the tiles");
  static_assert(2 * STAGES * 8 <= SM_SCL, "barriers overlap the scales");
};

// Two state copies (chunk_wg2, and chunk_wg with COPIES = 2): WgSmem's tiles, then a second 16-bit state copy;
// the barriers and float16 scales by which chunk_wg2's warpgroups hand the copies over, in the head.
template <int D, int ES, int STAGES>
struct Wg2Smem : WgSmem<D, ES, STAGES> {
  using Base = WgSmem<D, ES, STAGES>;
  static constexpr int CBAR = SM_HEAD;      // copy full [2], copy empty [2]: in the head, behind the λ table
  static constexpr int UP = CBAR + 4 * 8;   // the copies' float16 scales 2^s [2]
  static constexpr int SB2 = Base::BYTES;   // the second state copy (the first at Base::SB)
  static constexpr int BYTES = SB2 + D * Base::VRB;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(UP + 2 * 4 <= WG_HEAD, "copy barriers overlap the tiles");
};

// Two output warpgroups (chunk_wg3): Wg2Smem's, then the odd chunks' output staging.
template <int D, int ES, int STAGES>
struct Wg3Smem : Wg2Smem<D, ES, STAGES> {
  using Base = Wg2Smem<D, ES, STAGES>;
  static constexpr int OS2 = Base::BYTES;  // output staging [64][OP] of the warpgroup taking the odd chunks
  static constexpr int BYTES = OS2 + 64 * Base::OP * 2;
  static constexpr int ALLOC = BYTES + 1024;
};

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Every 16-byte piece of a whole chunk (CH rows of PC pieces) that one lane of the copying warp copies, in
// the order of the plain loop (idx = lane, lane + 32, ...: row idx / PC, piece idx % PC): f(shared offset,
// element offset in the source rows) with the shared offset of row r, piece p = (p / (RB/16))·BLK + swz<RB>(r,
// p mod RB/16). A lane keeps one piece p while its rows step by RPI = 32 / PC, and a swizzle depends on r mod 8
// alone, so its PERIOD = 8 / min(RPI, 8) offsets are computed once and every pass adds a constant: ≈ 1 issued
// instruction per cp.async, where the plain loop's divisions and XORs took ≈ 16 (KERNEL_NOTES v31-v33).
template <int RB, int PC, int BLK, class F>
__device__ __forceinline__ void wg_copy_rows(int lane, u64 stride, F&& f) {
  static_assert(32 % PC == 0, "a warp covers whole rows");
  constexpr int PPR = RB / 16;  // pieces per tile row
  constexpr int RPI = 32 / PC, PERIOD = RPI >= 8 ? 1 : 8 / RPI;
  const int r0 = lane / PC, p = lane % PC;
  u32 at[PERIOD];
#pragma unroll
  for (int j = 0; j < PERIOD; ++j)
    at[j] = (u32)((p / PPR) * BLK) + swz<RB>(r0 + j * RPI, p % PPR) - (u32)(j * RPI * RB);
  const u64 src = (u64)r0 * stride + p * 8;
#pragma unroll
  for (int i = 0; i < CH / RPI; ++i) f(at[i % PERIOD] + (u32)(i * RPI * RB), src + (u64)(i * RPI) * stride);
}

// One chunk's copies into slot `slot` (Q — unless LOADQ is false — K, and NV V slices; see wg_producer), rows from
// token row t0 on; a partial chunk (nv < CH) through the plain loop, which zero-fills the rows past the piece's end.
template <class L, int D, int STAGES, bool LOADQ, int NV = 1>
__device__ __forceinline__ void wg_copy_chunk(const u16* q, const u16* k, const u16* v, u64 t0, int nv, int E, int e0,
                                              int lane, u32 sbase, int slot) {
  constexpr int QPC = D / 8;        // 16-byte pieces per Q / K row
  constexpr int VPC = L::VRB / 16;  // per V row slice
  const u32 qd = sbase + L::QS + slot * L::DB * L::QKT, kd = sbase + L::KS + slot * L::DB * L::QKT;
  const u32 vd = sbase + L::VS + slot * L::VT;
  if (nv == CH) {  // every chunk but a piece's partial last one
    const u16 *qc = q + t0 * D, *kc = k + t0 * D;
    wg_copy_rows<128, QPC, L::QKT>(lane, D, [&](u32 so, u64 off) {
      if (LOADQ) cp_async16(qd + so, qc + off, 16u);
      cp_async16(kd + so, kc + off, 16u);
    });
#pragma unroll
    for (int sl = 0; sl < NV; ++sl) {
      const u16* vc = v + t0 * E + e0 + sl * (L::VRB / 2);
      const u32 vs = vd + sl * STAGES * L::VT;
      wg_copy_rows<L::VRB, VPC, 0>(lane, (u64)E, [&](u32 so, u64 off) { cp_async16(vs + so, vc + off, 16u); });
    }
  } else {
#pragma unroll 8
    for (int idx = lane; idx < CH * QPC; idx += 32) {
      const int row = idx / QPC, p = idx % QPC;
      const bool ok = row < nv;
      const u64 off = (t0 + (ok ? row : 0)) * D + p * 8;
      const u32 so = (u32)((p >> 3) * L::QKT) + swz<128>(row, p & 7);
      if (LOADQ) cp_async16(qd + so, q + off, ok ? 16u : 0u);
      cp_async16(kd + so, k + off, ok ? 16u : 0u);
    }
#pragma unroll
    for (int sl = 0; sl < NV; ++sl)
#pragma unroll 4
      for (int idx = lane; idx < CH * VPC; idx += 32) {
        const int row = idx / VPC, p = idx % VPC;
        const bool ok = row < nv;
        cp_async16(vd + sl * STAGES * L::VT + swz<L::VRB>(row, p),
                   v + (t0 + (ok ? row : 0)) * E + e0 + sl * (L::VRB / 2) + p * 8, ok ? 16u : 0u);
      }
  }
}

// The producer warp: chunk c into slot c mod STAGES (Q — unless LOADQ is false — and K as D/64 blocks of
// 64 × 128 bytes, this CTA's V slice as 64 rows of VRB bytes, at layout L's offsets; NV slices side by side in
// E, slice s's tiles STAGES·VT bytes after slice s - 1's), then chunk c-1's copies awaited, fenced for the async
// proxy and announced. So chunk c - 1 is announced only once slot c is free: with two stages its consumers wait
// for every warp to release chunk c - 2. EARLY (KERNEL_NOTES v27): where slot c is not free yet, chunk c - 1 is
// awaited and announced before the producer waits for it. Whole chunks are copied through wg_copy_rows; a
// piece's partial last chunk through the plain loop, which zero-fills the rows past its end.
template <class L, int D, int STAGES, bool LOADQ, int NV = 1, bool EARLY = false>
__device__ __forceinline__ void wg_producer(const u16* q, const u16* k, const u16* v, u64 tok0, int n, int E,
                                            int e0, int lane, u32 sbase) {
  const int nchunks = (n + CH - 1) / CH;
  for (int c = 0; c < nchunks; ++c) {
    LB_STAMP(c, 0);
    const int slot = c % STAGES;
    const u32 empty = sbase + L::BAR + 8 * (STAGES + slot), parity = ((c / STAGES) + 1) & 1;
    bool told = false;  // chunk c - 1 announced before the wait for slot c (EARLY)
    if (EARLY && c >= STAGES && !mbar_test(empty, parity)) {
      cp_async_wait<0>();
      fence_async_smem();
      mbar_arrive(sbase + L::BAR + 8 * ((c - 1) % STAGES));
      LB_STAMP(c - 1, 3);
      told = true;
    }
    if (c >= STAGES) mbar_wait(empty, parity);
    LB_STAMP(c, 1);
    const int nv = min(CH, n - c * CH);
    const u64 t0 = tok0 + (u64)c * CH;
    wg_copy_chunk<L, D, STAGES, LOADQ, NV>(q, k, v, t0, nv, E, e0, lane, sbase, slot);
    cp_async_commit();
    LB_STAMP(c, 2);
    if (c > 0 && !told) {
      cp_async_wait<1>();
      fence_async_smem();
      mbar_arrive(sbase + L::BAR + 8 * ((c - 1) % STAGES));
      LB_STAMP(c - 1, 3);
    }
  }
  if (nchunks > 0) {
    cp_async_wait<0>();
    fence_async_smem();
    mbar_arrive(sbase + L::BAR + 8 * ((nchunks - 1) % STAGES));
    LB_STAMP(nchunks - 1, 3);
  }
}

// A piece's first token in its own sequence: the token coordinate of the tensor maps (Seg's tok0 counts the
// [B·H·N] token rows).
__device__ __forceinline__ int token_in_sequence(const Seg& seg, int N) {
  return (int)(seg.tok0 - (u64)seg.bh * N);
}

// The producer with tensor maps (chunk_wg2_tma, chunk_wg_state_tma; KERNEL_NOTES v54): lane 0 alone loads chunk
// c into slot c mod STAGES — Q (LOADQ) and K as D/64 boxes of 64 tokens × 64 columns each, this CTA's 64-column V
// slice as one — with the slot's full barrier expecting their bytes, so the copy engine completes it as they land:
// no lane copies 16 bytes at a time, none waits for its copies to announce them. Rows past the sequence's end (the
// box past the maps' bounds N) arrive as zeros, as the plain loop's zero-fill gives them. Coordinates: token t of
// (b·H + h) = bh. Without Q, tq is not read.
template <class L, int D, int STAGES, bool LOADQ = true>
__device__ __forceinline__ void wg_producer_tma(const TensorMap* tq, const TensorMap* tk, const TensorMap* tv, int bh,
                                                int t0, int n, int e0, int lane, u32 sbase) {
  static_assert(L::VRB == 128, "a 64-column V slice: one box of 128-byte rows");
  if (lane == 0) {
    if (LOADQ) tma_prefetch(tq);
    tma_prefetch(tk);
    tma_prefetch(tv);
  }
  constexpr u32 BYTES = (LOADQ ? 2 : 1) * L::DB * L::QKT + L::VT;  // (a box past the bounds counts its zeros too)
  const int nchunks = (n + CH - 1) / CH;
  for (int c = 0; c < nchunks; ++c) {
    LB_STAMP(c, 0);
    const int slot = c % STAGES;
    if (c >= STAGES) mbar_wait(sbase + L::BAR + 8 * (STAGES + slot), ((c / STAGES) + 1) & 1);  // (whole warp)
    LB_STAMP(c, 1);
    if (lane == 0) {
      const u32 full = sbase + L::BAR + 8 * slot;
      mbar_expect_tx(full, BYTES);
      const int t = t0 + c * CH;
#pragma unroll
      for (int b = 0; b < L::DB; ++b) {
        if (LOADQ) tma_load_3d(sbase + L::QS + (slot * L::DB + b) * L::QKT, tq, 64 * b, t, bh, full);
        tma_load_3d(sbase + L::KS + (slot * L::DB + b) * L::QKT, tk, 64 * b, t, bh, full);
      }
      tma_load_3d(sbase + L::VS + slot * L::VT, tv, e0, t, bh, full);
      LB_STAMP(c, 2);  // the copies issued, and the slot's barrier armed with their bytes before them: the
      LB_STAMP(c, 3);  // producer's part of the announcement (the copy engine completes it as the bytes land)
    }
    __syncwarp();
  }
}

// The products of a chunk, as the consumer warpgroup issues them (asynchronous: commit and wait after). Q and K
// tiles are D/64 blocks of 64 tokens × 128 bytes (K-major for Q Kᵀ and Q S, M-major for Kᵀ Ṽ); V, Ṽ and the
// state copy are N-major rows of 2·ES bytes. `acc`: add to d instead of overwriting it.
// Q Kᵀ (64 × 64, K = D)
template <int D, bool BF16>
__device__ __forceinline__ void wg_scores(float (&d)[32], u32 q, u32 k, bool acc) {
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_ss<64, BF16, 0, 0>(d, wg_desc<128>(q + kb * WG_QKT + 32 * kk), wg_desc<128>(k + kb * WG_QKT + 32 * kk),
                            acc || kb + kk > 0);
}
// Q S_in (64 × ES, K = D), S_in the state copy [D][ES]. NS = 2 (chunk_wg4's WIDE): two slices' copies as one
// operand of 2·ES columns, the second `lbo` bytes past the first (hopper.cuh), slice 0's columns first in d.
template <int D, int ES, bool BF16, int NS = 1>
__device__ __forceinline__ void wg_query_state(float (&d)[NS * ES / 2], u32 q, u32 s, bool acc, u32 lbo = 16) {
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_ss<NS * ES, BF16, 0, 1>(d, wg_desc<128>(q + kb * WG_QKT + 32 * kk),
                                 wg_desc<2 * ES>(s + (64 * kb + 16 * kk) * 2 * ES, lbo), acc || kb + kk > 0);
}
// QREG: warp w's A fragments of the chunk's Q tile — its 16 rows, D/16 k steps of 16 columns (k step ks in 64-column
// block ks / 4, pieces 2·(ks mod 4) and + 1) — by ldmatrix (matrix m of lane group m: rows + 8 for odd m, columns
// + 8 for m ≥ 2, so register m is the m16k16 fragment's a_m): Q read once for both of the output warps' Q
// products, where each product with Q in shared memory reads it again.
template <int D>
__device__ __forceinline__ void wg_load_q(u32 (&qa)[D / 16][4], u32 q, int w, int l) {
  const int m = l >> 3, row = 16 * w + ((m & 1) ? 8 : 0) + (l & 7);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
    ldsm_x4(q + (ks / 4) * WG_QKT + swz<128>(row, 2 * (ks % 4) + (m >> 1)), qa[ks]);
}
// Keeps register-A fragments live (and unchanged) until here: after the wait for the products that read them.
template <int N>
__device__ __forceinline__ void wg_keep(const u32 (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" ::"r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]) : "memory");
}
// Q Kᵀ and Q S_in as wg_scores and wg_query_state form them, Q from registers (QREG).
template <int D, bool BF16>
__device__ __forceinline__ void wg_scores_rq(float (&d)[32], const u32 (&qa)[D / 16][4], u32 k, bool acc) {
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_rs<64, BF16, 0>(d, qa[4 * kb + kk], wg_desc<128>(k + kb * WG_QKT + 32 * kk), acc || kb + kk > 0);
}
template <int D, int ES, bool BF16>
__device__ __forceinline__ void wg_query_state_rq(float (&d)[ES / 2], const u32 (&qa)[D / 16][4], u32 s, bool acc) {
#pragma unroll
  for (int kb = 0; kb < D / 64; ++kb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_rs<ES, BF16, 1>(d, qa[4 * kb + kk], wg_desc<2 * ES>(s + (64 * kb + 16 * kk) * 2 * ES), acc || kb + kk > 0);
}
// O += P V (64 × ES, K = 64 tokens), P the masked scores from registers (16-bit pairs per 16-token k step), V the
// chunk's tile. NS = 2: two slices' V tiles as one operand, as in wg_query_state.
template <int ES, bool BF16, int NS = 1>
__device__ __forceinline__ void wg_values(float (&d)[NS * ES / 2], const u32 (&pa)[4][4], u32 v, u32 lbo = 16) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    wg_rs<NS * ES, BF16, 1>(d, pa[kk], wg_desc<2 * ES>(v + 32 * ES * kk, lbo), true);
}
// S += Kᵀ Ṽ (D × ES, K = 64 tokens), into the state registers (acc = false: S = Kᵀ Ṽ); NMB 64-row blocks of
// it from block MB0 on (S then holds those blocks only)
template <int D, int ES, bool BF16, int MB0 = 0, int NMB = D / 64>
__device__ __forceinline__ void wg_state_update(float (&S)[NMB][ES / 2], u32 k, u32 vd, bool acc = true) {
#pragma unroll
  for (int mb = 0; mb < NMB; ++mb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_ss<ES, BF16, 1, 1>(S[mb], wg_desc<128>(k + (MB0 + mb) * WG_QKT + 16 * 128 * kk),
                            wg_desc<2 * ES>(vd + 32 * ES * kk), acc || kk > 0);
}

// The largest |entry| of the state over the consumer warpgroup: each warp's in scl[w], then all four read
// them after the named barrier (a later call rewrites scl only after the warps have met at another barrier).
template <int DB, int NA, int BARID = 1>
__device__ __forceinline__ float wg_state_max(const float (&S)[DB][NA], u32* scl, int w, int l) {
  float m = 0.f;
#pragma unroll
  for (int mb = 0; mb < DB; ++mb)
#pragma unroll
    for (int i = 0; i < NA; ++i) m = fmaxf(m, fabsf(S[mb][i]));
  const u32 wm = warp_max_u32(__float_as_uint(m));
  if (l == 0) scl[w] = wm;
  wg_sync<BARID>();
  return __uint_as_float(max(max(scl[0], scl[1]), max(scl[2], scl[3])));
}

// scale·λ^(i-j) on and below the diagonal of the 64 × 64 scores, 0 above, at the thread's accumulator entries:
// wg_mask_entry the one at accumulator index e (row r0 or r0 + 8, column 8·(e/4) + c0 or + 1).
__device__ __forceinline__ float wg_mask_entry(const float* tab, float scale, int r0, int c0, int e) {
  const int i = r0 + ((e & 2) ? 8 : 0), jj = 8 * (e >> 2) + c0 + (e & 1);
  return jj <= i ? scale * tab[i - jj] : 0.f;
}
__device__ __forceinline__ void wg_decay_mask(float (&mask)[32], const float* tab, float scale, int r0, int c0) {
#pragma unroll
  for (int e = 0; e < 32; ++e) mask[e] = wg_mask_entry(tab, scale, r0, c0, e);
}

// P = (Q Kᵀ) ⊙ M, the A operand of P V from registers: the thread's scores times its mask entries, packed into
// 16-bit pairs per 16-token k step.
template <bool BF16>
__device__ __forceinline__ void wg_masked_scores(const float (&acc)[32], const float (&mask)[32], u32 (&pa)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      pa[kk][r] = pack2<BF16>(acc[8 * kk + 2 * r] * mask[8 * kk + 2 * r],
                              acc[8 * kk + 2 * r + 1] * mask[8 * kk + 2 * r + 1]);
}

// Each of the thread's two accumulator rows times its own factor (g0 the first row, g1 the second).
template <int NA>
__device__ __forceinline__ void wg_scale_rows(float (&d)[NA], float g0, float g1) {
#pragma unroll
  for (int j = 0; j < NA / 4; ++j) {
    d[4 * j] *= g0; d[4 * j + 1] *= g0;
    d[4 * j + 2] *= g1; d[4 * j + 3] *= g1;
  }
}

// A chunk's outputs in the accumulator holding Q S_in: O = diag(g0, g1) Q S_in + P V, issued and waited for.
template <int ES, bool BF16>
__device__ __forceinline__ void wg_chunk_outputs(float (&d)[ES / 2], const u32 (&pa)[4][4], u32 v, float g0, float g1) {
  wg_scale_rows(d, g0, g1);
  wg_fence();
  wg_values<ES, BF16>(d, pa, v);
  wg_commit();
  wg_wait<0>();
  wg_pin(d);
}

// Ṽ = λ^(n-1-j) v_j (0 past the chunk's n tokens) from a chunk's V tile into vdst, 16-byte piece by piece (the
// swizzle keeps a piece inside its row), by the 128 consumer threads.
template <int ES, bool BF16>
__device__ __forceinline__ void wg_decay_v(const unsigned char* vsrc, unsigned char* vdst, const float* tab, int nv,
                                           int tid) {
  constexpr int VRB = 2 * ES, VT = 64 * VRB;
#pragma unroll
  for (int idx = tid; idx < VT / 16; idx += 128) {
    const int row = idx / (VRB / 16);
    const float wt = row < nv ? tab[nv - 1 - row] : 0.f;
    uint4 val = *reinterpret_cast<const uint4*>(vsrc + 16 * idx);
    u32* p = reinterpret_cast<u32*>(&val);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float a, b;
      unpack2<BF16>(p[i], a, b);
      p[i] = pack2<BF16>(a * wt, b * wt);
    }
    *reinterpret_cast<uint4*>(vdst + 16 * idx) = val;
  }
}

// TST: warp w's A fragments of Ṽᵀ for Sᵀ += Ṽᵀ K, per 16-token k step: its 16 columns of the chunk's V tile (rows
// of 128 bytes, ES = 64) at `vs`, transposed by ldmatrix (matrix m of lane group m: tokens + 8 for m ≥ 2, columns
// + 8 for odd m, so register m is the m16k16 fragment's a_m), token t times λ^(n-1-t), 0 from the chunk's n
// tokens on — Ṽ's values, rounded to 16 bits as wg_decay_v rounds them, without its trip through shared memory.
template <bool BF16>
__device__ __forceinline__ void wg_decayed_vt(u32 (&va)[4][4], u32 vs, const float* tab, int nv, int w, int l) {
  const int m = l >> 3, tl = ((m & 2) ? 8 : 0) + (l & 7), piece = 2 * w + (m & 1);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    ldsm_x4_t(vs + swz<128>(16 * kk + tl, piece), va[kk]);
    const int t0 = 16 * kk + 2 * (l & 3);  // a0, a1: tokens t0, t0 + 1; a2, a3: t0 + 8, t0 + 9
    float wt[4];
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int tok = t0 + (x & 1) + ((x & 2) ? 8 : 0);
      wt[x] = tok < nv ? tab[nv - 1 - tok] : 0.f;
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float a, b;
      unpack2<BF16>(va[kk][r], a, b);
      va[kk][r] = pack2<BF16>(a * wt[r & 2], b * wt[(r & 2) + 1]);
    }
  }
}

// TST's chunk start (WgConsumer::begin_chunk's counterpart): the warp's Ṽᵀ fragments of the slot's V tile at `vs`,
// Sᵀ decayed by λ^n, both fenced for the products; no barrier, Ṽᵀ being the warp's own registers.
template <int D, bool BF16>
__device__ __forceinline__ void wg_begin_chunk_t(float (&St)[D / 64][32], u32 (&va)[4][4], u32 vs, const float* tab,
                                                 int nv, int w, int l) {
  wg_decayed_vt<BF16>(va, vs, tab, nv, w, l);
  const float dn = tab[nv];
#pragma unroll
  for (int nb = 0; nb < D / 64; ++nb)
#pragma unroll
    for (int i = 0; i < 32; ++i) St[nb][i] *= dn;
  wg_fence();
}

// TST: Sᵀ += Ṽᵀ K (64 × D as D/64 blocks St[nb], K = 64 tokens): Ṽᵀ from registers, the slot's K tile as an
// MN-major operand (its 64-column block nb, 16 token rows a k step).
template <int D, bool BF16>
__device__ __forceinline__ void wg_state_update_t(float (&St)[D / 64][32], const u32 (&va)[4][4], u32 k) {
#pragma unroll
  for (int nb = 0; nb < D / 64; ++nb)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wg_rs<64, BF16, 1>(St[nb], va[kk], wg_desc<128>(k + nb * WG_QKT + 16 * 128 * kk), true);
}

// f(mb, i, row, col) for every state entry a consumer thread holds (accumulator layout below, D/64 row blocks
// mb): S[mb][i] is entry (row, col) of the CTA's D × ES slice of the state (row = 64·mb + r0 or r0 + 8).
template <int D, int ES, class F>
__device__ __forceinline__ void wg_each_entry(int r0, int c0, F&& f) {
#pragma unroll
  for (int mb = 0; mb < D / 64; ++mb)
#pragma unroll
    for (int j = 0; j < ES / 8; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x) f(mb, 4 * j + x, 64 * mb + r0 + ((x & 2) ? 8 : 0), 8 * j + c0 + (x & 1));
}

// The same for a state held transposed (chunk_wg2's TST: the accumulator is Sᵀ, 64 rows of E by D columns as D/64
// blocks): f(nb, i, row, col) with S[nb][i] entry (row, col) of the D × 64 slice, row = 64·nb + 8·(i/4) + c0 or
// + 1, col = r0 or r0 + 8.
template <int D, class F>
__device__ __forceinline__ void wg_each_entry_t(int r0, int c0, F&& f) {
#pragma unroll
  for (int nb = 0; nb < D / 64; ++nb)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x) f(nb, 4 * j + x, 64 * nb + 8 * j + c0 + (x & 1), r0 + ((x & 2) ? 8 : 0));
}

template <int D, int ES, bool T, class F>
__device__ __forceinline__ void wg_each_state_entry(int r0, int c0, F&& f) {
  if constexpr (T) wg_each_entry_t<D>(r0, c0, f);
  else wg_each_entry<D, ES>(r0, c0, f);
}

// f(byte offset, x, y) for each pair of state entries a consumer thread holds, at the pair's place in a swizzled
// N-major [D][ES] 16-bit tile (rows of VRB bytes): how write_copy lays the state copy out, whatever the pieces.
template <int DB, int NA, int VRB, class F>
__device__ __forceinline__ void wg_copy_pairs(const float (&S)[DB][NA], int l, int r0, F&& f) {
#pragma unroll
  for (int mb = 0; mb < DB; ++mb)
#pragma unroll
    for (int j = 0; j < NA / 4; ++j) {
      const int row = 64 * mb + r0;
      const u32 b = 4 * (l & 3);
      const float* d = &S[mb][4 * j];
      f(swz<VRB>(row, j) + b, d[0], d[1]);
      f(swz<VRB>(row + 8, j) + b, d[2], d[3]);
    }
}

// Where a CTA works: its shared memory from the first 1024-byte boundary (the swizzle acts on absolute address
// bits, so the tiles must start on one) and that address as the shared window sees it, its E slice's first
// column and its piece of the sequence.
struct WgCta {
  unsigned char* smem;
  u32 sbase;
  int e0;
  Seg seg;
};
// The CTA's place, and its barriers (layout LY, STAGES slots, `producers` arrivals to fill one, one per consumer
// warp to release it) and λ table set up by chunk_prologue.
template <int D, int ES, int NSL, int STAGES, class LY>
__device__ __forceinline__ WgCta wg_cta(unsigned char* smem_raw, int RUNS, int L, int N, const double* lam, int H,
                                        u32 producers = 32, u32 consumer_warps = 4) {
  static_assert(D == 64 || D == 128, "D = 64 or 128");
  static_assert(ES == 32 || ES == 64, "ES = 32 or 64");
  unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  const WgCta cta{smem, smem_u32(smem), (int)(blockIdx.x % NSL) * ES, seg_of(blockIdx.x / NSL, RUNS, L, N)};
  chunk_prologue<STAGES>(cta.sbase + LY::BAR, reinterpret_cast<float*>(smem + LY::TAB), lam[cta.seg.bh % H],
                         (int)threadIdx.x, producers, consumer_warps);
  return cta;
}

// A warp's 16 staged output rows (EB-byte elements, pitch OP elements) stored from row `trow` of o with
// 16-byte writes; rows from `nv` on (past the piece's end) are left alone.
template <int ES, int EB, int OP>
__device__ __forceinline__ void wg_store_rows(void* o, const void* staged, u64 trow, int E, int e0, int rows_before,
                                              int nv, int l) {
  constexpr int CPR = ES * EB / 16;  // 16-byte pieces per row
  const unsigned char* src = static_cast<const unsigned char*>(staged);
  unsigned char* dst = static_cast<unsigned char*>(o);
#pragma unroll
  for (int idx = l; idx < 16 * CPR; idx += 32) {
    const int row = idx / CPR, cc = idx % CPR;
    if (rows_before + row < nv)
      st_global_v4(dst + ((trow + row) * E + e0) * EB + 16 * cc,
                   *reinterpret_cast<const uint4*>(src + row * OP * EB + 16 * cc));
  }
}

// A warp's 16 output rows stored straight from its accumulator (DIRECT), no staging: thread l holds columns
// 8j + 2(l mod 4), + 1 of each 8-column group j (acc[4j + 2h], acc[4j + 2h + 1] of row l/4 + 8h); one shuffle
// with lane l ^ 1 gives each lane four consecutive columns of group j (even l) or j + 1 (odd l), so a warp's
// store of a group pair writes 32 contiguous bytes a row: whole sectors, 8 bytes a lane. Rows from `nv` on
// (past the piece's end) are left alone.
template <int ES, bool BF16>
__device__ __forceinline__ void wg_store_direct(const float (&acc)[ES / 2], u16* __restrict__ o, u64 trow, int E,
                                                int e0, int rows_before, int nv, int l) {
  const bool odd = l & 1;
  const int col0 = e0 + 2 * (l & 2) + 8 * odd;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = (l >> 2) + 8 * h;
    u16* dst = o + (trow + row) * E + col0;
#pragma unroll
    for (int j = 0; j < ES / 8; j += 2) {
      const u32 x = pack2<BF16>(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      const u32 y = pack2<BF16>(acc[4 * j + 4 + 2 * h], acc[4 * j + 4 + 2 * h + 1]);
      const u32 got = __shfl_xor_sync(0xffffffffu, odd ? x : y, 1);
      if (rows_before + row < nv)
        *reinterpret_cast<uint2*>(dst + 8 * j) = odd ? make_uint2(got, y) : make_uint2(x, got);
    }
  }
}

// The consumer warpgroup. Thread t = 32w + l holds accumulator rows 16w + l/4 and 16w + l/4 + 8, columns
// 8j + 2(l mod 4) and + 1 of every 8-column group j, at d[4j + x]: x = 0, 1 the first row, 2, 3 the second.
// COPIES = 2 (chunk_wg only, KERNEL_NOTES v15): the state copy alternates between two buffers, so the copy for
// chunk c + 1 is written while chunk c's Q Kᵀ and Q S_in still run on the tensor pipe (Kᵀ Ṽ issued first),
// instead of after the chunk's last product.
// LAYOUT, BARID (chunk_wg4's state warpgroups): where the tiles, state copies and scales are, and the named
// barrier the warpgroup meets at.
template <int D, int ES, int STAGES, bool BF16, int COPIES = 1, class LAYOUT = WgSmem<D, ES, STAGES>, int BARID = 1>
struct WgConsumer {
  using L = LAYOUT;
  static constexpr int DB = L::DB, NA = ES / 2, VRB = L::VRB;
  static constexpr bool SC = !BF16;  // the float16 state copy is scaled

  // The 16-bit state copy (N-major [D][ES], swizzled) of S, divided by 2^s for float16; returns 2^s.
  // half: which of the two sets of per-warp maxima it meets through (TST, whose warps meet at no other barrier
  // between two copies, alternates them).
  static __device__ __forceinline__ float write_copy(const float (&S)[DB][NA], unsigned char* smem, u32 sb,
                                                     int w, int l, int r0, int half = 0) {
    float up = 1.f, down = 1.f;
    if (SC) {
      u32* scl = reinterpret_cast<u32*>(smem + L::SCL) + 4 * half;
      const u32 s = state_scale_exp(wg_state_max<DB, NA, BARID>(S, scl, w, l));
      up = __uint_as_float((127u + s) << 23);
      down = __uint_as_float((127u - s) << 23);
    }
    unsigned char* base = smem + (sb - smem_u32(smem));
    wg_copy_pairs<DB, NA, VRB>(S, l, r0, [&](u32 at, float x, float y) {
      *reinterpret_cast<u32*>(base + at) = SC ? pack2_f16_sat(x * down, y * down) : pack2<BF16>(x, y);
    });
    return up;
  }

  // The CTA's D × ES slice of the initial state (0 without one) into the accumulator layout, and back out; T: the
  // state held transposed (TST).
  template <bool T = false>
  static __device__ __forceinline__ void load_state(float (&S)[DB][NA], const float* __restrict__ s0, const Seg& seg,
                                                    int e0, int E, int r0, int c0) {
    griddep_wait();  // (s0 may be the scan's s_in: a dependent launch waits for it here)
    wg_each_state_entry<D, ES, T>(r0, c0, [&](int mb, int i, int row, int col) {
      S[mb][i] = s0 != nullptr ? s0[((u64)seg.idx * D + row) * E + e0 + col] : 0.f;
    });
  }
  template <bool T = false>
  static __device__ __forceinline__ void store_state(const float (&S)[DB][NA], float* __restrict__ sN, const Seg& seg,
                                                     int e0, int E, int r0, int c0) {
    if (seg.last && sN != nullptr)
      wg_each_state_entry<D, ES, T>(r0, c0, [&](int mb, int i, int row, int col) {
        sN[((u64)seg.bh * D + row) * E + e0 + col] = S[mb][i];
      });
  }
  // A chunk's start for the warpgroup holding the state: Ṽ from the slot's V tile, S decayed by λ^n, both
  // made visible to the tensor cores, and the warpgroup met (named barrier 1).
  static __device__ __forceinline__ void begin_chunk(float (&S)[DB][NA], unsigned char* smem, const float* tab,
                                                     int slot, int nv, int t) {
    wg_decay_v<ES, BF16>(smem + L::VS + slot * L::VT, smem + L::VD, tab, nv, t);
    const float dn = tab[nv];
#pragma unroll
    for (int mb = 0; mb < DB; ++mb)
#pragma unroll
      for (int i = 0; i < NA; ++i) S[mb][i] *= dn;
    fence_async_smem();
    wg_sync<BARID>();  // Ṽ and the state copy written by every thread of the warpgroup
    wg_fence();
  }

  // A warp's 16 output rows of the chunk: staged in its slice of the output tile `ow` (stage_outputs), then stored
  // from row `trow` of o with 16-byte writes (rows from `nv` on, past the piece's end, left alone).
  static __device__ __forceinline__ void stage_outputs(const float (&acc_o)[NA], u16* ow, int l, int c0) {
#pragma unroll
    for (int j = 0; j < ES / 8; ++j) {
      *reinterpret_cast<u32*>(ow + (l >> 2) * L::OP + 8 * j + c0) = pack2<BF16>(acc_o[4 * j], acc_o[4 * j + 1]);
      *reinterpret_cast<u32*>(ow + ((l >> 2) + 8) * L::OP + 8 * j + c0) =
          pack2<BF16>(acc_o[4 * j + 2], acc_o[4 * j + 3]);
    }
  }
  static __device__ __forceinline__ void store_outputs(const float (&acc_o)[NA], u16* ow, u16* __restrict__ o,
                                                       u64 trow, int E, int e0, int rows_before, int nv, int l,
                                                       int c0) {
    stage_outputs(acc_o, ow, l, c0);
    __syncwarp();
    wg_store_rows<ES, 2, L::OP>(o, ow, trow, E, e0, rows_before, nv, l);
    __syncwarp();
  }

  static __device__ __forceinline__ void run(unsigned char* smem, u16* __restrict__ o, const float* __restrict__ s0,
                                             float* __restrict__ sN, const Seg& seg, int e0, int E, float scale,
                                             int tid) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = tid >> 5, l = tid & 31;
    const int r0 = 16 * w + (l >> 2);  // first accumulator row; the second is r0 + 8
    const int c0 = 2 * (l & 3);        // first column inside an 8-column group

    float S[DB][NA];
    load_state(S, s0, seg, e0, E, r0, c0);
    float mask[32];
    wg_decay_mask(mask, tab, scale, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    static_assert(COPIES == 1 || COPIES == 2, "one or two state copies");
    const u32 vdt = sbase + L::VD;
    float up = write_copy(S, smem, sbase + L::SB, w, l, r0);
    u16* os = reinterpret_cast<u16*>(smem + L::OS);
    const int nchunks = (seg.n + CH - 1) / CH;

    for (int c = 0; c < nchunks; ++c) {
      const int slot = c % STAGES;
      mbar_wait(sbase + L::BAR + 8 * slot, (c / STAGES) & 1);
      const int nv = min(CH, seg.n - c * CH);
      const u32 qs = sbase + L::QS + slot * DB * L::QKT, ks = sbase + L::KS + slot * DB * L::QKT;
      const u32 vs = sbase + L::VS + slot * L::VT;
      const u32 sb = sbase + (COPIES == 2 && (c & 1) ? Wg2Smem<D, ES, STAGES>::SB2 : L::SB);  // chunk c's copy
      begin_chunk(S, smem, tab, slot, nv, tid);

      float acc_a[32], acc_o[NA];
      float up_next = up;
      if (COPIES == 2) {
        wg_state_update<D, ES, BF16>(S, ks, vdt);
        wg_commit();
      }
      wg_scores<D, BF16>(acc_a, qs, ks, false);
      wg_commit();
      wg_query_state<D, ES, BF16>(acc_o, qs, sb, false);
      wg_commit();
      if (COPIES == 2) {
        wg_wait<2>();
#pragma unroll
        for (int mb = 0; mb < DB; ++mb) wg_pin(S[mb]);
        // chunk c + 1's copy into the other buffer, which chunk c - 1's Q S_in (all warps, before the last
        // barrier) no longer reads
        up_next = write_copy(S, smem, sbase + ((c & 1) ? L::SB : Wg2Smem<D, ES, STAGES>::SB2), w, l, r0);
        wg_wait<1>();
      } else {
        wg_state_update<D, ES, BF16>(S, ks, vdt);
        wg_commit();
        wg_wait<2>();
      }
      wg_pin(acc_a);
      u32 pa[4][4];
      wg_masked_scores<BF16>(acc_a, mask, pa);
      if (COPIES == 2) wg_wait<0>();
      else wg_wait<1>();
      wg_pin(acc_o);
      wg_chunk_outputs<ES, BF16>(acc_o, pa, vs, f0 * up, f1 * up);
#pragma unroll
      for (int mb = 0; mb < DB; ++mb) wg_pin(S[mb]);
      // Each warp waits for its own share of a product only, and every share reads all of B: the state copy
      // and Ṽ are rewritten once all four have finished (compute-sanitizer's racecheck flagged the overlap).
      consumers_sync();
      if (l == 0) mbar_arrive(sbase + L::BAR + 8 * (STAGES + slot));  // the slot's tiles are no longer read

      up = COPIES == 2 ? up_next : write_copy(S, smem, sb, w, l, r0);
      // outputs: each warp stages its 16 rows, then stores them with 16-byte writes
      u16* ow = os + 16 * w * L::OP;
      store_outputs(acc_o, ow, o, seg.tok0 + (u64)c * CH + 16 * w, E, e0, 16 * w, nv, l, c0);
    }
    store_state(S, sN, seg, e0, E, r0, c0);
  }
};

// Grid: B·H·RUNS·NSL CTAs of 160 threads; arguments as chunk_fwd's. Shared memory: WgSmem's, Wg2Smem's with
// COPIES = 2.
template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB, int COPIES = 1>
__global__ void __launch_bounds__(160, MINB)
    chunk_wg(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
             const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
             int E, float scale, int L, int RUNS) {
  using LY = WgSmem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H);
  const int tid = threadIdx.x;
  if (warp_index() < 4)
    WgConsumer<D, ES, STAGES, BF16, COPIES>::run(cta.smem, o, s0, sN, cta.seg, cta.e0, E, scale, tid);
  else
    wg_producer<LY, D, STAGES, true>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, tid & 31, cta.sbase);
}

template <int D, int ES, int STAGES>
__global__ void chunk_wg_layout(int* out) {
  out[0] = WgSmem<D, ES, STAGES>::ALLOC;
}

// The state copy's hand-over from a state warpgroup to the output warps (chunk_wg2, chunk_wg32x2): copy j (the state
// entering chunk j) in buffer j mod 2, its scale 2^s at ups[j mod 2], behind the barriers at cbar — full [2] (128
// arrivals: every state thread after fencing its own writes for the tensor cores) and empty [2] (4: every output
// warp after its share of Q S_in, which reads the whole copy). Initialised by thread 0.
__device__ __forceinline__ void wg_copy_barriers_init(u32 cbar) {
  ring_barriers_init(cbar, 2, 128, 4);  // copy full, empty
}
// Copy j, written by write(buf) (which returns its scale 2^s), once the output warps have released copy j - 2.
template <class F>
__device__ __forceinline__ void wg_publish_copy(u32 cbar, float* ups, int j, int t, F&& write) {
  const int buf = j & 1;
  if (j >= 2) mbar_wait(cbar + 8 * (2 + buf), ((j >> 1) + 1) & 1);
  const float up = write(buf);
  if (t == 0) ups[buf] = up;
  fence_async_smem();
  mbar_arrive(cbar + 8 * buf);
}

// ---- two consumer warpgroups (KERNEL_NOTES v14, v15) ---------------------------------------------------------------
// One consumer warpgroup issued in 35% of its slots, every warp stalled on its own results (v13's profile), and
// handing Q Kᵀ, the mask and P V to a second warpgroup gained nothing (v14: chunk_wg's time is its chain's). Here
// the chain keeps only what it must:
//   warps 4-7, state:   Ṽ, S = λ^n S + Kᵀ Ṽ (one product a chunk), the 16-bit copy of the new S for the next chunk;
//   warps 0-3, outputs: Q Kᵀ and Q S_in (from the copy the state warps wrote) issued together, P = (Q Kᵀ) ⊙ M,
//                       O = c·diag(λ^(i+1)) Q S_in + P V, the outputs stored — no chain from chunk to chunk;
//   warp 8: the producer, as in chunk_wg.
// The state copy is double-buffered: copy c (S_in of chunk c, and its float16 scale 2^s) in buffer c mod 2 behind
// a full barrier of 128 arrivals (each state thread after fencing its own writes for the tensor cores) and an
// empty one of four (each output warp after its own share of Q S_in: every share reads the whole copy), so the
// chain may run two chunks ahead of the outputs. Both warpgroups read a slot's tiles: it is released after eight
// warp arrivals, each after the warp's own share of its last product.
// KEEP_MASK: the output warps hold the decay mask (32 registers) from chunk to chunk, else form it every chunk
// (two CTAs per SM: ≤ 96 registers a thread).
// PIPE (KERNEL_NOTES v20; one CTA per SM): the output warps issue chunk c + 1's Q Kᵀ and Q S_in before they store
// chunk c's outputs, so the stores overlap the tensor pipe; chunk c's outputs and chunk c + 1's Q S_in are two
// register arrays, taken in turn (the loop unrolled by two, so each is a compile-time array).
// TST (KERNEL_NOTES v39; ES = 64): the state warps hold Sᵀ and update it as Sᵀ = λ^n Sᵀ + Ṽᵀ K, Ṽᵀ formed in
// registers from the V tile (wg_decayed_vt): no Ṽ written to and read back from shared memory (24 of the ≈ 192 KB
// a chunk moves through it), no barrier of the four state warps before the product. The copy of Sᵀ lies in the
// K-major blocks of a K tile (write_copy's offsets for [D][64] are those of [64][D] in D/64 blocks of 64 rows), so
// the output warps form Q S_in as they form Q Kᵀ.
// QREG (KERNEL_NOTES v40): the output warps load their rows of the chunk's Q once into registers (wg_load_q) and
// form Q Kᵀ and Q S_in with Q from there: 16 of the ≈ 168 KB a chunk moves through shared memory at D = 128, 32
// registers more a thread.
// BULK (KERNEL_NOTES v42): each output warp's staged rows leave as bulk copies (the TMA unit, a row a lane), so the
// read back and the global stores are off the warp's chain (store).
// DIRECT (KERNEL_NOTES v53): each output warp's rows leave straight from its accumulator (wg_store_direct): no
// staging written and read back through shared memory (16 KB a chunk), one shuffle per two 32-bit words.
template <int D, int ES, int STAGES, bool BF16, bool KEEP_MASK, bool PIPE = false,
          class LAYOUT = Wg2Smem<D, ES, STAGES>, int BARID = 1, bool TST = false, bool QREG = false,
          bool BULK = false, bool DIRECT = false>
struct WgSplit {
  static_assert(!TST || ES == 64, "the transposed state is 64 columns of E (wgmma's M)");
  static_assert(!(BULK && DIRECT), "the output rows leave one way");
  static constexpr bool PIPELINED = PIPE;
  using L = LAYOUT;
  using C1 = WgConsumer<D, ES, STAGES, BF16, 1, L, BARID>;  // its write_copy, state load and store, chunk start,
                                                            // output store
  static constexpr int DB = L::DB, NA = ES / 2, VRB = L::VRB;

  static __device__ __forceinline__ u32 copy_at(int buf) { return buf ? L::SB2 : L::SB; }
  static __device__ __forceinline__ float* scales(unsigned char* smem) {
    return reinterpret_cast<float*>(smem + L::UP);
  }

  // A warp's 16 output rows of a chunk: with DIRECT from its registers, else staged at `ow` and stored
  // (C1::store_outputs), or with BULK staged once
  // the previous chunk's bulk copies have read the staging, then sent a row a lane (lanes 0-15) as 2·ES-byte bulk
  // copies; `finish` (BULK) waits for the last ones before the CTA leaves.
  static __device__ __forceinline__ void store(const float (&acc_o)[NA], u16* ow, u16* __restrict__ o, u64 trow,
                                               int E, int e0, int rows_before, int nv, int l, int c0) {
    if constexpr (DIRECT) {
      wg_store_direct<ES, BF16>(acc_o, o, trow, E, e0, rows_before, nv, l);
    } else if constexpr (!BULK) {
      C1::store_outputs(acc_o, ow, o, trow, E, e0, rows_before, nv, l, c0);
    } else {
      if (l < 16) bulk_wait_read<0>();
      __syncwarp();
      C1::stage_outputs(acc_o, ow, l, c0);
      fence_async_smem();  // each lane's rows visible to the bulk copies, which other lanes issue
      __syncwarp();
      if (l < 16) {
        if (rows_before + l < nv) bulk_store(o + (trow + l) * E + e0, smem_u32(ow + l * L::OP), 2 * ES);
        bulk_commit();
      }
    }
  }
  static __device__ __forceinline__ void finish(int l) {
    if constexpr (BULK) {
      if (l < 16) bulk_wait<0>();
    }
  }

  // The c-th chunk through the slots and state copies on the output warps (chunk_wg2lb's count on from piece to
  // piece), min(CH, rest) tokens: its tiles and state copy awaited, Q Kᵀ (into acc_a) and Q S_in (into acc_o)
  // issued, `meanwhile()` run while they do, P = (Q Kᵀ) ⊙ M formed, O = c·diag(λ^(i+1)) 2^s Q S_in + P V into
  // acc_o, the copy and the slot released. Returns its token count.
  template <class F>
  static __device__ __forceinline__ int chunk_products(unsigned char* smem, int rest, int c, float (&acc_a)[32],
                                                        float (&acc_o)[NA], float (&mask)[32], float scale, float f0,
                                                        float f1, int l, int r0, int c0, F&& meanwhile) {
    const u32 sbase = smem_u32(smem);
    const int slot = c % STAGES, buf = c & 1;
    LB_STAMP(c, 0);
    mbar_wait(sbase + L::BAR + 8 * slot, (c / STAGES) & 1);
    LB_STAMP(c, 1);
    const int nv = min(CH, rest);
    const u32 qs = sbase + L::QS + slot * DB * L::QKT, vs = sbase + L::VS + slot * L::VT;
    [[maybe_unused]] u32 qa[QREG ? D / 16 : 1][4];
    if constexpr (QREG) wg_load_q<D>(qa, qs, r0 >> 4, l);  // (before the copy is awaited: the loads' latency)
    mbar_wait(sbase + L::CBAR + 8 * buf, (c >> 1) & 1);  // copy c from the state warps
    LB_STAMP(c, 2);
    wg_fence();
    const u32 ks = sbase + L::KS + slot * DB * L::QKT, cs = sbase + copy_at(buf);
    if constexpr (QREG) wg_scores_rq<D, BF16>(acc_a, qa, ks, false);
    else wg_scores<D, BF16>(acc_a, qs, ks, false);
    wg_commit();
    if constexpr (QREG && TST) wg_scores_rq<D, BF16>(acc_o, qa, cs, false);  // the copy holds Sᵀ
    else if constexpr (QREG) wg_query_state_rq<D, ES, BF16>(acc_o, qa, cs, false);
    else if constexpr (TST) wg_scores<D, BF16>(acc_o, qs, cs, false);
    else wg_query_state<D, ES, BF16>(acc_o, qs, cs, false);
    wg_commit();
    meanwhile();
    wg_wait<1>();
    wg_pin(acc_a);
    LB_STAMP(c, 3);
    if (!KEEP_MASK)  // after the wait: not beside both accumulators
      wg_decay_mask(mask, reinterpret_cast<const float*>(smem + L::TAB), scale, r0, c0);
    u32 pa[4][4];
    wg_masked_scores<BF16>(acc_a, mask, pa);
    wg_wait<0>();
    wg_pin(acc_o);
    if constexpr (QREG) wg_keep(qa);
    LB_STAMP(c, 4);
    const float up = scales(smem)[buf];  // read before the copy is released: copy c + 2 rewrites it
    if (l == 0) mbar_arrive(sbase + L::CBAR + 8 * (2 + buf));  // this warp's share of Q S_in read copy c
    wg_chunk_outputs<ES, BF16>(acc_o, pa, vs, f0 * up, f1 * up);
    LB_STAMP(c, 5);
    if (l == 0) mbar_arrive(sbase + L::BAR + 8 * (STAGES + slot));  // this warp's share no longer reads the slot
    return nv;
  }

  // The output warps' loop over chunks first, first + step, … (chunk_wg3's two output warpgroups take the even and
  // the odd ones), staging their outputs at `os`.
  static __device__ __forceinline__ void outputs(unsigned char* smem, u16* __restrict__ o, const Seg& seg, int e0,
                                                 int E, float scale, int t, int first = 0, int step = 1,
                                                 int os = L::OS) {
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    float mask[32];
    if (KEEP_MASK) wg_decay_mask(mask, tab, scale, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    u16* ow = reinterpret_cast<u16*>(smem + os) + 16 * w * L::OP;
    const int nchunks = (seg.n + CH - 1) / CH;
    for (int c = first; c < nchunks; c += step) {
      float acc_a[32], acc_o[NA];
      const int nv = chunk_products(smem, seg.n - c * CH, c, acc_a, acc_o, mask, scale, f0, f1, l, r0, c0, [] {});
      store(acc_o, ow, o, seg.tok0 + (u64)c * CH + 16 * w, E, e0, 16 * w, nv, l, c0);
      LB_STAMP(c, 6);
    }
    finish(l);
  }

  // PIPE: chunk c into cur, chunk c - 1's outputs (in prev) stored while chunk c's Q Kᵀ and Q S_in run. No product
  // stays in flight across the loop's back edge (ptxas then serializes them all, C7514).
  static __device__ __forceinline__ void pipe_chunk(unsigned char* smem, u16* __restrict__ o, const Seg& seg,
                                                    int e0, int E, float scale, int c, float (&acc_a)[32],
                                                    float (&cur)[NA], const float (&prev)[NA], float (&mask)[32],
                                                    float f0, float f1, u16* ow, int w, int l, int r0, int c0) {
    chunk_products(smem, seg.n - c * CH, c, acc_a, cur, mask, scale, f0, f1, l, r0, c0, [&] {
      if (c > 0) {
        store(prev, ow, o, seg.tok0 + (u64)(c - 1) * CH + 16 * w, E, e0, 16 * w, CH, l, c0);
        LB_STAMP(c - 1, 6);
      }
    });
  }

  static __device__ __forceinline__ void outputs_pipelined(unsigned char* smem, u16* __restrict__ o, const Seg& seg,
                                                           int e0, int E, float scale, int t) {
    static_assert(KEEP_MASK, "the pipelined output warps are compiled for one CTA per SM");
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    float mask[32];
    wg_decay_mask(mask, tab, scale, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    u16* ow = reinterpret_cast<u16*>(smem + L::OS) + 16 * w * L::OP;
    const int nchunks = (seg.n + CH - 1) / CH;
    float acc_a[32], o0[NA], o1[NA];
    for (int c = 0; c < nchunks; c += 2) {  // chunk c into o0, c + 1 into o1: each a compile-time array
      pipe_chunk(smem, o, seg, e0, E, scale, c, acc_a, o0, o1, mask, f0, f1, ow, w, l, r0, c0);
      if (c + 1 < nchunks)
        pipe_chunk(smem, o, seg, e0, E, scale, c + 1, acc_a, o1, o0, mask, f0, f1, ow, w, l, r0, c0);
    }
    if (nchunks > 0) {  // the last chunk's outputs (rows from its n tokens on left alone)
      const int c = nchunks - 1, nv = seg.n - c * CH;
      const u64 trow = seg.tok0 + (u64)c * CH + 16 * w;
      if (c & 1) store(o1, ow, o, trow, E, e0, 16 * w, nv, l, c0);  // branches, not a pointer:
      else store(o0, ow, o, trow, E, e0, 16 * w, nv, l, c0);        // both stay in registers
      LB_STAMP(c, 6);
    }
    finish(l);
  }

  // Copy j of the state (S_in of chunk j) into buffer j mod 2 once the output warps have read copy j - 2 from it.
  static __device__ __forceinline__ void publish(const float (&S)[DB][NA], unsigned char* smem, int j, int w, int l,
                                                 int r0, int t) {
    const u32 sbase = smem_u32(smem);
    wg_publish_copy(sbase + L::CBAR, scales(smem), j, t, [&](int buf) {
      LB_STAMP(j - 1, 5);  // (chunk j - 1's row: the copy it publishes)
      return C1::write_copy(S, smem, sbase + copy_at(buf), w, l, r0, TST ? buf : 0);
    });
    LB_STAMP(j - 1, 6);
  }

  // The state warps' step over the c-th chunk through the slots (min(CH, rest) tokens): S = λ^n S + Kᵀ Ṽ, the slot
  // released by this warpgroup's share. The slots are the layout's ring of STAGES, or (TST) another ring R of RS
  // slots with the same K and V tiles (chunk_wg2lb's walk 1).
  template <class R = L, int RS = STAGES>
  static __device__ __forceinline__ void state_chunk(float (&S)[DB][NA], unsigned char* smem, u32 sbase,
                                                     const float* tab, int c, int rest, int w, int l, int t) {
    static_assert(TST || (R::BAR == L::BAR && RS == STAGES), "another ring needs the state held transposed");
    const int slot = c % RS;
    LB_STAMP(c, 0);
    mbar_wait(sbase + R::BAR + 8 * slot, (c / RS) & 1);
    LB_STAMP(c, 1);
    const int nv = min(CH, rest);
    if constexpr (TST) {
      u32 va[4][4];
      wg_begin_chunk_t<D, BF16>(S, va, sbase + R::VS + slot * R::VT, tab, nv, w, l);
      LB_STAMP(c, 2);
      wg_state_update_t<D, BF16>(S, va, sbase + R::KS + slot * DB * R::QKT);
    } else {
      C1::begin_chunk(S, smem, tab, slot, nv, t);  // named barrier 1: the state warps only
      LB_STAMP(c, 2);
      wg_state_update<D, ES, BF16>(S, sbase + L::KS + slot * DB * L::QKT, sbase + L::VD);
    }
    wg_commit();
    wg_wait<0>();
#pragma unroll
    for (int mb = 0; mb < DB; ++mb) wg_pin(S[mb]);
    LB_STAMP(c, 3);
    if constexpr (!TST) wg_sync<BARID>();  // every state warp's share of Kᵀ Ṽ done before Ṽ is rewritten
    LB_STAMP(c, 4);
    if (l == 0) mbar_arrive(sbase + R::BAR + 8 * (RS + slot));  // (TST: this warp's share read the slot)
  }

  // The state chain over n tokens through the slots and state copies from the g-th on (chunk_wg2lb's count runs on
  // from piece to piece): the copy entering each chunk published, then the chunk's step; returns the chunks walked.
  static __device__ __forceinline__ int state_walk(float (&S)[DB][NA], unsigned char* smem, u32 sbase,
                                                   const float* tab, int g, int n, int w, int l, int r0, int t) {
    publish(S, smem, g, w, l, r0, t);
    const int nchunks = (n + CH - 1) / CH;
    for (int c = 0; c < nchunks; ++c) {
      state_chunk(S, smem, sbase, tab, g + c, n - c * CH, w, l, t);
      if (c + 1 < nchunks) publish(S, smem, g + c + 1, w, l, r0, t);
    }
    return nchunks;
  }

  // The state warps. TST: S holds Sᵀ (S[nb] its block over columns 64·nb.. of D) and each warp's Ṽᵀ is its own
  // registers, so the warps meet only where write_copy's float16 maxima need it (two sets, alternating: a warp may
  // write the next copy's maximum before another has read this one's).
  static __device__ __forceinline__ void state(unsigned char* smem, const float* __restrict__ s0,
                                               float* __restrict__ sN, const Seg& seg, int e0, int E, int t) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    float S[DB][NA];
    C1::template load_state<TST>(S, s0, seg, e0, E, r0, c0);
    state_walk(S, smem, sbase, tab, 0, seg.n, w, l, r0, t);
    C1::template store_state<TST>(S, sN, seg, e0, E, r0, c0);
  }
};

// wg_cta for the kernels with a state warpgroup apart (layout LY: Wg2Smem's head): a slot released by eight warps
// and filled by `producers` arrivals (the producer warp's lanes, or the one that expects a tensor copy's bytes),
// and the state copies' hand-over barriers.
template <int D, int ES, int NSL, int STAGES, class LY>
__device__ __forceinline__ WgCta wg_split_cta(unsigned char* smem_raw, int RUNS, int L, int N, const double* lam,
                                              int H, u32 producers = 32) {
  const WgCta cta = wg_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H, producers, 8);
  if (threadIdx.x == 0) {
    wg_copy_barriers_init(cta.sbase + LY::CBAR);
    fence_mbar_init();
  }
  __syncthreads();
  return cta;
}

// chunk_wg2's roles by warp: 0-3 the outputs (SP's, pipelined where SP is), 4-7 the state chain, 8 the producer
// (`produce(lane)`).
template <class SP, class F>
__device__ __forceinline__ void wg2_roles(const WgCta& cta, u16* __restrict__ o, const float* __restrict__ s0,
                                          float* __restrict__ sN, int E, float scale, F&& produce) {
  const int tid = threadIdx.x, warp = warp_index();
  if (warp < 4) {
    if constexpr (SP::PIPELINED) SP::outputs_pipelined(cta.smem, o, cta.seg, cta.e0, E, scale, tid);
    else SP::outputs(cta.smem, o, cta.seg, cta.e0, E, scale, tid);
  } else if (warp < 8) {
    SP::state(cta.smem, s0, sN, cta.seg, cta.e0, E, tid - 128);
  } else {
    produce(tid & 31);
  }
}

// Grid: B·H·RUNS·NSL CTAs of 288 threads, MINB per SM; arguments as chunk_wg's. PIPE, TST, QREG, BULK, DIRECT:
// WgSplit's; EARLY: wg_producer's.
template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB, bool PIPE = false, bool EARLY = false,
          bool TST = false, bool QREG = false, bool BULK = false, bool DIRECT = false>
__global__ void __launch_bounds__(288, MINB)
    chunk_wg2(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
              const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
              int E, float scale, int L, int RUNS) {
  using LY = Wg2Smem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_split_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H);
  wg2_roles<WgSplit<D, ES, STAGES, BF16, MINB == 1, PIPE, LY, 1, TST, QREG, BULK, DIRECT>>(
      cta, o, s0, sN, E, scale, [&](int lane) {
        wg_producer<LY, D, STAGES, true, 1, EARLY>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, lane, cta.sbase);
      });
}

// chunk_wg2 with its producer loading through tensor maps (wg_producer_tma; KERNEL_NOTES v54): tq, tk, tv map q,
// k ([B·H, N, D]) and v ([B·H, N, E]) as tensor_maps.py encodes them; q, k, v are not read here. One CTA per SM,
// 64-column slices (one V box); PIPE, TST, DIRECT: WgSplit's.
template <int D, int ES, int NSL, int STAGES, bool BF16, bool PIPE = false, bool TST = false, bool DIRECT = false>
__global__ void __launch_bounds__(288, 1)
    chunk_wg2_tma(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                  u16* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
                  const double* __restrict__ lam, int H, int N, int E, float scale, int L, int RUNS,
                  const __grid_constant__ TensorMap tq, const __grid_constant__ TensorMap tk,
                  const __grid_constant__ TensorMap tv) {
  static_assert(ES == 64, "one V box of 64 columns (128-byte swizzled rows)");
  using LY = Wg2Smem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_split_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H, 1);
  wg2_roles<WgSplit<D, ES, STAGES, BF16, true, PIPE, LY, 1, TST, false, false, DIRECT>>(
      cta, o, s0, sN, E, scale, [&](int lane) {
        wg_producer_tma<LY, D, STAGES>(&tq, &tk, &tv, cta.seg.bh, token_in_sequence(cta.seg, N), cta.seg.n, cta.e0,
                                       lane, cta.sbase);
      });
}

template <int D, int ES, int STAGES>
__global__ void chunk_wg2_layout(int* out) {
  out[0] = Wg2Smem<D, ES, STAGES>::ALLOC;
}

// ---- two output warpgroups (KERNEL_NOTES v21) ----------------------------------------------------------------------
// chunk_wg2's roles with the outputs split by chunk parity: warps 0-3 take the even chunks, warps 4-7 the odd ones
// (each reads the state copy of its parity and stages its outputs apart), warps 8-11 the state chain, warp 12 the
// producer. While one output warpgroup forms P, scales and stores, the other's products can run: every scheduler
// has three consumer warps to issue from instead of two. The barriers are chunk_wg2's: a slot is released by the
// four warps of the warpgroup whose chunk it holds and the four state warps; a state copy by the four warps of
// its parity. Grid: B·H·RUNS·NSL CTAs of 416 threads, one per SM (≤ 152 registers a thread).
template <int D, int ES, int NSL, int STAGES, bool BF16>
__global__ void __launch_bounds__(416, 1)
    chunk_wg3(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, u16* __restrict__ o,
              const float* __restrict__ s0, float* __restrict__ sN, const double* __restrict__ lam, int H, int N,
              int E, float scale, int L, int RUNS) {
  using LY = Wg3Smem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_split_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H);
  const int tid = threadIdx.x;
  using SP = WgSplit<D, ES, STAGES, BF16, true>;  // one CTA per SM: registers to hold the mask
  const int warp = warp_index();
  if (warp < 8) {
    const int half = warp >> 2;  // 0: the even chunks, 1: the odd ones
    SP::outputs(cta.smem, o, cta.seg, cta.e0, E, scale, tid & 127, half, 2, half ? LY::OS2 : LY::OS);
  } else if (warp < 12) {
    SP::state(cta.smem, s0, sN, cta.seg, cta.e0, E, tid - 256);
  } else {
    wg_producer<LY, D, STAGES, true>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, tid & 31, cta.sbase);
  }
}

template <int D, int ES, int STAGES>
__global__ void chunk_wg3_layout(int* out) {
  out[0] = Wg3Smem<D, ES, STAGES>::ALLOC;
}

// ---- the state pass of the sequence-parallel path, generation 2 -----------------------------------------------
// Every piece's own end state Σ_j λ^(n-1-j) k_jᵀ v_j (from zero) into local [B·H·RUNS, D, E], float32, as
// chunk_state (chunked.cu) computes it: per chunk only S = λ^n S + Kᵀ Ṽ, one warpgroup product into the state
// registers, fed by the output kernel's producer without Q.
template <int D, int ES, int STAGES>
struct WgStateSmem {
  static constexpr int DB = D / 64, QKT = WG_QKT, VRB = ES * 2, VT = 64 * VRB;
  static constexpr int BAR = 0, TAB = SM_TAB;
  static constexpr int KS = WG_HEAD;
  static constexpr int QS = KS;  // no Q tiles (the producer's LOADQ is false)
  static constexpr int VS = KS + STAGES * DB * QKT;
  static constexpr int VD = VS + STAGES * VT;
  static constexpr int BYTES = VD + VT;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(SM_HEAD <= WG_HEAD, "table overlaps the tiles");
};

// The state pass's consumer warps (0-3): S = λ^n S + Kᵀ Ṽ over the piece's chunks, as the producer fills the slots,
// then S into local. TST (KERNEL_NOTES v41; ES = 64): Sᵀ held and updated as chunk_wg2's TST state warps do (Ṽᵀ in
// registers, no Ṽ tile, no barrier of the consumer warps), written back transposed.
template <int D, int ES, int STAGES, bool BF16, bool TST, class LY>
__device__ __forceinline__ void wg_state_pass(const WgCta& cta, float* __restrict__ local, int E) {
  unsigned char* smem = cta.smem;
  const u32 sbase = cta.sbase;
  const int tid = threadIdx.x;
  const int e0 = cta.e0;
  const Seg seg = cta.seg;
  const float* tab = reinterpret_cast<const float*>(smem + LY::TAB);
  const int w = tid >> 5, l = tid & 31;
  const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
  float S[D / 64][ES / 2];
  wg_each_entry<D, ES>(r0, c0, [&](int mb, int i, int, int) { S[mb][i] = 0.f; });
  const int nchunks = (seg.n + CH - 1) / CH;
  static_assert(!TST || ES == 64, "the transposed state is 64 columns of E (wgmma's M)");
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    mbar_wait(sbase + LY::BAR + 8 * slot, (c / STAGES) & 1);
    const int nv = min(CH, seg.n - c * CH);
    if constexpr (TST) {
      u32 va[4][4];
      wg_begin_chunk_t<D, BF16>(S, va, sbase + LY::VS + slot * LY::VT, tab, nv, w, l);
      wg_state_update_t<D, BF16>(S, va, sbase + LY::KS + slot * LY::DB * LY::QKT);
    } else {
      wg_decay_v<ES, BF16>(smem + LY::VS + slot * LY::VT, smem + LY::VD, tab, nv, tid);
      const float dn = tab[nv];
#pragma unroll
      for (int mb = 0; mb < D / 64; ++mb)
#pragma unroll
        for (int i = 0; i < ES / 2; ++i) S[mb][i] *= dn;
      fence_async_smem();
      consumers_sync();  // Ṽ written by every consumer thread
      wg_fence();
      wg_state_update<D, ES, BF16>(S, sbase + LY::KS + slot * LY::DB * LY::QKT, sbase + LY::VD);
    }
    wg_commit();
    wg_wait<0>();
#pragma unroll
    for (int mb = 0; mb < D / 64; ++mb) wg_pin(S[mb]);
    if constexpr (!TST) consumers_sync();  // every share of the product done: Ṽ and the slot may be rewritten
    if (l == 0) mbar_arrive(sbase + LY::BAR + 8 * (STAGES + slot));  // (TST: this warp's share read the slot)
  }
  wg_each_state_entry<D, ES, TST>(r0, c0, [&](int mb, int i, int row, int col) {
    local[((u64)seg.idx * D + row) * E + e0 + col] = S[mb][i];
  });
}

// Grid: B·H·RUNS·NSL CTAs of 160 threads (warps 0-3 wg_state_pass, warp 4 the producer), MINB per SM.
template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB, bool TST = false>
__global__ void __launch_bounds__(160, MINB)
    chunk_wg_state(const u16* __restrict__ k, const u16* __restrict__ v, float* __restrict__ local,
                   const double* __restrict__ lam, int H, int N, int E, int L, int RUNS) {
  griddep_launch_dependents();  // the scan may be resident and waiting while this pass runs
  using LY = WgStateSmem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H);
  if (warp_index() >= 4) {
    wg_producer<LY, D, STAGES, false>(nullptr, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, threadIdx.x & 31,
                                      cta.sbase);
    return;
  }
  wg_state_pass<D, ES, STAGES, BF16, TST, LY>(cta, local, E);
}

// chunk_wg_state with its producer loading through tensor maps (wg_producer_tma without Q; KERNEL_NOTES v56): tk,
// tv map k ([B·H, N, D]) and v ([B·H, N, E]) as tensor_maps.py encodes them; k and v are not read here.
// 64-column slices (one V box).
template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB, bool TST = false>
__global__ void __launch_bounds__(160, MINB)
    chunk_wg_state_tma(const u16* __restrict__ k, const u16* __restrict__ v, float* __restrict__ local,
                       const double* __restrict__ lam, int H, int N, int E, int L, int RUNS,
                       const __grid_constant__ TensorMap tk, const __grid_constant__ TensorMap tv) {
  static_assert(ES == 64, "one V box of 64 columns (128-byte swizzled rows)");
  griddep_launch_dependents();  // the scan may be resident and waiting while this pass runs
  using LY = WgStateSmem<D, ES, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, STAGES, LY>(smem_raw, RUNS, L, N, lam, H, 1);
  if (warp_index() >= 4) {
    wg_producer_tma<LY, D, STAGES, false>(nullptr, &tk, &tv, cta.seg.bh, token_in_sequence(cta.seg, N), cta.seg.n,
                                          cta.e0, threadIdx.x & 31, cta.sbase);
    return;
  }
  wg_state_pass<D, ES, STAGES, BF16, TST, LY>(cta, local, E);
}

template <int D, int ES, int STAGES>
__global__ void chunk_wg_state_layout(int* out) {
  out[0] = WgStateSmem<D, ES, STAGES>::ALLOC;
}
