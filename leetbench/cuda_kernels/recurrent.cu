// Token-by-token recurrence with the state on chip:  S_t = λ S_{t-1} + k_tᵀ v_t,  o_t = c q_t S_t.
//
// recurrent_fwd: one block of 256 threads per (b, h, 32 columns of E). Lane l of every warp owns state column
//   e0 + l; warp w owns rows d = w, w + 8, w + 16, ... (RPT of them, in registers). Tokens go in tiles of T:
//   q (pre-scaled by c), k and v of a tile are staged in shared memory as float (rows past D are zero, so
//   their state stays zero), each warp forms its partial q·S over its rows for all T tokens, and the 8
//   partials are summed after one barrier. O(N·D·E) work, N sequential steps.
// decode_step: one token, state in and state out (float32), the bandwidth-bound step of decoding. One block
//   per (b, h, 32 columns); thread (r, c4) owns rows d = r + 32 i and four consecutive columns, so each warp
//   moves 4 × 128 contiguous bytes per row set with 16-byte loads, all issued before the first use.
//
// PRECISE (float32 problems): λ is carried as λ_hi + λ_lo (two floats summing to the float64 λ) so that the
// per-step decay does not compound λ's float32 rounding over the ~1/(1-λ) steps a contribution lives.

template <int DT, int RPT, bool PRECISE>
__global__ void __launch_bounds__(256) recurrent_fwd(const void* __restrict__ q, const void* __restrict__ k,
                                                     const void* __restrict__ v, void* __restrict__ o,
                                                     const float* __restrict__ s0, float* __restrict__ sN,
                                                     const double* __restrict__ lam, int H, int N, int D, int E,
                                                     float scale, int T) {
  constexpr int DP = 8 * RPT;  // padded D
  extern __shared__ __align__(16) float rsm[];
  float* qs = rsm;               // [T][DP]
  float* ks = qs + T * DP;       // [T][DP]
  float* vs = ks + T * DP;       // [T][32]
  float* part = vs + T * 32;     // [8][T][33]

  const int etiles = (E + 31) >> 5;
  const int bh = blockIdx.x / etiles;
  const int e0 = (blockIdx.x - bh * etiles) * 32;
  const int h = bh % H;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  const int e = e0 + lane;
  const bool ev = e < E;
  const double l64 = lam[h];
  const float lhi = (float)l64;
  const float llo = (float)(l64 - (double)lhi);

  float S[RPT];
#pragma unroll
  for (int i = 0; i < RPT; ++i) {
    const int d = w + 8 * i;
    S[i] = (s0 != nullptr && d < D && ev) ? s0[((u64)bh * D + d) * E + e] : 0.f;
  }
  const u64 qk_base = (u64)bh * N * D;
  const u64 v_base = (u64)bh * N * E;
  for (int t0 = 0; t0 < N; t0 += T) {
    const int nt = min(T, N - t0);
    for (int idx = tid; idx < T * DP; idx += 256) {
      const int tt = idx / DP, d = idx - tt * DP;
      const bool ok = tt < nt && d < D;
      const u64 g = qk_base + (u64)(t0 + tt) * D + d;
      qs[idx] = ok ? ld_el<DT>(q, g) * scale : 0.f;
      ks[idx] = ok ? ld_el<DT>(k, g) : 0.f;
    }
    for (int idx = tid; idx < T * 32; idx += 256) {
      const int tt = idx >> 5, c = idx & 31;
      vs[idx] = (tt < nt && e0 + c < E) ? ld_el<DT>(v, v_base + (u64)(t0 + tt) * E + e0 + c) : 0.f;
    }
    __syncthreads();
    for (int tt = 0; tt < nt; ++tt) {
      const float vv = vs[tt * 32 + lane];
      const float* qr = qs + tt * DP + w;
      const float* kr = ks + tt * DP + w;
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < RPT; ++i) {
        const float kv = kr[8 * i] * vv;
        S[i] = PRECISE ? fmaf(lhi, S[i], fmaf(llo, S[i], kv)) : fmaf(lhi, S[i], kv);
        acc = fmaf(qr[8 * i], S[i], acc);
      }
      part[(w * T + tt) * 33 + lane] = acc;
    }
    __syncthreads();
    for (int idx = tid; idx < nt * 32; idx += 256) {
      const int tt = idx >> 5, c = idx & 31;
      float s = 0.f;
#pragma unroll
      for (int ww = 0; ww < 8; ++ww) s += part[(ww * T + tt) * 33 + c];
      if (e0 + c < E) st_el<DT>(o, v_base + (u64)(t0 + tt) * E + e0 + c, s);
    }
    __syncthreads();
  }
  if (sN != nullptr) {
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
      const int d = w + 8 * i;
      if (d < D && ev) sN[((u64)bh * D + d) * E + e] = S[i];
    }
  }
}

