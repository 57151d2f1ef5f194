// Chunked decay attention on tensor cores (bf16 / fp16 in, fp32 accumulate), one pass over q, k, v, o.
//
// Per chunk of C = 64 tokens, with S_in the state carried into the chunk (D × E, float32 in registers):
//   O     = c·[((Q Kᵀ) ⊙ M) V + diag(λ^(i+1)) Q S_in],   M[i, j] = λ^(i-j) (j ≤ i), else 0
//   S_out = λ^n S_in + Σ_i λ^(n-1-i) k_iᵀ v_i            (n = tokens in the chunk, C except at the tail)
//
// Work split. One CTA per (b, h, slice of ES columns of E), streaming all chunks in order, so the state never
// leaves the chip and q, k, v are read from HBM once (the E slices of a head re-read its Q and K rows, from
// L2). B=1, H=32, E=128, ES=32 → 128 CTAs, one per SM.
//
// Inside a CTA: warp 4 is the producer (16-byte cp.async into padded rows, STAGES chunks ahead, full/empty
// mbarriers); warps 0-3 are consumers, each compiled for its own role (the warp index is a template
// argument, so the causal bounds are compile-time and the unrolled loops branch-free). Consumer warp W owns
// output rows 16W..16W+15 (Q Kᵀ only up to the diagonal; the FlashAttention-2 register reuse of the score
// accumulators as A operands of P V) and a block of state tiles, balanced so that warps with less causal work
// carry more state. The state enters Q S_in as a 16-bit copy in shared memory (double-buffered); the float32
// registers stay exact. Powers of λ come from a table λ^j, j = 0..C, formed in float64 from log λ (never
// λ^(-s)).
//
// Tails: the producer zero-fills the rows past the sequence end, so no garbage reaches a product.

#define CH 64  // chunk length C

template <int D, int ES, int STAGES>
struct ChunkSmem {
  static constexpr int QP = D + 8;   // row pitch of Q/K tiles (elements): conflict-free ldmatrix
  static constexpr int VP = ES + 8;  // row pitch of V / state / output tiles
  static constexpr int BAR = 0;                                  // mbarriers (see chunk_prologue)
  static constexpr int TAB = 128;                                // λ^j (C+1 floats) and lo parts
  static constexpr int QS = TAB + 2 * 80 * 4;                    // Q tiles
  static constexpr int KS = QS + STAGES * CH * QP * 2;           // K tiles
  static constexpr int VS = KS + STAGES * CH * QP * 2;           // V tiles
  static constexpr int SB = VS + STAGES * CH * VP * 2;           // 16-bit state copies [2][D][VP]
  static constexpr int OS = SB + 2 * D * VP * 2;                 // output staging [4][16][VP]
  static constexpr int BYTES = OS + 4 * 16 * VP * 2;
};

