// Tensor-core helpers shared by the engine's attention kernels (decode_attention.cu, flash_prefill.cu):
// cp.async copies into shared memory, ldmatrix of 8 x 8 tiles, the m16n8k16 MMA with FP32 accumulators
// on FP16 / BF16 operands, and the packing of two FP32 values into one operand register.
// Internal linkage, as kernel_util.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

// c += A (16 x 16, row) B (16 x 8, col), FP32 accumulators; a0..a3 / b0, b1 in the PTX fragment order.
template <typename T>
struct Mma16816;
#define MOSAIC_MMA16816(TYPE, PTX)                                                                                 \
  template <>                                                                                                      \
  struct Mma16816<TYPE> {                                                                                          \
    __device__ static void acc(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {                \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "  \
          "{%0,%1,%2,%3};\n"                                                                                       \
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                         \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                                         \
    }                                                                                                              \
  };
MOSAIC_MMA16816(__half, "f16")
MOSAIC_MMA16816(__nv_bfloat16, "bf16")
#undef MOSAIC_MMA16816

}  // namespace
}  // namespace mosaic::gpu::kern
