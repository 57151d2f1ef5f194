// Hopper (sm_90a) helpers: warpgroup matrix products (wgmma) on swizzled shared-memory tiles.
//
// Tiles are stored the way wgmma's shared-memory descriptors describe them ("canonical" layouts, as CUTLASS
// names them): rows of RB = 128 or 64 bytes, eight rows forming one swizzle atom of 8·RB bytes in which the
// 16-byte pieces of row r are permuted by XOR with (r mod 8) (RB = 128) or ((r / 2) mod 4) (RB = 64). That is
// the hardware's address swizzle — bits [4, 4+b) ^= bits [7, 7+b), b = 3 or 2 — on absolute shared addresses,
// so every tile starts on a 1024-byte boundary.
//
// A tile of R rows × RB bytes serves as
//   K-major  operand (rows = M or N, the row's bytes = K):  16-element k-step j starts at +32·j bytes;
//   MN-major operand (rows = K, the row's bytes = M or N):   16-row k-step j starts at +16·RB·j bytes;
// in both the stride between eight-row groups (SBO) is 8·RB. The other offset (LBO) is unused at M, N ≤ 64
// elements of 16 bits. An MN-major operand of twice its rows' width (chunk_wg4's WIDE products over two E
// slices: N = RB elements) is two such tiles, LBO the byte distance from the first to the second (CUTLASS's
// MN-major canonical layout ((T, RB/16, m), (8, k)) : ((1, T, LBO), (RB/16·T, SBO)), T = 16 bytes).
#pragma once

// Byte offset of 16-byte piece `piece` of row `row` in a swizzled tile of RB-byte rows.
template <int RB>
__device__ __forceinline__ u32 swz(int row, int piece) {
  static_assert(RB == 128 || RB == 64, "128- or 64-byte rows");
  const int x = RB == 128 ? (row & 7) : ((row >> 1) & 3);
  return (u32)(row * RB + ((piece ^ x) << 4));
}

// wgmma shared-memory descriptor: start address, LBO, SBO (bytes, 16-byte units), swizzle mode. lbo: the
// distance to an MN-major operand's second tile (bytes, < 256 KB); 16 where there is none.
template <int RB>
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo = 16) {
  constexpr u64 mode = RB == 128 ? 1 : 2;  // 1: 128-byte swizzle, 2: 64-byte swizzle
  constexpr u64 sbo = 8 * RB;
  return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((lbo >> 4) & 0x3FFF) << 16) | ((sbo >> 4) << 32) | (mode << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Shared memory written by ordinary stores (or cp.async), read next by wgmma (the async proxy).
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Bulk copies (the TMA unit without a tensor map) from shared to global memory, `bytes` a multiple of 16 at
// 16-byte aligned addresses, in the issuing thread's bulk group; `bulk_wait_read<N>` returns once all but the N
// newest of this thread's groups have read their shared source, `bulk_wait<N>` once they are complete.
__device__ __forceinline__ void bulk_store(void* gdst, u32 ssrc, u32 bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gdst), "r"(ssrc), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of an accumulator across the asynchronous product.
template <int N>
__device__ __forceinline__ void wg_pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (64 × N, float32, the accumulator layout) = A·B (+ D when acc), 16-bit A and B, K = 16.
// A from shared memory (descriptor da, TA = 1: M-major) or from registers (a[4], the m16k16 layout per warp);
// B from shared memory (descriptor db, TB = 1: N-major).
#define LB_R8(i) "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), \
                 "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define LB_D16 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}"
#define LB_D32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
               "%24,%25,%26,%27,%28,%29,%30,%31}"
#define LB_D64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
               "%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46," \
               "%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define LB_R64 LB_R8(0), LB_R8(8), LB_R8(16), LB_R8(24), LB_R8(32), LB_R8(40), LB_R8(48), LB_R8(56)

template <int N, bool BF16, int TA, int TB>
__device__ __forceinline__ void wg_ss(float (&d)[N / 2], u64 da, u64 db, bool acc) {
  static_assert(N == 32 || N == 64 || N == 128, "N = 32, 64 or 128");
  const int sc = acc ? 1 : 0;
  if constexpr (N == 128) {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %66, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LB_D64 ", %64, %65, p, 1, 1, %67, %68; }"
                   : LB_R64
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %66, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " LB_D64 ", %64, %65, p, 1, 1, %67, %68; }"
                   : LB_R64
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
  } else if constexpr (N == 64) {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %34, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LB_D32 ", %32, %33, p, 1, 1, %35, %36; }"
                   : LB_R8(0), LB_R8(8), LB_R8(16), LB_R8(24)
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %34, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LB_D32 ", %32, %33, p, 1, 1, %35, %36; }"
                   : LB_R8(0), LB_R8(8), LB_R8(16), LB_R8(24)
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
  } else {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %18, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " LB_D16 ", %16, %17, p, 1, 1, %19, %20; }"
                   : LB_R8(0), LB_R8(8)
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %18, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 " LB_D16 ", %16, %17, p, 1, 1, %19, %20; }"
                   : LB_R8(0), LB_R8(8)
                   : "l"(da), "l"(db), "r"(sc), "n"(TA), "n"(TB));
  }
}

