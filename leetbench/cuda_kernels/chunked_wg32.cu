// Chunked decay attention, second generation, float32 inputs: every product from float16 pieces (sm_90a).
//
// The operator, work split and arguments of chunk_wg (chunked_wg.cu), for float32 q, k, v, o. wgmma takes
// float32 only as tf32 and only from K-major tiles (Kᵀ Ṽ and P V would need transposed copies), so here each
// operand x is split into two float16 pieces, x = 2^s (hi + lo), hi = fp16(x·2^-s), lo = fp16(x·2^-s − hi):
// 22 significant bits, and a·b ≈ 2^(s+t) (hi·hi' + hi·lo' + lo·hi') is three 16-bit products of the same tiles
// and layouts as chunk_wg, with float32 accumulation. scripts/fp32_split_study.py emulates it: the errors of
// float32 itself (bf16 pieces: 20× larger; scripts/KERNEL_NOTES.md, v9).
//
// Scales (powers of two, so exact): one per chunk for each of the Q, K and V tiles and for Ṽ, from the
// maxima the producer warps take once the chunk has landed (the largest element becomes 2^13..2^14: no piece
// overflows, and a lo piece underflows only where it is below 2^-28 of the tile's largest element); one per
// row of P (the masked scores, in registers); one per CTA for the state copy. The products are scaled back in
// float32: Q Kᵀ by 2^(sq+sk) with the mask, Q S_in by 2^sq and the copy's scale, P V by its row's scale and
// 2^sv, and Kᵀ Ṽ is summed into its own accumulator, multiplied by 2^(sk+sw) and added to the decayed state
// in float32.
//
// Per chunk: the NPW producer warps copy Q, K, V rows as float32 into staging rows (cp.async), each takes the
// largest |x| of the pieces it copied and arrives on `full`; the consumers take the four scales from those
// maxima, split the staging into the pieces' swizzled tiles (each thread a row: conflict-free reads and
// writes), release the staging to the producers (`empty`: they load the next chunk while the products run)
// and issue the products as chunk_wg does, three of each.

constexpr int WG32_MAX_PRODUCERS = 4;  // producer warps (NPW): the copies and the chunk's maxima split NPW ways

template <int D, int ES>
struct Wg32Smem {
  static constexpr int DB = D / 64;
  static constexpr int QKT = WG_QKT;    // a 64-token block of 64 columns of Q or K, float16
  static constexpr int VRB = ES * 2;    // bytes per row of a V / Ṽ / state-copy tile
  static constexpr int VT = 64 * VRB;
  static constexpr int FQ = D + 4;      // float32 staging pitches (floats): rows 16 bytes apart mod 128,
  static constexpr int FV = ES + 4;     // so eight consecutive rows read conflict-free
  static constexpr int BAR = 0;         // full, empty
  static constexpr int SCL = SM_SCL;    // state-copy exponents, one per consumer warp
  static constexpr int TAB = SM_TAB;
  static constexpr int QH = WG_HEAD;
  static constexpr int QL = QH + DB * QKT;
  static constexpr int KH = QL + DB * QKT;
  static constexpr int KL = KH + DB * QKT;
  static constexpr int VH = KL + DB * QKT;
  static constexpr int VL = VH + VT;
  static constexpr int WH = VL + VT;  // Ṽ
  static constexpr int WL = WH + VT;
  static constexpr int SH = WL + VT;  // state copy [D][ES]
  static constexpr int SL = SH + D * VRB;
  static constexpr int QF = SL + D * VRB;  // float32 staging
  static constexpr int KF = QF + 64 * FQ * 4;
  static constexpr int VF = KF + 64 * FQ * 4;
  static constexpr int RS = VF + 64 * FV * 4;  // each producer warp's largest |Q|, |K|, |V|, |Ṽ| of the chunk
  // PSPLIT: the maxima double-buffered (a fast producer warp writes chunk c + 1's while a slow one reads chunk
  // c's), and the chunk's four scale exponents for the consumers
  static constexpr int PSC = RS + 2 * 16 * WG32_MAX_PRODUCERS;
  static constexpr int BYTES = PSC + 16;  // (outputs go straight from the registers)
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(SM_HEAD <= WG_HEAD, "table overlaps the tiles");
};

// s with m·2^-s in [2^13, 2^14) (0 for m = 0), within the range pow2 builds.
__device__ __forceinline__ int piece_exp(float m) {
  const int e = (int)((__float_as_uint(m) >> 23) & 0xFF);
  return e == 0 ? 0 : max(-126, min(126, e - 127 - 13));
}
__device__ __forceinline__ float pow2(int s) { return __uint_as_float((u32)(127 + s) << 23); }  // s in [-126, 127]

// Two floats as float16 pieces: hi = fp16 pair, lo = fp16 pair of the remainders.
__device__ __forceinline__ void split2(float x, float y, u32& hi, u32& lo) {
  hi = pack2<false>(x, y);
  float hx, hy;
  unpack2<false>(hi, hx, hy);
  lo = pack2<false>(x - hx, y - hy);
}

// Eight floats (two 16-byte staging pieces) times f → one 16-byte piece of hi and one of lo.
__device__ __forceinline__ void split8(const float* src, float f, uint4& hi, uint4& lo) {
  const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
  split2(a.x * f, a.y * f, hi.x, lo.x);
  split2(a.z * f, a.w * f, hi.y, lo.y);
  split2(b.x * f, b.y * f, hi.z, lo.z);
  split2(b.z * f, b.w * f, hi.w, lo.w);
}

__device__ __forceinline__ float abs_max4(float m, float4 a) {
  return fmaxf(fmaxf(m, fmaxf(fabsf(a.x), fabsf(a.y))), fmaxf(fabsf(a.z), fabsf(a.w)));
}

// The largest |x| of the 16-byte staging pieces idx = t, t + NT, … of a tile of `cols` floats per row (pitch p):
// the pieces this thread copied itself, so the wait for its own copies makes them visible to it.
template <int cols, int NT>
__device__ __forceinline__ float own_max(const float* tile, int p, int t) {
  float m = 0.f;
#pragma unroll 8
  for (int idx = t; idx < 64 * cols / 4; idx += NT)
    m = abs_max4(m, *reinterpret_cast<const float4*>(tile + (idx / (cols / 4)) * p + 4 * (idx % (cols / 4))));
  return m;
}

