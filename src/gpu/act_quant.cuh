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

// The largest |value| of the CTA's row (NaN skipped, as fmaxf does), from each thread's partial
// max; every thread of the CTA must call it and gets the result. blockDim a multiple of 32, <= 1024.
__device__ __forceinline__ float block_max(float amax) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int nw = int(blockDim.x >> 5);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < nw; ++w) amax = fmaxf(amax, warp_max[w]);
  __syncthreads();  // warp_max may be reused by the caller's next row
  return amax;
}

// One value through the rule, given the row's scale s. NaN passes through, never clamped to a code.
__device__ __forceinline__ float quantize_value(float x, float s, float top, bool fp8) {
  if (!(fabsf(x) <= FLT_MAX)) return x;
  const float v = __fdiv_rn(x, s);
  const float q = fp8 ? round_e4m3(v) : fminf(fmaxf(roundf(v), -top), top);  // roundf: half away from zero
  return __fmul_rn(s, q);
}

// A zero row, and a row whose max is inf, are left as they are (the CPU stops with an error there).
__device__ __forceinline__ bool row_passes_through(float amax) { return amax == 0.f || !(amax <= FLT_MAX); }

// dst[0..K) = s * code(src[k] / s), s = max|src| / top, by all threads of the CTA (blockDim a
// multiple of 32, at most 1024; every thread must call it). src may equal dst; values another thread
// of this CTA wrote to src must be visible (a __syncthreads() before the call). A zero row is copied;
// a row whose max is inf, and NaN elements, pass through unchanged. The general form (any K): it
// reads the row twice from memory; the producers use quantize_held below.
template <typename T>
__device__ void quantize_row(const T* src, T* dst, int64_t K, float top, bool fp8) {
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_f(src, k)));
  amax = block_max(amax);
  if (row_passes_through(amax)) {
    if (src != dst)
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) dst[k] = src[k];
    return;
  }
  const float s = __fdiv_rn(amax, top);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) store_f(dst, k, quantize_value(load_f(src, k), s, top, fp8));
}

// The same rule on a row the CTA holds in registers: thread t holds elements k = t + j blockDim.x
// (j < PER, valid while k < K), already rounded to the activation type (so the codes are those of
// quantize_row on the stored row). Replaces each held value by s * code. One pass over memory
// instead of three: the producers' rows at decode are a few CTAs, latency-bound on every pass.
template <int PER>
__device__ void quantize_held(float (&v)[PER], int64_t K, float top, bool fp8) {
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < PER; ++j)
    if (threadIdx.x + int64_t(j) * blockDim.x < K) amax = fmaxf(amax, fabsf(v[j]));
  amax = block_max(amax);
  if (row_passes_through(amax)) return;
  const float s = __fdiv_rn(amax, top);
#pragma unroll
  for (int j = 0; j < PER; ++j) v[j] = quantize_value(v[j], s, top, fp8);
}

// The held row's only store: element k = t + j blockDim.x to dst[k] (as the activation type).
template <typename T, int PER>
__device__ __forceinline__ void store_held(const float (&v)[PER], T* dst, int64_t K) {
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
    if (k < K) store_f(dst, k, v[j]);
  }
}

// Elements per thread for a held row of K with `threads` threads: 8 or 16 (at 1024 threads 16 fits
// the 64 registers a thread may have without spilling; 32 spilled), 0 = too long to hold (use
// quantize_row): with 1024 threads, rows up to 16384 (every norm; the MLP of the 8B configs).
inline int held_per_thread(int64_t K, int threads) {
  return K <= 8 * int64_t(threads) ? 8 : K <= 16 * int64_t(threads) ? 16 : 0;
}

}  // namespace mosaic::gpu::kern::aq