// The producer warp: for every chunk, wait until the consumers released the slot, then copy the chunk's Q, K
// rows and this CTA's V slice into padded shared rows with 16-byte cp.async (32 lanes × 16 B per
// instruction), zero-filling the rows past the sequence end, and let each lane arrive on the slot's full
// barrier when its copies have landed (expected count 32). (Per-row cp.async.bulk copies, multicast across a
// cluster, were tried first: the copy engine handles such small copies one by one, ~7 µs per chunk.)
template <int D, int ES, int STAGES, int EB, int QP, int VP>
__device__ __forceinline__ void chunk_producer(const void* q, const void* k, const void* v, int N, int E, int bh,
                                               int e0, int lane, u32 qs0, u32 ks0, u32 vs0, u32 full0,
                                               u32 empty0) {
  constexpr int QCH = D * EB / 16;   // 16-byte pieces per Q/K row
  constexpr int VCH = ES * EB / 16;  // per V row slice
  const int nchunks = (N + CH - 1) / CH;
  const char* qb = reinterpret_cast<const char*>(q);
  const char* kb = reinterpret_cast<const char*>(k);
  const char* vb = reinterpret_cast<const char*>(v);
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    if (c >= STAGES) mbar_wait(empty0 + 8 * slot, ((c / STAGES) + 1) & 1);
    const int nv = min(CH, N - c * CH);
    const u64 tok0 = (u64)bh * N + (u64)c * CH;
    const u32 qd = qs0 + (u32)(slot * CH * QP * EB), kd = ks0 + (u32)(slot * CH * QP * EB);
    const u32 vd = vs0 + (u32)(slot * CH * VP * EB);
#pragma unroll 8
    for (int idx = lane; idx < CH * QCH; idx += 32) {
      const int row = idx / QCH, cc = idx % QCH;
      const bool ok = row < nv;
      const u64 off = ((tok0 + (ok ? row : 0)) * D) * EB + cc * 16;
      const u32 so = (u32)(row * QP * EB + cc * 16);
      cp_async16(qd + so, qb + off, ok ? 16u : 0u);
      cp_async16(kd + so, kb + off, ok ? 16u : 0u);
    }
#pragma unroll 4
    for (int idx = lane; idx < CH * VCH; idx += 32) {
      const int row = idx / VCH, cc = idx % VCH;
      const bool ok = row < nv;
      const u64 off = ((tok0 + (ok ? row : 0)) * E + e0) * EB + cc * 16;
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

// ---- pieces the 16-bit and the float32 kernels share ------------------------------------------------------

// mbarriers from shared offset 0: full[STAGES] (the producer's lanes), empty[STAGES] (the consumer warps).
// Then the table λ^j, j = 0..C, formed in float64 from log λ, and at +80 floats the float64 remainder of
// each power.
template <int STAGES>
__device__ __forceinline__ void chunk_prologue(u32 bars, float* tab, double lam, int tid) {
  static_assert(2 * STAGES * 8 <= 128, "barriers overlap the power table");
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bars + 8 * s, 32);             // cp.async.mbarrier.arrive.noinc from each producer lane
      mbar_init(bars + 8 * (STAGES + s), 4);   // one arrive per consumer warp
    }
    fence_mbar_init();
  }
  if (tid <= CH) {
    const double p = exp(log(lam) * (double)tid);
    tab[tid] = (float)p;
    tab[80 + tid] = (float)(p - (double)(float)p);
  }
  __syncthreads();
}

// The consumer warps wait for each other on named barrier 1 (the producer warp does not take part). The
// four warps reach it from four template instances, i.e. from different bar.sync instructions, which PTX
// reserves for the non-aligned barrier.sync; compute-sanitizer's synccheck flags it ("divergent thread(s) in
// block"). Kept for speed: measured on the H200 (B=1/8, N=16k/64k), barrier.sync is 4–7% slower and an
// mbarrier 10%; results are exact either way and memcheck/racecheck are clean (scripts/KERNEL_NOTES.md).
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, 128;" ::: "memory");
}

// A warp's state tiles: S[mt][nt] holds rows d, d + 8 and columns ec, ec + 1 of the CTA's E slice, with
// d = (MB + mt)·16 + g and ec = (NB + nt)·8 + 2·t4 (the mma accumulator layout).
template <int D, int MB, int NB, int WM, int WN, bool SACT>
__device__ __forceinline__ void load_state(float (&S)[WM][WN][4], const float* __restrict__ s0, int bh, int e0,
                                           int E, int g, int t4) {
#pragma unroll
  for (int mt = 0; mt < WM; ++mt)
#pragma unroll
    for (int nt = 0; nt < WN; ++nt) {
      float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
      if (SACT && s0 != nullptr) {
        const float* p = s0 + ((u64)bh * D + (MB + mt) * 16 + g) * E + e0 + (NB + nt) * 8 + 2 * t4;
        x0 = p[0]; x1 = p[1];
        x2 = p[8 * (u64)E]; x3 = p[8 * (u64)E + 1];
      }
      S[mt][nt][0] = x0; S[mt][nt][1] = x1; S[mt][nt][2] = x2; S[mt][nt][3] = x3;
    }
}

