// Device building blocks shared by the ZipperEngine kernels (zipper_kernels.cu, zipper_stream.cu):
// named PTX wrappers, the FP16/BF16 magic-number dequantizers and the per-warp stage layout.
// Internal linkage (anonymous namespace): each .cu file gets its own copy.
#pragma once
#ifdef MOSAIC_NL4_TIMING
#include "cuda/nl4_decode.h"  // timing experiments only (Ops<__half>::dequant below)
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/mma_ptx.cuh"

namespace mosaic::cuda::detail {
namespace {

constexpr int kTileK = 128;  // inputs per pipeline stage (two 64-wide chunks)

// ---- PTX wrappers ----------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// The weights are read exactly once per GEMM: mark them evict-first so they do not push the
// activations and the split-K partial sums out of L2.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}

// What createpolicy.fractional.L2::evict_first.b64 1.0 yields on sm_90 (ptxas 13.0 folds it to this
// constant: SASS of the stream kernel). Kernels under register pressure may pass the literal instead;
// tests/gpu checks that the two agree, so a toolkit that encodes it differently fails a test, not
// silently a cache hint.
inline constexpr uint64_t kEvictFirstPolicy = 0x12f0000000000000ull;

__device__ __forceinline__ void cp_async16_stream(uint32_t dst, const void* src, uint64_t policy) {
#ifdef MOSAIC_NO_L2HINT
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#else
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(policy));
#endif
}
// The same, done only where `pred` holds: a predicated copy, not a branch (a branch around a copy
// costs the branch, its reconvergence and three padding instructions before the copy in SASS).
__device__ __forceinline__ void cp_async16_stream_if(bool pred, uint32_t dst, const void* src, uint64_t policy) {
#ifdef MOSAIC_NO_L2HINT
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p cp.async.cg.shared.global [%1], [%2], 16;\n}\n" ::"r"(int(pred)), "r"(dst), "l"(src));
#else
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p cp.async.cg.shared.global.L2::cache_hint [%1], [%2], 16, %3;\n}\n" ::"r"(int(pred)),
               "r"(dst), "l"(src), "l"(policy));
#endif
}
__device__ __forceinline__ void cp_async16_stream(void* dst, const void* src, uint64_t policy) {
  cp_async16_stream(smem_addr(dst), src, policy);
}

// 16-byte async copy; when !valid the destination is zero-filled (rows of X past M).
__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A fragment of m16n8k16 (16 rows x 16 inputs) from a row-major smem tile.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const void* p) { ldmatrix_x4(a, smem_addr(p)); }

// (a & b) | c in one instruction.
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

template <typename T>
struct Ops;

template <>
struct Ops<__half> {
  using T2 = __half2;
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    Mma16816<__half>::acc(c, a, b0, b1);  // cuda/mma_ptx.cuh
  }
#ifdef MOSAIC_NL4_TIMING
  // Timing experiments only (docs/kernels-notes.md, next device calls): the nl4 table lookup
  // (nl4_decode.h) in place of the uniform decode, so that a build with -DMOSAIC_NL4_TIMING times
  // its cost on any checkpoint. Its results are wrong for uniform-grid layers: never a product build.
  __device__ static void dequant(uint32_t q, uint32_t (&out)[4]) {
    constexpr Nl4Table kTab = nl4_table(kIq4Nl);
    nl4_decode_words(q, kTab, out);
    const __half2 k1152 = __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480));
    for (int j = 0; j < 4; ++j) out[j] = as_u32(__hsub2(as_t2(out[j]), k1152));
  }
#else
  // 8 nibbles -> 4 half2 holding q - 8: nibble pairs (p0,p4) (p1,p5) (p2,p6) (p3,p7).
  // Magic number: 0x6400 | q is the fp16 1024 + q; 0x6400 | (q << 4) is 1024 + 16 q.
  __device__ static void dequant(uint32_t q, uint32_t (&out)[4]) {
    constexpr uint32_t kLo = 0x000f000f, kHi = 0x00f000f0, kExp = 0x64006400;
    const __half2 k1032 = __halves2half2(__ushort_as_half(0x6408), __ushort_as_half(0x6408));
    const __half2 kSixteenth = __halves2half2(__ushort_as_half(0x2c00), __ushort_as_half(0x2c00));
    const __half2 kMinus72 = __halves2half2(__ushort_as_half(0xd480), __ushort_as_half(0xd480));
    uint32_t lo0 = lop3_and_or(q, kLo, kExp), hi0 = lop3_and_or(q, kHi, kExp);
    q >>= 8;
    uint32_t lo1 = lop3_and_or(q, kLo, kExp), hi1 = lop3_and_or(q, kHi, kExp);
    out[0] = as_u32(__hsub2(as_t2(lo0), k1032));
    out[1] = as_u32(__hfma2(as_t2(hi0), kSixteenth, kMinus72));
    out[2] = as_u32(__hsub2(as_t2(lo1), k1032));
    out[3] = as_u32(__hfma2(as_t2(hi1), kSixteenth, kMinus72));
  }
