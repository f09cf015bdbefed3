// The W4A8 wgmma kernels for prefill on Hopper (sm_90a), one producer and stage layout, two consumers:
//  - e4m3 (kI8 = false): per-token FP8 e4m3 activation quantization, and the fused GEMM
//    Y = (s_m e4m3(x / s_m)) (deq(base) + deq(residual))^T as D^T = W . X^T with wgmma m64n128k32 e4m3
//    (4-bit codes -8..7 are exact in e4m3), promoted to fp32 per scale group;
//  - INT8 (kI8 = true, layers on the integer scale grid, format/int_scale_grid.h): wgmma s8 x s8 -> s32
//    over the whole K, the residual added into the INT8 weights, Y = s_m u_n acc (consume_int8).
// Design: docs/kernels.md "FP8 wgmma kernel", "INT8 wgmma kernel"; layout: w4a8_fp8_layout.h (both).
#include <cuda.h>  // CUtensorMap (encoded through the runtime's driver entry point: no -lcuda)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "cuda/act_rowquant.cuh"
#include "cuda/hopper_ptx.cuh"
#include "cuda/w4a8_fp8_tables.h"
#include "cuda/w4a8_int8_consumer.cuh"
#include "cuda/w4a8_launch.h"
#include "cuda/w4a8_wgmma_common.cuh"
#include "util/error.h"
#include "util/env.h"

namespace mosaic::cuda::detail {
namespace {

// Stage, kAblate, store_fragment, consume_int8, ...: w4a8_wgmma_common.cuh, w4a8_int8_consumer.cuh.
using namespace w4a8wg;
using namespace ::mosaic::cuda::hopper;

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA error launching ", what, ": ", cudaGetErrorString(e));
}

// ---- activation quantization: rowquant_kernel (act_rowquant.cuh) with the FP8 e4m3 rule -------
// The CPU rule (src/model/act_quant_linear.cpp, round_e4m3): s = max|x| / 448 (fp32), code =
// e4m3(x / s) rounded to nearest even, saturating at 448; a zero row gives s = 0 and codes 0.
// cvt.rn.satfinite.e4m3x2.f32 is that rounding, so the codes are bit-identical (tested).
struct Fp8Codec {
  static constexpr float kMax = 448.f;
  __device__ static uint2 encode8(const float (&f)[8], float s, float amax) {
    uint32_t p[2] = {0, 0};
    if (amax > 0.f) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __nv_fp8x2_storage_t v = __nv_cvt_float2_to_fp8x2(
            make_float2(__fdiv_rn(f[2 * i], s), __fdiv_rn(f[2 * i + 1], s)), __NV_SATFINITE, __NV_E4M3);
        p[i / 2] |= uint32_t(v) << (16 * (i % 2));
      }
    }
    return make_uint2(p[0], p[1]);
  }
};

// D[64 x 128] (+)= A[64 x 32] (registers, e4m3) * B[32 x 128] (shared memory descriptor, e4m3),
// fp32 accumulators; scale_d = 0 overwrites D. One warpgroup, asynchronous (commit / wait).
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                                      int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64,%65,%66,%67}, %68, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
// 8 nibbles (fp8_nibble format) -> 2 registers of 4 e4m3 bytes (lo = nibbles 0..3, hi = 4..7):
// per register a lookup in table A with the nibbles as selectors, one in table B with bit 3 of
// every nibble flipped, XOR (w4a8_fp8_tables.h has why). prmt reads only the low 16 bits of its
// selector, so the nibbles 0..3 need no masking. 4 prmt + 5 ALU per 8 weights; the two's
// complement format took 6 prmt + 5 (masks, the sign moved into each byte's selector), the
// consumers' largest instruction cost (kernels-notes, fourteenth session). Host emulation:
// fp8_word_to_e4m3. The tables (kE4m3A/B Lo/Hi) are held in registers (tab, loaded once from
// shared memory): as immediates ptxas re-materialized them before every prmt.
struct E4m3Tables {
  uint32_t al, ah, bl, bh;
};
__device__ __forceinline__ void nib8_to_e4m3(uint32_t w, const E4m3Tables& t, uint32_t& lo, uint32_t& hi) {
  const uint32_t wx = w ^ 0x88888888u;
  lo = prmt(t.al, t.ah, w) ^ prmt(t.bl, t.bh, wx);
  hi = prmt(t.al, t.ah, w >> 16) ^ prmt(t.bl, t.bh, wx >> 16);
}
// One lane's 2 k32 steps (16 bytes: words 0,1 = step 0, words 2,3 = step 1) -> A fragments.
__device__ __forceinline__ void unpack_2steps(const uint4& v, const E4m3Tables& t, uint32_t (&s0)[4],
                                              uint32_t (&s1)[4]) {
  nib8_to_e4m3(v.x, t, s0[0], s0[1]);
  nib8_to_e4m3(v.y, t, s0[2], s0[3]);
  nib8_to_e4m3(v.z, t, s1[0], s1[1]);
  nib8_to_e4m3(v.w, t, s1[2], s1[3]);
}

