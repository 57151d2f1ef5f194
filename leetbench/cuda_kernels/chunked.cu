// Chunked decay attention on tensor cores (bf16 / fp16 in, fp32 accumulate; float32 in through 3xTF32).
//
// Per chunk of C = 64 tokens, with S_in the state carried into the chunk (D × E, float32 in registers):
//   O     = c·[((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in],   M[i, j] = λ^(i-j) (j ≤ i), else 0
//   S_out = λ^n S_in + Σ_i λ^(n-1-i) k_iᵀ v_i            (n = tokens in the chunk, C except at the tail)
//
// Work split. One CTA per (b, h, piece of the sequence, slice of ES columns of E), streaming the piece's chunks
// in order, so the state never leaves the chip and q, k, v are read from HBM once (the E slices of a head
// re-read its Q and K rows, from L2). A piece is the whole sequence (one pass; B=1, H=32, E=128, ES=32 → 128
// CTAs) or one of P segments of L tokens (sequence parallel, see ops.py): then `chunk_state` first computes
// every earlier piece's own end state, `segment_scan` turns those into the state entering every segment, and
// `chunk_fwd` / `chunk_f32` start each segment from its state.
//
// Inside a CTA: warp 4 is the producer (16-byte cp.async into padded rows, STAGES chunks ahead, full/empty
// mbarriers); warps 0-3 are consumers, each compiled for its own role (the warp index is a template
// argument, so the causal bounds are compile-time and the unrolled loops branch-free). Consumer warp W owns
// output rows 16W..16W+15 (Q Kᵀ only up to the diagonal; the FlashAttention-2 register reuse of the score
// accumulators as A operands of P V) and a block of state tiles, balanced so that warps with less causal work
// carry more state. The state enters Q S_in as a 16-bit copy in shared memory (double-buffered); the float32
// registers stay exact. For float16 that copy is scaled by a power of two per warp (float16 overflows at
// 65504; the scale is undone on the Q fragments, exactly). Powers of λ come from a table λ^j, j = 0..C,
// formed in float64 from log λ (never λ^(-s)).
//
// Tails: the producer zero-fills the rows past the piece's end, so no garbage reaches a product.
//
// Shared-memory layouts are defined here only: ops.py reads their sizes back through `chunk_layout`.

#define CH 64      // chunk length C
#define TAB_LO 80  // float offset of the λ^j lo parts behind the λ^j table (≥ CH + 1, keeps 16-byte alignment)
#define SM_SCL 64  // fp16 state-copy scales [2][4] u32, behind the mbarriers
#define SM_TAB 128 // λ^j table
#define SM_HEAD (SM_TAB + 2 * TAB_LO * 4)  // first tile

// Option bits of the output kernels (template argument OPT).
#define OPT_SCALE16 1  // scale the float16 state copy (no Inf when |S| > 65504); no effect for bf16 / float32
#define OPT_ONELOOP 2  // the four consumer warps share one chunk loop and one bar.sync (synccheck-clean)

template <int D, int ES, int STAGES>
struct ChunkSmem {
  static constexpr int QP = D + 8;   // row pitch of Q/K tiles (elements): conflict-free ldmatrix
  static constexpr int VP = ES + 8;  // row pitch of V / state / output tiles
  static constexpr int BAR = 0;      // mbarriers (see chunk_prologue)
  static constexpr int SCL = SM_SCL;
  static constexpr int TAB = SM_TAB;
  static constexpr int QS = SM_HEAD;                             // Q tiles
  static constexpr int KS = QS + STAGES * CH * QP * 2;           // K tiles
  static constexpr int VS = KS + STAGES * CH * QP * 2;           // V tiles
  static constexpr int SB = VS + STAGES * CH * VP * 2;           // 16-bit state copies [2][D][VP]
  static constexpr int OS = SB + 2 * D * VP * 2;                 // output staging [4][16][VP]
  static constexpr int BYTES = OS + 4 * 16 * VP * 2;
};

// float32 tiles. Pitches ≡ 8 (mod 32) words keep the 64-bit fragment loads conflict-free.
template <int D, int ES, int STAGES>
struct ChunkSmemF32 {
  static constexpr int QP = D + 8;   // floats
  static constexpr int VP = ES + 8;
  static constexpr int SP = D + 8;   // transposed state copy ST[e][d]
  static constexpr int OP = ES + 4;  // output staging
  static constexpr int BAR = 0;
  static constexpr int TAB = SM_TAB;
  static constexpr int QS = SM_HEAD;
  static constexpr int KS = QS + STAGES * CH * QP * 4;
  static constexpr int VS = KS + STAGES * CH * QP * 4;
  static constexpr int ST = VS + STAGES * CH * VP * 4;
  static constexpr int OS = ST + 2 * ES * SP * 4;
  static constexpr int BYTES = OS + 4 * 16 * OP * 4;
};

// The state-only pass: K and V tiles (EB bytes per element), the same pitches as the output kernels.
template <int D, int ES, int STAGES, int EB>
struct StateSmem {
  static constexpr int QP = D + 8;
  static constexpr int VP = ES + 8;
  static constexpr int BAR = 0;
  static constexpr int TAB = SM_TAB;
  static constexpr int KS = SM_HEAD;
  static constexpr int VS = KS + STAGES * CH * QP * EB;
  static constexpr int BYTES = VS + STAGES * CH * VP * EB;
};

// ---- pieces of the sequence --------------------------------------------------------------------------------
// Blocks are numbered ((b·H + h)·RUNS + p)·NSL + slice. Piece p of (b, h) holds tokens p·L .. min((p+1)·L, N)-1;
// one pass over the sequence is RUNS = 1, L = N. Per-piece states (in and out) are rows idx = (b·H + h)·RUNS + p.
struct Seg {
  u64 tok0;   // the piece's first row in the [B·H·N] token rows
  int n;      // its tokens
  int bh;     // b·H + h
  int idx;    // (b·H + h)·RUNS + p
  bool last;  // p == RUNS - 1: the piece that ends the sequence
};
__device__ __forceinline__ Seg seg_of(int idx, int runs, int L, int N) {
  Seg s;
  s.idx = idx;
  s.bh = idx / runs;
  const int p = idx - s.bh * runs;
  s.tok0 = (u64)s.bh * N + (u64)p * L;
  s.n = min(L, N - p * L);
  s.last = p == runs - 1;
  return s;
}

