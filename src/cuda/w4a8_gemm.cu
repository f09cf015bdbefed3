// W4A8 ZipperEngine kernels (sm_90, mma.sync INT8): per-token INT8 activation quantization and
// the fused GEMM Y = (s_m x_codes) (deq(base) + deq(residual))^T. Design: docs/kernels.md
// "W4A8 GEMM (prefill)"; layout: w4a8_layout.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/act_rowquant.cuh"
#include "cuda/w4a8_launch.h"
#include "cuda/zipper_device.cuh"
#include "util/error.h"

namespace mosaic::cuda::detail {
namespace {

// ---- activation quantization: rowquant_kernel (act_rowquant.cuh) with the INT8 rule ----------
// code = clamp(roundf(x / s), -127, 127) with s = max|x| / 127: IEEE division and roundf (ties away
// from zero) as in the CPU rule, so the codes are bit-identical to fake_quantize_rows' (tests/cuda/
// test_w4a8_gpu.cpp checks it).
struct Int8Codec {
  static constexpr float kMax = 127.f;
  __device__ static uint2 encode8(const float (&f)[8], float s, float amax) {
    uint32_t p[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float q = amax == 0.f ? 0.f : fminf(fmaxf(roundf(__fdiv_rn(f[i], s)), -127.f), 127.f);
      p[i / 4] |= (uint32_t(int(q)) & 0xffu) << (8 * (i % 4));
    }
    return make_uint2(p[0], p[1]);
  }
};

// ---- the GEMM ----------------------------------------------------------------------------------
constexpr int kBM = 128, kBN = 128, kBK = 128, kStages = 4;
// Stage layout (bytes): X codes 128 x 128 (16-byte chunks XOR-swizzled by row), base codes of the
// 16 n8 tiles (512 B each), scales (spt x 128 fp32), residual: 16 slots (8 block rows x 2 block
// columns of the tile) of 512 B codes, 16 fp32 scales each, and one kept flag per slot.
constexpr int kOffW = kBM * kBK;              // 16384
constexpr int kOffS = kOffW + kBN / 8 * 512;  // 24576
constexpr int kOffRC = kOffS + 2 * kBN * 4;   // 25600
constexpr int kOffRS = kOffRC + 16 * 512;     // 33792
constexpr int kOffRF = kOffRS + 16 * 64;      // 34816
template <bool RES>
constexpr int stage_bytes() {
  return RES ? kOffRF + 128 : kOffRC;
}
constexpr uint32_t kMagic = 0x4B400000u;  // 1.5 * 2^23: int32 0x4B400000 + v is the float 12582912 + v
constexpr float kMagicF = 12582912.f;     // for |v| < 2^22

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}

// D = A * B + C, 16x8x32, s8 x s8 -> s32.
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                       const int (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}

// acc += scale * v for the 4 sums of an m16n8 tile (v = int32 sum held as magic + v).
__device__ __forceinline__ void fold(float (&acc)[4], const int (&v)[4], float2 sc) {
  acc[0] = fmaf(sc.x, __int_as_float(v[0]) - kMagicF, acc[0]);
  acc[1] = fmaf(sc.y, __int_as_float(v[1]) - kMagicF, acc[1]);
  acc[2] = fmaf(sc.x, __int_as_float(v[2]) - kMagicF, acc[2]);
  acc[3] = fmaf(sc.y, __int_as_float(v[3]) - kMagicF, acc[3]);
}

// grid (ceil(M/128), ceil(N/128)), W = 8 or 16 warps (MT = 4 or 2 m16 tiles per warp): warp
// (wm, wn) = rows 16 MT wm .. +16 MT - 1, outputs 32 wn .. +31 of the CTA tile (MT m16 x 4 n8 MMA
// tiles). Per k-tile of 128 inputs: INT32 sums per scale group (4 k32 steps for group >= 128, 2 for
// group 64), folded into fp32 with the group's scale; a kept residual block of the warp's outputs
// (16 x 64) reuses the same X fragments (registers) and the same fp32 accumulators with its own
// INT32 sums and scales. Epilogue: times s_m, to T.
template <typename T, int SPT, bool RES, int MT>
__global__ void __launch_bounds__(32 * 8 * 4 / MT, 1) w4a8_gemm_kernel(const W4A8Args a) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int NT = 32 * 8 * 4 / MT;  // threads
  constexpr int SB = stage_bytes<RES>();
  constexpr int GS = 4 / SPT;  // k32 steps per INT32 sum
  constexpr int JB = 4 / MT;   // n8 tiles whose INT32 sums are in flight together (4 MMA chains)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int KT = a.K / kBK, nt8 = a.N / 8;

