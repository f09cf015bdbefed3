// Fast ops of the CPU engine: same contracts and layouts as the scalar oracle in ops_ref.h, but
// BLAS (cblas_sgemm / sgemv) for the matrix products of attention and linear layers, a thread
// pool for row-parallel element-wise work, and a vectorizable exp. Tested against ops_ref.h in
// tests/model/test_ops.cpp with stated bounds.
#pragma once
#include <cstdint>

#include "model/ops_ref.h"

namespace mosaic::ops {

void embedding(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens, int64_t T, float* out);
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out);
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);
void attention(const float* q, const float* k_cache, const float* v_cache, int64_t T, int64_t pos0,
               const AttnShape& s, float* out);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void add_inplace(float* y, const float* x, int64_t n);
void matmul_nt(const float* x, const float* w, int64_t M, int64_t N, int64_t K, float* y);
double logsumexp(const float* x, int64_t n);  // fp32 exp (~2 ulp), fp64 accumulation

// exp(x) for x <= 0 to ~2 ulp (Cephes polynomial), in a form the compiler vectorizes; inputs
// below about -87 return ~1e-38 instead of subnormals/0. Exposed for the tests.
void exp_nonpositive(const float* x, int64_t n, float* out);

}  // namespace mosaic::ops
