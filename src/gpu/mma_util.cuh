// Tensor-core helpers shared by the engine's attention kernels (decode_attention.cu, flash_prefill.cu):
// cp.async copies into shared memory, ldmatrix of 8 x 8 tiles, the m16n8k16 MMA (cuda/mma_ptx.cuh), and the packing of two FP32 values into one operand register.
// Internal linkage, as kernel_util.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/mma_ptx.cuh"
#include "gpu/kernel_util.cuh"

namespace mosaic::gpu::kern {
namespace {

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// 16 bytes from global to shared memory, or 16 zero bytes when !valid (src is then not read).
__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <typename T>
__device__ __forceinline__ uint32_t pack_act(float lo, float hi) {  // two values rounded to T, lo in the low half
  const T a = from_f<T>(lo), b = from_f<T>(hi);
  return uint32_t(*reinterpret_cast<const uint16_t*>(&a)) | (uint32_t(*reinterpret_cast<const uint16_t*>(&b)) << 16);
}

// c += A (16 x 16, row) B (16 x 8, col), FP32 accumulators: cuda/mma_ptx.cuh.
using cuda::Mma16816;

}  // namespace
}  // namespace mosaic::gpu::kern