// Thread t of NT's share of a chunk's copies into the staging (cp.async; rows from nv on, past the piece's end,
// zero-filled): units of UF floats of Q (unless WITHQ is false), K and V rows (UF = 4: one 16-byte copy, 8: two),
// units t, t + NT, …; `sbase` the shared address Wg32Smem's staging offsets are taken from.
template <int D, int ES, int NT, int UF, bool WITHQ = true>
__device__ __forceinline__ void wg32_copy_chunk(const float* q, const float* k, const float* v, u64 t0, int nv,
                                                int E, int e0, int t, u32 sbase) {
  using L = Wg32Smem<D, ES>;
  constexpr int QU = D / UF, VU = ES / UF;  // units per row
#pragma unroll 4
  for (int idx = t; idx < CH * QU; idx += NT) {
    const int row = idx / QU, u = idx % QU;
    const bool ok = row < nv;
    const u64 off = (t0 + (ok ? row : 0)) * D + u * UF;
    const u32 so = (u32)(row * L::FQ + u * UF) * 4;
#pragma unroll
    for (int h = 0; h < UF / 4; ++h) {
      if constexpr (WITHQ) cp_async16(sbase + L::QF + so + 16 * h, q + off + 4 * h, ok ? 16u : 0u);
      cp_async16(sbase + L::KF + so + 16 * h, k + off + 4 * h, ok ? 16u : 0u);
    }
  }
#pragma unroll 2
  for (int idx = t; idx < CH * VU; idx += NT) {
    const int row = idx / VU, u = idx % VU;
    const bool ok = row < nv;
    const u64 off = (t0 + (ok ? row : 0)) * E + e0 + u * UF;
#pragma unroll
    for (int h = 0; h < UF / 4; ++h)
      cp_async16(sbase + L::VF + (u32)(row * L::FV + u * UF + 4 * h) * 4, v + off + 4 * h, ok ? 16u : 0u);
  }
  cp_async_commit();
}