  // Loader addresses, computed once (per k-tile only + kt * stride): X chunks (row tid / 8 +
  // (NT / 8) i, 16-byte column tid % 8, XOR-swizzled by row % 8 = (tid / 8) % 8 for every i); base
  // codes of n8 tiles tid / 32 + (NT / 32) i (lane's 16 bytes); scales (tid < 32 spt).
  constexpr int AI = 1024 / NT, WI = 512 / NT;
  const int arow_ld = tid >> 3, ach = tid & 7;
  const int8_t* a_src[AI];
  bool a_ok[AI];
#pragma unroll
  for (int i = 0; i < AI; ++i) {
    const int m = m0 + arow_ld + (NT / 8) * i;
    a_ok[i] = m < a.M;
    a_src[i] = a.xq + int64_t(a_ok[i] ? m : 0) * a.K + ach * 16;
  }
  const uint32_t a_dst = uint32_t(arow_ld * 128 + ((ach ^ (arow_ld & 7)) << 4));
  const uint32_t* w_src[WI];
  bool w_ok[WI];
#pragma unroll
  for (int i = 0; i < WI; ++i) {
    const int n8 = n0 / 8 + (tid >> 5) + (NT / 32) * i;
    w_ok[i] = n8 < nt8;
    w_src[i] = a.qw + (int64_t(w_ok[i] ? n8 : 0) * KT * 32 + lane) * 4;
  }
  const bool s_ok = tid < SPT * 32 && n0 + 4 * (tid & 31) < a.N;
  const float* s_src = a.sc + int64_t(tid >> 5 < SPT ? tid >> 5 : 0) * a.N + (s_ok ? n0 + 4 * (tid & 31) : 0);

  // Residual loader: 16 slots (8 block rows x 2 block-column halves of the tile), NT / 16 threads
  // per slot copying its 32 code chunks (+ 4 scale chunks). The block index of the next k-tile is
  // fetched one k-tile ahead so its latency hides behind a k-tile of MMAs.
  constexpr int RPT = NT / 16;  // threads per slot
  const int rslot = tid / RPT, rsub = tid % RPT;
  const int rrow = n0 / 16 + (rslot >> 1);
  const bool rrow_ok = RES && rrow < a.N / 16;
  const int32_t* ridx = RES ? a.ridx + int64_t(rrow_ok ? rrow : 0) * (a.K / 64) + (rslot & 1) : nullptr;
  int ridx_next = rrow_ok ? __ldg(ridx) : -1;

  auto load_tile = [&](int kt, int st) {
    uint8_t* s = smem + st * SB;
#pragma unroll
    for (int i = 0; i < AI; ++i) cp_async16_zfill(s + a_dst + NT * 16 * i, a_src[i] + kt * kBK, a_ok[i]);
#pragma unroll
    for (int i = 0; i < WI; ++i)
      cp_async16_zfill(s + kOffW + (tid >> 5) * 512 + NT * 16 * i + lane * 16, w_src[i] + kt * 128, w_ok[i]);
    if (tid < SPT * 32) cp_async16_zfill(s + kOffS + tid * 16, s_src + int64_t(kt) * SPT * a.N, s_ok);
    if constexpr (RES) {
      const int idx = ridx_next;
      if (rrow_ok && kt + 1 < KT) ridx_next = __ldg(ridx + 2 * (kt + 1));
      if (idx >= 0) {
        const uint8_t* src = reinterpret_cast<const uint8_t*>(a.rq) + int64_t(idx) * 512;
        uint8_t* dst = s + kOffRC + rslot * 512;
#pragma unroll
        for (int c = 0; c < 32 / RPT; ++c) cp_async16(dst + (rsub + RPT * c) * 16, src + (rsub + RPT * c) * 16);
        if (rsub < 4) cp_async16(s + kOffRS + rslot * 64 + rsub * 16, a.rs + int64_t(idx) * 16 + rsub * 4);
      }
      if (rsub == 0) reinterpret_cast<int*>(s + kOffRF)[rslot] = idx >= 0;
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) load_tile(s, s);
    cp_async_commit();
  }

