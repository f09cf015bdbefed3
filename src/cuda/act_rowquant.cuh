// Per-token (per-row) activation quantization of the W4A8 kernels (w4a8_gemm.cu: INT8,
// w4a8_fp8_gemm.cu: FP8 e4m3): one CTA of kQuantThreads per row, 16-byte loads; the row is read
// twice (max, then codes: the second read hits L1; a row is at most 28 KB for LLaMA-3-8B's
// down_proj). A CTA per row (not a warp) so that a few hundred rows still fill the GPU. Each codec
// maps x / s to its codes as the CPU rules in src/model/act_quant_linear.cpp do (IEEE division;
// the GPU tests check the codes bit for bit).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace mosaic::cuda::detail {

inline constexpr int kQuantThreads = 256;

// 8 fp16 / bf16 values of a 16-byte load -> fp32.
template <typename T>
__device__ __forceinline__ void to_float8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 p;
    if constexpr (std::is_same<T, __half>::value)
      p = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    else
      p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// max |x| over one row of `chunks` 16-byte pieces, by the kQuantThreads threads of the CTA (every
// thread returns it). warp_max: kQuantThreads / 32 floats of shared memory.
template <typename T>
__device__ __forceinline__ float row_absmax(const uint4* x, int chunks, float* warp_max) {
  const int tid = threadIdx.x, lane = tid & 31;
  float amax = 0.f;
  for (int c = tid; c < chunks; c += kQuantThreads) {
    float f[8];
    to_float8<T>(x[c], f);
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (lane == 0) warp_max[tid >> 5] = amax;
  __syncthreads();
  amax = warp_max[0];
#pragma unroll
  for (int w = 1; w < kQuantThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  return amax;
}

// s = max|x| / Codec::kMax per row (0 for a zero row, whose codes are 0), 8 codes of one byte per
// 16-byte load by Codec::encode8(f, s, amax).
template <typename T, typename Codec>
__global__ void __launch_bounds__(kQuantThreads) rowquant_kernel(const T* __restrict__ X, int K,
                                                                 uint8_t* __restrict__ codes,
                                                                 float* __restrict__ scales) {
  __shared__ float warp_max[kQuantThreads / 32];
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const uint4* x = reinterpret_cast<const uint4*>(X + row * K);
  const int chunks = K / 8;
  const float amax = row_absmax<T>(x, chunks, warp_max);
  const float s = __fdiv_rn(amax, Codec::kMax);
  if (tid == 0) scales[row] = s;
  uint2* out = reinterpret_cast<uint2*>(codes + row * K);
  for (int c = tid; c < chunks; c += kQuantThreads) {
    float f[8];
    to_float8<T>(x[c], f);
    out[c] = Codec::encode8(f, s, amax);
  }
}

}  // namespace mosaic::cuda::detail