// Producer warp pw of NPW: per chunk, its share of the copies of Q, K, V rows into the staging
// (cp.async, pieces t, t + NT, …), then the largest |Q|, |K|, |V| and |Ṽ_j| = λ^(n-1-j) |v_j| over those
// pieces into its slot of RS; the consumers take the maximum over the slots.
template <int D, int ES, int NPW>
__device__ __forceinline__ void wg32_producer(const float* q, const float* k, const float* v, u64 tok0, int n,
                                              int E, int e0, int pw, int lane, unsigned char* smem) {
  using L = Wg32Smem<D, ES>;
  constexpr int VPC = ES / 4, NT = 32 * NPW;  // 16-byte pieces per V row; threads
  const int t = 32 * pw + lane;
  const u32 sbase = smem_u32(smem);
  const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
  const float* vf = reinterpret_cast<const float*>(smem + L::VF);
  const int nchunks = (n + CH - 1) / CH;
  for (int c = 0; c < nchunks; ++c) {
    if (c > 0) mbar_wait(sbase + L::BAR + 8, (c - 1) & 1);  // the consumers have split chunk c - 1
    const int nv = min(CH, n - c * CH);
    wg32_copy_chunk<D, ES, NT, 4>(q, k, v, tok0 + (u64)c * CH, nv, E, e0, t, sbase);
    cp_async_wait<0>();
    float m[4] = {own_max<D, NT>(reinterpret_cast<const float*>(smem + L::QF), L::FQ, t),
                  own_max<D, NT>(reinterpret_cast<const float*>(smem + L::KF), L::FQ, t), 0.f, 0.f};
    for (int idx = t; idx < CH * VPC; idx += NT) {
      const int row = idx / VPC;
      const float x = abs_max4(0.f, *reinterpret_cast<const float4*>(vf + row * L::FV + 4 * (idx % VPC)));
      m[2] = fmaxf(m[2], x);
      if (row < nv) m[3] = fmaxf(m[3], x * tab[nv - 1 - row]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = __uint_as_float(warp_max_u32(__float_as_uint(m[i])));
    if (lane == 0)
      *reinterpret_cast<float4*>(smem + L::RS + 16 * pw) = make_float4(m[0], m[1], m[2], m[3]);
    __syncwarp();
    mbar_arrive(sbase + L::BAR);  // count NT: the chunk and every warp's maxima are ready
  }
}

// ---- DBUF (KERNEL_NOTES v37): the float32 state pass with two sets of pieces and two stagings -------------------
// chunk_wg32_state's producers split chunk c only once the consumers' products of chunk c - 1 are done (one set of
// K and Ṽ pieces), and copy chunk c + 1 only once chunk c is split (one staging): copies, split and products take
// turns (the state pass at 1.1 TB/s, a quarter of the float32 call at B=1, v35). With two of each, chunk c + 2 is
// copied while chunk c + 1 is split and chunk c's products run (wg32_split_producer with SETS = 2). The state pass
// needs no Q, V pieces, state copy or Q staging, so both sets fit where chunk_wg32's layout kept those.
template <int D, int ES>
struct Wg32StateSmem {
  using W = Wg32Smem<D, ES>;
  static constexpr int DB = W::DB, QKT = W::QKT, VRB = W::VRB, VT = W::VT, FQ = W::FQ, FV = W::FV;
  static constexpr int BAR = 0, TAB = SM_TAB;  // full [2], empty [2]
  static constexpr int KH = WG_HEAD, KL = KH + DB * QKT, WH = KL + DB * QKT, WL = WH + VT;  // set 0
  static constexpr int SET = 2 * DB * QKT + 2 * VT;  // set s at + s·SET (1024-byte multiples: swizzled tiles)
  static constexpr int KF = KH + 2 * SET, VF = KF + 64 * FQ * 4;  // staging 0
  static constexpr int STG = 64 * FQ * 4 + 64 * FV * 4;          // staging b at + b·STG
  static constexpr int RS = KF + 2 * STG;  // the producer warps' maxima, as Wg32Smem's
  static constexpr int PSC = RS + 2 * 16 * WG32_MAX_PRODUCERS;  // the chunk's scale exponents, set s's at + 16s
  static constexpr int BYTES = PSC + 2 * 16;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(W::VF - W::KF == VF - KF, "wg32_copy_chunk's V staging follows its K staging alike");
  static_assert(SET % 1024 == 0, "each set's tiles on 1024-byte boundaries");
};

// chunk_wg32_state's layout: Wg32StateSmem with DBUF, else chunk_wg32's (no <type_traits> under NVRTC).
template <bool DBUF, int D, int ES>
struct StateLayout {
  using type = Wg32StateSmem<D, ES>;
};
template <int D, int ES>
struct StateLayout<false, D, ES> {
  using type = Wg32Smem<D, ES>;
};

// ---- PSPLIT (KERNEL_NOTES v16): the producer warps split the chunk too -----------------------------------------
// Above, the consumers split each chunk into the pieces' tiles before its products: the split is on their chain.
// With PSPLIT the producers split it, so the consumers go from one chunk's products to the next's, and the split
// of chunk c + 1 overlaps the consumers' state update, state copy and output stores of chunk c. The pieces' tiles
// stay single: the producers write chunk c + 1's once the consumers' products of chunk c are done (`empty`,
// one arrival per consumer warp), then announce them (`full`, one arrival per producer thread, each after fencing
// its own writes for the tensor cores) with the chunk's scale exponents beside them. Each producer thread copies
// and splits its own 32-byte units (eight floats of a row: one 16-byte piece of hi and one of lo), so its
// staging needs no barrier beyond its own copies; the maxima meet at named barrier 2 (producer warps only).
template <int NPW>
__device__ __forceinline__ void producers_sync() {
  asm volatile("bar.sync 2, %0;" ::"n"(32 * NPW) : "memory");
}

// STATE (the state pass, chunk_wg32_state): K and Ṽ only — no Q, and V's own pieces are not written. SETS = 2
// (STATE only: chunk_wg32_state's DBUF, Wg32StateSmem): chunk c in set and staging c mod 2, the set awaited free
// from chunk c - 2's products, chunk c + 2 copied once chunk c is split.
template <int D, int ES, int NPW, bool STATE = false, int SETS = 1>
__device__ __forceinline__ void wg32_split_producer(const float* q, const float* k, const float* v, u64 tok0, int n,
                                                    int E, int e0, int pw, int lane, unsigned char* smem) {
  static_assert(SETS == 1 || (SETS == 2 && STATE), "two sets of pieces are the state pass's");
  using L = typename StateLayout<SETS == 2, D, ES>::type;
  using W = Wg32Smem<D, ES>;  // the staging offsets wg32_copy_chunk takes
  // staging and set b = c mod SETS at these distances past the first
  constexpr int STG = SETS == 2 ? Wg32StateSmem<D, ES>::STG : 0, SET = SETS == 2 ? Wg32StateSmem<D, ES>::SET : 0;
  constexpr int QU = D / 8, VU = ES / 8, NT = 32 * NPW;  // 32-byte units per row; threads
  const int t = 32 * pw + lane;
  const u32 sbase = smem_u32(smem);
  const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
  const float* qf = reinterpret_cast<const float*>(smem + W::QF);  // (without STATE, L is W)
  const int nchunks = (n + CH - 1) / CH;
  auto load = [&](int c) {  // this thread's units of chunk c into staging c mod SETS
    wg32_copy_chunk<D, ES, NT, 8, !STATE>(q, k, v, tok0 + (u64)c * CH, min(CH, n - c * CH), E, e0, t,
                                          sbase + (L::KF - W::KF) + (c % SETS) * STG);
  };
  auto unit_max = [](float m, const float* x) {
    return abs_max4(abs_max4(m, *reinterpret_cast<const float4*>(x)), *reinterpret_cast<const float4*>(x + 4));
  };
  for (int c = 0; c < SETS && c < nchunks; ++c) load(c);
  for (int c = 0; c < nchunks; ++c) {
    const int nv = min(CH, n - c * CH), b = c % SETS;
    const float* kf = reinterpret_cast<const float*>(smem + L::KF + b * STG);
    const float* vf = reinterpret_cast<const float*>(smem + L::VF + b * STG);
    if (SETS == 2 && c + 1 < nchunks) cp_async_wait<1>();  // this thread's units of chunk c (c + 1's may fly)
    else cp_async_wait<0>();
    float m[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int idx = t; idx < CH * QU; idx += NT) {
      const int at = (idx / QU) * L::FQ + 8 * (idx % QU);
      if constexpr (!STATE) m[0] = unit_max(m[0], qf + at);
      m[1] = unit_max(m[1], kf + at);
    }
    for (int idx = t; idx < CH * VU; idx += NT) {
      const int row = idx / VU;
      const float x = unit_max(0.f, vf + row * L::FV + 8 * (idx % VU));
      m[2] = fmaxf(m[2], x);
      if (row < nv) m[3] = fmaxf(m[3], x * tab[nv - 1 - row]);
    }
    float* rs = reinterpret_cast<float*>(smem + L::RS) + 4 * NPW * (c & 1);
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = __uint_as_float(warp_max_u32(__float_as_uint(m[i])));
    if (lane == 0) *reinterpret_cast<float4*>(rs + 4 * pw) = make_float4(m[0], m[1], m[2], m[3]);
    producers_sync<NPW>();
    int sc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mm = 0.f;
#pragma unroll
      for (int w = 0; w < NPW; ++w) mm = fmaxf(mm, rs[4 * w + i]);
      sc[i] = piece_exp(mm);
    }
    if (c >= SETS)  // the consumers' products of chunk c - SETS (set b) are done
      mbar_wait(sbase + L::BAR + 8 * (SETS + b), (c / SETS - 1) & 1);
    if (t == 0) *reinterpret_cast<int4*>(smem + L::PSC + 16 * b) = make_int4(sc[0], sc[1], sc[2], sc[3]);
    const float fq = pow2(-sc[0]), fk = pow2(-sc[1]), fv = pow2(-sc[2]);
#pragma unroll 4
    for (int idx = t; idx < CH * QU; idx += NT) {
      const int row = idx / QU, u = idx % QU;
      const u32 at = b * SET + (u32)((u >> 3) * L::QKT) + swz<128>(row, u & 7);
      uint4 hi, lo;
      if constexpr (!STATE) {
        split8(qf + row * L::FQ + 8 * u, fq, hi, lo);
        *reinterpret_cast<uint4*>(smem + L::QH + at) = hi;
        *reinterpret_cast<uint4*>(smem + L::QL + at) = lo;
      }
      split8(kf + row * L::FQ + 8 * u, fk, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::KH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::KL + at) = lo;
    }
#pragma unroll 2
    for (int idx = t; idx < CH * VU; idx += NT) {
      const int row = idx / VU, u = idx % VU;
      const u32 at = b * SET + swz<L::VRB>(row, u);
      const float fw = row < nv ? tab[nv - 1 - row] * pow2(-sc[3]) : 0.f;
      uint4 hi, lo;
      if constexpr (!STATE) {
        split8(vf + row * L::FV + 8 * u, fv, hi, lo);
        *reinterpret_cast<uint4*>(smem + L::VH + at) = hi;
        *reinterpret_cast<uint4*>(smem + L::VL + at) = lo;
      }
      split8(vf + row * L::FV + 8 * u, fw, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::WH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::WL + at) = lo;
    }
    fence_async_smem();
    mbar_arrive(sbase + L::BAR + 8 * b);  // count NT: chunk c's pieces and scales in set b
    if (c + SETS < nchunks) load(c + SETS);  // this thread's staging units are split: free for chunk c + SETS
  }
}

// S = λ^n S + 2^(sk+sw) Kᵀ Ṽ (dk = λ^n, un = 2^(sk+sw)): Kᵀ Ṽ as three float16 products of the pieces (K at kh,
// kl; Ṽ at wh, wl) into an accumulator of its own, waited for, then `read()` (the warp's share has read the
// pieces), then added in IEEE float32 — the tensor cores' accumulation truncates (Fasi et al. 2021, on earlier
// cards), which over thousands of chunks at λ = 1 would bias the state.
template <int D, int ES, class F>
__device__ __forceinline__ void wg32_state_step(float (&S)[D / 64][ES / 2], u32 kh, u32 kl, u32 wh, u32 wl, float dk,
                                                float un, F&& read) {
  wg_fence();
  float U[D / 64][ES / 2];
#pragma unroll
  for (int t = 0; t < 3; ++t) wg_state_update<D, ES, false>(U, t == 0 ? kl : kh, t == 1 ? wl : wh, t > 0);
  wg_commit();
  wg_wait<0>();
#pragma unroll
  for (int mb = 0; mb < D / 64; ++mb) wg_pin(U[mb]);
  read();
#pragma unroll
  for (int mb = 0; mb < D / 64; ++mb)
#pragma unroll
    for (int i = 0; i < ES / 2; ++i) S[mb][i] = fmaf(S[mb][i], dk, U[mb][i] * un);
}

template <int D, int ES, int NPW, bool PSPLIT>
struct Wg32Consumer {
  using L = Wg32Smem<D, ES>;
  static constexpr int DB = L::DB, NA = ES / 2, VRB = L::VRB;
  // 64-row blocks of the state per Kᵀ Ṽ accumulator: D = 128 with ES = 64 takes them one at a time (one more
  // wait a chunk), which keeps it within 255 registers without spilling
  static constexpr int UB = (DB == 2 && ES == 64) ? 1 : DB;

  // The state copy as hi / lo pieces (N-major [D][ES], swizzled, at SH and SL) of S·2^-s, one s for the CTA, its
  // warps meeting at named barrier BARID for the maxima (in set SET of the scratch); returns 2^s.
  template <int BARID = 1, int SH = L::SH, int SL = L::SL, int SET = 0>
  static __device__ __forceinline__ float write_copy(const float (&S)[DB][NA], unsigned char* smem, int w, int l,
                                                     int r0) {
    const int s = piece_exp(wg_state_max<DB, NA, BARID>(S, reinterpret_cast<u32*>(smem + L::SCL) + 4 * SET, w, l));
    const float down = pow2(-s);
    wg_copy_pairs<DB, NA, VRB>(S, l, r0, [&](u32 at, float x, float y) {
      u32 hi, lo;
      split2(x * down, y * down, hi, lo);
      *reinterpret_cast<u32*>(smem + SH + at) = hi;
      *reinterpret_cast<u32*>(smem + SL + at) = lo;
    });
    return pow2(s);
  }

  // P = scores · mask · fa (fa = 2^(sq+sk)), each of the thread's two rows scaled by its own power of two 2^-p into
  // float16 pieces ph, pl (the A fragments of P V); returns p of the two rows.
  static __device__ __forceinline__ int2 pieces_of_p(float (&acc_a)[32], const float* tab, float scale, int r0,
                                                     int c0, float fa, u32 (&ph)[4][4], u32 (&pl)[4][4]) {
    float mask[32];  // formed here each chunk (32 reads of the λ table), not held across it: registers
    wg_decay_mask(mask, tab, scale, r0, c0);
    float m0 = 0.f, m1 = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      acc_a[i] *= mask[i] * fa;
      if (i & 2) m1 = fmaxf(m1, fabsf(acc_a[i]));
      else m0 = fmaxf(m0, fabsf(acc_a[i]));
    }
    m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 1));
    m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 2));
    m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 1));
    m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 2));
    const int p0 = piece_exp(m0), p1 = piece_exp(m1);
    const float d0 = pow2(-p0), d1 = pow2(-p1);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float dr = (r & 1) ? d1 : d0;  // r = 0, 2: the first row; 1, 3: the second
        split2(acc_a[8 * kk + 2 * r] * dr, acc_a[8 * kk + 2 * r + 1] * dr, ph[kk][r], pl[kk][r]);
      }
    return make_int2(p0, p1);
  }

  // acc_o += P V over the V pieces at vh, vl: three products a 16-token block, the small pieces first.
  static __device__ __forceinline__ void values(float (&acc_o)[NA], const u32 (&ph)[4][4], const u32 (&pl)[4][4],
                                                u32 vh, u32 vl) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wg_rs<ES, false, 1>(acc_o, pl[kk], wg_desc<VRB>(vh + 16 * VRB * kk), true);
      wg_rs<ES, false, 1>(acc_o, ph[kk], wg_desc<VRB>(vl + 16 * VRB * kk), true);
      wg_rs<ES, false, 1>(acc_o, ph[kk], wg_desc<VRB>(vh + 16 * VRB * kk), true);
    }
  }

  // The thread's outputs of chunk c straight from the accumulator, its rows times o0 and o1: each 8-column group of
  // a row is 32 contiguous bytes from four lanes (whole sectors), so no staging tile.
  static __device__ __forceinline__ void store(const float (&acc_o)[NA], float* __restrict__ o, const Seg& seg, int c,
                                               int nv, int e0, int E, int r0, int c0, float o0, float o1) {
    float* out0 = o + (seg.tok0 + (u64)c * CH + r0) * E + e0 + c0;
#pragma unroll
    for (int j = 0; j < ES / 8; ++j) {
      if (r0 < nv) *reinterpret_cast<float2*>(out0 + 8 * j) = make_float2(acc_o[4 * j] * o0, acc_o[4 * j + 1] * o0);
      if (r0 + 8 < nv)
        *reinterpret_cast<float2*>(out0 + 8 * E + 8 * j) = make_float2(acc_o[4 * j + 2] * o1, acc_o[4 * j + 3] * o1);
    }
  }

  // The chunk's four scale exponents from the producer warps' maxima (read before the staging is released: the
  // producers rewrite them for the next chunk).
  static __device__ __forceinline__ void chunk_scales(const unsigned char* smem, int (&sc)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float m = 0.f;
#pragma unroll
      for (int pw = 0; pw < NPW; ++pw) m = fmaxf(m, reinterpret_cast<const float*>(smem + L::RS)[4 * pw + i]);
      sc[i] = piece_exp(m);
    }
  }

  static __device__ __forceinline__ void load_state(float (&S)[DB][NA], const float* __restrict__ s0, const Seg& seg,
                                                    int e0, int E, int r0, int c0) {
    griddep_wait();  // (s0 may be the scan's s_in: a dependent launch waits for it here)
    wg_each_entry<D, ES>(r0, c0, [&](int mb, int i, int row, int col) {
      S[mb][i] = s0 != nullptr ? s0[((u64)seg.idx * D + row) * E + e0 + col] : 0.f;
    });
  }
  static __device__ __forceinline__ void store_state(const float (&S)[DB][NA], float* __restrict__ sN, const Seg& seg,
                                                     int e0, int E, int r0, int c0) {
    if (seg.last && sN != nullptr)
      wg_each_entry<D, ES>(r0, c0, [&](int mb, int i, int row, int col) {
        sN[((u64)seg.bh * D + row) * E + e0 + col] = S[mb][i];
      });
  }

  // The chunk's staging split into the pieces' tiles: thread t takes row t mod 64, half t / 64 of Q's and K's
  // 16-byte pieces (Q and K tiles: D/64 blocks of 64 rows × 128 bytes) and of V's, with Ṽ from the same V.
  static __device__ __forceinline__ void split_chunk(unsigned char* smem, const float* tab, int nv, int tid,
                                                     const int (&sc)[4]) {
    const int row = tid & 63, half = tid >> 6;
    const float fq = pow2(-sc[0]), fk = pow2(-sc[1]), fv = pow2(-sc[2]);
    const float fw = row < nv ? tab[nv - 1 - row] * pow2(-sc[3]) : 0.f;
    const float* qf = reinterpret_cast<const float*>(smem + L::QF) + row * L::FQ;
    const float* kf = reinterpret_cast<const float*>(smem + L::KF) + row * L::FQ;
    constexpr int QP = D / 8;  // 16-byte float16 pieces per Q / K row
#pragma unroll
    for (int i = 0; i < QP / 2; ++i) {
      const int p = half * (QP / 2) + i;
      const u32 at = (u32)((p >> 3) * L::QKT) + swz<128>(row, p & 7);
      uint4 hi, lo;
      split8(qf + 8 * p, fq, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::QH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::QL + at) = lo;
      split8(kf + 8 * p, fk, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::KH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::KL + at) = lo;
    }
    const float* vf = reinterpret_cast<const float*>(smem + L::VF) + row * L::FV;
    constexpr int VP = ES / 8;
#pragma unroll
    for (int i = 0; i < VP / 2; ++i) {
      const int p = half * (VP / 2) + i;
      const u32 at = swz<VRB>(row, p);
      uint4 hi, lo;
      split8(vf + 8 * p, fv, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::VH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::VL + at) = lo;
      split8(vf + 8 * p, fw, hi, lo);
      *reinterpret_cast<uint4*>(smem + L::WH + at) = hi;
      *reinterpret_cast<uint4*>(smem + L::WL + at) = lo;
    }
  }

  static __device__ __forceinline__ void run(unsigned char* smem, float* __restrict__ o, const float* __restrict__ s0,
                                             float* __restrict__ sN, const Seg& seg, int e0, int E, float scale,
                                             int tid) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = tid >> 5, l = tid & 31;
    const int r0 = 16 * w + (l >> 2);
    const int c0 = 2 * (l & 3);

    float S[DB][NA];
    load_state(S, s0, seg, e0, E, r0, c0);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    float up = write_copy(S, smem, w, l, r0);
    const int nchunks = (seg.n + CH - 1) / CH;
    const u32 qh = sbase + L::QH, ql = sbase + L::QL, kh = sbase + L::KH, kl = sbase + L::KL;
    const u32 vh = sbase + L::VH, vl = sbase + L::VL, wh = sbase + L::WH, wl = sbase + L::WL;
    const u32 sh = sbase + L::SH, sl = sbase + L::SL;

    for (int c = 0; c < nchunks; ++c) {
      mbar_wait(sbase + L::BAR, c & 1);
      const int nv = min(CH, seg.n - c * CH);
      int sc[4];  // read now: the producers rewrite their maxima (PSPLIT: the scales) for the next chunk
      if constexpr (PSPLIT) {  // the producers split the chunk and left its scales
        const int4 e = *reinterpret_cast<const int4*>(smem + L::PSC);
        sc[0] = e.x; sc[1] = e.y; sc[2] = e.z; sc[3] = e.w;
      } else {
        chunk_scales(smem, sc);
        split_chunk(smem, tab, nv, tid, sc);
        __syncwarp();
        if (l == 0) mbar_arrive(sbase + L::BAR + 8);  // staging read: the producer may load the next chunk
      }
      fence_async_smem();
      consumers_sync();  // the pieces and the state copy written by every consumer thread
      wg_fence();

      // Q Kᵀ, Q S_in, Kᵀ Ṽ (into U, added to the state below): three products each, the small pieces first
      float acc_a[32], acc_o[NA], U[UB][NA];
#pragma unroll
      for (int t = 0; t < 3; ++t) wg_scores<D, false>(acc_a, t == 0 ? ql : qh, t == 1 ? kl : kh, t > 0);
      wg_commit();
#pragma unroll
      for (int t = 0; t < 3; ++t) wg_query_state<D, ES, false>(acc_o, t == 0 ? ql : qh, t == 1 ? sl : sh, t > 0);
      wg_commit();
#pragma unroll
      for (int t = 0; t < 3; ++t) wg_state_update<D, ES, false, 0, UB>(U, t == 0 ? kl : kh, t == 1 ? wl : wh, t > 0);
      wg_commit();

      // P = scores · mask · 2^(sq+sk), each row scaled by its own power of two into float16 pieces
      wg_wait<2>();
      wg_pin(acc_a);
      u32 ph[4][4], pl[4][4];
      const int2 pp = pieces_of_p(acc_a, tab, scale, r0, c0, pow2(sc[0]) * pow2(sc[1]), ph, pl);
      const int p0 = pp.x, p1 = pp.y;
      wg_wait<1>();
      wg_pin(acc_o);
      // acc_o in units of the row's P V scale 2^(p + sv) until P V is added
      const float g0 = f0 * up * pow2(sc[0]) * pow2(-p0) * pow2(-sc[2]);
      const float g1 = f1 * up * pow2(sc[0]) * pow2(-p1) * pow2(-sc[2]);
#pragma unroll
      for (int j = 0; j < ES / 8; ++j) {
        acc_o[4 * j] *= g0; acc_o[4 * j + 1] *= g0;
        acc_o[4 * j + 2] *= g1; acc_o[4 * j + 3] *= g1;
      }
      wg_fence();
      values(acc_o, ph, pl, vh, vl);
      wg_commit();
      wg_wait<0>();
      wg_pin(acc_o);
#pragma unroll
      for (int mb = 0; mb < UB; ++mb) wg_pin(U[mb]);
      // PSPLIT: this warp's shares of the products are done (each read all of its B tiles): once all four have
      // arrived, the producers may split the next chunk into the pieces
      if constexpr (PSPLIT && UB == DB) if (l == 0) mbar_arrive(sbase + L::BAR + 8);

      // S = λ^n S + Kᵀ Ṽ with IEEE float32 operations: tensor cores add into their accumulator with truncation
      // (Fasi et al. 2021, on earlier cards), which over thousands of chunks at λ = 1 would bias the state
      const float dk = tab[nv], un = pow2(sc[1]) * pow2(sc[3]);
#pragma unroll
      for (int mb = 0; mb < UB; ++mb)
#pragma unroll
        for (int i = 0; i < NA; ++i) S[mb][i] = fmaf(S[mb][i], dk, U[mb][i] * un);
      if constexpr (UB < DB) {  // the state's second 64-row block, through the same accumulator
        wg_fence();
#pragma unroll
        for (int t = 0; t < 3; ++t)
          wg_state_update<D, ES, false, UB, UB>(U, t == 0 ? kl : kh, t == 1 ? wl : wh, t > 0);
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int mb = 0; mb < UB; ++mb) wg_pin(U[mb]);
        if constexpr (PSPLIT) if (l == 0) mbar_arrive(sbase + L::BAR + 8);
#pragma unroll
        for (int i = 0; i < NA; ++i) S[UB][i] = fmaf(S[UB][i], dk, U[0][i] * un);
      }
      consumers_sync();  // every warp's share of every product done: the pieces may be rewritten
      up = write_copy(S, smem, w, l, r0);
      // outputs straight from the accumulator (no staging tile: its shared memory lets ES = 64 fit at D = 128)
      store(acc_o, o, seg, c, nv, e0, E, r0, c0, pow2(p0) * pow2(sc[2]), pow2(p1) * pow2(sc[2]));
    }
    store_state(S, sN, seg, e0, E, r0, c0);
  }
};

