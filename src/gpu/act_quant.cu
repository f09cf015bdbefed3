// Per-token activation quantization of the GPU engine (contract in act_quant.h). One CTA per row:
// a max|x| reduction, then every element through the code (act_quant.cuh). Divisions and products
// are IEEE round-to-nearest (__fdiv_rn / __fmul_rn) so the codes are those of the CPU reference,
// whatever the compile flags.
#include "gpu/act_quant.cuh"
#include "gpu/act_quant.h"
#include "util/error.h"

namespace mosaic::gpu::kern {

namespace {

// General form (any K): the row read twice from memory.
template <typename T, bool FP8>
__global__ void __launch_bounds__(1024) act_fake_quant_k(const T* X, T* Y, int64_t K, float top) {
  const int64_t r = blockIdx.x;
  aq::quantize_row(X + r * K, Y + r * K, K, top, FP8);
}

// The row held in registers (PER per thread): one read, one write.
template <typename T, bool FP8, int PER>
__global__ void __launch_bounds__(1024) act_fake_quant_held_k(const T* X, T* Y, int64_t K, float top) {
  const int64_t r = blockIdx.x;
  float v[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
    v[j] = k < K ? aq::load_f(X + r * K, k) : 0.f;
  }
  aq::quantize_held(v, K, top, FP8);
  aq::store_held(v, Y + r * K, K);
}

template <typename T, bool FP8>
void launch(const void* X, void* Y, int64_t rows, int64_t K, float top, cudaStream_t s) {
  auto* x = static_cast<const T*>(X);
  auto* y = static_cast<T*>(Y);
  // Decode quantizes a few rows: many threads per row keep each pass short.
  const int threads = K >= 4096 ? 1024 : 256;
  const dim3 grid(static_cast<unsigned>(rows));
  switch (aq::held_per_thread(K, threads)) {
    case 8: act_fake_quant_held_k<T, FP8, 8><<<grid, threads, 0, s>>>(x, y, K, top); break;
    case 16: act_fake_quant_held_k<T, FP8, 16><<<grid, threads, 0, s>>>(x, y, K, top); break;
    default: act_fake_quant_k<T, FP8><<<grid, threads, 0, s>>>(x, y, K, top);
  }
}

}  // namespace

void act_fake_quant(Act a, const void* X, void* Y, int64_t rows, int64_t K, int bits, bool fp8, cudaStream_t s) {
  MOSAIC_CHECK(K > 0 && rows >= 0 && rows < (int64_t(1) << 31), "act_fake_quant: bad shape [", rows, ", ", K, "]");
  MOSAIC_CHECK(fp8 ? bits == 8 : (bits >= 2 && bits <= 8), "act_fake_quant: ", bits, " bits", fp8 ? " (FP8 needs 8)" : "");
  if (rows == 0) return;
  const float top = fp8 ? 448.f : float((1 << (bits - 1)) - 1);
  if (a == Act::BF16) {
    if (fp8) launch<__nv_bfloat16, true>(X, Y, rows, K, top, s);
    else launch<__nv_bfloat16, false>(X, Y, rows, K, top, s);
  } else {
    if (fp8) launch<__half, true>(X, Y, rows, K, top, s);
    else launch<__half, false>(X, Y, rows, K, top, s);
  }
}

}  // namespace mosaic::gpu::kern