template <int D, int MB, int NB, int WM, int WN, bool SACT>
__device__ __forceinline__ void store_state(const float (&S)[WM][WN][4], float* __restrict__ sN, int bh, int e0,
                                            int E, int g, int t4) {
  if (SACT && sN != nullptr) {
#pragma unroll
    for (int mt = 0; mt < WM; ++mt)
#pragma unroll
      for (int nt = 0; nt < WN; ++nt) {
        float* p = sN + ((u64)bh * D + (MB + mt) * 16 + g) * E + e0 + (NB + nt) * 8 + 2 * t4;
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
// 16-byte coalesced writes; rows past the sequence end (nv valid rows in the chunk) are not written.
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

// Consumer warp W (0..3): output rows 16W..16W+15 and its state tiles, for every chunk.
template <int W, int D, int ES, int STAGES, bool BF16>
__device__ __forceinline__ void chunk_consumer(unsigned char* smem, u16* __restrict__ o,
                                               const float* __restrict__ s0, float* __restrict__ sN, int bh,
                                               int e0, int N, int E, float scale) {
  using L = ChunkSmem<D, ES, STAGES>;
  using SP = StateSplit<D, ES>;
  constexpr int QP = L::QP, VP = L::VP;
  constexpr int NTO = ES / 8;           // output n-tiles
  constexpr int R0 = 16 * W;            // output rows of this warp
  constexpr int NKP = W + 1;            // 16-key steps up to the diagonal
  constexpr int MB = SP::mb(W), ME = SP::me(W), NB = SP::nb(W), NE = SP::ne(W);
  constexpr int WM = ME - MB > 0 ? ME - MB : 1, WN = NE - NB > 0 ? NE - NB : 1;
  constexpr bool SACT = ME > MB && NE > NB;
  static_assert(NTO % 2 == 0, "ES must be a multiple of 16");

  const u32 sbase = smem_u32(smem);
  const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
  const u32 full0 = sbase + L::BAR, empty0 = sbase + L::BAR + 8 * STAGES;
  const u32 qs0 = sbase + L::QS, ks0 = sbase + L::KS, vs0 = sbase + L::VS, sb0 = sbase + L::SB;
  const int tid = threadIdx.x, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int nchunks = (N + CH - 1) / CH;

  float S[WM][WN][4];
  load_state<D, MB, NB, WM, WN, SACT>(S, s0, bh, e0, E, g, t4);
  u16* sbw = reinterpret_cast<u16*>(smem + L::SB);
  auto write_sb = [&](int buf) {
    if (!SACT) return;
    u16* sb = sbw + buf * D * VP;
#pragma unroll
    for (int mt = 0; mt < WM; ++mt)
#pragma unroll
      for (int nt = 0; nt < WN; ++nt) {
        const int d = (MB + mt) * 16 + g;
        const int ec = (NB + nt) * 8 + 2 * t4;
        *reinterpret_cast<u32*>(sb + d * VP + ec) = pack2<BF16>(S[mt][nt][0], S[mt][nt][1]);
        *reinterpret_cast<u32*>(sb + (d + 8) * VP + ec) = pack2<BF16>(S[mt][nt][2], S[mt][nt][3]);
      }
  };
  write_sb(0);
  float mreg[2 * NKP][4];
  decay_mask<R0, 2 * NKP>(mreg, tab, scale, g, t4);
  const float f0 = scale * tab[R0 + g + 1], f1 = scale * tab[R0 + g + 9];
  consumers_sync();

  // per-lane ldmatrix offsets (bytes)
  const u32 qa_off = ((R0 + (lane & 15)) * QP + (lane >> 4) * 8) * 2;
  const u32 trans_off = (((lane & 7) + ((lane >> 3) & 1) * 8) * VP + (lane >> 4) * 8) * 2;  // [k][n] tiles
  const u32 kb_off = ((((lane >> 4) << 3) + (lane & 7)) * QP + ((lane >> 3) & 1) * 8) * 2;
  const u32 kt_off = (((lane & 7) + ((lane >> 4) << 3)) * QP + ((lane >> 3) & 1) * 8) * 2;
  const u32 vx2_off = (((lane & 7) + ((lane >> 3) & 1) * 8) * VP) * 2;
  u16* os = reinterpret_cast<u16*>(smem + L::OS) + W * 16 * VP;

  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    mbar_wait(full0 + 8 * slot, (c / STAGES) & 1);
    const int nv = min(CH, N - c * CH);
    const u32 qs = qs0 + slot * CH * QP * 2, ks = ks0 + slot * CH * QP * 2, vs = vs0 + slot * CH * VP * 2;
    const u32 sb = sb0 + (c & 1) * D * VP * 2;

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
        ldsm_x4_t(sb + trans_off + (kk * 16 * VP + np * 16) * 2, b);
        mma16816<BF16>(acc_o[2 * np], a, b[0], b[1]);
        mma16816<BF16>(acc_o[2 * np + 1], a, b[2], b[3]);
      }
#pragma unroll
      for (int np = 0; np < NKP; ++np) {
        u32 b[4];
        ldsm_x4(ks + kb_off + (np * 16 * QP + kk * 16) * 2, b);
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
        ldsm_x4_t(vs + trans_off + (kk * 16 * VP + np * 16) * 2, b);
        mma16816<BF16>(acc_o[2 * np], a, b[0], b[1]);
        mma16816<BF16>(acc_o[2 * np + 1], a, b[2], b[3]);
      }
    }

    // ---- state: S = λ^n S + Σ_i λ^(n-1-i) k_iᵀ v_i   (λ^(n-1-i) folded into the V fragments, in fp32)
    if (SACT) {
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
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * slot);  // release the slot to the producer
    write_sb((c + 1) & 1);
    // ---- store O rows (staged per warp for 16-byte coalesced stores)
#pragma unroll
    for (int nt = 0; nt < NTO; ++nt) {
      *reinterpret_cast<u32*>(os + g * VP + nt * 8 + 2 * t4) = pack2<BF16>(acc_o[nt][0], acc_o[nt][1]);
      *reinterpret_cast<u32*>(os + (g + 8) * VP + nt * 8 + 2 * t4) = pack2<BF16>(acc_o[nt][2], acc_o[nt][3]);
    }
    __syncwarp();
    store_rows<u16, ES, VP, R0>(o, os, (u64)bh * N + (u64)c * CH, nv, E, e0, lane);
    __syncwarp();
    consumers_sync();
  }
  store_state<D, MB, NB, WM, WN, SACT>(S, sN, bh, e0, E, g, t4);
}

