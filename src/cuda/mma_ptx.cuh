// The m16n8k16 tensor-core MMA of every mma.sync kernel (ZipperEngine's stream and fused kernels, the engine's
// decode and prefill attention, the 8-bit LM head): FP16 / BF16 operands, FP32 accumulators, operands in the PTX
// fragment order (A 16 x 16 row-major: a0..a3; B 16 x 8 column-major: b0, b1; C / D 16 x 8: c0..c3).
// Not volatile: a pure function of its registers, which the compiler may schedule.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace mosaic::cuda {

template <typename T>
struct Mma16816;
#define MOSAIC_MMA16816(TYPE, PTX)                                                                              \
  template <>                                                                                                   \
  struct Mma16816<TYPE> {                                                                                       \
    /* c += a b */                                                                                              \
    __device__ static void acc(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {             \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "  \
          "{%0,%1,%2,%3};\n"                                                                                    \
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                      \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                                     \
    }                                                                                                           \
    /* d = a b (the first product of a sum: no zeroing of d first) */                                          \
    __device__ static void set(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {             \
      asm("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "  \
          "{%10,%10,%10,%10};\n"                                                                                \
          : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                                      \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));                          \
    }                                                                                                           \
  };
MOSAIC_MMA16816(__half, "f16")
MOSAIC_MMA16816(__nv_bfloat16, "bf16")
#undef MOSAIC_MMA16816

}  // namespace mosaic::cuda
