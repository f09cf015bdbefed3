// RTN: per-element error bounds, the symmetric scale convention and clip-search ablations,
// and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "quant/hessian.h"
#include "quant/rtn.h"
#include "quant_test_data.h"
#include "util/error.h"
#include "util/half.h"

using namespace mosaic;

TEST(Rtn, ErrorWithinHalfScalePerElement) {
  const int64_t N = 24, K = 384;
  const auto W = testdata::weights(N, K, 11);
  for (bool sym : {true, false}) {
    for (int group : {32, 128, 384}) {
      const PackedLinear p = quantize_rtn(W, N, K, group, sym);
      ASSERT_NO_THROW(validate(p));
      EXPECT_FALSE(p.has_residual());
      const auto Wq = dequantize(p);
      double worst = 0.0;  // worst |error| / scale
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const float s = fp16_to_float(p.scales[n * (K / group) + k / group]);
          ASSERT_GT(s, 0.0f);
          worst = std::max(worst, std::fabs(double(W[n * K + k]) - Wq[n * K + k]) / s);
        }
      // 1/2 of a step, plus fp16 rounding of the scale (relative 2^-11 over at most 15 steps).
      EXPECT_LE(worst, 0.5 + 15.0 / 2048.0) << "sym=" << sym << " group=" << group;
      EXPECT_GT(worst, 0.3);  // the bound is tight, not vacuous
    }
  }
}

TEST(Rtn, SymmetricRangeUsesAllSixteenCodes) {
  const int64_t N = 4, K = 64;
  const auto W = testdata::weights(N, K, 12);
  const auto Wq = dequantize(quantize_rtn(W, N, K, 64, true));
  const PackedLinear p = quantize_rtn(W, N, K, 64, true);
  int seen[16] = {};
  for (int64_t i = 0; i < N * K; ++i) seen[nibble_at(p.qweight.data(), i)]++;
  int used = 0;
  for (int c = 0; c < 16; ++c) used += seen[c] > 0;
  EXPECT_GE(used, 12);
}

static double weighted_err(const std::vector<float>& W, const std::vector<float>& Wq,
                           const std::vector<float>& h, int64_t K) {
  double e = 0;
  for (size_t i = 0; i < W.size(); ++i) {
    const double d = double(W[i]) - Wq[i];
    e += (h.empty() ? 1.0 : h[i % K]) * d * d;
  }
  return e;
}

// Why 7.5: measured mean squared error of max/7 vs max/7.5 (and the clip search on top).
TEST(Rtn, SymmetricDivisorAblation) {
  const int64_t N = 256, K = 512;
  const auto W = testdata::weights(N, K, 13);
  for (int group : {32, 128}) {
    ScaleOptions d7, d75;
    d7.sym_divisor = 7.0f;
    d75.sym_divisor = 7.5f;
    const double e7 = weighted_err(W, dequantize(quantize_rtn(W, N, K, group, true, d7)), {}, K);
    const double e75 = weighted_err(W, dequantize(quantize_rtn(W, N, K, group, true, d75)), {}, K);
    std::printf("[ablation] RTN g%d symmetric MSE: max/7 %.4e  max/7.5 %.4e  (ratio %.3f)\n",
                group, e7 / double(N * K), e75 / double(N * K), e75 / e7);
    EXPECT_LT(e75, e7);
  }
}

TEST(Rtn, ClipSearchLowersHessianWeightedError) {
  const int64_t N = 128, K = 512, M = 1024;
  const auto W = testdata::weights(N, K, 14);
  const auto X = testdata::activations(M, K, 15);
  const auto H = hessian_from_inputs(X.data(), M, K);
  const auto h = hessian_diagonal(H, K);
  for (bool sym : {true, false}) {
    ScaleOptions search;
    search.clip_grid = 20;
    const auto Wq0 = dequantize(quantize_rtn(W, N, K, 128, sym));
    const auto Wq1 = dequantize(quantize_rtn(W, N, K, 128, sym, search, h));
    const double e0 = weighted_err(W, Wq0, h, K), e1 = weighted_err(W, Wq1, h, K);
    const double o0 = hessian_error(W, Wq0, N, K, H), o1 = hessian_error(W, Wq1, N, K, H);
    std::printf("[ablation] RTN g128 %s clip search (20 pts, >=0.75): diag-H error x%.3f, "
                "full-H output error x%.3f\n", sym ? "sym" : "asym", e1 / e0, o1 / o0);
    EXPECT_LT(e1, e0);  // never worse per group (ratio 1 is in the grid), strictly better overall
    EXPECT_LT(o1, o0 * 1.02);
  }
}

