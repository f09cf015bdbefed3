// Device helpers shared by the GPU engine's kernel files (kernels.cu, decode_attention.cu): FP16 /
// BF16 <-> FP32, warp and block reductions, the q/k norm + RoPE of one token's heads in shared
// memory, programmatic dependent launch, and the dispatch on Act. Internal linkage: each .cu file
// gets its own copy.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/pdl.cuh"
#include "gpu/kernels.h"

namespace mosaic::gpu::kern {
namespace {


__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Warp and block reductions (xor butterfly: every lane / thread gets the result). One template for
// the three block reductions: the PTX of all 30 kernels of kernels.cu is identical up to the names
// of their shared scratch (checked with scripts/ptx_compare.py after the change).
struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp{}); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, MaxOp{}); }
__device__ __forceinline__ double warp_sum_d(double v) { return warp_reduce(v, SumOp{}); }

// Block-wide: blockDim a multiple of 32, <= 1024; `identity` fills the slots of absent warps.
// One instantiation (and its shared scratch) per (value type, operation), as before.
template <typename V, typename Op>
__device__ V block_reduce(V v, V identity, Op op) {
  __shared__ V sh[32];
  __shared__ V total;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    V x = lane < int(blockDim.x >> 5) ? sh[lane] : identity;
    x = warp_reduce(x, op);
    if (lane == 0) total = x;
  }
  __syncthreads();
  return total;
}
__device__ float block_sum(float v) { return block_reduce(v, 0.f, SumOp{}); }
__device__ float block_max(float v) { return block_reduce(v, -INFINITY, MaxOp{}); }
__device__ double block_sum_d(double v) { return block_reduce(v, 0.0, SumOp{}); }

// Programmatic dependent launch (PDL, cuda/pdl.cuh): kernels launched with launch_pdl may start
// while the previous kernel of the stream is finishing; pdl_wait() blocks until it has completed
// and its writes are visible, and right after it each kernel lets the next one start
// (pdl_launch_dependents: the next GEMM prefetches its weights during this kernel).
using cuda::pdl_launch_dependents;
using cuda::pdl_wait;

// ---- q/k norm + RoPE ---------------------------------------------------------------------------------
// Block-wide, on the heads of one token staged in shared memory (fp32, hd floats per row): rows
// [0, nq) are query heads (RMSNorm with q_norm when given), [nq, nq + nk) key heads (k_norm),
// then RoPE at `pos` on all nq + nk rows (angle = float(pos) * inv_freq[i] in fp32, cos/sin in
// fp64, rotate-half pairs: as the CPU RopeTable). cs: hd floats of shared scratch. Used by the
// prefill append (qkv_rope_cache_k) and the decode attention, which applies it on the fly.
// The cos / sin table of `pos` (cs[i] = cos, cs[half + i] = sin): it depends only on pos, so the
// decode attention builds it before its pdl_wait (the fp64 sincos is a long dependent chain).
__device__ void rope_table(int hd, int64_t pos, const float* inv_freq, float* cs) {
  const int half = hd / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sd, cd;
    sincos(double(float(pos) * inv_freq[i]), &sd, &cd);
    cs[i] = float(cd);
    cs[half + i] = float(sd);
  }
}
// The norm + RoPE given the table (written by rope_table before a block barrier).
__device__ void norm_rope_apply(float* rows, int nq, int nk, int hd, const float* q_norm, const float* k_norm,
                                float eps, const float* cs) {
  const int half = hd / 2;
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int r = threadIdx.x >> 5; r < nq + nk; r += nw) {  // one warp per row
    const float* w = r < nq ? q_norm : k_norm;
    if (!w) continue;
    float* x = rows + r * hd;
    float ss = 0.f;
    for (int i = lane; i < hd; i += 32) ss += x[i] * x[i];
    const float rs = rsqrtf(warp_sum(ss) / float(hd) + eps);
    for (int i = lane; i < hd; i += 32) x[i] = x[i] * rs * w[i];
  }
  __syncthreads();
  for (int k = threadIdx.x; k < (nq + nk) * half; k += blockDim.x) {
    float* x = rows + (k / half) * hd;
    const int i = k % half;
    const float a = x[i], b = x[i + half], c = cs[i], s = cs[half + i];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
  __syncthreads();
}
__device__ void norm_rope_rows(float* rows, int nq, int nk, int hd, const float* q_norm, const float* k_norm,
                               float eps, int64_t pos, const float* inv_freq, float* cs) {
  rope_table(hd, pos, inv_freq, cs);
  norm_rope_apply(rows, nq, nk, hd, q_norm, k_norm, eps, cs);
}

// Launch with programmatic stream serialization (PDL, see pdl_wait) unless MOSAIC_PDL=0; the
// kernel must call pdl_wait() before it reads what the previous kernel writes. Inside a captured
// decode step this becomes a programmatic edge of the CUDA graph.
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
  cuda::launch_maybe_pdl(cuda::pdl_env_enabled(), kernel, grid, block, smem, s, args...);
}

}  // namespace
}  // namespace mosaic::gpu::kern

#define MOSAIC_DISPATCH(a, ...)          \
  do {                                   \
    if ((a) == Act::BF16) {              \
      using T = __nv_bfloat16;           \
      __VA_ARGS__;                       \
    } else {                             \
      using T = __half;                  \
      __VA_ARGS__;                       \
    }                                    \
  } while (0)
