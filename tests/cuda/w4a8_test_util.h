// Test helpers for the W4A8 GEMM: the CPU rule of per-token INT8 activation quantization
// (docs/format.md "Quantized activations", act_bits 8) as codes + scales, and the reference
// Y = s_m * (codes . W_hat^T) in double. The rule's expressions are those of the CPU engine's
// fake_quantize_rows (src/model/act_quant_linear.cpp): s = amax / 127 in fp32, q = round(x / s)
// (ties away from zero), clamp to +-127; so GPU codes must match bit for bit.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "zipper_test_util.h"

namespace mosaic::cuda::test {

inline void quantize_rows_int8(const std::vector<float>& x, int64_t M, int64_t K, std::vector<int8_t>& codes,
                               std::vector<float>& scales) {
  codes.assign(size_t(M * K), 0);
  scales.assign(size_t(M), 0.f);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = &x[size_t(m * K)];
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = amax / 127.f;
    scales[size_t(m)] = s;
    if (amax == 0) continue;
    for (int64_t k = 0; k < K; ++k)
      codes[size_t(m * K + k)] = int8_t(std::clamp(std::round(row[k] / s), -127.f, 127.f));
  }
}

// Y[m, n] = s_m * sum_k codes[m, k] * W[n, k], in double (W = reference_dequant: exact in float).
inline std::vector<double> reference_w4a8(const std::vector<int8_t>& codes, const std::vector<float>& scales,
                                          const std::vector<float>& W, int64_t M, int64_t N, int64_t K) {
  std::vector<float> xf(codes.begin(), codes.end());
  std::vector<double> Y = reference_gemm(xf, W, M, N, K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) Y[size_t(m * N + n)] *= double(scales[size_t(m)]);
  return Y;
}

}  // namespace mosaic::cuda::test