template <int N, bool BF16, int TB>
__device__ __forceinline__ void wg_rs(float (&d)[N / 2], const u32 (&a)[4], u64 db, bool acc) {
  static_assert(N == 32 || N == 64 || N == 128, "N = 32, 64 or 128");
  const int sc = acc ? 1 : 0;
  if constexpr (N == 128) {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %69, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LB_D64
                   ", {%64,%65,%66,%67}, %68, p, 1, 1, %70; }"
                   : LB_R64
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %69, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " LB_D64
                   ", {%64,%65,%66,%67}, %68, p, 1, 1, %70; }"
                   : LB_R64
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
  } else if constexpr (N == 64) {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %37, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LB_D32
                   ", {%32,%33,%34,%35}, %36, p, 1, 1, %38; }"
                   : LB_R8(0), LB_R8(8), LB_R8(16), LB_R8(24)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %37, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LB_D32
                   ", {%32,%33,%34,%35}, %36, p, 1, 1, %38; }"
                   : LB_R8(0), LB_R8(8), LB_R8(16), LB_R8(24)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
  } else {
    if (BF16)
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %21, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " LB_D16
                   ", {%16,%17,%18,%19}, %20, p, 1, 1, %22; }"
                   : LB_R8(0), LB_R8(8)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
    else
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %21, 0;\n"
                   "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 " LB_D16
                   ", {%16,%17,%18,%19}, %20, p, 1, 1, %22; }"
                   : LB_R8(0), LB_R8(8)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(sc), "n"(TB));
  }
}
#undef LB_R8
#undef LB_R64
#undef LB_D16
#undef LB_D32
#undef LB_D64

// ---- tensor memory access (TMA) ------------------------------------------------------------------------------
// A tensor map: the 128 opaque bytes of a CUtensorMap, encoded on the host (tensor_maps.py: cuTensorMapEncodeTiled)
// and passed by value as a __grid_constant__ kernel parameter, so its address is a parameter's.
struct alignas(64) TensorMap {
  unsigned long long bits[16];
};
__device__ __forceinline__ void tma_prefetch(const TensorMap* m) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(m) : "memory");
}
// One arrival on `bar` that also tells it to expect `bytes` more of copies completing on it (the phase completes
// when both its arrivals and its bytes are in).
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// The box of tensor map `m` at coordinates (x, y, z) (innermost first) into shared memory at `dst`, its bytes
// counted on `bar` as they land; elements past the map's bounds arrive as zeros.
__device__ __forceinline__ void tma_load_3d(u32 dst, const TensorMap* m, int x, int y, int z, u32 bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];" ::"r"(dst), "l"(m), "r"(x), "r"(y), "r"(z), "r"(bar)
      : "memory");
}