  float acc[MT][4][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  const int magic[4] = {int(kMagic), int(kMagic), int(kMagic), int(kMagic)};
  const int t4 = lane & 3, asel = lane >> 4, aswz = lane & 7;
  const int arow = 16 * MT * wm + (lane & 15);

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kStages - 1;
      if (nk < KT) load_tile(nk, nk % kStages);
      cp_async_commit();
    }
    const uint8_t* s = smem + (kt % kStages) * SB;
    // The warp's X fragments of the whole k-tile (4 k32 steps x MT m16 tiles) stay in registers:
    // the base of every n8 tile and the residual blocks use them without reloading.
    uint32_t af[4][MT][4];
#pragma unroll
    for (int st = 0; st < 4; ++st)
#pragma unroll
      for (int i = 0; i < MT; ++i)
        ldmatrix_x4(af[st][i], s + (arow + 16 * i) * 128 + (((2 * st + asel) ^ aswz) << 4));
    // JB n8 tiles at a time: their INT32 sums live only over one group, so one batch's folds
    // overlap the next batch's MMAs.
#pragma unroll
    for (int j0 = 0; j0 < 4; j0 += JB) {
      uint4 wv[JB];
      float2 sc[JB][SPT];
#pragma unroll
      for (int jj = 0; jj < JB; ++jj) {
        wv[jj] = *reinterpret_cast<const uint4*>(s + kOffW + (4 * wn + j0 + jj) * 512 + lane * 16);
#pragma unroll
        for (int h = 0; h < SPT; ++h)
          sc[jj][h] = *reinterpret_cast<const float2*>(s + kOffS + h * 512 + (32 * wn + 8 * (j0 + jj) + 2 * t4) * 4);
      }
      int ai[JB][MT][4];
#pragma unroll
      for (int st = 0; st < 4; ++st) {
#pragma unroll
        for (int jj = 0; jj < JB; ++jj) {
          const uint32_t w = st == 0 ? wv[jj].x : st == 1 ? wv[jj].y : st == 2 ? wv[jj].z : wv[jj].w;
          const uint32_t b0 = w & 0xF0F0F0F0u, b1 = (w << 4) & 0xF0F0F0F0u;
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            if (st % GS == 0)
              mma_s8(ai[jj][i], af[st][i], b0, b1, magic);
            else
              mma_s8(ai[jj][i], af[st][i], b0, b1, ai[jj][i]);
          }
        }
        if (st % GS == GS - 1) {
#pragma unroll
          for (int jj = 0; jj < JB; ++jj)
#pragma unroll
            for (int i = 0; i < MT; ++i) fold(acc[i][j0 + jj], ai[jj][i], sc[jj][st / GS]);
        }
      }
    }
    if constexpr (RES) {
      // Kept blocks of this warp's 2 block rows x 2 block columns (slots 4 wn + 2 b + half).
      const int4 fl = *reinterpret_cast<const int4*>(s + kOffRF + 16 * wn);
      const int flags[4] = {fl.x, fl.y, fl.z, fl.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (!flags[q]) continue;  // warp-uniform
        const int slot = 4 * wn + q, b = q >> 1, hh = q & 1;
        const uint4 rw = *reinterpret_cast<const uint4*>(s + kOffRC + slot * 512 + lane * 16);
        const float2 rsa = *reinterpret_cast<const float2*>(s + kOffRS + slot * 64 + 2 * t4 * 4);
        const float2 rsb = *reinterpret_cast<const float2*>(s + kOffRS + slot * 64 + (8 + 2 * t4) * 4);
        const uint32_t a0lo = rw.x & 0xF0F0F0F0u, a0hi = (rw.x << 4) & 0xF0F0F0F0u;
        const uint32_t a1lo = rw.y & 0xF0F0F0F0u, a1hi = (rw.y << 4) & 0xF0F0F0F0u;
        const uint32_t b0lo = rw.z & 0xF0F0F0F0u, b0hi = (rw.z << 4) & 0xF0F0F0F0u;
        const uint32_t b1lo = rw.w & 0xF0F0F0F0u, b1hi = (rw.w << 4) & 0xF0F0F0F0u;
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          int ra[4], rb[4];
          mma_s8(ra, af[2 * hh][i], a0lo, a0hi, magic);  // k32 step 2 hh
          mma_s8(rb, af[2 * hh][i], b0lo, b0hi, magic);
          mma_s8(ra, af[2 * hh + 1][i], a1lo, a1hi, ra);  // k32 step 2 hh + 1
          mma_s8(rb, af[2 * hh + 1][i], b1lo, b1hi, rb);
          fold(acc[i][2 * b], ra, rsa);
          fold(acc[i][2 * b + 1], rb, rsb);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: Y[m, n] = s_m * acc (fp32) -> T.
  const int g = lane >> 2;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int r0 = m0 + 16 * MT * wm + 16 * i + g, r1 = r0 + 8;
    const float s0 = r0 < a.M ? a.xs[r0] : 0.f, s1 = r1 < a.M ? a.xs[r1] : 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + 32 * wn + 8 * j + 2 * t4;
      if (col >= a.N) continue;
      T* y = static_cast<T*>(a.y);
      if (r0 < a.M)
        *reinterpret_cast<uint32_t*>(y + int64_t(r0) * a.N + col) = pack_out<T>(acc[i][j][0] * s0, acc[i][j][1] * s0);
      if (r1 < a.M)
        *reinterpret_cast<uint32_t*>(y + int64_t(r1) * a.N + col) = pack_out<T>(acc[i][j][2] * s1, acc[i][j][3] * s1);
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA error launching ", what, ": ", cudaGetErrorString(e));
}

template <typename T, int SPT, bool RES, int MT>
void launch_gemm_t(const W4A8Args& a, cudaStream_t stream) {
  constexpr int smem = kStages * stage_bytes<RES>();
  static const bool attr = [] {
    return cudaFuncSetAttribute(w4a8_gemm_kernel<T, SPT, RES, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                smem) == cudaSuccess;
  }();
  if (!attr) fail("w4a8 gemm: cannot set ", smem, " bytes of dynamic shared memory");
  const dim3 grid((a.M + kBM - 1) / kBM, (a.N + kBN - 1) / kBN);
  w4a8_gemm_kernel<T, SPT, RES, MT><<<grid, 32 * 8 * 4 / MT, smem, stream>>>(a);
  check_launch("w4a8_gemm_kernel");
}

template <typename T, int MT>
void launch_gemm_mt(const W4A8Args& a, int spt, bool res, cudaStream_t stream) {
  if (spt == 1)
    res ? launch_gemm_t<T, 1, true, MT>(a, stream) : launch_gemm_t<T, 1, false, MT>(a, stream);
  else
    res ? launch_gemm_t<T, 2, true, MT>(a, stream) : launch_gemm_t<T, 2, false, MT>(a, stream);
}

}  // namespace