// acc += s_row * part over the m64n128 fragment: rows g (elements 0, 1 of each quad) and g + 8
// (elements 2, 3).
__device__ __forceinline__ void promote(float (&acc)[64], const float (&part)[64], float s_lo, float s_hi) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    acc[4 * j + 0] = fmaf(s_lo, part[4 * j + 0], acc[4 * j + 0]);
    acc[4 * j + 1] = fmaf(s_lo, part[4 * j + 1], acc[4 * j + 1]);
    acc[4 * j + 2] = fmaf(s_hi, part[4 * j + 2], acc[4 * j + 2]);
    acc[4 * j + 3] = fmaf(s_hi, part[4 * j + 3], acc[4 * j + 3]);
  }
}

// Persistent: gridDim.x CTAs (one per SM by default) walk the tiles t = blockIdx.x, + gridDim.x, ...;
// tile t = (token tile t / nout, output tile t % nout), so the CTAs running together share a few X
// token tiles in L2 (the token-minor order, sharing weight tiles instead, measured 8-29% slower:
// twenty-third session). The ring position (stage, phase) runs on across a CTA's tiles, so the producer
// fills the next tile's first stages while the consumers run the previous tile's epilogue (the
// non-persistent form paid the ring's fill and the epilogue back to back, once per tile).
// gridDim.x = number of tiles gives one tile per CTA (MOSAIC_W4A8_FP8_CTAS=0, the earlier launch).
template <typename T, bool kI8, int kH>
__global__ void __launch_bounds__(kThreads, 1) w4a8_fp8_gemm_kernel(const __grid_constant__ CUtensorMap xmap,
                                                                     const __grid_constant__ CUtensorMap ymap,
                                                                     const W4A8Fp8Args a, int tma_store) {
  static_assert(kI8 || kH == 1, "the e4m3 consumer runs 128-output tiles only");
  using S = Stage<kH, kI8>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::kStages * S::kBytes);
  uint64_t* empty = full + S::kStages;
  uint32_t* flags = reinterpret_cast<uint32_t*>(empty + S::kStages);  // kept residual slots per stage (16-B aligned)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int KT = a.K / kBK;
  const int nout = a.Npad / S::kOutT, ntiles = nout * ((a.M + kTok - 1) / kTok);

  if (tid == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8);  // one arrive per consumer warp
    }
    flags[8] = kE4m3ALo;  // 16-byte aligned (flags[0..S::kStages) are the stages' residual masks)
    flags[9] = kE4m3AHi;
    flags[10] = kE4m3BLo;
    flags[11] = kE4m3BHi;
    fence_mbarrier_init();
    fence_proxy_async_smem();
  }
  __syncthreads();

  if (wg == 0) {
    // ---- producer: warp 0 only (lanes 0 .. 16 kH - 1 own the residual slots) ----
    // Registers go to the consumers: 128 x 40 + 256 x 232 <= 64K.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp != 0) return;
    const bool res = a.ridx != nullptr;
    const int slot = lane & (S::kSlots - 1);
    uint32_t it = 0;  // this CTA's k-tiles so far, over all its tiles: the ring position
    for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
      const int ot = t % nout, n0 = ot * S::kOutT, m0 = (t / nout) * kTok;
      const int brow = n0 / 16 + (slot >> 1);
      const bool slot_ok = res && lane < S::kSlots && brow < a.N / 16;
      const int32_t* ridx = a.ridx + (slot_ok ? int64_t(brow) * (a.K / 64) + (slot & 1) : 0);
      const uint8_t* wsrc = reinterpret_cast<const uint8_t*>(a.qw) + int64_t(ot) * kH * KT * 8192;
      const float* ssrc = a.sc + n0;
      // The residual block numbers of 4 k-tiles are fetched one chunk (4 k-tiles) ahead.
      int cur[4], nxt[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) cur[j] = slot_ok && j < KT ? __ldg(ridx + 2 * j) : -1;
      for (int kc = 0; kc < KT; kc += 4) {
#pragma unroll
        for (int j = 0; j < 4; ++j) nxt[j] = slot_ok && kc + 4 + j < KT ? __ldg(ridx + 2 * (kc + 4 + j)) : -1;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int kt = kc + j;
          if (kt >= KT) break;
          const uint32_t s = it % S::kStages;
          if (it >= uint32_t(S::kStages)) mbar_wait(&empty[s], ((it / S::kStages) - 1) & 1);
          ++it;
          const int idx = cur[j];
          const uint32_t kept = __ballot_sync(0xffffffffu, idx >= 0) & (S::kSlots == 32 ? 0xffffffffu : 0xffffu);
          uint8_t* st = smem + s * S::kBytes;
          if (lane == 0) {
            flags[s] = kept;
            mbar_expect_tx(&full[s], uint32_t(S::kOffS) + 4u * S::kOutT * a.spt +
                                         (kAblate & 64 ? 0u : uint32_t(S::kSlotBytes + S::kSlotScaleBytes)) * __popc(kept));
            tma_2d(st, &xmap, kt * kBK, m0, &full[s]);
            for (int h = 0; h < kH; ++h)  // one 8 KB k-tile per 128 outputs
              bulk_g2s(st + S::kOffW + 8192 * h, wsrc + (int64_t(h) * KT + kt) * 8192, 8192, &full[s]);
            for (int h = 0; h < a.spt; ++h)
              bulk_g2s(st + S::kOffS + 4 * S::kOutT * h, ssrc + (int64_t(kt) * a.spt + h) * a.Npad, 4 * S::kOutT, &full[s]);
          }
          __syncwarp();
          if (idx >= 0 && !(kAblate & 64)) {
            if constexpr (kI8) {
              bulk_g2s(st + S::kOffRC + S::kSlotBytes * slot, a.rq + int64_t(idx) * (S::kSlotBytes / 4), S::kSlotBytes,
                       &full[s]);
            } else {
              bulk_g2s(st + S::kOffRC + 512 * slot, a.rq + int64_t(idx) * 128, 512, &full[s]);
              bulk_g2s(st + S::kOffRS + 64 * slot, a.rs + int64_t(idx) * 16, 64, &full[s]);
            }
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) cur[j] = nxt[j];
      }
    }
    return;
  }

  // ---- consumers: warpgroup c = wg - 1 owns outputs 64 c .. 64 c + 63 of the tile; warp w of it
  // rows 16 w .. 16 w + 15 (= residual block row 4 c + w) ----
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int c = wg - 1, w = warp & 3, g = lane >> 2, t4 = lane & 3;
  const int brow = 4 * c + w;          // block row within the tile (0..7)
  const int nrow = 64 * c + 16 * w + g;  // this lane's first output row within the tile
  const uint32_t smem_base = smem_u32(smem);
  if constexpr (kI8) {
    consume_int8<T, kH>(a, &ymap, tma_store != 0, smem_base, full, empty, flags, KT, nout, ntiles, c, w, lane);
    return;
  }
  float acc[64], part[64];

  // The A fragments of k-tile kt + 1 are unpacked while k-tile kt's wgmmas run (nf), so the
  // conversion stays off the tensor cores' critical path.
  uint32_t af[4][4], nf[4][4];
  E4m3Tables tab;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(tab.al), "=r"(tab.ah), "=r"(tab.bl), "=r"(tab.bh)
               : "r"(smem_u32(flags + 8)));
  auto unpack = [&](const uint4& v, uint32_t (&s0)[4], uint32_t (&s1)[4]) {
    if constexpr (kAblate & 1) {
      s0[0] = v.x; s0[1] = v.y; s0[2] = v.z; s0[3] = v.w;
      s1[0] = v.y; s1[1] = v.z; s1[2] = v.w; s1[3] = v.x;
    } else {
      unpack_2steps(v, tab, s0, s1);
    }
  };
  // it = the ring position of the k-tile (its stage and phase).
  auto load_a = [&](uint32_t it, uint32_t (&f)[4][4]) {
    const uint32_t s = it % S::kStages;
    mbar_wait(&full[s], (it / S::kStages) & 1);
    const uint32_t wa = smem_base + s * S::kBytes + S::kOffW + (2 * brow * 32 + lane) * 16;
    const uint4 h0 = lds128(wa), h1 = lds128(wa + 512);
    unpack(h0, f[0], f[1]);
    unpack(h1, f[2], f[3]);
  };
  auto mma = [&](const uint32_t (&f)[4], uint64_t desc, int scale_d) {
    if constexpr (!(kAblate & 4)) wgmma_m64n128k32_e4m3(part, f, desc, scale_d);
  };
  auto promote_part = [&](float s_lo, float s_hi) {
    if constexpr (kAblate & 8) {  // acc += part: no scale
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] += part[i];
    } else if constexpr (kAblate & 16) {  // only 8 of the 64 promoted
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = fmaf(i & 2 ? s_hi : s_lo, part[i], acc[i]);
    } else if constexpr (!(kAblate & 2)) {
      promote(acc, part, s_lo, s_hi);
    }
  };
  // One k-tile with fragments cur (already unpacked); unpacks k-tile kt + 1 into nxt meanwhile.
  auto ktile = [&](uint32_t it, int kt, uint32_t (&cur)[4][4], uint32_t (&nxt)[4][4]) {
    const uint32_t s = it % S::kStages;
    const uint32_t xaddr = smem_base + s * S::kBytes;
    const uint32_t sca = xaddr + S::kOffS + 4 * nrow;  // the scales: shared-space loads (not generic LD.E)
    if (a.spt == 1) {
      const float s_lo = lds_f32(sca), s_hi = lds_f32(sca + 32);
      wgmma_fence();
      fence_regs(part);
#pragma unroll
      for (int k = 0; k < 4; ++k) mma(cur[k], desc_sw128(xaddr + 32 * k), k > 0);
      wgmma_commit();
      if (kt + 1 < KT) load_a(it + 1, nxt);
      wgmma_wait<0>();
      keep_live(cur);
      fence_regs(part);
      promote_part(s_lo, s_hi);
    } else {  // group 64: two scale sets per k-tile
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float s_lo = lds_f32(sca + 512 * h), s_hi = lds_f32(sca + 512 * h + 32);
        wgmma_fence();
        fence_regs(part);
        mma(cur[2 * h], desc_sw128(xaddr + 64 * h), 0);
        mma(cur[2 * h + 1], desc_sw128(xaddr + 64 * h + 32), 1);
        wgmma_commit();
        if (h == 0 && kt + 1 < KT) load_a(it + 1, nxt);
        wgmma_wait<0>();
        keep_live(cur);
        fence_regs(part);
        promote_part(s_lo, s_hi);
      }
    }
    // Residual: per block column (64 inputs = 2 k32 steps) that has a kept block in any of the
    // warpgroup's 4 block rows, two more wgmma on the same X tile with the kept blocks' codes (zero
    // for a warp whose block is not kept), promoted with the blocks' own row scales.
    const uint32_t kept = lds32(smem_u32(flags + s));