// The producer warp: for every chunk, wait until the consumers released the slot, then copy the chunk's Q
// (LOADQ), K rows and this CTA's V slice into padded shared rows with 16-byte cp.async (32 lanes × 16 B per
// instruction), zero-filling the rows past the piece's end, and let each lane arrive on the slot's full
// barrier when its copies have landed (expected count 32). (Per-row cp.async.bulk copies, multicast across a
// cluster, were tried first: the copy engine handles such small copies one by one, ~7 µs per chunk.)
template <int D, int ES, int STAGES, int EB, int QP, int VP, bool LOADQ>
__device__ __forceinline__ void chunk_producer(const void* q, const void* k, const void* v, u64 tok0, int n,
                                               int E, int e0, int lane, u32 qs0, u32 ks0, u32 vs0, u32 full0,
                                               u32 empty0) {
  constexpr int QCH = D * EB / 16;   // 16-byte pieces per Q/K row
  constexpr int VCH = ES * EB / 16;  // per V row slice
  const int nchunks = (n + CH - 1) / CH;
  const char* qb = reinterpret_cast<const char*>(q);
  const char* kb = reinterpret_cast<const char*>(k);
  const char* vb = reinterpret_cast<const char*>(v);
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    if (c >= STAGES) mbar_wait(empty0 + 8 * slot, ((c / STAGES) + 1) & 1);
    const int nv = min(CH, n - c * CH);
    const u64 t0 = tok0 + (u64)c * CH;
    const u32 qd = qs0 + (u32)(slot * CH * QP * EB), kd = ks0 + (u32)(slot * CH * QP * EB);
    const u32 vd = vs0 + (u32)(slot * CH * VP * EB);
#pragma unroll 8
    for (int idx = lane; idx < CH * QCH; idx += 32) {
      const int row = idx / QCH, cc = idx % QCH;
      const bool ok = row < nv;
      const u64 off = ((t0 + (ok ? row : 0)) * D) * EB + cc * 16;
      const u32 so = (u32)(row * QP * EB + cc * 16);
      if (LOADQ) cp_async16(qd + so, qb + off, ok ? 16u : 0u);
      cp_async16(kd + so, kb + off, ok ? 16u : 0u);
    }
#pragma unroll 4
    for (int idx = lane; idx < CH * VCH; idx += 32) {
      const int row = idx / VCH, cc = idx % VCH;
      const bool ok = row < nv;
      const u64 off = ((t0 + (ok ? row : 0)) * E + e0) * EB + cc * 16;
      cp_async16(vd + (u32)(row * VP * EB + cc * 16), vb + off, ok ? 16u : 0u);
    }
    cp_async_mbar_arrive(full0 + 8 * slot);
  }
}

// Which state tiles (16 rows of D × 8 columns of the E slice) consumer warp W owns. Warp W's output work
// grows with W (causal: scores only up to the diagonal), so when D ≥ 64 the state m-tiles go mostly to the
// low warps, balancing mma counts under a register budget; for D = 16, 32 the tiles are split by columns.
template <int D, int ES, int BUDGET = 120>
struct StateSplit {
  static constexpr int MTS = D / 16, NTS = ES / 8, NTO = ES / 8;
  __host__ __device__ static constexpr int out_cost(int w) { return 2 * (w + 1) * (D / 16) + NTO * (D / 16) + NTO * (w + 1); }
  __host__ __device__ static constexpr int cap(int w) {
    const int c = (BUDGET - 16 * (w + 1)) / (4 * NTS);
    return c < 0 ? 0 : c;
  }
  __host__ __device__ static constexpr int count(int w) {
    int total = MTS * NTS * 4;
    for (int i = 0; i < 4; ++i) total += out_cost(i);
    const int target = total / 4;
    int remaining = MTS, c = 0;
    for (int i = 0; i <= w; ++i) {
      int later = 0;
      for (int j = i + 1; j < 4; ++j) later += cap(j);
      int want = (target - out_cost(i) + 2 * NTS) / (4 * NTS);
      if (want < 0) want = 0;
      int lo = remaining - later;
      if (lo < 0) lo = 0;
      const int hi = cap(i) < remaining ? cap(i) : remaining;
      c = want < lo ? lo : (want > hi ? hi : want);
      if (i == 3) c = remaining;
      remaining -= c;
    }
    return c;
  }
  __host__ __device__ static constexpr int mbegin(int w) {
    int b = 0;
    for (int i = 0; i < w; ++i) b += count(i);
    return b;
  }
  // D = 16, 32: WGM warps along rows (one m-tile each), WGN along columns
  static constexpr int WGM = MTS < 4 ? MTS : 4;
  static constexpr int WGN = 4 / WGM;
  static constexpr int WNS = NTS / WGN > 0 ? NTS / WGN : 1;
  __host__ __device__ static constexpr int mb(int w) { return MTS >= 4 ? mbegin(w) : w / WGN; }
  __host__ __device__ static constexpr int me(int w) { return MTS >= 4 ? mbegin(w) + count(w) : w / WGN + 1; }
  __host__ __device__ static constexpr int nb(int w) { return MTS >= 4 ? 0 : ((w % WGN) * WNS < NTS ? (w % WGN) * WNS : NTS); }
  __host__ __device__ static constexpr int ne(int w) {
    return MTS >= 4 ? NTS : ((w % WGN) * WNS + WNS < NTS ? (w % WGN) * WNS + WNS : NTS);
  }
};

// The state-only pass has no output work: D ≥ 64 splits the m-tiles evenly (D is a multiple of 64), D = 16, 32
// as StateSplit.
template <int D, int ES>
struct EvenSplit {
  static constexpr int MTS = D / 16, NTS = ES / 8;
  static constexpr int WGM = MTS < 4 ? MTS : 4;
  static constexpr int WGN = 4 / WGM;
  static constexpr int WNS = NTS / WGN > 0 ? NTS / WGN : 1;
  __host__ __device__ static constexpr int mb(int w) { return MTS >= 4 ? w * (MTS / 4) : w / WGN; }
  __host__ __device__ static constexpr int me(int w) { return MTS >= 4 ? (w + 1) * (MTS / 4) : w / WGN + 1; }
  __host__ __device__ static constexpr int nb(int w) {
    return MTS >= 4 ? 0 : ((w % WGN) * WNS < NTS ? (w % WGN) * WNS : NTS);
  }
  __host__ __device__ static constexpr int ne(int w) {
    return MTS >= 4 ? NTS : ((w % WGN) * WNS + WNS < NTS ? (w % WGN) * WNS + WNS : NTS);
  }
};

// ---- pieces every kernel shares ------------------------------------------------------------------------------

// Entry j of the table λ^j, j = 0..C: formed in float64 from log λ, and at +TAB_LO floats its float64 remainder.
__device__ __forceinline__ void decay_table_entry(float* tab, double lam, int j) {
  const double p = exp(log(lam) * (double)j);
  tab[j] = (float)p;
  tab[TAB_LO + j] = (float)(p - (double)(float)p);
}

// mbarriers from shared offset 0: full[STAGES] (the producer's lanes), empty[STAGES] (the consumer warps).
// Then the table λ^j (decay_table_entry).
template <int STAGES>
__device__ __forceinline__ void chunk_prologue(u32 bars, float* tab, double lam, int tid, u32 producers = 32,
                                               u32 consumer_warps = 4) {
  static_assert(2 * STAGES * 8 <= SM_SCL, "barriers overlap the fp16 scales");
  if (tid == 0) {
    ring_barriers_init(bars, STAGES, producers, consumer_warps);  // an arrive per producer lane, per consumer warp
    fence_mbar_init();
  }
  if (tid <= CH) decay_table_entry(tab, lam, tid);
  __syncthreads();
}

// Named barrier ID for one warpgroup (128 threads): 1 is the consumers'; chunk_wg4's two state warpgroups take 1
// and 2, each meeting only its own four warps, and its output warps 3 (QSTAGE).
template <int ID>
__device__ __forceinline__ void wg_sync() {
  asm volatile("bar.sync %0, 128;" ::"n"(ID) : "memory");
}

// The consumer warps wait for each other on named barrier 1 (the producer warp does not take part). With
// OPT_ONELOOP all four reach it through one instruction (consumers_one). Without it they reach it from four
// template instances, i.e. from different bar.sync instructions, which PTX reserves for the non-aligned
// barrier.sync; compute-sanitizer's synccheck flags that ("divergent thread(s) in block"), while the
// non-aligned barrier.sync measured 4–7% slower on the H200 (scripts/KERNEL_NOTES.md).
__device__ __forceinline__ void consumers_sync() { wg_sync<1>(); }