// Grid: B·H·RUNS·NSL CTAs of 128 + 32·NPW threads (one per SM: the staging and the pieces take most of its shared
// memory); arguments as chunk_fwd's, float32 q, k, v, o.
template <int D, int ES, int NSL, int NPW, bool PSPLIT = false>
__global__ void __launch_bounds__(128 + 32 * NPW, 1)
    chunk_wg32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
               float* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
               const double* __restrict__ lam, int H, int N, int E, float scale, int L, int RUNS) {
  static_assert(NPW >= 1 && NPW <= WG32_MAX_PRODUCERS, "1 to 4 producer warps");
  using LY = Wg32Smem<D, ES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, 1, LY>(smem_raw, RUNS, L, N, lam, H, 32 * NPW);
  const int tid = threadIdx.x;
  if (warp_index() < 4)
    Wg32Consumer<D, ES, NPW, PSPLIT>::run(cta.smem, o, s0, sN, cta.seg, cta.e0, E, scale, tid);
  else if constexpr (PSPLIT)
    wg32_split_producer<D, ES, NPW>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, (tid - 128) >> 5, tid & 31,
                                    cta.smem);
  else
    wg32_producer<D, ES, NPW>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, (tid - 128) >> 5, tid & 31, cta.smem);
}

template <int D, int ES>
__global__ void chunk_wg32_layout(int* out) {
  out[0] = Wg32Smem<D, ES>::ALLOC;
}

