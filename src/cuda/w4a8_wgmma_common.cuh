// What the two W4A8 wgmma kernels of w4a8_fp8_gemm.cu (e4m3 and INT8) share: the CTA and stage
// layout, the same-binary ablation mask, and the lanes' epilogue store. Included by w4a8_fp8_gemm.cu and
// w4a8_int8_consumer.cuh only (device code; layout: w4a8_fp8_layout.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/hopper_ptx.cuh"
#include "cuda/w4a8_fp8_tables.h"
#include "cuda/w4a8_launch.h"
#include "cuda/zipper_device.cuh"  // pack_out

#ifndef MOSAIC_W4A8_FP8_ABLATE
#define MOSAIC_W4A8_FP8_ABLATE 0
#endif

namespace mosaic::cuda::detail::w4a8wg {

// Same-binary ablations for measuring where the time goes (never set in a normal build; results
// are wrong with any bit set): 1 = no 4-bit -> e4m3 conversion (raw code words as A), 2 = no
// group-scale promotion, 4 = no wgmma, 8 = promotion without the scale (acc += part), 16 = only 8 of
// the 64 accumulators promoted. 7 leaves the load pipeline and the epilogue alone. INT8 kernel: 32 =
// kept blocks not added into the fragments (their copies still made), 64 = kept blocks not copied
// (the consumers add whatever the slots hold), 128 = no epilogue (the accumulators XORed into a store
// that never runs: ptxas drops wgmma whose results are dead), 256 = no 4-bit -> INT8 conversion (the
// raw code words as the A fragments), 1024 = the TMA-store epilogue without waiting for the stores'
// shared-memory reads before the stages go back (a race: timing only), 2048 = its int32 -> float by the
// 2^23 + 2^22 magic number instead of I2F (exact only for |acc| < 2^22: timing only).
constexpr int kAblate = MOSAIC_W4A8_FP8_ABLATE;

// ---- the GEMM ----------------------------------------------------------------------------------
// CTA: 3 warpgroups. WG 0 = producer (one warp: TMA of the X tile, bulk copies of the weights,
// scales and kept residual blocks, into a ring of full/empty mbarriers); WG 1, 2 = consumers, each
// 64 x kH outputs x 128 tokens (CTA tile 128 kH outputs x 128 tokens, k-tile 128). kH = 1: the e4m3
// kernel, and the INT8 one at 128 outputs; kH = 2: the INT8 one at 256 outputs, which halves the X
// tiles read from L2 per output (the load pipeline alone ran at ~6 TB/s of L2 traffic at kH = 1:
// kernels-notes, fourteenth and twentieth sessions); the e4m3 consumer has no registers for it.
constexpr int kTok = 128, kBK = kFp8TileK, kThreads = 384;
// Stage layout (bytes, 1024-aligned): X codes 128 tokens x 128 B (TMA, 128-byte swizzle), base codes
// kH x 8 KB (w4a8_fp8_layout.h: one 8 KB k-tile per 128 outputs), scales 2 sets x 128 kH fp32,
// residual: 16 kH slots (8 kH block rows x 2 block columns) x 512 B codes, as many x 16 fp32 scales.
template <int kH, bool kI8>
struct Stage {
  static constexpr int kOutT = 128 * kH, kSlots = 16 * kH;
  // A kept block: e4m3 512 B codes + 64 B fp32 row scales (two copies); INT8 512 B codes + 16 B row
  // multipliers, one copy (w4a8_fp8_layout.h, kI8ResWords).
  static constexpr int kSlotBytes = kI8 ? 528 : 512, kSlotScaleBytes = kI8 ? 0 : 64;
  static constexpr int kOffW = kTok * kBK;                  // 16384
  static constexpr int kOffS = kOffW + 8192 * kH;           // 24576 | 32768
  static constexpr int kOffRC = kOffS + 1024 * kH;          // 25600 | 34816
  static constexpr int kOffRS = kOffRC + kSlots * kSlotBytes;  // e4m3: 33792
  static constexpr int kBytes = (kOffRS + kSlots * kSlotScaleBytes + 1023) / 1024 * 1024;  // 34 KB | 51 / 52 KB
  static constexpr int kStages = kH == 1 ? 6 : 4;
  static constexpr int kSmem = kStages * kBytes + 1024 /* barriers + flags */ + 1024 /* alignment */;
  static_assert(kStages <= 8, "flags[8..11] hold the e4m3 tables");
};

// PTX wrappers (mbarriers, bulk copies, TMA, wgmma fences, descriptors): cuda/hopper_ptx.cuh.
using namespace ::mosaic::cuda::hopper;

// The epilogues' pair exchange: v0, v1 = one output row's values of tokens 2 t4, 2 t4 + 1 (fragment elements
// 2 hr, 2 hr + 1); lanes g and g ^ 1 (odd = g & 1) swap halves, so that each then holds two adjacent outputs
// (rows g & ~1, (g & ~1) + 1) of one token (2 t4 + odd): one 4-byte store.
__device__ __forceinline__ void swap_halves(float v0, float v1, int odd, float& lo, float& hi) {
  const float recv = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
  lo = odd ? recv : v0;
  hi = odd ? v1 : recv;
}

// Epilogue of one consumer warp's m64n128 fragment: Y[m, n] = s_m * v(i), element i of the
// fragment being output row g (i & 2: g + 8) and token 8 (i / 4) + 2 t4 + (i & 1). Lanes g and g ^ 1
// swap halves so that each stores two adjacent outputs of one token (4 bytes): even g token
// 8j + 2t, odd g token 8j + 2t + 1. n_w: the warp's first output, m0: the tile's first token.
template <typename T, typename V>
__device__ __forceinline__ void store_fragment(const W4A8Fp8Args& a, int n_w, int m0, int g, int t4, V v) {
  T* y = static_cast<T*>(a.y);
  const int odd = g & 1;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int m = m0 + 8 * j + 2 * t4 + odd;
    const float sm = m < a.M ? a.xs[m] : 0.f;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float lo, hi;
      swap_halves(v(4 * j + 2 * hr), v(4 * j + 2 * hr + 1), odd, lo, hi);
      const int n = n_w + 8 * hr + (g & ~1);
      if (m < a.M && n < a.N)
        *reinterpret_cast<uint32_t*>(y + int64_t(m) * a.N + n) = pack_out<T>(lo * sm, hi * sm);
    }
  }
}

}  // namespace mosaic::cuda::detail::w4a8wg
