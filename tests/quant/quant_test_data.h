// Seeded synthetic data for the quantizer tests: LLM-like weights (Gaussian with a few large
// outliers) and activations with correlated columns, column scales that vary over two orders of
// magnitude, and a few outlier channels -- the regime where GPTQ and Hessian-aware selection
// matter. Never zeros.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "quant/calibration.h"

namespace mosaic::testdata {

inline std::vector<float> weights(int64_t N, int64_t K, uint64_t seed, double outlier_frac = 0.002) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> W(static_cast<size_t>(N * K));
  for (auto& w : W) {
    w = nd(rng);
    if (u(rng) < outlier_frac) w *= 8.0f;  // sparse large weights, as in real checkpoints
  }
  return W;
}

// X [M, K] = (Z A + noise) * diag(col_scale): rank-`rank` correlation between columns,
// log-normal column scales, and `outlier_cols` channels 10x larger.
inline std::vector<float> activations(int64_t M, int64_t K, uint64_t seed, int rank = 8,
                                      int outlier_cols = 4, float scale_sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> A(static_cast<size_t>(rank * K));
  for (auto& a : A) a = nd(rng);
  std::vector<float> col_scale(static_cast<size_t>(K));
  for (auto& s : col_scale) s = std::exp(scale_sigma * nd(rng));
  for (int i = 0; i < outlier_cols; ++i) col_scale[rng() % K] *= 10.0f;
  std::vector<float> X(static_cast<size_t>(M * K));
  std::vector<float> z(static_cast<size_t>(rank));
  for (int64_t m = 0; m < M; ++m) {
    for (auto& v : z) v = nd(rng);
    for (int64_t k = 0; k < K; ++k) {
      float v = 0.5f * nd(rng);
      for (int r = 0; r < rank; ++r) v += z[r] * A[r * K + k] / std::sqrt(float(rank));
      X[m * K + k] = v * col_scale[k];
    }
  }
  return X;
}

// Calibration token windows with some structure (a random walk over the vocabulary plus
// repeats), so the tiny golden models' layers see correlated inputs rather than uniform noise.
inline std::vector<std::vector<int32_t>> token_windows(int n, int len, uint64_t seed, int vocab = 301) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> text;
  int32_t t = 1;
  for (int i = 0; i < 4000; ++i) {
    t = int32_t((t + int(rng() % 23) + (i % 7 == 0 ? 150 : 0)) % vocab);
    text.push_back(t);
  }
  return sample_calibration_windows(text, n, len, seed);
}

}  // namespace mosaic::testdata
