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

namespace mosaic::cuda::test {

// e4m3fn byte -> float (sign, 4 exponent bits with bias 7, 3 mantissa bits; subnormals; 0x7f/0xff
// are NaN and never produced here).
inline float e4m3_to_float(uint8_t b) {
  const int e = (b >> 3) & 0xf, m = b & 7;
  const float mag = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.f + float(m) / 8.f, e - 7);
  return (b & 0x80) ? -mag : mag;
}

// The CPU engine's FP8 rule (src/model/act_quant_linear.cpp round_e4m3: nearest e4m3 value, ties to
// even, saturating at 448), repeated here because the GPU test binary of scripts/gpu-w4a8.sh does
// not link the CPU engine; W4A8Fp8Layout.TestOracle... checks the copy in the CMake build.
inline float round_e4m3_ref(float v) {
  const float a = std::fabs(v);
  if (!(a > 0)) return v;
  if (a >= 448.f) return std::copysign(448.f, v);
  int e;
  std::frexp(a, &e);
  const int E = std::max(e - 1, -6);
  const float step = std::ldexp(1.0f, E - 3);
  const float q = std::nearbyint(a / step) * step;
  return std::copysign(std::min(q, 448.f), v);
}

// Per-token FP8: s = max|x| / 448, code values e4m3(x / s) (as floats); zero rows: s = 0, codes 0.
inline void quantize_rows_fp8(const std::vector<float>& x, int64_t M, int64_t K, std::vector<float>& codes,
                              std::vector<float>& scales) {
  codes.assign(size_t(M * K), 0.f);
  scales.assign(size_t(M), 0.f);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = &x[size_t(m * K)];
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float s = amax / 448.f;
    scales[size_t(m)] = s;
    if (amax == 0) continue;
    for (int64_t k = 0; k < K; ++k) codes[size_t(m * K + k)] = round_e4m3_ref(row[k] / s);
  }
}

// Y[m, n] = s_m * sum_k codes[m, k] * W[n, k] in double, codes as float values.
inline std::vector<double> reference_w4a8_fp8(const std::vector<float>& codes, const std::vector<float>& scales,
                                              const std::vector<float>& W, int64_t M, int64_t N, int64_t K) {
  std::vector<double> Y = reference_gemm(codes, W, M, N, K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) Y[size_t(m * N + n)] *= double(scales[size_t(m)]);
  return Y;
}

}  // namespace mosaic::cuda::test