// A warp's state tiles: S[mt][nt] holds rows d, d + 8 and columns ec, ec + 1 of the CTA's E slice, with
// d = (MB + mt)·16 + g and ec = (NB + nt)·8 + 2·t4 (the mma accumulator layout). Row block idx of s0 / sN.
template <int D, int MB, int NB, int WM, int WN, bool SACT>
__device__ __forceinline__ void load_state(float (&S)[WM][WN][4], const float* __restrict__ s0, int idx, int e0,
                                           int E, int g, int t4) {
  griddep_wait();  // (s0 may be the scan's s_in: a dependent launch waits for it here)
#pragma unroll
  for (int mt = 0; mt < WM; ++mt)
#pragma unroll
    for (int nt = 0; nt < WN; ++nt) {
      float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
      if (SACT && s0 != nullptr) {
        const float* p = s0 + ((u64)idx * D + (MB + mt) * 16 + g) * E + e0 + (NB + nt) * 8 + 2 * t4;
        x0 = p[0]; x1 = p[1];
        x2 = p[8 * (u64)E]; x3 = p[8 * (u64)E + 1];
      }
      S[mt][nt][0] = x0; S[mt][nt][1] = x1; S[mt][nt][2] = x2; S[mt][nt][3] = x3;
    }
}

template <int D, int MB, int NB, int WM, int WN, bool SACT>
__device__ __forceinline__ void store_state(const float (&S)[WM][WN][4], float* __restrict__ sN, int idx, int e0,
                                            int E, int g, int t4) {
  if (SACT && sN != nullptr) {
#pragma unroll
    for (int mt = 0; mt < WM; ++mt)
#pragma unroll
      for (int nt = 0; nt < WN; ++nt) {
        float* p = sN + ((u64)idx * D + (MB + mt) * 16 + g) * E + e0 + (NB + nt) * 8 + 2 * t4;
        p[0] = S[mt][nt][0]; p[1] = S[mt][nt][1];
        p[8 * (u64)E] = S[mt][nt][2]; p[8 * (u64)E + 1] = S[mt][nt][3];
      }
  }
}

// The decay mask with the scale folded in, for the score tiles of rows R0..R0+15 up to the diagonal (NKT
// tiles of 8 keys), in the accumulator layout.
template <int R0, int NKT>
__device__ __forceinline__ void decay_mask(float (&m)[NKT][4], const float* tab, float scale, int g, int t4) {
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int i = R0 + g + ((x & 2) ? 8 : 0);
      const int j = nt * 8 + 2 * t4 + (x & 1);
      m[nt][x] = j <= i ? scale * tab[i - j] : 0.f;
    }
}

// A warp's 16 output rows R0.. of one chunk, staged in shared memory (row pitch PITCH elements), stored with
// 16-byte coalesced writes; rows past the piece's end (nv valid rows in the chunk) are not written.
template <typename T, int ES, int PITCH, int R0>
__device__ __forceinline__ void store_rows(T* __restrict__ o, const T* os, u64 tok0, int nv, int E, int e0,
                                           int lane) {
  constexpr int PER = 16 / sizeof(T), CPR = ES / PER;  // elements per 16 bytes, 16-byte pieces per row
#pragma unroll
  for (int idx = lane; idx < 16 * CPR; idx += 32) {
    const int row = idx / CPR, cc = idx % CPR;
    if (R0 + row < nv) {
      const uint4 val = *reinterpret_cast<const uint4*>(os + row * PITCH + cc * PER);
      st_global_v4(o + (tok0 + R0 + row) * E + e0 + cc * PER, val);
    }
  }
}

// ---- 16-bit state update: S = λ^n S + Σ_i λ^(n-1-i) k_iᵀ v_i (λ^(n-1-i) folded into the V fragments, fp32)
template <int D, int MB, int NB, int WM, int WN, int QP, int VP, bool BF16>
__device__ __forceinline__ void state_update16(float (&S)[WM][WN][4], u32 ks, u32 vs, const float* tab, int nv,
                                               int t4, u32 trans_off, u32 kt_off, u32 vx2_off) {
  const float dhi = tab[nv];  // float λ^n: the 16-bit products dominate the error here
#pragma unroll
  for (int mt = 0; mt < WM; ++mt)
#pragma unroll
    for (int nt = 0; nt < WN; ++nt)
#pragma unroll
      for (int x = 0; x < 4; ++x) S[mt][nt][x] *= dhi;
  const bool full = nv == CH;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (full || kk * 16 < nv) {
      const int tA = kk * 16 + 2 * t4;
      float w0, w1, w2, w3;
      if (full) {
        w0 = tab[CH - 1 - tA]; w1 = tab[CH - 2 - tA]; w2 = tab[CH - 9 - tA]; w3 = tab[CH - 10 - tA];
      } else {
        w0 = tA < nv ? tab[nv - 1 - tA] : 0.f;
        w1 = tA + 1 < nv ? tab[nv - 2 - tA] : 0.f;
        w2 = tA + 8 < nv ? tab[nv - 9 - tA] : 0.f;
        w3 = tA + 9 < nv ? tab[nv - 10 - tA] : 0.f;
      }
      u32 bf[WN][2];
#pragma unroll
      for (int np = 0; np < (WN + 1) / 2; ++np) {
        const int ncol = (NB + 2 * np) * 8;
        if (WN >= 2) {
          u32 b[4];
          ldsm_x4_t(vs + trans_off + (kk * 16 * VP + ncol) * 2, b);
          bf[2 * np][0] = b[0]; bf[2 * np][1] = b[1];
          if (2 * np + 1 < WN) { bf[2 * np + 1][0] = b[2]; bf[2 * np + 1][1] = b[3]; }
        } else {
          u32 b[2];
          ldsm_x2_t(vs + vx2_off + (kk * 16 * VP + ncol) * 2, b);
          bf[0][0] = b[0]; bf[0][1] = b[1];
        }
      }
#pragma unroll
      for (int nt = 0; nt < WN; ++nt) {
        float x0, x1, x2, x3;
        unpack2<BF16>(bf[nt][0], x0, x1);
        unpack2<BF16>(bf[nt][1], x2, x3);
        bf[nt][0] = pack2<BF16>(x0 * w0, x1 * w1);
        bf[nt][1] = pack2<BF16>(x2 * w2, x3 * w3);
      }
#pragma unroll
      for (int mt = 0; mt < WM; ++mt) {
        u32 a[4];
        ldsm_x4_t(ks + kt_off + (kk * 16 * QP + (MB + mt) * 16) * 2, a);
#pragma unroll
        for (int nt = 0; nt < WN; ++nt) mma16816<BF16>(S[mt][nt], a, bf[nt][0], bf[nt][1]);
      }
    }
  }
}

// Per-lane ldmatrix offsets (bytes) of the [k][n] (transposed) tile loads.
template <int QP, int VP>
struct LdsmOffsets {
  u32 trans, kt, vx2;
  __device__ __forceinline__ explicit LdsmOffsets(int lane)
      : trans((((lane & 7) + ((lane >> 3) & 1) * 8) * VP + (lane >> 4) * 8) * 2),
        kt((((lane & 7) + ((lane >> 4) << 3)) * QP + ((lane >> 3) & 1) * 8) * 2),
        vx2((((lane & 7) + ((lane >> 3) & 1) * 8) * VP) * 2) {}
};