// ---- the state chain apart (KERNEL_NOTES v45): chunk_wg32x2 -------------------------------------------------------
// chunk_wg32's consumer warpgroup is one chain a chunk: the split, nine products of the outputs and three of the
// state, the float32 update, the state copy, the stores. As chunk_wg2 does in 16 bits, here
//   warps 0-3, outputs: the split of the staging into the pieces (all of them: one warpgroup writes them, so one
//                       named barrier orders them), Q Kᵀ and Q S_in (from the copy the state warps wrote), P, P V,
//                       the stores;
//   warps 4-7, state:   Kᵀ Ṽ from the pieces, S = λ^n S + 2^(sk+sw) Kᵀ Ṽ in IEEE float32, the copy of the new S;
//   warps 8-..: the producers, as in chunk_wg32 (copies into the staging and their maxima).
// Hand-overs (mbarriers in the head): pieces ready (128 arrivals: each output thread after fencing its own writes,
// with the chunk's scales left at PSC), pieces free (4: each state warp after its share of Kᵀ Ṽ), and chunk_wg2's
// double-buffered state copy — copy j (the state entering chunk j, its scale 2^s at UP) in buffer j mod 2, full
// after 128 arrivals of the state threads, empty after the four output warps' shares of Q S_in. The state warps'
// float16 maxima alternate between two sets of the scratch (they meet at no other barrier a chunk).
template <int D, int ES>
struct Wg32x2Smem : Wg32Smem<D, ES> {
  using Base = Wg32Smem<D, ES>;
  static constexpr int CBAR = SM_HEAD;       // copy full [2], copy empty [2]
  static constexpr int PBAR = CBAR + 4 * 8;  // pieces ready, pieces free
  static constexpr int UP = PBAR + 2 * 8;    // the copies' scales 2^s [2]
  static constexpr int SH2 = (Base::BYTES + 1023) / 1024 * 1024;  // the second copy, hi and lo (swizzled tiles)
  static constexpr int SL2 = SH2 + D * Base::VRB;
  static constexpr int BYTES = SL2 + D * Base::VRB;
  static constexpr int ALLOC = BYTES + 1024;
  static_assert(UP + 2 * 4 <= WG_HEAD, "hand-over barriers overlap the tiles");
};

