// Per-token activation quantization of the GPU engine (contract in act_quant.h). One CTA (or cluster,
// act_quant.cuh) per row: a max|x| reduction, then every element through the code (act_quant.cuh). Divisions and products
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

// The row held in registers (PER per row thread): one read, one write. One CTA per row, or at decode
// a cluster (aq::row_reduce: the same codes). Launched with PDL: the next GEMM (o_proj's, at decode)
// starts fetching its weights while this runs.
template <typename T, bool FP8, int PER>
__global__ void __launch_bounds__(1024) act_fake_quant_held_k(const T* X, T* Y, int64_t K, float top) {
  __shared__ aq::RowInbox box[1];
  aq::row_setup(box);
  cuda::pdl_wait();  // X comes from the kernel before
  cuda::pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  float v[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t k = aq::row_thread() + int64_t(j) * aq::row_threads();
    v[j] = k < K ? aq::load_f(X + r * K, k) : 0.f;
  }
  aq::quantize_held(v, K, top, FP8, box[0]);
  aq::store_held(v, Y + r * K, K);
}

// The same rule in 16-byte chunks on up to 8 CTAs per row (aq::vec8_rows: the decode rows; the same codes).
template <typename T, bool FP8>
__global__ void __launch_bounds__(aq::kVec8Threads) act_fake_quant_vec8_k(const T* X, T* Y, int64_t K, float top) {
  __shared__ aq::RowInbox box[1];
  aq::row_setup(box);
  cuda::pdl_wait();  // X comes from the kernel before
  cuda::pdl_launch_dependents();
  const int64_t r = blockIdx.x, i = 8 * aq::vec8_chunk();
  float v[8] = {}, amax = 0.f;
  if (i < K) {
    aq::load8(X + r * K + i, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(v[e]));
  }
  amax = aq::vec8_row_max(amax, box[0]);
  if (i >= K) return;
  aq::quantize_held_given(v, top, FP8, amax);
  aq::store8(Y + r * K + i, v);
}

template <typename T, bool FP8>
void launch(const void* X, void* Y, int64_t rows, int64_t K, float top, cudaStream_t s) {
  auto* x = static_cast<const T*>(X);
  auto* y = static_cast<T*>(Y);
  if (aq::vec8_rows(rows, K, X, Y)) {
    aq::launch_vec8_rows(act_fake_quant_vec8_k<T, FP8>, rows, K, s, x, y, K, top);
    return;
  }
  // Decode quantizes a few rows: many threads per row keep each pass short.
  const int threads = K >= 4096 ? 1024 : 256;
  switch (aq::held_per_thread(K, threads)) {
    case 8: aq::launch_rows(act_fake_quant_held_k<T, FP8, 8>, rows, threads, s, x, y, K, top); break;
    case 16: aq::launch_rows(act_fake_quant_held_k<T, FP8, 16>, rows, threads, s, x, y, K, top); break;
    default: act_fake_quant_k<T, FP8><<<dim3(static_cast<unsigned>(rows)), threads, 0, s>>>(x, y, K, top);
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
