// Per-token activation quantization of the GPU engine (contract in act_quant.h). One CTA per row:
// a max|x| reduction, then every element through the code. Divisions and products are IEEE
// round-to-nearest (__fdiv_rn / __fmul_rn) so the codes are those of the CPU reference, whatever
// the compile flags.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "gpu/act_quant.h"
#include "util/error.h"

namespace mosaic::gpu::kern {

namespace {

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

constexpr int kThreads = 256;

template <typename T, bool FP8>
__global__ void __launch_bounds__(kThreads) act_fake_quant_k(const T* X, T* Y, int64_t K, float top) {
  const int64_t r = blockIdx.x;
  const T* x = X + r * K;
  T* y = Y + r * K;
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) amax = fmaxf(amax, fabsf(load_f(x, k)));
  // fmaxf skips NaN: a NaN element is passed through below, the rest of its row quantized.
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  __shared__ float warp_max[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < kThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  if (amax == 0.f || !(amax <= FLT_MAX)) {  // zero row: stays zero; inf row: left as it is
    if (X != Y)
      for (int64_t k = threadIdx.x; k < K; k += kThreads) y[k] = x[k];
    return;
  }
  const float s = __fdiv_rn(amax, top);
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const float xv = load_f(x, k);
    if (!(fabsf(xv) <= FLT_MAX)) {  // NaN (the max skipped it): passed through, never clamped to a code
      store_f(y, k, xv);
      continue;
    }
    const float v = __fdiv_rn(xv, s);
    const float q = FP8 ? round_e4m3(v) : fminf(fmaxf(roundf(v), -top), top);  // roundf: half away from zero
    store_f(y, k, __fmul_rn(s, q));
  }
}

}  // namespace

void act_fake_quant(Act a, const void* X, void* Y, int64_t rows, int64_t K, int bits, bool fp8, cudaStream_t s) {
  MOSAIC_CHECK(K > 0 && rows >= 0 && rows < (int64_t(1) << 31), "act_fake_quant: bad shape [", rows, ", ", K, "]");
  MOSAIC_CHECK(fp8 ? bits == 8 : (bits >= 2 && bits <= 8), "act_fake_quant: ", bits, " bits", fp8 ? " (FP8 needs 8)" : "");
  if (rows == 0) return;
  const float top = fp8 ? 448.f : float((1 << (bits - 1)) - 1);
  const dim3 grid(static_cast<unsigned>(rows));
  if (a == Act::BF16) {
    auto* x = static_cast<const __nv_bfloat16*>(X);
    auto* y = static_cast<__nv_bfloat16*>(Y);
    if (fp8) act_fake_quant_k<__nv_bfloat16, true><<<grid, kThreads, 0, s>>>(x, y, K, top);
    else act_fake_quant_k<__nv_bfloat16, false><<<grid, kThreads, 0, s>>>(x, y, K, top);
  } else {
    auto* x = static_cast<const __half*>(X);
    auto* y = static_cast<__half*>(Y);
    if (fp8) act_fake_quant_k<__half, true><<<grid, kThreads, 0, s>>>(x, y, K, top);
    else act_fake_quant_k<__half, false><<<grid, kThreads, 0, s>>>(x, y, K, top);
  }
}

}  // namespace mosaic::gpu::kern