TEST(Rtn, AllZeroGroupAndTinyValuesStayFinite) {
  const int64_t N = 2, K = 64;
  std::vector<float> W(N * K, 0.0f);
  for (int64_t k = 32; k < 64; ++k) W[k] = 1e-9f * float(k);  // underflows an fp16 scale
  for (int64_t k = 0; k < K; ++k) W[K + k] = 0.01f * float(k % 7) - 0.03f;
  for (bool sym : {true, false}) {
    const auto Wq = dequantize(quantize_rtn(W, N, K, 32, sym));
    for (int64_t i = 0; i < N * K; ++i) {
      ASSERT_TRUE(std::isfinite(Wq[i]));
      EXPECT_NEAR(Wq[i], W[i], 0.004);
    }
    for (int64_t k = 0; k < 32; ++k) EXPECT_EQ(Wq[k], 0.0f);  // zeros stay exactly zero
  }
}

TEST(Rtn, BadInputThrows) {
  const int64_t N = 4, K = 64;
  auto W = testdata::weights(N, K, 16);
  EXPECT_THROW(quantize_rtn(W, N, K, 48, true), Error);     // group does not divide K
  EXPECT_THROW(quantize_rtn(W, N, K, 0, true), Error);      // group 0
  EXPECT_THROW(quantize_rtn(W, N + 1, K, 32, true), Error); // size mismatch
  EXPECT_THROW(quantize_rtn(W, N, K, 32, true, {}, std::vector<float>(K - 1, 1.0f)), Error);
  auto bad = W;
  bad[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_rtn(bad, N, K, 32, true), Error);
  bad[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_rtn(bad, N, K, 32, false), Error);
  bad[5] = 1e6f;  // scale 1e6/7.5 overflows fp16
  EXPECT_THROW(quantize_rtn(bad, N, K, 32, true), Error);
  std::vector<float> odd(3 * 5, 0.1f);
  EXPECT_THROW(quantize_rtn(odd, 3, 5, 5, true), Error);    // K odd cannot be nibble-packed
}

// The non-uniform base grid (nl4, ScaleOptions::grid): every element decodes to s * grid[code] with
// the nearest grid value, the group's largest-magnitude value lands on the grid's extreme (up to
// the fp16 rounding of s), and on bell-shaped weights it beats the uniform grid at the same bits.
TEST(Rtn, NonUniformGridNearestCodesAndLowerError) {
  const int64_t N = 64, K = 256;
  const auto W = testdata::weights(N, K, 17);
  ScaleOptions nl;
  nl.grid = grid_nl4();
  for (int group : {32, 64, 256}) {
    const PackedLinear p = quantize_rtn(W, N, K, group, true, nl);
    ASSERT_NO_THROW(validate(p));
    ASSERT_EQ(p.grid, grid_nl4());
    const auto Wq = dequantize(p);
    const int64_t G = K / group;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < G; ++g) {
        const float s = fp16_to_float(p.scales[n * G + g]);
        ASSERT_NE(s, 0.0f);
        int64_t ext = 0;
        for (int64_t i = 0; i < group; ++i) {
          const int64_t k = g * group + i;
          const int c = nibble_at(p.qweight.data() + n * K / 2, k);
          ASSERT_EQ(Wq[n * K + k], s * p.grid[size_t(c)]);
          const float v = W[n * K + k] / s;  // no other grid value is nearer
          for (float t : p.grid) ASSERT_LE(std::fabs(v - p.grid[size_t(c)]), std::fabs(v - t) + 1e-6f);
          if (std::fabs(W[n * K + k]) > std::fabs(W[n * K + g * group + ext])) ext = i;
        }
        const int64_t k = g * group + ext;  // the extreme on -1 (the grid's extreme)
        EXPECT_NEAR(Wq[n * K + k], W[n * K + k], std::fabs(W[n * K + k]) * 1e-3);
      }
    const double e_nl = weighted_err(W, Wq, {}, K), e_u = weighted_err(W, dequantize(quantize_rtn(W, N, K, group, true)), {}, K);
    std::printf("[ablation] RTN g%d MSE: uniform %.4e  nl4 %.4e  (ratio %.3f)\n", group, e_u / double(N * K),
                e_nl / double(N * K), e_nl / e_u);
    EXPECT_LT(e_nl, 0.9 * e_u);
  }
  // Asymmetric or wrong-size grids are errors.
  EXPECT_THROW(quantize_rtn(W, N, K, 64, false, nl), Error);
  ScaleOptions bad;
  bad.grid.assign(15, 0.5f);
  EXPECT_THROW(quantize_rtn(W, N, K, 64, true, bad), Error);
}
