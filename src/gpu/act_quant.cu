// Per-token activation quantization of the GPU engine (contract in act_quant.h). One CTA per row:
// a max|x| reduction, then every element through the code (act_quant.cuh). Divisions and products
// are IEEE round-to-nearest (__fdiv_rn / __fmul_rn) so the codes are those of the CPU reference,
// whatever the compile flags.
#include "gpu/act_quant.cuh"
#include "gpu/act_quant.h"
#include "util/error.h"

namespace mosaic::gpu::kern {

namespace {

constexpr int kThreads = 256;

template <typename T, bool FP8>
__global__ void __launch_bounds__(kThreads) act_fake_quant_k(const T* X, T* Y, int64_t K, float top) {
  const int64_t r = blockIdx.x;
  aq::quantize_row(X + r * K, Y + r * K, K, top, FP8);
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