#pragma unroll
    for (int bc = 0; bc < 2; ++bc) {
      const uint32_t wg_slots = (kept >> (8 * c + bc)) & 0x55u;  // slots 2 (4c + i) + bc, i = 0..3
      if (wg_slots == 0) continue;  // warpgroup-uniform
      const int slot = 2 * brow + bc;
      uint32_t r[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
      float rs_lo = 0.f, rs_hi = 0.f;
      if ((kept >> slot) & 1u) {
        unpack(lds128(xaddr + S::kOffRC + (slot * 32 + lane) * 16), r[0], r[1]);
        rs_lo = lds_f32(xaddr + S::kOffRS + 4 * (16 * slot + g));
        rs_hi = lds_f32(xaddr + S::kOffRS + 4 * (16 * slot + g + 8));
      }
      wgmma_fence();
      fence_regs(part);
      mma(r[0], desc_sw128(xaddr + 64 * bc), 0);
      mma(r[1], desc_sw128(xaddr + 64 * bc + 32), 1);
      wgmma_commit();
      wgmma_wait<0>();
      keep_live(r);
      fence_regs(part);
      promote_part(rs_lo, rs_hi);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  };

  uint32_t it = 0;
  for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
    const int n0 = (t % nout) * S::kOutT, m0 = (t / nout) * kTok;
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    load_a(it, af);
    // Two k-tiles per iteration, the fragment buffers swapping roles (no register copies).
    for (int kt = 0; kt < KT; kt += 2) {
      ktile(it + kt, kt, af, nf);
      if (kt + 1 < KT) ktile(it + kt + 1, kt + 1, nf, af);
    }
    it += KT;
    if constexpr (kAblate & 2) fence_regs(part);

    store_fragment<T>(a, n0 + 64 * c + 16 * w, m0, g, t4, [&](int i) { return acc[i]; });  // Y = s_m * acc
  }
}

