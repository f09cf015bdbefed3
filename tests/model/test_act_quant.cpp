// Quantized activations (docs/format.md "Quantized activations"): the per-token fake quantizer
// (round trip, error bound, levels, edge rows), ActQuantLinear against an explicit computation,
// and the config field act_bits the loader reads.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <set>
#include <vector>

#include "io/hf_config.h"
#include "model/act_quant_linear.h"
#include "model/quant_linear.h"
#include "test_util.h"
#include "util/error.h"

namespace mosaic {
namespace {

using test::randn;

// Rows of different scales and shapes: plain Gaussian, one huge outlier, tiny values, a single
// column, a constant row.
std::vector<std::vector<float>> test_rows(int64_t K, uint32_t seed) {
  std::vector<std::vector<float>> rows;
  rows.push_back(randn(size_t(K), seed));
  auto r = randn(size_t(K), seed + 1, 0.01f);
  r[size_t(K / 2)] = 250.0f;  // an outlier channel
  rows.push_back(r);
  rows.push_back(randn(size_t(K), seed + 2, 1e-20f));
  rows.push_back(std::vector<float>(size_t(K), -3.0f));
  return rows;
}

TEST(ActQuant, RoundTripErrorBoundAndLevels) {
  for (int bits : {8, 4}) {
    const float qmax = float((1 << (bits - 1)) - 1);
    for (int64_t K : {1, 7, 64, 577}) {
      for (const auto& row : test_rows(K, uint32_t(K * 31 + bits))) {
        std::vector<float> q = row;
        fake_quantize_rows(q.data(), 1, K, bits);
        float amax = 0;
        for (float v : row) amax = std::max(amax, std::fabs(v));
        const float s = amax / qmax;
        std::set<long> levels;
        for (int64_t k = 0; k < K; ++k) {
          // |x - q(x)| <= s/2 (plus float rounding of x/s and s*code), and q(x) = s * integer.
          EXPECT_LE(std::fabs(q[size_t(k)] - row[size_t(k)]), 0.5f * s * (1 + 1e-5f) + 1e-30f)
              << "bits " << bits << " K " << K << " k " << k;
          const double code = double(q[size_t(k)]) / double(s);
          EXPECT_NEAR(code, std::round(code), 1e-4);
          EXPECT_LE(std::fabs(code), qmax + 1e-4);
          levels.insert(std::lround(code));
        }
        EXPECT_LE(levels.size(), size_t(2 * qmax + 1));
        // The largest element maps to +-qmax exactly: x = +-amax -> code +-qmax.
        for (int64_t k = 0; k < K; ++k) {
          if (std::fabs(row[size_t(k)]) == amax) {
            EXPECT_NEAR(std::fabs(q[size_t(k)]), amax, amax * 1e-6f);
          }
        }
        // Quantizing a quantized row changes nothing (within float rounding of the new scale).
        std::vector<float> q2 = q;
        fake_quantize_rows(q2.data(), 1, K, bits);
        for (int64_t k = 0; k < K; ++k) EXPECT_NEAR(q2[size_t(k)], q[size_t(k)], 1e-6f * amax);
      }
    }
  }
}

TEST(ActQuant, FourBitsAreCoarserThanEight) {
  const int64_t M = 16, K = 256;
  const auto x = randn(size_t(M * K), 5);
  double e8 = 0, e4 = 0;
  for (int bits : {8, 4}) {
    std::vector<float> q = x;
    fake_quantize_rows(q.data(), M, K, bits);
    double e = 0;
    for (size_t i = 0; i < q.size(); ++i) e += (double(q[i]) - x[i]) * (double(q[i]) - x[i]);
    (bits == 8 ? e8 : e4) = e;
  }
  // Uniform rounding noise: MSE ~ s^2/12, and s shrinks 127/7 = 18x from 4 to 8 bits (~330x MSE).
  EXPECT_GT(e4, 100 * e8);
  std::printf("[ act-quant ] Gaussian rows K=256: MSE 8-bit %.3e, 4-bit %.3e\n", e8 / double(M * K), e4 / double(M * K));
}

TEST(ActQuant, ZeroRowsStayAndBadInputIsAnError) {
  std::vector<float> z(10, 0.0f);
  fake_quantize_rows(z.data(), 2, 5, 4);
  for (float v : z) EXPECT_EQ(v, 0.0f);
  std::vector<float> bad = {1.0f, std::numeric_limits<float>::infinity(), 2.0f, 3.0f};
  EXPECT_THROW(fake_quantize_rows(bad.data(), 2, 2, 8), Error);
  std::vector<float> nan = {1.0f, std::nanf("")};
  EXPECT_THROW(fake_quantize_rows(nan.data(), 1, 2, 8), Error);
  EXPECT_THROW(fake_quantize_rows(z.data(), 1, 10, 1), Error);
  EXPECT_THROW(fake_quantize_rows(z.data(), 1, 10, 16), Error);
  EXPECT_THROW(check_act_bits(5), Error);
  EXPECT_NO_THROW(check_act_bits(16));
}

// The explicit rule, written out independently of fake_quantize_rows: per row s = amax / qmax,
// x -> s * clamp(round(x / s), -qmax, qmax).
std::vector<float> explicit_fake_quant(const std::vector<float>& x, int64_t M, int64_t K, int bits) {
  std::vector<float> out = x;
  const int qmax = (1 << (bits - 1)) - 1;
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[size_t(m * K + k)]));
    if (amax == 0) continue;
    const float s = amax / float(qmax);
    for (int64_t k = 0; k < K; ++k) {
      long c = std::lround(x[size_t(m * K + k)] / s);
      c = std::clamp(c, long(-qmax), long(qmax));
      out[size_t(m * K + k)] = s * float(c);
    }
  }
  return out;
}