template <int D, int ES, int NSL, int STAGES, bool BF16>
__device__ __forceinline__ void chunk_body(const u16* __restrict__ q, const u16* __restrict__ k,
                                           const u16* __restrict__ v, u16* __restrict__ o,
                                           const float* __restrict__ s0, float* __restrict__ sN,
                                           const double* __restrict__ lam, int H, int N, int E, float scale) {
  using L = ChunkSmem<D, ES, STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  const u32 sbase = smem_u32(smem);
  const u32 full0 = sbase + L::BAR, empty0 = sbase + L::BAR + 8 * STAGES;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rank = blockIdx.x % NSL;  // E slice
  const int bh = blockIdx.x / NSL;
  const int e0 = rank * ES;
  chunk_prologue<STAGES>(sbase + L::BAR, reinterpret_cast<float*>(smem + L::TAB), lam[bh % H], tid);

  switch (warp) {
    case 0: chunk_consumer<0, D, ES, STAGES, BF16>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 1: chunk_consumer<1, D, ES, STAGES, BF16>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 2: chunk_consumer<2, D, ES, STAGES, BF16>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 3: chunk_consumer<3, D, ES, STAGES, BF16>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    default:
      chunk_producer<D, ES, STAGES, 2, L::QP, L::VP>(q, k, v, N, E, bh, e0, lane, sbase + L::QS, sbase + L::KS,
                                                     sbase + L::VS, full0, empty0);
  }
}