int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      fail("w4a8 wgmma gemm: cannot read the GPU's SM count");
    return n;
  }();
  return sms;
}

// CTAs of the persistent launch: MOSAIC_W4A8_FP8_CTAS (0 = one per tile: the non-persistent
// launch, kept for same-binary comparisons), else one per SM.
int fp8_gemm_ctas(int ntiles) {
  static const int ctas = env_int("MOSAIC_W4A8_FP8_CTAS", sm_count(), 0, 1 << 20);
  return ctas <= 0 ? ntiles : std::min(ctas, ntiles);
}

// Outputs per CTA tile of the INT8 kernel: 256 when that still gives at least half a wave of tiles
// (measured, H200, LLaMA-3-8B shapes: 256 outputs 1.2-1.4x faster from M = 1024 on and on gate_up at
// M = 256; 128 faster where 256 leaves most SMs idle, e.g. qkv / o / down at M = 256: 24.5 vs 34.5 us);
// MOSAIC_W4A8_I8_OUT=128|256 forces one (same-binary comparisons).
int int8_wgmma_outputs(const W4A8Fp8Args& a) {
  if (const int o = env_choice("MOSAIC_W4A8_I8_OUT", 0, {128, 256}); o) return o;  // read per launch: tests switch it
  const int64_t tiles256 = int64_t(a.Npad / 256) * ((a.M + kTok - 1) / kTok);
  return 2 * tiles256 >= sm_count() ? 256 : 128;
}