template <int D, int ES, int NPW>
struct Wg32Split {
  using L = Wg32x2Smem<D, ES>;
  using C1 = Wg32Consumer<D, ES, NPW, false>;  // its split, copy, P, P V, stores, state load and store
  static constexpr int DB = L::DB, NA = ES / 2, VRB = L::VRB;
  static constexpr int STATE_BAR = 2;  // the state warps' named barrier (the output warps take 1)

  // The output warps.
  static __device__ __forceinline__ void outputs(unsigned char* smem, float* __restrict__ o, const Seg& seg, int e0,
                                                 int E, float scale, int t) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    const float f0 = scale * tab[r0 + 1], f1 = scale * tab[r0 + 9];
    const u32 qh = sbase + L::QH, ql = sbase + L::QL, kh = sbase + L::KH, kl = sbase + L::KL;
    const u32 vh = sbase + L::VH, vl = sbase + L::VL;
    const int nchunks = (seg.n + CH - 1) / CH;
    for (int c = 0; c < nchunks; ++c) {
      const int buf = c & 1;
      mbar_wait(sbase + L::BAR, c & 1);  // chunk c in the staging, every producer warp's maxima beside it
      const int nv = min(CH, seg.n - c * CH);
      int sc[4];
      C1::chunk_scales(smem, sc);
      if (c > 0) mbar_wait(sbase + L::PBAR + 8, (c - 1) & 1);  // the state warps' Kᵀ Ṽ of chunk c - 1 is done
      C1::split_chunk(smem, tab, nv, t, sc);
      __syncwarp();
      if (l == 0) mbar_arrive(sbase + L::BAR + 8);  // staging read: the producers may load the next chunk
      if (t == 0) *reinterpret_cast<int4*>(smem + L::PSC) = make_int4(sc[0], sc[1], sc[2], sc[3]);
      fence_async_smem();
      mbar_arrive(sbase + L::PBAR);  // this thread's pieces (and thread 0's scales) for the state warps
      wg_sync<1>();                   // every output thread's pieces, for this warpgroup's own products
      mbar_wait(sbase + L::CBAR + 8 * buf, (c >> 1) & 1);  // copy c from the state warps
      wg_fence();
      const u32 sh = sbase + (buf ? L::SH2 : L::SH), sl = sbase + (buf ? L::SL2 : L::SL);
      float acc_a[32], acc_o[NA];
#pragma unroll
      for (int k = 0; k < 3; ++k) wg_scores<D, false>(acc_a, k == 0 ? ql : qh, k == 1 ? kl : kh, k > 0);
      wg_commit();
#pragma unroll
      for (int k = 0; k < 3; ++k) wg_query_state<D, ES, false>(acc_o, k == 0 ? ql : qh, k == 1 ? sl : sh, k > 0);
      wg_commit();
      wg_wait<1>();
      wg_pin(acc_a);
      u32 ph[4][4], pl[4][4];
      const int2 p = C1::pieces_of_p(acc_a, tab, scale, r0, c0, pow2(sc[0]) * pow2(sc[1]), ph, pl);
      wg_wait<0>();
      wg_pin(acc_o);
      const float up = reinterpret_cast<const float*>(smem + L::UP)[buf];  // before the release: copy c + 2 rewrites it
      if (l == 0) mbar_arrive(sbase + L::CBAR + 8 * (2 + buf));  // this warp's share of Q S_in read copy c
      // acc_o in units of the row's P V scale 2^(p + sv) until P V is added
      wg_scale_rows<NA>(acc_o, f0 * up * pow2(sc[0]) * pow2(-p.x) * pow2(-sc[2]),
                        f1 * up * pow2(sc[0]) * pow2(-p.y) * pow2(-sc[2]));
      wg_fence();
      C1::values(acc_o, ph, pl, vh, vl);
      wg_commit();
      wg_wait<0>();
      wg_pin(acc_o);
      wg_sync<1>();  // every output warp's products done: the next split may rewrite the pieces
      C1::store(acc_o, o, seg, c, nv, e0, E, r0, c0, pow2(p.x) * pow2(sc[2]), pow2(p.y) * pow2(sc[2]));
    }
  }

  // Copy j of the state into buffer j mod 2 once the output warps have read copy j - 2 from it.
  static __device__ __forceinline__ void publish(const float (&S)[DB][NA], unsigned char* smem, int j, int w, int l,
                                                 int r0, int t) {
    wg_publish_copy(smem_u32(smem) + L::CBAR, reinterpret_cast<float*>(smem + L::UP), j, t, [&](int buf) {
      return buf ? C1::template write_copy<STATE_BAR, L::SH2, L::SL2, 1>(S, smem, w, l, r0)
                 : C1::template write_copy<STATE_BAR, L::SH, L::SL, 0>(S, smem, w, l, r0);
    });
  }

  // The state warps.
  static __device__ __forceinline__ void state(unsigned char* smem, const float* __restrict__ s0,
                                               float* __restrict__ sN, const Seg& seg, int e0, int E, int t) {
    const u32 sbase = smem_u32(smem);
    const float* tab = reinterpret_cast<const float*>(smem + L::TAB);
    const int w = t >> 5, l = t & 31;
    const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
    const u32 kh = sbase + L::KH, kl = sbase + L::KL, wh = sbase + L::WH, wl = sbase + L::WL;
    float S[DB][NA];
    C1::load_state(S, s0, seg, e0, E, r0, c0);
    publish(S, smem, 0, w, l, r0, t);
    const int nchunks = (seg.n + CH - 1) / CH;
    for (int c = 0; c < nchunks; ++c) {
      mbar_wait(sbase + L::PBAR, c & 1);  // chunk c's pieces and scales
      const int nv = min(CH, seg.n - c * CH);
      const int4 e = *reinterpret_cast<const int4*>(smem + L::PSC);  // read before the release below
      wg32_state_step<D, ES>(S, kh, kl, wh, wl, tab[nv], pow2(e.y) * pow2(e.w), [&] {
        if (l == 0) mbar_arrive(sbase + L::PBAR + 8);  // this warp's share of Kᵀ Ṽ read the pieces
      });
      if (c + 1 < nchunks) publish(S, smem, c + 1, w, l, r0, t);
    }
    C1::store_state(S, sN, seg, e0, E, r0, c0);
  }
};