// One decode step. Requires E % 4 == 0 (16-byte rows of four columns); RPT2 = ceil(D / 32).
template <int DT, int RPT2, bool PRECISE>
__global__ void __launch_bounds__(256) decode_step(const void* __restrict__ q, const void* __restrict__ k,
                                                   const void* __restrict__ v, void* __restrict__ o,
                                                   const float* __restrict__ s0, float* __restrict__ sN,
                                                   const double* __restrict__ lam, int H, int D, int E,
                                                   float scale) {
  __shared__ float red[32][33];
  const int etiles = (E + 31) >> 5;
  const int bh = blockIdx.x / etiles;
  const int e0 = (blockIdx.x - bh * etiles) * 32;
  const int h = bh % H;
  const int tid = threadIdx.x, r = tid >> 3, c4 = tid & 7;
  const int e = e0 + 4 * c4;
  const bool ev = e < E;
  const double l64 = lam[h];
  const float lhi = (float)l64;
  const float llo = (float)(l64 - (double)lhi);

  float4 s[RPT2];
  const u64 sbase = (u64)bh * D * E;
#pragma unroll
  for (int i = 0; i < RPT2; ++i) {
    const int d = r + 32 * i;
    if (d < D && ev) {
      if (s0 != nullptr) {
        const float* p = s0 + sbase + (u64)d * E + e;
        asm volatile("ld.global.nc.L1::no_allocate.v4.f32 {%0,%1,%2,%3}, [%4];"
                     : "=f"(s[i].x), "=f"(s[i].y), "=f"(s[i].z), "=f"(s[i].w) : "l"(p));
      } else {
        s[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  }
  float vv[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) vv[j] = ev ? ld_el<DT>(v, (u64)bh * E + e + j) : 0.f;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < RPT2; ++i) {
    const int d = r + 32 * i;
    if (d < D && ev) {
      const float kd = ld_el<DT>(k, (u64)bh * D + d);
      const float qd = ld_el<DT>(q, (u64)bh * D + d) * scale;
      float x[4] = {s[i].x, s[i].y, s[i].z, s[i].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float kv = kd * vv[j];
        x[j] = PRECISE ? fmaf(lhi, x[j], fmaf(llo, x[j], kv)) : fmaf(lhi, x[j], kv);
        acc[j] = fmaf(qd, x[j], acc[j]);
      }
      if (sN != nullptr) {
        float* p = sN + sbase + (u64)d * E + e;
        asm volatile("st.global.cs.v4.f32 [%0], {%1,%2,%3,%4};" ::"l"(p), "f"(x[0]), "f"(x[1]), "f"(x[2]),
                     "f"(x[3])
                     : "memory");
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) red[r][4 * c4 + j] = acc[j];
  __syncthreads();
  if (tid < 32 && e0 + tid < E) {
    float sum = 0.f;
#pragma unroll 8
    for (int rr = 0; rr < 32; ++rr) sum += red[rr][tid];
    st_el<DT>(o, (u64)bh * E + e0 + tid, sum);
  }
}