// The INT8 kernel's epilogue through shared memory and TMA stores (default), or MOSAIC_W4A8_TMA_STORE=0:
// every lane stores its outputs (same values; the fallback for rows not 16-byte aligned). Read per
// launch: the tests run both.
bool int8_tma_store_enabled() { return env_switch_on("MOSAIC_W4A8_TMA_STORE"); }

template <typename T, bool kI8, int kH>
void launch_fp8_t(const W4A8Fp8Args& a, cudaStream_t stream) {
  using S = Stage<kH, kI8>;
  static const bool attr = [] {
    return cudaFuncSetAttribute(w4a8_fp8_gemm_kernel<T, kI8, kH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                S::kSmem) == cudaSuccess;
  }();
  if (!attr) fail("w4a8 wgmma gemm: cannot set ", S::kSmem, " bytes of dynamic shared memory");
  if (a.Npad % S::kOutT != 0) fail("w4a8 wgmma gemm: Npad=", a.Npad, " is not a multiple of the ", S::kOutT, "-output tile");
  // X codes [M, K] uint8 as a 2D tensor (K inner), 128 x 128 boxes, 128-byte swizzle; rows past M
  // read as zeros.
  CUtensorMap map;
  const cuuint64_t dims[2] = {cuuint64_t(a.K), cuuint64_t(a.M)};
  const cuuint64_t strides[1] = {cuuint64_t(a.K)};
  const cuuint32_t box[2] = {kBK, kTok};
  const cuuint32_t estr[2] = {1, 1};
  const auto encode = encode_tiled_fn("w4a8 fp8 gemm");
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(a.xq), dims, strides, box,
                            estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) fail("w4a8 fp8 gemm: cuTensorMapEncodeTiled failed (", int(r), ") for [M=", a.M, ", K=", a.K, "]");
  // Y [M, N] as the INT8 epilogue's TMA store target: 64 x 128 boxes (outputs x tokens), 128-byte swizzle.
  // Needs 16-byte aligned rows (N % 8 == 0) and base; else (or MOSAIC_W4A8_TMA_STORE=0) the lanes store.
  CUtensorMap ymap{};
  const bool tma_store = kI8 && int8_tma_store_enabled() && a.N % 8 == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0;
  if (tma_store) {
    const cuuint64_t ydims[2] = {cuuint64_t(a.N), cuuint64_t(a.M)};
    const cuuint64_t ystrides[1] = {cuuint64_t(a.N) * 2};
    const cuuint32_t ybox[2] = {64, kTok};
    const CUresult ry = encode(&ymap, std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                               2, a.y, ydims, ystrides, ybox, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (ry != CUDA_SUCCESS) fail("w4a8 int8 gemm: cuTensorMapEncodeTiled failed (", int(ry), ") for Y [M=", a.M, ", N=", a.N, "]");
  }
  const int ntiles = (a.Npad / S::kOutT) * ((a.M + kTok - 1) / kTok);
  const unsigned ctas = unsigned(fp8_gemm_ctas(ntiles));
  w4a8_fp8_gemm_kernel<T, kI8, kH><<<ctas, kThreads, S::kSmem, stream>>>(map, ymap, a, tma_store ? 1 : 0);
  check_launch("w4a8_fp8_gemm_kernel");
}

}  // namespace