TEST(ActQuant, LinearWrapperEqualsExplicitComputation) {
  for (int bits : {8, 4})
    for (int64_t M : {1, 3, 33}) {
      const int64_t N = 24, K = 40;
      auto w = std::make_shared<const std::vector<float>>(randn(size_t(N * K), 11));
      ActQuantLinear aq(std::make_unique<DenseLinear>(N, K, w), bits);
      DenseLinear dense(N, K, w);
      auto x = randn(size_t(M * K), uint32_t(M * 7 + bits), 3.0f);
      x[0] = 40.0f;  // an outlier in row 0
      const std::vector<float> x_before = x;
      std::vector<float> y(size_t(M * N)), ref(size_t(M * N));
      aq.forward(x.data(), M, y.data());
      EXPECT_EQ(x, x_before) << "the wrapper must not modify its input (q/k/v share it)";
      const auto xq = explicit_fake_quant(x, M, K, bits);
      dense.forward(xq.data(), M, ref.data());
      EXPECT_LE(test::rel_max_err(y, ref), 1e-6) << "bits " << bits << " M " << M;
      EXPECT_EQ(aq.kind(), "dense-f32-a" + std::to_string(bits));
    }
  EXPECT_THROW(ActQuantLinear(std::make_unique<DenseLinear>(2, 2, std::make_shared<const std::vector<float>>(4, 1.0f)), 16),
               Error);
}

TEST(ActQuant, ConfigActBits) {
  auto cfg_with = [](nlohmann::json q) {
    ModelConfig c;
    c.quantization_config = std::move(q);
    return c;
  };
  const nlohmann::json base = {{"quant_method", "mosaicquant"}, {"format_version", 1}, {"bits", 4}};
  EXPECT_EQ(activation_bits(cfg_with(base)), 16);  // absent: weights only (older checkpoints)
  for (int b : {16, 8, 4}) {
    auto q = base;
    q["act_bits"] = b;
    EXPECT_EQ(activation_bits(cfg_with(q)), b);
    EXPECT_TRUE(is_mosaicquant(cfg_with(q)));
  }
  for (nlohmann::json bad : {nlohmann::json(5), nlohmann::json("8"), nlohmann::json(8.5)}) {
    auto q = base;
    q["act_bits"] = bad;
    EXPECT_THROW(is_mosaicquant(cfg_with(q)), Error) << bad.dump();
  }
}


