// The GPU GPTQ's kernels (C++17 for nvcc; the solve that drives them is gptq_cuda.cpp). Layouts
// and roles: gptq_cuda.h. Every launcher is asynchronous on `s`.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mosaic::quant_gpu::kernels {

struct FitArgs {
  bool symmetric;
  float divisor;
  int grid;
  float clip_min;
};

struct BatchArgs {
  float* Wt;
  const float* U;
  int64_t N, K, i1, G;
  int B, group;
  bool static_groups;
  const int32_t* perm;
  float* scale;
  int* zero;
  const float* hdiag;
  FitArgs fit;
  int* overflow;
  // residual inside the loop (kept == nullptr: none)
  const int32_t* kept;
  int64_t nbc;
  int Br, Bc;
  const float* res_scale;
  uint8_t* res_codes;
  // outputs
  float* E;
  uint8_t* codes_t;
  float* err_t;  // optional (trace)
  float* hinv;   // optional (trace)
};

// Wt [K, N] = W [N, K] transposed.
void transpose(const float* W, int64_t N, int64_t K, float* Wt, cudaStream_t s);
// dst [N, K] (original column order) from src [K, N] (processing order; iperm[k] = position of k).
void unpermute(const uint8_t* src, const int32_t* iperm, int64_t N, int64_t K, uint8_t* dst, cudaStream_t s);
void unpermute(const float* src, const int32_t* iperm, int64_t N, int64_t K, float* dst, cudaStream_t s);
// Wt rows `rows[0..count)` = 0.
void zero_rows(float* Wt, int64_t N, const int32_t* rows, int count, cudaStream_t s);
// Static groups: (scale, zero)[n * G + g] fit on Wt (original order) weighted by hdiag.
void fit_static(const float* Wt, int64_t N, int64_t G, int group, const float* hdiag, FitArgs a, float* scale,
                int* zero, int* overflow, cudaStream_t s);
// dst row j = src row perm[j] ([K, N]).
void gather_rows(const float* src, const int32_t* perm, int64_t N, int64_t K, float* dst, cudaStream_t s);
// Hd [K, K] fp64 = H[perm, perm], the diagonal of dead inputs = 1.
void permuted_double(const float* H, const int32_t* perm, const uint8_t* dead, int64_t K, double* Hd, cudaStream_t s);
void add_diagonal(double* A, int64_t K, double lambda, cudaStream_t s);
// U [K, K] fp32 = the row-major upper triangle of A, zeros below.
void upper_to_float(const double* A, int64_t K, float* U, cudaStream_t s);
// A [K, K] with only the column-major lower (= row-major upper) triangle valid -> full symmetric.
void symmetrize(float* A, int64_t K, cudaStream_t s);
// Dynamic shared memory one batch kernel needs; max_batch_smem() is what the device allows.
size_t batch_smem(int B, int threads);
size_t max_batch_smem();
// One batch of GPTQ's column loop (a.B columns from position a.i1), `threads` rows per CTA.
void gptq_batch(const BatchArgs& a, int threads, cudaStream_t s);

}  // namespace mosaic::quant_gpu::kernels