void launch_fp8_quantize(const void* X, bool bf16, int64_t M, int64_t K, uint8_t* codes, float* scales,
                         cudaStream_t stream) {
  const dim3 grid{unsigned(M)};
  if (bf16)
    rowquant_kernel<__nv_bfloat16, Fp8Codec>
        <<<grid, kQuantThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(X), int(K), codes, scales);
  else
    rowquant_kernel<__half, Fp8Codec><<<grid, kQuantThreads, 0, stream>>>(static_cast<const __half*>(X), int(K), codes, scales);
  check_launch("FP8 activation quantization (rowquant_kernel)");
}

void launch_w4a8_fp8_gemm(const W4A8Fp8Args& a, bool bf16, cudaStream_t stream) {
  if (a.spt != 1 && a.spt != 2) fail("w4a8 fp8 gemm: scale sets per k-tile must be 1 or 2, got ", a.spt);
  if (!a.cs)
    bf16 ? launch_fp8_t<__nv_bfloat16, false, 1>(a, stream) : launch_fp8_t<__half, false, 1>(a, stream);
  else if (int8_wgmma_outputs(a) == 128)
    bf16 ? launch_fp8_t<__nv_bfloat16, true, 1>(a, stream) : launch_fp8_t<__half, true, 1>(a, stream);
  else
    bf16 ? launch_fp8_t<__nv_bfloat16, true, 2>(a, stream) : launch_fp8_t<__half, true, 2>(a, stream);
}

}  // namespace mosaic::cuda::detail