template <int D, int ES, int NSL, int STAGES, bool BF16, int MINB>
__global__ void __launch_bounds__(160, MINB)
    chunk_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
              u16* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
              const double* __restrict__ lam, int H, int N, int E, float scale) {
  chunk_body<D, ES, NSL, STAGES, BF16>(q, k, v, o, s0, sN, lam, H, N, E, scale);
}

// ---- float32 inputs: the same pipeline, 3xTF32 products, float32 tiles in shared memory -------------------
// Fragment loads are plain 32/64-bit shared loads (ldmatrix moves 16-bit elements). For Q Kᵀ and Q S_in the
// k index inside each group of 8 is permuted (k = t ↔ d = 2t, k = t + 4 ↔ d = 2t + 1, the same on both
// operands) so A and B pairs are single 64-bit loads; P V uses the same permutation on the key index, which
// is how the score accumulators are laid out. Pitches ≡ 8 (mod 32) words keep the loads conflict-free.
template <int D, int ES, int STAGES>
struct ChunkSmemF32 {
  static constexpr int QP = D + 8;   // floats
  static constexpr int VP = ES + 8;
  static constexpr int SP = D + 8;   // transposed state copy ST[e][d]
  static constexpr int OP = ES + 4;  // output staging
  static constexpr int BAR = 0;
  static constexpr int TAB = 128;
  static constexpr int QS = TAB + 2 * 80 * 4;
  static constexpr int KS = QS + STAGES * CH * QP * 4;
  static constexpr int VS = KS + STAGES * CH * QP * 4;
  static constexpr int ST = VS + STAGES * CH * VP * 4;
  static constexpr int OS = ST + 2 * ES * SP * 4;
  static constexpr int BYTES = OS + 4 * 16 * OP * 4;
};

