// The INT8 wgmma kernel's consumer warpgroups (layers on the integer scale grid, format/int_scale_grid.h):
// the 4-bit -> INT8 fragment conversion, the kept residual blocks added into the fragments, wgmma s8 x s8 ->
// s32 over the whole K, and the epilogue through the ring's held stages and TMA stores. The producer and the
// kernel around it: w4a8_fp8_gemm.cu; design and layout diagram: docs/kernels.md "INT8 wgmma kernel".
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/w4a8_wgmma_common.cuh"

namespace mosaic::cuda::detail::w4a8wg {

// D[64 x 128] += A[64 x 32] (registers, s8) * B[32 x 128] (shared memory descriptor, s8), s32 accumulators,
// exact over any K. One warpgroup, asynchronous (commit / wait).
__device__ __forceinline__ void wgmma_m64n128k32_s8(int32_t (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64,%65,%66,%67}, %68, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

// INT8 variant: a group multiplier m (1..16) and its byte offset 0x80 - 8 m in every byte.
struct I8Mult {
  uint32_t m, off;
};
__device__ __forceinline__ I8Mult i8_mult_u(uint32_t u) { return {u, 0x80808080u - u * 0x08080808u}; }
__device__ __forceinline__ I8Mult i8_mult(float m) { return i8_mult_u(__float2uint_rz(m)); }
__device__ __forceinline__ uint32_t lds_u8(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u8 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
// 8 codes c (byte-interleaved pairs, w4a8_fp8_layout.h) -> 2 registers of 4 INT8 weights m (c - 8):
// per register one IMAD c * m + (0x80 - 8 m) per byte (0..240: no carry between bytes) and an XOR
// that turns the offset-0x80 bytes into two's complement. 7 instructions per 8 weights (the e4m3
// path: 9 plus its promotion). Host emulation: i8_word_to_s8.
__device__ __forceinline__ void nib8_to_s8(uint32_t w, I8Mult lo_m, I8Mult hi_m, uint32_t& lo, uint32_t& hi) {
  lo = ((w & 0x0F0F0F0Fu) * lo_m.m + lo_m.off) ^ 0x80808080u;
  hi = (((w >> 4) & 0x0F0F0F0Fu) * hi_m.m + hi_m.off) ^ 0x80808080u;
}
// One lane's 2 k32 steps (words 0,1 = step 0, words 2,3 = step 1) -> A fragments; rows g: lo_m,
// rows g + 8: hi_m.
__device__ __forceinline__ void unpack_2steps_s8(const uint4& v, I8Mult lo_m, I8Mult hi_m, uint32_t (&s0)[4],
                                                 uint32_t (&s1)[4]) {
#if MOSAIC_W4A8_FP8_ABLATE & 256
  s0[0] = v.x; s0[1] = v.y; s0[2] = v.z; s0[3] = v.w;
  s1[0] = v.y ^ lo_m.m; s1[1] = v.z; s1[2] = v.w ^ hi_m.m; s1[3] = v.x;
  return;
#endif
  nib8_to_s8(v.x, lo_m, hi_m, s0[0], s0[1]);
  nib8_to_s8(v.y, lo_m, hi_m, s0[2], s0[3]);
  nib8_to_s8(v.z, lo_m, hi_m, s1[0], s1[1]);
  nib8_to_s8(v.w, lo_m, hi_m, s1[2], s1[3]);
}
// a + b per signed byte when no byte's sum leaves -128..127 (the integer scale grid guarantees it):
// the low 7 bits add without crossing bytes, the top bits by XOR.
__device__ __forceinline__ uint32_t add_s8x4(uint32_t a, uint32_t b) {
  return ((a & 0x7F7F7F7Fu) + (b & 0x7F7F7F7Fu)) ^ ((a ^ b) & 0x80808080u);
}

__device__ __forceinline__ float i2f(int32_t v) {
  if constexpr (kAblate & 2048) return __int_as_float(v + 0x4B400000) - 12582912.f;
  return float(v);
}

// ---- INT8 consumer (layers on the integer scale grid) -------------------------------------------
// Warpgroup c owns outputs 64 kH c .. 64 kH (c + 1) - 1 of the tile as kH row blocks of 64 (one
// m64 wgmma each, the same X descriptor); warp w of it rows 16 w .. 16 w + 15 of each block. Each
// k-tile's A fragments are INT8 weights m (c - 8), plus m_r (r - 8) where the warp's block row keeps
// the block (added into the fragment: no extra MMA, and warps without a kept block do nothing
// more); the wgmma of a k-tile accumulate into the same INT32 sums as the k-tile before, so nothing
// waits on them but the reuse of a fragment buffer two k-tiles later (wait_group 1) and the
// epilogue. Y = s_m u_n acc.
//
// Epilogue (tma_store, K of at least 2 k-tiles): through shared memory and TMA stores, in the ring's last
// two stages of the tile, which are released only once the stores have read them. The lanes' own 4-byte
// stores (8 tokens x 16 bytes per instruction, every CTA's tile at once) left the tensor pipe idle for
// ~20% of a K = 4096 layer (ablation 128, twenty-third session); a separate 64 KB staging buffer cost the
// ring a stage, which lost as much (refuted/s23-int8-tma-store). Warpgroup 0 stages in the tile's last
// stage, warpgroup 1 in the one before: kH boxes of [128 tokens][64 outputs] (16 KB, 128-byte swizzle: the
// 16-byte chunk q of token row m at q ^ (m & 7), so a warp's store of 8 tokens x 16 bytes hits 32 banks),
// then 512 B of the tile's token scales s_m.
template <typename T, int kH>
__device__ __forceinline__ void consume_int8(const W4A8Fp8Args& a, const CUtensorMap* ymap, bool tma_store,
                                             uint32_t smem_base, uint64_t* full, uint64_t* empty, uint32_t* flags,
                                             int KT, int nout, int ntiles, int c, int w, int lane) {
  using S = Stage<kH, true>;
  constexpr uint32_t kYBox = kTok * 64 * 2;  // one staged box: [128 tokens][64 outputs] of T
  static_assert(kH * kYBox + 4 * kTok <= uint32_t(S::kBytes), "a ring stage holds a warpgroup's boxes and s_m");
  const int g = lane >> 2, t4 = lane & 3;
  int32_t acc[kH][64];
  uint32_t af[kH][4][4], nf[kH][4][4];
  // The A fragments of ring position `it` (waits for its stage).
  auto load_a = [&](uint32_t it, uint32_t (&f)[kH][4][4]) {
    const uint32_t s = it % S::kStages, st = smem_base + s * S::kBytes;
    mbar_wait(&full[s], (it / S::kStages) & 1);
    const uint32_t kept = lds32(smem_u32(flags + s));
#pragma unroll
    for (int hh = 0; hh < kH; ++hh) {
      const int row0 = 64 * (kH * c + hh) + 16 * w;  // the warp's first output in the tile
      const int brow = row0 / 16;                     // its block row in the tile
      // Base codes: 128-output chunk row0 / 128, warp (row0 % 128) / 16 of it (w4a8_fp8_layout.h).
      const uint32_t wa = st + S::kOffW + (row0 / 128) * 8192 + (2 * ((row0 % 128) / 16) * 32 + lane) * 16;
      const uint32_t sca = st + S::kOffS + 4 * (row0 + g);
      const uint4 h0 = lds128(wa), h1 = lds128(wa + 512);
      const I8Mult lo0 = i8_mult(lds_f32(sca)), hi0 = i8_mult(lds_f32(sca + 32));
      unpack_2steps_s8(h0, lo0, hi0, f[hh][0], f[hh][1]);
      if (a.spt == 1) {
        unpack_2steps_s8(h1, lo0, hi0, f[hh][2], f[hh][3]);
      } else {  // group 64: the second half of the k-tile has its own multipliers
        const uint32_t sc2 = sca + 4 * S::kOutT;
        unpack_2steps_s8(h1, i8_mult(lds_f32(sc2)), i8_mult(lds_f32(sc2 + 32)), f[hh][2], f[hh][3]);
      }
#pragma unroll
      for (int bc = 0; bc < 2; ++bc) {
        const int slot = 2 * brow + bc;
        if (!((kept >> slot) & 1u) || (kAblate & 32)) continue;  // warp-uniform
        uint32_t r0[4], r1[4];
        const uint32_t blk = st + S::kOffRC + slot * S::kSlotBytes;  // codes, then 16 multiplier bytes
        unpack_2steps_s8(lds128(blk + lane * 16), i8_mult_u(lds_u8(blk + 512 + g)), i8_mult_u(lds_u8(blk + 512 + g + 8)),
                         r0, r1);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          f[hh][2 * bc][i] = add_s8x4(f[hh][2 * bc][i], r0[i]);
          f[hh][2 * bc + 1][i] = add_s8x4(f[hh][2 * bc + 1][i], r1[i]);
        }
      }
    }
  };
  auto release = [&](uint32_t it) {  // the stage of ring position `it` is read by every wgmma
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[it % S::kStages]);
  };
  auto keep = [&](uint32_t (&f)[kH][4][4]) {
#pragma unroll
    for (int hh = 0; hh < kH; ++hh) keep_live(f[hh]);
  };
  // One k-tile on fragments cur; then, once the previous k-tile's wgmmas are done, its stage is
  // released and nxt (which they read) refilled with k-tile kt + 1.
  const bool hold = tma_store && KT >= 2;  // the tile's last two stages are the epilogue's staging
  auto ktile = [&](uint32_t it, int kt, uint32_t (&cur)[kH][4][4], uint32_t (&nxt)[kH][4][4]) {
    const uint32_t xaddr = smem_base + (it % S::kStages) * S::kBytes;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int hh = 0; hh < kH; ++hh) wgmma_m64n128k32_s8(acc[hh], cur[hh][k], desc_sw128(xaddr + 32 * k));
    wgmma_commit();
    wgmma_wait<1>();
    keep(nxt);
    if (kt > 0 && !(hold && kt == KT - 1)) release(it - 1);
    if (kt + 1 < KT) load_a(it + 1, nxt);
  };
  const int wtid = 32 * w + lane;  // thread within the warpgroup
  uint32_t it = 0;
  for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
    const int n0 = (t % nout) * S::kOutT, m0 = (t / nout) * kTok;
    // The epilogue's scales, loaded before the main loop hides their latency: u_n of the lane's two rows
    // per row block, and (TMA store) token m0 + wtid's s_m.
    float u[kH][2];
#pragma unroll
    for (int hh = 0; hh < kH; ++hh) {
      const int n_w = n0 + 64 * (kH * c + hh) + 16 * w;
      u[hh][0] = a.cs[n_w + g];  // Npad entries: padding rows read 0
      u[hh][1] = a.cs[n_w + g + 8];
    }
    const float xs_mine = hold && m0 + wtid < a.M ? a.xs[m0 + wtid] : 0.f;
#pragma unroll
    for (int hh = 0; hh < kH; ++hh)
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[hh][i] = 0;
    load_a(it, af);
    for (int kt = 0; kt < KT; kt += 2) {  // the fragment buffers swap roles (no register copies)
      ktile(it + kt, kt, af, nf);
      if (kt + 1 < KT) ktile(it + kt + 1, kt + 1, nf, af);
    }
    wgmma_wait<0>();
    keep(af);
    keep(nf);
#pragma unroll
    for (int hh = 0; hh < kH; ++hh) fence_regs(acc[hh]);
    if (!hold) release(it + KT - 1);
    it += KT;
    if constexpr (kAblate & 128) {  // a real use of every accumulator (XOR, a store that never runs)
      int32_t x = 0;
#pragma unroll
      for (int hh = 0; hh < kH; ++hh)
#pragma unroll
        for (int i = 0; i < 64; ++i) x ^= acc[hh][i];
      if (a.M < 0) *static_cast<int32_t*>(a.y) = x;
      if (hold) {  // the held stages go back to the ring
        release(it - 2);
        release(it - 1);
      }
      continue;
    }
    if (!hold) {  // every lane stores its outputs (Y rows not 16-byte aligned, or a single k-tile)
#pragma unroll
      for (int hh = 0; hh < kH; ++hh) {
        const int n_w = n0 + 64 * (kH * c + hh) + 16 * w;
        store_fragment<T>(a, n_w, m0, g, t4, [&](int i) { return float(acc[hh][i]) * u[hh][(i >> 1) & 1]; });
      }
      continue;
    }
    // Both warpgroups' wgmmas have read the two stages before either is overwritten.
    named_bar_sync(1, 256);
    const uint32_t ybuf = smem_base + ((it - 1 - c) % S::kStages) * S::kBytes, xs_s = ybuf + kH * kYBox;
    sts32(xs_s + 4 * wtid, __float_as_uint(xs_mine));
    named_bar_sync(2 + c, 128);
    const int odd = g & 1;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int m = 8 * j + 2 * t4 + odd;  // token within the tile
      const float sm = lds_f32(xs_s + 4 * m);
#pragma unroll
      for (int hh = 0; hh < kH; ++hh)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const float v0 = i2f(acc[hh][4 * j + 2 * hr]) * u[hh][hr];
          const float v1 = i2f(acc[hh][4 * j + 2 * hr + 1]) * u[hh][hr];
          float lo, hi;
          swap_halves(v0, v1, odd, lo, hi);
          const int n = 16 * w + 8 * hr + (g & ~1);  // output within the box
          sts32(ybuf + hh * kYBox + m * 128 + ((2 * n) ^ ((m & 7) << 4)), pack_out<T>(lo * sm, hi * sm));
        }
    }
    fence_proxy_async_smem();
    named_bar_sync(2 + c, 128);
    if (wtid == 0) {
#pragma unroll
      for (int hh = 0; hh < kH; ++hh) tma_store_2d(ymap, ybuf + hh * kYBox, n0 + 64 * (kH * c + hh), m0);
      bulk_commit();
      if constexpr (!(kAblate & 1024)) bulk_wait_read<0>();
    }
    named_bar_sync(1, 256);  // both warpgroups' stores have read their stages: the ring gets them back
    release(it - 2);
    release(it - 1);
  }
  if (tma_store && wtid == 0) bulk_wait<0>();  // the last tile's stores are done before the CTA exits
}

}  // namespace mosaic::cuda::detail::w4a8wg