// ---- float16 state copy: a power-of-two scale per consumer warp -----------------------------------------------
// The warp stores S·2^-s with 2^15 > max|S·2^-s| (s = 0 while |S| < 2^15, so small states are copied unchanged),
// and publishes s; the Q·S_in product multiplies each Q fragment by 2^s of the warp owning those state rows
// (a float16 multiply by a power of two is exact), so Q·S_in is unchanged. s ≤ 15 keeps 2^s a float16;
// past |S| ≈ 2^31 the copy saturates at ±65504 (satfinite) instead of becoming Inf.
__device__ __forceinline__ u32 state_scale_exp(float maxabs_warp) {
  const int e = (int)(__float_as_uint(maxabs_warp) >> 23) - 141;  // biased exponent − (127 + 14): max < 2^(e+15)
  return (u32)(e < 0 ? 0 : (e > 15 ? 15 : e));
}
__device__ __forceinline__ u32 half2_pow2(u32 s) { return ((s + 15u) << 10) * 0x10001u; }

// ---- consumers of the 16-bit output kernel ---------------------------------------------------------------------
// A consumer warp's persistent registers (state tiles, decay mask, two row factors) live in one float array r,
// so that OPT_ONELOOP can keep every warp's role in one array across a shared loop (size: the largest role).
template <int D, int ES, int STAGES, bool BF16, bool SC>
struct Half {
  using L = ChunkSmem<D, ES, STAGES>;
  using SP = StateSplit<D, ES>;
  static constexpr int QP = L::QP, VP = L::VP, NTO = ES / 8;
  static_assert(NTO % 2 == 0, "ES must be a multiple of 16");

  struct Ctx {
    unsigned char* smem;
    const float* tab;
    u32 sbase, qa_base, kb_off;
    LdsmOffsets<QP, VP> off;
    u16* o;
    const float* s0;
    float* sN;
    Seg seg;
    int e0, E, lane, g, t4, nchunks;
    float scale;
    __device__ __forceinline__ Ctx(unsigned char* sm, u16* o_, const float* s0_, float* sN_, const Seg& s, int e0_,
                                   int E_, float scale_, int lane_)
        : smem(sm), tab(reinterpret_cast<const float*>(sm + L::TAB)), sbase(smem_u32(sm)),
          qa_base((((lane_ & 15)) * QP + (lane_ >> 4) * 8) * 2),
          kb_off(((((lane_ >> 4) << 3) + (lane_ & 7)) * QP + ((lane_ >> 3) & 1) * 8) * 2), off(lane_), o(o_),
          s0(s0_), sN(sN_), seg(s), e0(e0_), E(E_), lane(lane_), g(lane_ >> 2), t4(lane_ & 3),
          nchunks((s.n + CH - 1) / CH), scale(scale_) {}
  };

  template <int W>
  struct Warp {
    static constexpr int R0 = 16 * W;            // output rows of this warp
    static constexpr int NKP = W + 1;            // 16-key steps up to the diagonal
    static constexpr int MB = SP::mb(W), ME = SP::me(W), NB = SP::nb(W), NE = SP::ne(W);
    static constexpr int WM = ME - MB > 0 ? ME - MB : 1, WN = NE - NB > 0 ? NE - NB : 1;
    static constexpr bool SACT = ME > MB && NE > NB;
    static constexpr int NS = WM * WN * 4, NM = 2 * NKP * 4, NR = NS + NM + 2;
    typedef float State[WM][WN][4];
    typedef float Mask[2 * NKP][4];
    static __device__ __forceinline__ State& st(float* r) { return *reinterpret_cast<State*>(r); }
    static __device__ __forceinline__ Mask& mk(float* r) { return *reinterpret_cast<Mask*>(r + NS); }

    // 2^s (float16 pair) for the Q fragment of k-tile kk against state n-tile nt: the scale of its owner. The
    // owners' tile ranges are named constants so that the selection folds away in the unrolled loops.
    static constexpr int MB0 = SP::mb(0), ME0 = SP::me(0), NB0 = SP::nb(0), NE0 = SP::ne(0);
    static constexpr int MB1 = SP::mb(1), ME1 = SP::me(1), NB1 = SP::nb(1), NE1 = SP::ne(1);
    static constexpr int MB2 = SP::mb(2), ME2 = SP::me(2), NB2 = SP::nb(2), NE2 = SP::ne(2);
    static constexpr int MB3 = SP::mb(3), ME3 = SP::me(3), NB3 = SP::nb(3), NE3 = SP::ne(3);
    static __host__ __device__ __forceinline__ int owner(int kk, int nt) {
      return (MB0 <= kk && kk < ME0 && NB0 <= nt && nt < NE0)   ? 0
             : (MB1 <= kk && kk < ME1 && NB1 <= nt && nt < NE1) ? 1
             : (MB2 <= kk && kk < ME2 && NB2 <= nt && nt < NE2) ? 2
             : (MB3 <= kk && kk < ME3 && NB3 <= nt && nt < NE3) ? 3
                                                                : -1;  // nobody (none for the supported shapes)
    }
    static __device__ __forceinline__ u32 owner_scale(const u32* scl, int kk, int nt) {
      const int w = owner(kk, nt);
      return w < 0 ? 0x3C003C00u : half2_pow2(scl[w]);
    }

    template <bool MUL>
    static __device__ __forceinline__ void put_sb(const State& S, u16* sb, int g, int t4, float rs) {
#pragma unroll
      for (int mt = 0; mt < WM; ++mt)
#pragma unroll
        for (int nt = 0; nt < WN; ++nt) {
          const int d = (MB + mt) * 16 + g;
          const int ec = (NB + nt) * 8 + 2 * t4;
          float x0 = S[mt][nt][0], x1 = S[mt][nt][1], x2 = S[mt][nt][2], x3 = S[mt][nt][3];
          if (MUL) { x0 *= rs; x1 *= rs; x2 *= rs; x3 *= rs; }
          *reinterpret_cast<u32*>(sb + d * VP + ec) = SC ? pack2_f16_sat(x0, x1) : pack2<BF16>(x0, x1);
          *reinterpret_cast<u32*>(sb + (d + 8) * VP + ec) = SC ? pack2_f16_sat(x2, x3) : pack2<BF16>(x2, x3);
        }
    }

    // The 16-bit copy of this warp's state tiles into buffer buf (and, for float16, the warp's scale).
    static __device__ __forceinline__ void write_sb(float* r, const Ctx& x, int buf) {
      if (!SACT) return;
      const State& S = st(r);
      u16* sb = reinterpret_cast<u16*>(x.smem + L::SB) + buf * D * VP;
      if (SC) {
        float m = 0.f;
#pragma unroll
        for (int mt = 0; mt < WM; ++mt)
#pragma unroll
          for (int nt = 0; nt < WN; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) m = fmaxf(m, fabsf(S[mt][nt][i]));
        const u32 s = state_scale_exp(__uint_as_float(warp_max_u32(__float_as_uint(m))));
        if (x.lane == 0) reinterpret_cast<u32*>(x.smem + L::SCL)[buf * 4 + W] = s;
        if (s != 0) {
          put_sb<true>(S, sb, x.g, x.t4, __uint_as_float((127u - s) << 23));
          return;
        }
      }
      put_sb<false>(S, sb, x.g, x.t4, 1.f);
    }