template <int W, int D, int ES, int STAGES>
__device__ __forceinline__ void chunk_consumer_f32(unsigned char* smem, float* __restrict__ o,
                                                   const float* __restrict__ s0, float* __restrict__ sN, int bh,
                                                   int e0, int N, int E, float scale) {
  using L = ChunkSmemF32<D, ES, STAGES>;
  using SP = StateSplit<D, ES, 96>;
  constexpr int QP = L::QP, VP = L::VP, SPT = L::SP, OP = L::OP;
  constexpr int NTO = ES / 8;
  constexpr int R0 = 16 * W;
  constexpr int NKT = 2 * (W + 1);  // 8-key tiles up to the diagonal
  constexpr int MB = SP::mb(W), ME = SP::me(W), NB = SP::nb(W), NE = SP::ne(W);
  constexpr int WM = ME - MB > 0 ? ME - MB : 1, WN = NE - NB > 0 ? NE - NB : 1;
  constexpr bool SACT = ME > MB && NE > NB;

  const u32 sbase = smem_u32(smem);
  const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
  const float* tablo = tab + 80;
  const u32 full0 = sbase + L::BAR, empty0 = sbase + L::BAR + 8 * STAGES;
  const int tid = threadIdx.x, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int nchunks = (N + CH - 1) / CH;

  float S[WM][WN][4];
  load_state<D, MB, NB, WM, WN, SACT>(S, s0, bh, e0, E, g, t4);
  float* stw = reinterpret_cast<float*>(smem + L::ST);
  auto write_st = [&](int buf) {
    if (!SACT) return;
    float* st = stw + buf * ES * SPT;
#pragma unroll
    for (int mt = 0; mt < WM; ++mt)
#pragma unroll
      for (int nt = 0; nt < WN; ++nt) {
        const int d = (MB + mt) * 16 + g;
        const int ec = (NB + nt) * 8 + 2 * t4;
        st[ec * SPT + d] = S[mt][nt][0];
        st[(ec + 1) * SPT + d] = S[mt][nt][1];
        st[ec * SPT + d + 8] = S[mt][nt][2];
        st[(ec + 1) * SPT + d + 8] = S[mt][nt][3];
      }
  };
  write_st(0);
  float mreg[NKT][4];
  decay_mask<R0, NKT>(mreg, tab, scale, g, t4);
  const float f0 = scale * tab[R0 + g + 1], f1 = scale * tab[R0 + g + 9];
  consumers_sync();

  float* os = reinterpret_cast<float*>(smem + L::OS) + W * 16 * OP;
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % STAGES;
    mbar_wait(full0 + 8 * slot, (c / STAGES) & 1);
    const int nv = min(CH, N - c * CH);
    float* Qs = reinterpret_cast<float*>(smem + L::QS) + slot * CH * QP;
    float* Ks = reinterpret_cast<float*>(smem + L::KS) + slot * CH * QP;
    float* Vs = reinterpret_cast<float*>(smem + L::VS) + slot * CH * VP;
    const float* St = stw + (c & 1) * ES * SPT;

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
    // state update, natural token order (k = t ↔ token t, k = t + 4 ↔ token t + 4). The chunk's
    // contribution is summed in fresh accumulators and added to S with IEEE float adds: the tensor core's
    // float32 accumulation truncates, which would otherwise bias S over the many chunks it lives.
    if (SACT) {
      const float dhi = tab[nv], dlo = tablo[nv];
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
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * slot);  // release the slot to the producer
    write_st((c + 1) & 1);
    // stage and store O
#pragma unroll
    for (int on = 0; on < NTO; ++on) {
      *reinterpret_cast<float2*>(os + g * OP + on * 8 + 2 * t4) = make_float2(acc_o[on][0], acc_o[on][1]);
      *reinterpret_cast<float2*>(os + (g + 8) * OP + on * 8 + 2 * t4) = make_float2(acc_o[on][2], acc_o[on][3]);
    }
    __syncwarp();
    store_rows<float, ES, OP, R0>(o, os, (u64)bh * N + (u64)c * CH, nv, E, e0, lane);
    __syncwarp();
    consumers_sync();
  }
  store_state<D, MB, NB, WM, WN, SACT>(S, sN, bh, e0, E, g, t4);
}

template <int D, int ES, int NSL, int STAGES>
__device__ __forceinline__ void chunk_body_f32(const float* __restrict__ q, const float* __restrict__ k,
                                               const float* __restrict__ v, float* __restrict__ o,
                                               const float* __restrict__ s0, float* __restrict__ sN,
                                               const double* __restrict__ lam, int H, int N, int E, float scale) {
  using L = ChunkSmemF32<D, ES, STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  const u32 sbase = smem_u32(smem);
  const u32 full0 = sbase + L::BAR, empty0 = sbase + L::BAR + 8 * STAGES;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rank = blockIdx.x % NSL;  // E slice
  const int bh = blockIdx.x / NSL;
  const int e0 = rank * ES;
  chunk_prologue<STAGES>(sbase + L::BAR, reinterpret_cast<float*>(smem + L::TAB), lam[bh % H], tid);

  switch (warp) {
    case 0: chunk_consumer_f32<0, D, ES, STAGES>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 1: chunk_consumer_f32<1, D, ES, STAGES>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 2: chunk_consumer_f32<2, D, ES, STAGES>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    case 3: chunk_consumer_f32<3, D, ES, STAGES>(smem, o, s0, sN, bh, e0, N, E, scale); break;
    default:
      chunk_producer<D, ES, STAGES, 4, L::QP, L::VP>(q, k, v, N, E, bh, e0, lane, sbase + L::QS, sbase + L::KS,
                                                     sbase + L::VS, full0, empty0);
  }
}

template <int D, int ES, int NSL, int STAGES>
__global__ void __launch_bounds__(160, 1)
    chunk_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              float* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
              const double* __restrict__ lam, int H, int N, int E, float scale) {
  chunk_body_f32<D, ES, NSL, STAGES>(q, k, v, o, s0, sN, lam, H, N, E, scale);
}
