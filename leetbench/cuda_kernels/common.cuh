// Shared device helpers for leetbench's CUDA kernels (compiled by NVRTC through CuPy, or by nvcc for checks).
//
// No headers: NVRTC on the GPU machine cannot include <mma.h> or <cuda_bf16.h> from the pip CUDA headers, so
// half-precision values travel as raw 16-bit patterns and every conversion, matrix product and copy is inline
// PTX. Element types are named by an int: DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2.
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

// ---- conversions ------------------------------------------------------------------------------------------
__device__ __forceinline__ float h2f(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ u16 f2h(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ u16 f2b(float f) {
  u16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

// Load element i of a tensor of type DT as float / store a float rounded to DT.
template <int DT> __device__ __forceinline__ float ld_el(const void* p, u64 i) {
  if (DT == DT_F32) return __ldg(reinterpret_cast<const float*>(p) + i);
  const u16 b = __ldg(reinterpret_cast<const unsigned short*>(p) + i);
  return DT == DT_F16 ? h2f(b) : b2f(b);
}
template <int DT> __device__ __forceinline__ void st_el(void* p, u64 i, float x) {
  if (DT == DT_F32) reinterpret_cast<float*>(p)[i] = x;
  else reinterpret_cast<u16*>(p)[i] = DT == DT_F16 ? f2h(x) : f2b(x);
}

// Two floats → one register of two 16-bit values; x goes to the low half (the lower column / k index).
template <bool BF16> __device__ __forceinline__ u32 pack2(float x, float y) {
  u32 r;
  if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(y), "f"(x));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(y), "f"(x));
  return r;
}
// float16 pair with out-of-range values clamped to ±65504 instead of ±Inf (the fp16 state copy's last resort).
__device__ __forceinline__ u32 pack2_f16_sat(float x, float y) {
  u32 r;
  asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(y), "f"(x));
  return r;
}
// Both halves of a float16 pair times h (a float16 pair): exact when h holds powers of two and nothing overflows.
__device__ __forceinline__ u32 mul_f16x2(u32 a, u32 h) {
  u32 r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(h));
  return r;
}
// The thread's warp in its CTA, as a value the compiler can prove the same on every lane (CUTLASS's
// canonical_warp_idx_sync): a role branch on it is warp-uniform, so the role's loop counters, tile addresses and
// wgmma descriptors live in uniform registers (threadIdx.x < 128 left them per lane: 101 R2UR moves in chunk_wg).
// All 32 lanes must call it.
__device__ __forceinline__ int warp_index() { return __shfl_sync(0xffffffffu, (int)threadIdx.x >> 5, 0); }
// The largest value of x over the warp (all 32 lanes must call it).
__device__ __forceinline__ u32 warp_max_u32(u32 x) {
  u32 r;
  asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(x));
  return r;
}
template <bool BF16> __device__ __forceinline__ void unpack2(u32 r, float& x, float& y) {
  if (BF16) {
    x = __uint_as_float(r << 16);
    y = __uint_as_float(r & 0xffff0000u);
  } else {
    x = h2f((u16)(r & 0xffffu));
    y = h2f((u16)(r >> 16));
  }
}

// ---- shared memory, ldmatrix, mma -------------------------------------------------------------------------
__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ void ldsm_x4(u32 addr, u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32 (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(u32 addr, u32 (&r)[2]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
// D = A·B + D, m16n8k16, fp32 accumulate. A: 4 regs (row-major 16×16), B: 2 regs (16×8, "col").
template <bool BF16>
__device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  if (BF16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- mbarriers, barriers, stores ----------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// A ring of n slots' barriers from `bars`: full[n] (each expecting `full` arrivals), then empty[n] (`empty`).
__device__ __forceinline__ void ring_barriers_init(u32 bars, int n, u32 full, u32 empty) {
  for (int s = 0; s < n; ++s) {
    mbar_init(bars + 8 * s, full);
    mbar_init(bars + 8 * (n + s), empty);
  }
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Called by whole warps. Lanes may leave the spin loop in different iterations; __syncwarp reconverges the
// warp before the .aligned instructions that follow (ldmatrix, mma). compute-sanitizer's synccheck
// flagged a diverged bar.sync without it.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  u32 ok = 0;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
  } while (!ok);
  __syncwarp();
}
// Whether the phase of `parity` has completed, without waiting; called by a whole converged warp, every lane
// gets lane 0's answer.
__device__ __forceinline__ bool mbar_test(u32 bar, u32 parity) {
  u32 ok = 0;
  asm volatile(
      "{ .reg .pred p; mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
      : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
  return __shfl_sync(0xffffffffu, ok, 0) != 0;
}
// Programmatic dependent launch (dependent_launch.py; compute capability ≥ 9.0, else nothing): a kernel launched as
// a dependent waits (griddep_wait) before it reads what the kernel before it wrote; that kernel lets its dependent
// be launched (griddep_launch_dependents) once all its CTAs have said so. In an ordinary launch both do nothing.
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void st_global_v4(void* p, uint4 v) {
  asm volatile("st.global.v4.b32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

// ---- float32 on tensor cores: 3xTF32 ----------------------------------------------------------------------
// x = hi + lo with hi = x rounded to TF32 and lo = x − hi exact in float32; a·b ≈ hi·hi + hi·lo + lo·hi
// (the dropped lo·lo and lo's own TF32 truncation are ~2^-22 relative), float32 accumulation: float32
// accuracy from the TF32 tensor-core instruction.
__device__ __forceinline__ void split_tf32(float x, u32& hi, u32& lo) {
  u32 h;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(h) : "f"(x));
  hi = h;
  lo = __float_as_uint(x - __uint_as_float(h));
}
__device__ __forceinline__ void mma1688_tf32(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// A (4 floats, m16n8k8 A-fragment order) and B (2 floats) split and multiplied in three products.
struct Frag3A { u32 h[4], l[4]; };
__device__ __forceinline__ Frag3A split_a(float a0, float a1, float a2, float a3) {
  Frag3A f;
  split_tf32(a0, f.h[0], f.l[0]); split_tf32(a1, f.h[1], f.l[1]);
  split_tf32(a2, f.h[2], f.l[2]); split_tf32(a3, f.h[3], f.l[3]);
  return f;
}
__device__ __forceinline__ void mma3(float (&d)[4], const Frag3A& a, float b0, float b1) {
  u32 bh0, bl0, bh1, bl1;
  split_tf32(b0, bh0, bl0);
  split_tf32(b1, bh1, bl1);
  mma1688_tf32(d, a.l, bh0, bh1);
  mma1688_tf32(d, a.h, bl0, bl1);
  mma1688_tf32(d, a.h, bh0, bh1);
}
__device__ __forceinline__ float2 lds64(const float* p) { return *reinterpret_cast<const float2*>(p); }

// ---- Ampere-style asynchronous copies (16 bytes per thread), completion tracked by an mbarrier ------------
// src_bytes = 0 writes 16 zero bytes without reading (tails); the source address must still be valid.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
// Arrive on `bar` once all of this thread's earlier cp.async have landed (counts toward the expected count).
__device__ __forceinline__ void cp_async_mbar_arrive(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