// Grid: B·H·RUNS·NSL CTAs of 256 + 32·NPW threads, one per SM; arguments as chunk_wg32's.
template <int D, int ES, int NSL, int NPW>
__global__ void __launch_bounds__(256 + 32 * NPW, 1)
    chunk_wg32x2(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                 float* __restrict__ o, const float* __restrict__ s0, float* __restrict__ sN,
                 const double* __restrict__ lam, int H, int N, int E, float scale, int L, int RUNS) {
  static_assert(NPW >= 1 && NPW <= WG32_MAX_PRODUCERS, "1 to 4 producer warps");
  using LY = Wg32x2Smem<D, ES>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, 1, LY>(smem_raw, RUNS, L, N, lam, H, 32 * NPW);  // empty: the output warps
  if (threadIdx.x == 0) {
    wg_copy_barriers_init(cta.sbase + LY::CBAR);
    ring_barriers_init(cta.sbase + LY::PBAR, 1, 128, 4);  // pieces ready: every output thread; free: every state warp
    fence_mbar_init();
  }
  __syncthreads();
  const int tid = threadIdx.x, warp = warp_index();
  using SP = Wg32Split<D, ES, NPW>;
  if (warp < 4)
    SP::outputs(cta.smem, o, cta.seg, cta.e0, E, scale, tid);
  else if (warp < 8)
    SP::state(cta.smem, s0, sN, cta.seg, cta.e0, E, tid - 128);
  else
    wg32_producer<D, ES, NPW>(q, k, v, cta.seg.tok0, cta.seg.n, E, cta.e0, (tid - 256) >> 5, tid & 31, cta.smem);
}