    static __device__ __forceinline__ void init(float* r, const Ctx& x) {
      load_state<D, MB, NB, WM, WN, SACT>(st(r), x.s0, x.seg.idx, x.e0, x.E, x.g, x.t4);
      write_sb(r, x, 0);
      decay_mask<R0, 2 * NKP>(mk(r), x.tab, x.scale, x.g, x.t4);
      r[NS + NM] = x.scale * x.tab[R0 + x.g + 1];
      r[NS + NM + 1] = x.scale * x.tab[R0 + x.g + 9];
    }

    static __device__ __forceinline__ void step(float* r, const Ctx& x, int c) {
      State& S = st(r);
      const Mask& mreg = mk(r);
      const float f0 = r[NS + NM], f1 = r[NS + NM + 1];
      const int slot = c % STAGES;
      mbar_wait(x.sbase + L::BAR + 8 * slot, (c / STAGES) & 1);
      const int nv = min(CH, x.seg.n - c * CH);
      const u32 qs = x.sbase + L::QS + slot * CH * QP * 2, ks = x.sbase + L::KS + slot * CH * QP * 2;
      const u32 vs = x.sbase + L::VS + slot * CH * VP * 2;
      const u32 sb = x.sbase + L::SB + (c & 1) * D * VP * 2;
      const u32 qa_off = x.qa_base + R0 * QP * 2;
      const u32* scl = reinterpret_cast<const u32*>(x.smem + L::SCL) + (c & 1) * 4;  // the owners' scales

      // ---- outputs: inter (Q S_in) and scores (Q Kᵀ up to the diagonal), sharing the Q fragments
      float acc_o[NTO][4];
      float acc_a[2 * NKP][4];
#pragma unroll
      for (int nt = 0; nt < NTO; ++nt) acc_o[nt][0] = acc_o[nt][1] = acc_o[nt][2] = acc_o[nt][3] = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2 * NKP; ++nt) acc_a[nt][0] = acc_a[nt][1] = acc_a[nt][2] = acc_a[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        u32 a[4];
        ldsm_x4(qs + qa_off + kk * 32, a);
#pragma unroll
        for (int np = 0; np < NTO / 2; ++np) {
          u32 b[4];
          ldsm_x4_t(sb + x.off.trans + (kk * 16 * VP + np * 16) * 2, b);
          if (SC) {  // Q·(S 2^-s) with Q scaled by 2^s: identical products, no Inf in the copy
            const u32 h0 = owner_scale(scl, kk, 2 * np), h1 = owner_scale(scl, kk, 2 * np + 1);
            const u32 a0[4] = {mul_f16x2(a[0], h0), mul_f16x2(a[1], h0), mul_f16x2(a[2], h0), mul_f16x2(a[3], h0)};
            const u32 a1[4] = {mul_f16x2(a[0], h1), mul_f16x2(a[1], h1), mul_f16x2(a[2], h1), mul_f16x2(a[3], h1)};
            mma16816<BF16>(acc_o[2 * np], a0, b[0], b[1]);
            mma16816<BF16>(acc_o[2 * np + 1], a1, b[2], b[3]);
          } else {
            mma16816<BF16>(acc_o[2 * np], a, b[0], b[1]);
            mma16816<BF16>(acc_o[2 * np + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int np = 0; np < NKP; ++np) {
          u32 b[4];
          ldsm_x4(ks + x.kb_off + (np * 16 * QP + kk * 16) * 2, b);
          mma16816<BF16>(acc_a[2 * np], a, b[0], b[1]);
          mma16816<BF16>(acc_a[2 * np + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < NTO; ++nt) {
        acc_o[nt][0] *= f0; acc_o[nt][1] *= f0;
        acc_o[nt][2] *= f1; acc_o[nt][3] *= f1;
      }
      // ---- intra: (scores ⊙ M) V, scores reused from registers as A operands
#pragma unroll
      for (int kk = 0; kk < NKP; ++kk) {
        u32 a[4];
        a[0] = pack2<BF16>(acc_a[2 * kk][0] * mreg[2 * kk][0], acc_a[2 * kk][1] * mreg[2 * kk][1]);
        a[1] = pack2<BF16>(acc_a[2 * kk][2] * mreg[2 * kk][2], acc_a[2 * kk][3] * mreg[2 * kk][3]);
        a[2] = pack2<BF16>(acc_a[2 * kk + 1][0] * mreg[2 * kk + 1][0], acc_a[2 * kk + 1][1] * mreg[2 * kk + 1][1]);
        a[3] = pack2<BF16>(acc_a[2 * kk + 1][2] * mreg[2 * kk + 1][2], acc_a[2 * kk + 1][3] * mreg[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < NTO / 2; ++np) {
          u32 b[4];
          ldsm_x4_t(vs + x.off.trans + (kk * 16 * VP + np * 16) * 2, b);
          mma16816<BF16>(acc_o[2 * np], a, b[0], b[1]);
          mma16816<BF16>(acc_o[2 * np + 1], a, b[2], b[3]);
        }
      }
      // ---- state
      if (SACT)
        state_update16<D, MB, NB, WM, WN, QP, VP, BF16>(S, ks, vs, x.tab, nv, x.t4, x.off.trans, x.off.kt,
                                                         x.off.vx2);
      __syncwarp();
      if (x.lane == 0) mbar_arrive(x.sbase + L::BAR + 8 * (STAGES + slot));  // release the slot to the producer
      write_sb(r, x, (c + 1) & 1);
      // ---- store O rows (staged per warp for 16-byte coalesced stores)
      u16* os = reinterpret_cast<u16*>(x.smem + L::OS) + W * 16 * VP;
#pragma unroll
      for (int nt = 0; nt < NTO; ++nt) {
        *reinterpret_cast<u32*>(os + x.g * VP + nt * 8 + 2 * x.t4) = pack2<BF16>(acc_o[nt][0], acc_o[nt][1]);
        *reinterpret_cast<u32*>(os + (x.g + 8) * VP + nt * 8 + 2 * x.t4) = pack2<BF16>(acc_o[nt][2], acc_o[nt][3]);
      }
      __syncwarp();
      store_rows<u16, ES, VP, R0>(x.o, os, x.seg.tok0 + (u64)c * CH, nv, x.E, x.e0, x.lane);
      __syncwarp();
    }

    static __device__ __forceinline__ void finish(float* r, const Ctx& x) {
      store_state<D, MB, NB, WM, WN, SACT>(st(r), x.seg.last ? x.sN : nullptr, x.seg.bh, x.e0, x.E, x.g, x.t4);
    }
  };
};

// ---- consumers of the float32 output kernel (3xTF32) -----------------------------------------------------------
// Fragment loads are plain 32/64-bit shared loads (ldmatrix moves 16-bit elements). For Q Kᵀ and Q S_in the
// k index inside each group of 8 is permuted (k = t ↔ d = 2t, k = t + 4 ↔ d = 2t + 1, the same on both
// operands) so A and B pairs are single 64-bit loads; P V uses the same permutation on the key index, which
// is how the score accumulators are laid out.

// State update in natural token order (k = t ↔ token t, k = t + 4 ↔ token t + 4). The chunk's contribution is
// summed in fresh accumulators and added to S with IEEE float adds: the tensor core's float32 accumulation
// truncates, which would otherwise bias S over the many chunks it lives.
template <int D, int MB, int NB, int WM, int WN, int QP, int VP>
__device__ __forceinline__ void state_update32(float (&S)[WM][WN][4], const float* Ks, const float* Vs,
                                               const float* tab, int nv, int g, int t4) {
  const float dhi = tab[nv], dlo = tab[TAB_LO + nv];
#pragma unroll
  for (int mt = 0; mt < WM; ++mt) {
    float dS[WN][4];
#pragma unroll
    for (int nt = 0; nt < WN; ++nt) dS[nt][0] = dS[nt][1] = dS[nt][2] = dS[nt][3] = 0.f;
    const int d = (MB + mt) * 16 + g;
#pragma unroll
    for (int kt = 0; kt < 8; ++kt) {
      if (kt * 8 < nv) {
        const int ta = kt * 8 + t4, tb = ta + 4;
        const float wa = ta < nv ? tab[nv - 1 - ta] : 0.f;
        const float wb = tb < nv ? tab[nv - 1 - tb] : 0.f;
        const Frag3A a = split_a(Ks[ta * QP + d], Ks[ta * QP + d + 8], Ks[tb * QP + d], Ks[tb * QP + d + 8]);
#pragma unroll
        for (int nt = 0; nt < WN; ++nt) {
          const int col = (NB + nt) * 8 + g;
          mma3(dS[nt], a, Vs[ta * VP + col] * wa, Vs[tb * VP + col] * wb);
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < WN; ++nt)
#pragma unroll
      for (int x = 0; x < 4; ++x) S[mt][nt][x] = fmaf(dhi, S[mt][nt][x], fmaf(dlo, S[mt][nt][x], dS[nt][x]));
  }
}

template <int D, int ES, int STAGES>
struct F32 {
  using L = ChunkSmemF32<D, ES, STAGES>;
  using SP = StateSplit<D, ES, 96>;
  static constexpr int QP = L::QP, VP = L::VP, SPT = L::SP, OP = L::OP, NTO = ES / 8;

  struct Ctx {
    unsigned char* smem;
    const float* tab;
    u32 sbase;
    float* o;
    const float* s0;
    float* sN;
    Seg seg;
    int e0, E, lane, g, t4, nchunks;
    float scale;
    __device__ __forceinline__ Ctx(unsigned char* sm, float* o_, const float* s0_, float* sN_, const Seg& s, int e0_,
                                   int E_, float scale_, int lane_)
        : smem(sm), tab(reinterpret_cast<const float*>(sm + L::TAB)), sbase(smem_u32(sm)), o(o_), s0(s0_), sN(sN_),
          seg(s), e0(e0_), E(E_), lane(lane_), g(lane_ >> 2), t4(lane_ & 3), nchunks((s.n + CH - 1) / CH),
          scale(scale_) {}
  };

  template <int W>
  struct Warp {
    static constexpr int R0 = 16 * W;
    static constexpr int NKT = 2 * (W + 1);  // 8-key tiles up to the diagonal
    static constexpr int MB = SP::mb(W), ME = SP::me(W), NB = SP::nb(W), NE = SP::ne(W);
    static constexpr int WM = ME - MB > 0 ? ME - MB : 1, WN = NE - NB > 0 ? NE - NB : 1;
    static constexpr bool SACT = ME > MB && NE > NB;
    static constexpr int NS = WM * WN * 4, NM = NKT * 4, NR = NS + NM + 2;
    typedef float State[WM][WN][4];
    typedef float Mask[NKT][4];
    static __device__ __forceinline__ State& st(float* r) { return *reinterpret_cast<State*>(r); }
    static __device__ __forceinline__ Mask& mk(float* r) { return *reinterpret_cast<Mask*>(r + NS); }

    static __device__ __forceinline__ void write_st(float* r, const Ctx& x, int buf) {
      if (!SACT) return;
      const State& S = st(r);
      float* stp = reinterpret_cast<float*>(x.smem + L::ST) + buf * ES * SPT;
#pragma unroll
      for (int mt = 0; mt < WM; ++mt)
#pragma unroll
        for (int nt = 0; nt < WN; ++nt) {
          const int d = (MB + mt) * 16 + x.g;
          const int ec = (NB + nt) * 8 + 2 * x.t4;
          stp[ec * SPT + d] = S[mt][nt][0];
          stp[(ec + 1) * SPT + d] = S[mt][nt][1];
          stp[ec * SPT + d + 8] = S[mt][nt][2];
          stp[(ec + 1) * SPT + d + 8] = S[mt][nt][3];
        }
    }

    static __device__ __forceinline__ void init(float* r, const Ctx& x) {
      load_state<D, MB, NB, WM, WN, SACT>(st(r), x.s0, x.seg.idx, x.e0, x.E, x.g, x.t4);
      write_st(r, x, 0);
      decay_mask<R0, NKT>(mk(r), x.tab, x.scale, x.g, x.t4);
      r[NS + NM] = x.scale * x.tab[R0 + x.g + 1];
      r[NS + NM + 1] = x.scale * x.tab[R0 + x.g + 9];
    }

    static __device__ __forceinline__ void step(float* r, const Ctx& x, int c) {
      State& S = st(r);
      const Mask& mreg = mk(r);
      const float f0 = r[NS + NM], f1 = r[NS + NM + 1];
      const int slot = c % STAGES;
      mbar_wait(x.sbase + L::BAR + 8 * slot, (c / STAGES) & 1);
      const int nv = min(CH, x.seg.n - c * CH);
      const float* Qs = reinterpret_cast<const float*>(x.smem + L::QS) + slot * CH * QP;
      const float* Ks = reinterpret_cast<const float*>(x.smem + L::KS) + slot * CH * QP;
      const float* Vs = reinterpret_cast<const float*>(x.smem + L::VS) + slot * CH * VP;
      const float* St = reinterpret_cast<const float*>(x.smem + L::ST) + (c & 1) * ES * SPT;
      const int g = x.g, t4 = x.t4;

      float acc_o[NTO][4];
      float acc_a[NKT][4];
#pragma unroll
      for (int nt = 0; nt < NTO; ++nt) acc_o[nt][0] = acc_o[nt][1] = acc_o[nt][2] = acc_o[nt][3] = 0.f;
#pragma unroll
      for (int nt = 0; nt < NKT; ++nt) acc_a[nt][0] = acc_a[nt][1] = acc_a[nt][2] = acc_a[nt][3] = 0.f;
      const float* qrow0 = Qs + (R0 + g) * QP + 2 * t4;
      const float* qrow1 = qrow0 + 8 * QP;
#pragma unroll 4
      for (int kk = 0; kk < D / 8; ++kk) {
        const float2 x0 = lds64(qrow0 + kk * 8), x1 = lds64(qrow1 + kk * 8);
        const Frag3A a = split_a(x0.x, x1.x, x0.y, x1.y);
#pragma unroll
        for (int on = 0; on < NTO; ++on) {
          const float2 b = lds64(St + (on * 8 + g) * SPT + kk * 8 + 2 * t4);
          mma3(acc_o[on], a, b.x, b.y);
        }
#pragma unroll
        for (int nt = 0; nt < NKT; ++nt) {
          const float2 b = lds64(Ks + (nt * 8 + g) * QP + kk * 8 + 2 * t4);
          mma3(acc_a[nt], a, b.x, b.y);
        }
      }
#pragma unroll
      for (int on = 0; on < NTO; ++on) {
        acc_o[on][0] *= f0; acc_o[on][1] *= f0;
        acc_o[on][2] *= f1; acc_o[on][3] *= f1;
      }
      // P V with the key index permuted like the score accumulators
#pragma unroll
      for (int nt = 0; nt < NKT; ++nt) {
        const Frag3A a = split_a(acc_a[nt][0] * mreg[nt][0], acc_a[nt][2] * mreg[nt][2],
                                 acc_a[nt][1] * mreg[nt][1], acc_a[nt][3] * mreg[nt][3]);
        const float* vr = Vs + (nt * 8 + 2 * t4) * VP + g;
#pragma unroll
        for (int on = 0; on < NTO; ++on) mma3(acc_o[on], a, vr[on * 8], vr[VP + on * 8]);
      }
      if (SACT) state_update32<D, MB, NB, WM, WN, QP, VP>(S, Ks, Vs, x.tab, nv, g, t4);
      __syncwarp();
      if (x.lane == 0) mbar_arrive(x.sbase + L::BAR + 8 * (STAGES + slot));  // release the slot to the producer
      write_st(r, x, (c + 1) & 1);
      // stage and store O
      float* os = reinterpret_cast<float*>(x.smem + L::OS) + W * 16 * OP;
#pragma unroll
      for (int on = 0; on < NTO; ++on) {
        *reinterpret_cast<float2*>(os + g * OP + on * 8 + 2 * t4) = make_float2(acc_o[on][0], acc_o[on][1]);
        *reinterpret_cast<float2*>(os + (g + 8) * OP + on * 8 + 2 * t4) = make_float2(acc_o[on][2], acc_o[on][3]);
      }
      __syncwarp();
      store_rows<float, ES, OP, R0>(x.o, os, x.seg.tok0 + (u64)c * CH, nv, x.E, x.e0, x.lane);
      __syncwarp();
    }

    static __device__ __forceinline__ void finish(float* r, const Ctx& x) {
      store_state<D, MB, NB, WM, WN, SACT>(st(r), x.seg.last ? x.sN : nullptr, x.seg.bh, x.e0, x.E, x.g, x.t4);
    }
  };
};

// ---- the consumer loops ------------------------------------------------------------------------------------------
__host__ __device__ constexpr int imax(int a, int b) { return a > b ? a : b; }

// Persistent registers of the largest consumer role.
template <class K>
__host__ __device__ constexpr int roles_nr() {
  return imax(imax(K::template Warp<0>::NR, K::template Warp<1>::NR),
              imax(K::template Warp<2>::NR, K::template Warp<3>::NR));
}

// Each warp its own loop (four bar.sync instructions; see consumers_sync).
template <class K, int W>
__device__ __forceinline__ void warp_loop(const typename K::Ctx& x) {
  using C = typename K::template Warp<W>;
  float r[C::NR];
  C::init(r, x);
  consumers_sync();
  for (int c = 0; c < x.nchunks; ++c) {
    C::step(r, x, c);
    consumers_sync();
  }
  C::finish(r, x);
}

template <class K>
__device__ __forceinline__ void consumers_split(const typename K::Ctx& x, int warp) {
  switch (warp) {
    case 0: warp_loop<K, 0>(x); break;
    case 1: warp_loop<K, 1>(x); break;
    case 2: warp_loop<K, 2>(x); break;
    default: warp_loop<K, 3>(x);
  }
}

// One loop for the four warps, each chunk switching to the warp's role, so that all of them meet at one
// bar.sync. Registers: r is sized for the largest role and all of it stays live through every role's step
// (the compiler cannot tell the roles apart), so a role with many temporaries pays for the largest role's
// state: 211 instead of 202 registers at one CTA per SM (bf16, D = E = 128), still 168 at two.
template <class K>
__device__ __forceinline__ void consumers_one(const typename K::Ctx& x, int warp) {
  float r[roles_nr<K>()];
  switch (warp) {
    case 0: K::template Warp<0>::init(r, x); break;
    case 1: K::template Warp<1>::init(r, x); break;
    case 2: K::template Warp<2>::init(r, x); break;
    default: K::template Warp<3>::init(r, x);
  }
  consumers_sync();
  for (int c = 0; c < x.nchunks; ++c) {
    switch (warp) {
      case 0: K::template Warp<0>::step(r, x, c); break;
      case 1: K::template Warp<1>::step(r, x, c); break;
      case 2: K::template Warp<2>::step(r, x, c); break;
      default: K::template Warp<3>::step(r, x, c);
    }
    consumers_sync();
  }
  switch (warp) {
    case 0: K::template Warp<0>::finish(r, x); break;
    case 1: K::template Warp<1>::finish(r, x); break;
    case 2: K::template Warp<2>::finish(r, x); break;
    default: K::template Warp<3>::finish(r, x);
  }
}

template <class K>
__device__ __forceinline__ void consumers(const typename K::Ctx& x, int warp, bool one) {
  if (one) consumers_one<K>(x, warp);
  else consumers_split<K>(x, warp);
}

// ---- output kernels ----------------------------------------------------------------------------------------------
// Grid: B·H·RUNS·NSL CTAs of 160 threads. s0: per-piece initial states [B·H·RUNS, D, E] (or null: zeros);
// sN: final states [B·H, D, E], written by the last piece of each (b, h).
// Their one body: the CTA's piece and E slice, the λ^j table, then warps 0-3 consume (K: Half or F32) and warp 4
// copies Q, K, V tiles of EB-byte elements.
template <class K, int D, int ES, int NSL, int STAGES, int EB, int OPT, class T>
__device__ __forceinline__ void chunk_out(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                          T* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
                                          const double* __restrict__ lam, int H, int N, int E, float scale, int L,
                                          int RUNS) {
  using LY = typename K::L;
  extern __shared__ __align__(128) unsigned char smem[];
  const u32 sbase = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int e0 = (blockIdx.x % NSL) * ES;
  const Seg seg = seg_of(blockIdx.x / NSL, RUNS, L, N);
  chunk_prologue<STAGES>(sbase + LY::BAR, reinterpret_cast<float*>(smem + LY::TAB), lam[seg.bh % H], tid);
  if (warp < 4) {
    const typename K::Ctx x(smem, o, s0, sN, seg, e0, E, scale, lane);
    consumers<K>(x, warp, (OPT & OPT_ONELOOP) != 0);
  } else {
    chunk_producer<D, ES, STAGES, EB, LY::QP, LY::VP, true>(q, k, v, seg.tok0, seg.n, E, e0, lane, sbase + LY::QS,
                                                             sbase + LY::KS, sbase + LY::VS, sbase + LY::BAR,
                                                             sbase + LY::BAR + 8 * STAGES);
  }
}

template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB, int OPT>
__global__ void __launch_bounds__(160, MINB)
    chunk_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
              u16* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
              const double* __restrict__ lam, int H, int N, int E, float scale, int L, int RUNS) {
  using K = Half<D, ES, STAGES, BF16, !BF16 && (OPT & OPT_SCALE16) != 0>;
  chunk_out<K, D, ES, NSL, STAGES, 2, OPT>(q, k, v, o, s0, sN, lam, H, N, E, scale, L, RUNS);
}

template <int D, int ES, int NSL, int STAGES, int OPT>
__global__ void __launch_bounds__(160, 1)
    chunk_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              float* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
              const double* __restrict__ lam, int H, int N, int E, float scale, int L, int RUNS) {
  chunk_out<F32<D, ES, STAGES>, D, ES, NSL, STAGES, 4, OPT>(q, k, v, o, s0, sN, lam, H, N, E, scale, L, RUNS);
}

// ---- state-only pass (sequence parallel, pass 1) -------------------------------------------------------------------
// Every piece's own end state Σ_j λ^(n-1-j) k_jᵀ v_j (from zero) into local [B·H·RUNS, D, E], float32. The
// state update of the output kernels without Q, outputs or a shared state copy, so the consumer warps never
// wait for each other (only the mbarriers).
template <int W, int D, int ES, int STAGES, int DT>
__device__ __forceinline__ void state_consumer(unsigned char* smem, float* __restrict__ local, const Seg& seg,
                                               int e0, int E, int lane) {
  constexpr int EB = DT == DT_F32 ? 4 : 2;
  using L = StateSmem<D, ES, STAGES, EB>;
  using SP = EvenSplit<D, ES>;
  constexpr int MB = SP::mb(W), ME = SP::me(W), NB = SP::nb(W), NE = SP::ne(W);
  constexpr int WM = ME - MB > 0 ? ME - MB : 1, WN = NE - NB > 0 ? NE - NB : 1;
  constexpr bool SACT = ME > MB && NE > NB;
  const u32 sbase = smem_u32(smem);
  const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
  const int g = lane >> 2, t4 = lane & 3;
  const LdsmOffsets<L::QP, L::VP> off(lane);
  const int nchunks = (seg.n + CH - 1) / CH;
  float S[WM][WN][4];
  load_state<D, MB, NB, WM, WN, SACT>(S, nullptr, 0, e0, E, g, t4);  // zeros
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    mbar_wait(sbase + L::BAR + 8 * slot, (c / STAGES) & 1);
    const int nv = min(CH, seg.n - c * CH);
    if (SACT) {
      if (DT == DT_F32)
        state_update32<D, MB, NB, WM, WN, L::QP, L::VP>(
            S, reinterpret_cast<const float*>(smem + L::KS) + slot * CH * L::QP,
            reinterpret_cast<const float*>(smem + L::VS) + slot * CH * L::VP, tab, nv, g, t4);
      else
        state_update16<D, MB, NB, WM, WN, L::QP, L::VP, DT == DT_BF16>(
            S, sbase + L::KS + slot * CH * L::QP * 2, sbase + L::VS + slot * CH * L::VP * 2, tab, nv, t4, off.trans,
            off.kt, off.vx2);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(sbase + L::BAR + 8 * (STAGES + slot));
  }
  store_state<D, MB, NB, WM, WN, SACT>(S, local, seg.idx, e0, E, g, t4);
}

// Grid: B·H·RUNS·NSL CTAs of 160 threads; piece p of (b, h) is tokens p·L .. (p+1)·L - 1 (all full here).
template <int D, int ES, int NSL, int STAGES, int DT>
__global__ void __launch_bounds__(160, 2)
    chunk_state(const void* __restrict__ k, const void* __restrict__ v, float* __restrict__ local,
                const double* __restrict__ lam, int H, int N, int E, int L, int RUNS) {
  griddep_launch_dependents();  // the scan may be resident and waiting while this pass runs
  constexpr int EB = DT == DT_F32 ? 4 : 2;
  using LY = StateSmem<D, ES, STAGES, EB>;
  extern __shared__ __align__(128) unsigned char smem[];
  const u32 sbase = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int e0 = (blockIdx.x % NSL) * ES;
  const Seg seg = seg_of(blockIdx.x / NSL, RUNS, L, N);
  chunk_prologue<STAGES>(sbase + LY::BAR, reinterpret_cast<float*>(smem + LY::TAB), lam[seg.bh % H], tid);
  switch (warp) {
    case 0: state_consumer<0, D, ES, STAGES, DT>(smem, local, seg, e0, E, lane); break;
    case 1: state_consumer<1, D, ES, STAGES, DT>(smem, local, seg, e0, E, lane); break;
    case 2: state_consumer<2, D, ES, STAGES, DT>(smem, local, seg, e0, E, lane); break;
    case 3: state_consumer<3, D, ES, STAGES, DT>(smem, local, seg, e0, E, lane); break;
    default:
      chunk_producer<D, ES, STAGES, EB, LY::QP, LY::VP, false>(nullptr, k, v, seg.tok0, seg.n, E, e0, lane, 0,
                                                               sbase + LY::KS, sbase + LY::VS, sbase + LY::BAR,
                                                               sbase + LY::BAR + 8 * STAGES);
  }
}

// ---- pass 2: the states entering the segments -------------------------------------------------------------------
// Exclusive decayed scan over the pieces of each (b, h): S ← λ^Lp S + local[j], S starting at s0 (or 0); the
// state before piece j·R (j = 0..P-1) is segment j's initial state s_in [B·H·P, D, E]. λ^Lp ≤ 1 is formed in
// float64 from log λ, and S is carried in float64, so nothing compounds over the pieces (λ = 1: exactly 1;
// λ = 1e-6: exactly 0). One thread per 4 consecutive state entries (V = 4: a template only so that every kernel
// here is named the same way, e.g. "segment_scan<4>").
template <int V>
__global__ void __launch_bounds__(256)
    segment_scan(const float* __restrict__ local, const float* __restrict__ s0, float* __restrict__ s_in,
                 const double* __restrict__ lam, int BH, int H, int DE4, int PS, int R, int P, int Lp) {
  static_assert(V == 4, "float4 entries");
  griddep_launch_dependents();  // the output pass may take the SMs the state pass leaves, up to its own wait
  griddep_wait();               // the state pass's `local` written
  const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (u64)BH * DE4) return;
  const int bh = (int)(i / DE4);
  const u64 x = i - (u64)bh * DE4;
  const double a = exp(fmin(log(lam[bh % H]), 0.0) * (double)Lp);
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  if (s0 != nullptr) {
    const float4 z = reinterpret_cast<const float4*>(s0)[(u64)bh * DE4 + x];
    s[0] = z.x; s[1] = z.y; s[2] = z.z; s[3] = z.w;
  }
  const float4* lp = reinterpret_cast<const float4*>(local) + (u64)bh * PS * DE4 + x;
  float4* op = reinterpret_cast<float4*>(s_in) + (u64)bh * P * DE4 + x;
  for (int j = 0; j < PS; ++j) {
    if (j % R == 0) op[(u64)(j / R) * DE4] = make_float4((float)s[0], (float)s[1], (float)s[2], (float)s[3]);
    const float4 l = lp[(u64)j * DE4];
    s[0] = a * s[0] + l.x; s[1] = a * s[1] + l.y; s[2] = a * s[2] + l.z; s[3] = a * s[3] + l.w;
  }
  op[(u64)(P - 1) * DE4] = make_float4((float)s[0], (float)s[1], (float)s[2], (float)s[3]);
}

// ---- layouts, read back by ops.py --------------------------------------------------------------------------------
// KIND 0: chunk_f32, 1: chunk_fwd, 2: chunk_state (16-bit), 3: chunk_state (float32).
template <int KIND, int D, int ES, int STAGES>
__global__ void chunk_layout(int* out) {
  out[0] = KIND == 0 ? ChunkSmemF32<D, ES, STAGES>::BYTES
           : KIND == 1 ? ChunkSmem<D, ES, STAGES>::BYTES
           : KIND == 2 ? StateSmem<D, ES, STAGES, 2>::BYTES
                       : StateSmem<D, ES, STAGES, 4>::BYTES;
}