void launch_w4a8_quantize(const void* X, bool bf16, int64_t M, int64_t K, int8_t* codes, float* scales,
                          cudaStream_t stream) {
  const dim3 grid{unsigned(M)};  // M <= 2^24 (checked by the callers)
  if (bf16)
    rowquant_kernel<__nv_bfloat16, Int8Codec><<<grid, kQuantThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(X), int(K), reinterpret_cast<uint8_t*>(codes), scales);
  else
    rowquant_kernel<__half, Int8Codec><<<grid, kQuantThreads, 0, stream>>>(
        static_cast<const __half*>(X), int(K), reinterpret_cast<uint8_t*>(codes), scales);
  check_launch("INT8 activation quantization (rowquant_kernel)");
}

void launch_w4a8_gemm(const W4A8Args& a, bool bf16, int spt, bool res, int warps, cudaStream_t stream) {
  if (spt != 1 && spt != 2) fail("w4a8 gemm: scale sets per k-tile must be 1 or 2, got ", spt);
  if (warps != 8 && warps != 16) fail("w4a8 gemm: 8 or 16 warps per CTA, got ", warps);
  if (bf16)
    warps == 8 ? launch_gemm_mt<__nv_bfloat16, 4>(a, spt, res, stream) : launch_gemm_mt<__nv_bfloat16, 2>(a, spt, res, stream);
  else
    warps == 8 ? launch_gemm_mt<__half, 4>(a, spt, res, stream) : launch_gemm_mt<__half, 2>(a, spt, res, stream);
}

}  // namespace mosaic::cuda::detail