#endif
  __device__ static T2 as_t2(uint32_t x) { return *reinterpret_cast<T2*>(&x); }
  __device__ static uint32_t as_u32(T2 x) { return *reinterpret_cast<uint32_t*>(&x); }
  __device__ static T2 bcast(__half x) { return __half2half2(x); }
  __device__ static T2 pack(float a, float b) { return __floats2half2_rn(a, b); }
  __device__ static float2 unpack(T2 v) { return __half22float2(v); }
};

template <>
struct Ops<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    Mma16816<__nv_bfloat16>::acc(c, a, b0, b1);  // cuda/mma_ptx.cuh
  }
  // bf16 has 7 mantissa bits, so 128 + 16 q would carry into the exponent: shift each nibble
  // down to bits 0..3 instead and use 0x4300 | q = 128 + q, then subtract 136.
  __device__ static void dequant(uint32_t q, uint32_t (&out)[4]) {
    constexpr uint32_t kLo = 0x000f000f, kExp = 0x43004300;
    const __nv_bfloat162 k136 = as_t2(0x43084308u);
    out[0] = as_u32(__hsub2(as_t2(lop3_and_or(q, kLo, kExp)), k136));
    out[1] = as_u32(__hsub2(as_t2(lop3_and_or(q >> 4, kLo, kExp)), k136));
    out[2] = as_u32(__hsub2(as_t2(lop3_and_or(q >> 8, kLo, kExp)), k136));
    out[3] = as_u32(__hsub2(as_t2(lop3_and_or(q >> 12, kLo, kExp)), k136));
  }
  __device__ static T2 as_t2(uint32_t x) { return *reinterpret_cast<T2*>(&x); }
  __device__ static uint32_t as_u32(T2 x) { return *reinterpret_cast<uint32_t*>(&x); }
  __device__ static T2 bcast(__nv_bfloat16 x) { return __bfloat162bfloat162(x); }
  __device__ static T2 pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
  __device__ static float2 unpack(T2 v) { return __bfloat1622float2(v); }
};

// Two floats rounded to T and packed into one 32-bit word (a in the low half): the epilogues' 4-byte stores.
template <typename T>
__device__ __forceinline__ uint32_t pack_out(float a, float b) {
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// One k16 step of a lane's weight fragment from its 8 codes q: registers 0, 1 hold output g
// (x its group scale sA), 2, 3 output g + 8 (x sB), as the mma.sync / wgmma fragment wants them
// (the fp16 / bf16 product is the rounding every kernel's test bound allows for).
template <typename T>
__device__ __forceinline__ void scaled_codes(uint32_t q, typename Ops<T>::T2 sA, typename Ops<T>::T2 sB,
                                             uint32_t (&w)[4]) {
  using O = Ops<T>;
  O::dequant(q, w);
  w[0] = O::as_u32(__hmul2(O::as_t2(w[0]), sA));
  w[1] = O::as_u32(__hmul2(O::as_t2(w[1]), sA));
  w[2] = O::as_u32(__hmul2(O::as_t2(w[2]), sB));
  w[3] = O::as_u32(__hmul2(O::as_t2(w[3]), sB));
}
// The zipper: a kept residual block's codes rq x its scales, added into the same registers (one
// fragment, no extra MMA).
template <typename T>
__device__ __forceinline__ void add_scaled_codes(uint32_t rq, typename Ops<T>::T2 rsA, typename Ops<T>::T2 rsB,
                                                 uint32_t (&w)[4]) {
  using O = Ops<T>;
  uint32_t r[4];
  O::dequant(rq, r);
  w[0] = O::as_u32(__hfma2(O::as_t2(r[0]), rsA, O::as_t2(w[0])));
  w[1] = O::as_u32(__hfma2(O::as_t2(r[1]), rsA, O::as_t2(w[1])));
  w[2] = O::as_u32(__hfma2(O::as_t2(r[2]), rsB, O::as_t2(w[2])));
  w[3] = O::as_u32(__hfma2(O::as_t2(r[3]), rsB, O::as_t2(w[3])));
}

__device__ __forceinline__ uint32_t word(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// Per-warp stage buffer, in 16-byte units (spt = scale sets per tile, 1 for group 128):
//   [0, 64)                 base codes of the tile's two chunks (chunk c, lane l at c*32 + l)
//   [64, 64 + 2 spt)        base scales [spt][16]
//   [+0, +32) after that    residual codes of the first kept block among the two chunks
//   [+32, +34)              its scales [16]
// One residual slot, not two: with ~10% of blocks kept, both chunks of a tile hold a block ~1% of
// the time, and that second block is read straight from global memory when consumed. Half the
// residual smem means one more CTA per SM, which is what the residual cost in v2 (occupancy).
constexpr int kBaseScales = 64;
__host__ __device__ constexpr int stage_u4(int spt, bool res) { return 64 + 2 * spt + (res ? 34 : 0); }

}  // namespace
}  // namespace mosaic::cuda::detail
