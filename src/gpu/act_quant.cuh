// Device side of the per-token activation quantization (rule: act_quant.h): one CTA quantizes one
// row. Shared by the stand-alone kernel (act_quant.cu) and the producers that fuse it into their
// epilogue (RMSNorm, SiLU-mul in kernels.cu), so every path makes the same codes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

namespace mosaic::gpu::kern::aq {

__device__ __forceinline__ float load_f(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// The CPU's round_e4m3 (model/act_quant_linear.cpp): nearest e4m3fn value, ties to even,
// subnormal spacing 2^-9 below 2^-6, saturating at 448.
__device__ __forceinline__ float round_e4m3(float v) {
  const float a = fabsf(v);
  if (!(a > 0.f)) return v;
  if (a >= 448.f) return copysignf(448.f, v);
  int e;
  frexpf(a, &e);
  const int E = max(e - 1, -6);
  const float step = ldexpf(1.f, E - 3);
  const float q = __fmul_rn(rintf(__fdiv_rn(a, step)), step);
  return copysignf(fminf(q, 448.f), v);
}

// dst[0..K) = s * code(src[k] / s), s = max|src| / top, by all threads of the CTA (blockDim a
// multiple of 32, at most 1024; every thread must call it). src may equal dst; values another thread
// of this CTA wrote to src must be visible (a __syncthreads() before the call). A zero row is copied;
// a row whose max is inf, and NaN elements, pass through unchanged (the CPU stops with an error there).
template <typename T>
__device__ void quantize_row(const T* src, T* dst, int64_t K, float top, bool fp8) {
  __shared__ float warp_max[32];
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_f(src, k)));  // skips NaN
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int nw = int(blockDim.x >> 5);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < nw; ++w) amax = fmaxf(amax, warp_max[w]);
  __syncthreads();  // warp_max may be reused by the caller's next row
  if (amax == 0.f || !(amax <= FLT_MAX)) {
    if (src != dst)
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dst[k] = src[k];
    return;
  }
  const float s = __fdiv_rn(amax, top);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float x = load_f(src, k);
    if (!(fabsf(x) <= FLT_MAX)) {  // NaN: passed through, never clamped to a code
      store_f(dst, k, x);
      continue;
    }
    const float v = __fdiv_rn(x, s);
    const float q = fp8 ? round_e4m3(v) : fminf(fmaxf(roundf(v), -top), top);  // roundf: half away from zero
    store_f(dst, k, __fmul_rn(s, q));
  }
}

}  // namespace mosaic::gpu::kern::aq