// FP8 e4m3fn rounding against the format's own definition: every one of the 126 positive finite
// codes (exponent field 0..15, mantissa 0..7, minus S.1111.111 = NaN) decodes to a value that
// round_e4m3 keeps; the midpoint of two neighbours rounds to the one with the even mantissa;
// beyond 448 saturates; signs are symmetric.
TEST(ActQuant, Fp8E4M3RoundingMatchesTheFormat) {
  std::vector<float> codes;
  for (int e = 0; e < 16; ++e)
    for (int m = 0; m < 8; ++m) {
      if (e == 15 && m == 7) continue;  // NaN
      const float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
      codes.push_back(v);
    }
  ASSERT_EQ(codes.size(), 127u);  // 0 and 126 positive values
  EXPECT_EQ(codes.back(), 448.0f);
  for (size_t i = 0; i < codes.size(); ++i) {
    EXPECT_EQ(round_e4m3(codes[i]), codes[i]) << i;
    EXPECT_EQ(round_e4m3(-codes[i]), -codes[i]) << i;
    if (i + 1 < codes.size()) {
      const float mid = 0.5f * (codes[i] + codes[i + 1]);
      const float even = (i % 2 == 0) ? codes[i] : codes[i + 1];  // mantissa parity alternates
      EXPECT_EQ(round_e4m3(mid), even) << "midpoint after code " << i;
      EXPECT_EQ(round_e4m3(std::nextafter(mid, 0.0f)), codes[i]) << i;
      EXPECT_EQ(round_e4m3(std::nextafter(mid, 1e9f)), codes[i + 1]) << i;
    }
  }
  EXPECT_EQ(round_e4m3(1000.0f), 448.0f);
  EXPECT_EQ(round_e4m3(-1e30f), -448.0f);
  EXPECT_EQ(round_e4m3(std::ldexp(1.0f, -11)), 0.0f);  // below half the smallest subnormal
}

// Per-token FP8 activations: the row maximum maps to 448 exactly, every value lands on s * (an
// e4m3 value), relative error within half an e4m3 step (2^-4) for values in the normal range, and
// the format is checked (FP8 only with 8 bits).
TEST(ActQuant, Fp8RowsAndFormatChecks) {
  const int64_t M = 7, K = 257;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(M * K));
  for (auto& v : x) v = nd(rng);
  x[3] = 40.0f;  // an outlier row
  std::vector<float> q = x;
  fake_quantize_rows(q.data(), M, K, ActQuant{8, ActFormat::kFp8E4M3});
  for (int64_t r = 0; r < M; ++r) {
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[size_t(r * K + k)]));
    const float s = amax / 448.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float v = x[size_t(r * K + k)], got = q[size_t(r * K + k)];
      EXPECT_EQ(got, s * round_e4m3(v / s)) << r << "," << k;
      if (std::fabs(v / s) >= 1.0f / 64) {
        EXPECT_LE(std::fabs(got - v), std::fabs(v) / 16 * 1.0001f) << r << "," << k;
      }
    }
  }
  EXPECT_THROW(check_act_quant(ActQuant{4, ActFormat::kFp8E4M3}), Error);
  EXPECT_EQ(parse_act_format("fp8"), ActFormat::kFp8E4M3);
  EXPECT_EQ(std::string(act_format_name(parse_act_format("int"))), "int");
  EXPECT_THROW(parse_act_format("fp4"), Error);
  // The config field: absent = int; fp8_e4m3 read; fp8 with 4 bits or a bad name rejected at load.
  ModelConfig c;
  c.quantization_config = {{"quant_method", "mosaicquant"}, {"format_version", 1}, {"bits", 4}, {"act_bits", 8}};
  EXPECT_EQ(activation_quant(c).format, ActFormat::kInt);
  c.quantization_config["act_format"] = "fp8_e4m3";
  EXPECT_EQ(activation_quant(c).format, ActFormat::kFp8E4M3);
  EXPECT_TRUE(is_mosaicquant(c));
  c.quantization_config["act_bits"] = 4;
  EXPECT_THROW(is_mosaicquant(c), Error);
  c.quantization_config["act_bits"] = 8;
  c.quantization_config["act_format"] = "e5m2";
  EXPECT_THROW(is_mosaicquant(c), Error);
}

}  // namespace
}  // namespace mosaic