template <int D, int ES>
__global__ void chunk_wg32x2_layout(int* out) {
  out[0] = Wg32x2Smem<D, ES>::ALLOC;
}

// ---- the state pass of the sequence-parallel path, float32 on generation 2 (KERNEL_NOTES v18) -------------------
// Every piece's own end state Σ_j λ^(n-1-j) k_jᵀ v_j (from zero) into local [B·H·RUNS, D, E], float32, as
// chunk_state (chunked.cu) computes it: per chunk S = λ^n S + 2^(sk+sw) Kᵀ Ṽ, Kᵀ Ṽ as three float16 products of
// the pieces into its own accumulator, added in IEEE float32 as in chunk_wg32. The producer warps copy K and V and
// split K and Ṽ (wg32_split_producer, STATE); the consumers only multiply and add. Shared memory: chunk_wg32's
// layout (its Q and V tiles unused).
// DBUF: two sets of pieces and two stagings (Wg32StateSmem, wg32_split_producer's SETS = 2; KERNEL_NOTES v37).
template <int D, int ES, int NSL, int NPW, bool DBUF = false>
__global__ void __launch_bounds__(128 + 32 * NPW, 1)
    chunk_wg32_state(const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ local,
                     const double* __restrict__ lam, int H, int N, int E, int L, int RUNS) {
  static_assert(NPW >= 1 && NPW <= WG32_MAX_PRODUCERS, "1 to 4 producer warps");
  griddep_launch_dependents();  // the scan may be resident and waiting while this pass runs
  using LY = typename StateLayout<DBUF, D, ES>::type;
  constexpr int SETS = DBUF ? 2 : 1;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const WgCta cta = wg_cta<D, ES, NSL, SETS, LY>(smem_raw, RUNS, L, N, lam, H, 32 * NPW);
  const int tid = threadIdx.x;
  const Seg seg = cta.seg;
  if (warp_index() >= 4) {
    wg32_split_producer<D, ES, NPW, true, SETS>(nullptr, k, v, seg.tok0, seg.n, E, cta.e0, (tid - 128) >> 5,
                                                tid & 31, cta.smem);
    return;
  }
  constexpr int DB = LY::DB, NA = ES / 2;
  unsigned char* smem = cta.smem;
  const u32 sbase = cta.sbase;
  const float* tab = reinterpret_cast<const float*>(smem + LY::TAB);
  const int w = tid >> 5, l = tid & 31;
  const int r0 = 16 * w + (l >> 2), c0 = 2 * (l & 3);
  float S[DB][NA];
  wg_each_entry<D, ES>(r0, c0, [&](int mb, int i, int, int) { S[mb][i] = 0.f; });
  const int nchunks = (seg.n + CH - 1) / CH;
  for (int c = 0; c < nchunks; ++c) {
    const int b = DBUF ? c & 1 : 0;  // the set of pieces (and its barriers) chunk c is in
    mbar_wait(sbase + LY::BAR + 8 * b, (c / SETS) & 1);  // the chunk's pieces and scales
    const int nv = min(CH, seg.n - c * CH);
    const int4 e = *reinterpret_cast<const int4*>(smem + LY::PSC + 16 * b);
    const u32 set = DBUF ? b * Wg32StateSmem<D, ES>::SET : 0;
    const u32 kh = sbase + LY::KH + set, kl = sbase + LY::KL + set, wh = sbase + LY::WH + set,
              wl = sbase + LY::WL + set;
    wg32_state_step<D, ES>(S, kh, kl, wh, wl, tab[nv], pow2(e.y) * pow2(e.w), [&] {
      if (l == 0) mbar_arrive(sbase + LY::BAR + 8 * (SETS + b));  // this warp's share of the products read the pieces
    });
  }
  wg_each_entry<D, ES>(r0, c0, [&](int mb, int i, int row, int col) {
    local[((u64)seg.idx * D + row) * E + cta.e0 + col] = S[mb][i];
  });
}

template <int D, int ES>
__global__ void chunk_wg32_state_layout(int* out) {
  out[0] = Wg32StateSmem<D, ES>::ALLOC;
}
