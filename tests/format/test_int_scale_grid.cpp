// The integer scale grid (format/int_scale_grid.h): layers with free FP16 scales have none; after
// snapping every weight is exactly u_n times an INT8 value (base + residual), the base codes are
// unchanged and each scale moved by at most half a unit; the refusals name their reason.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "format/int_scale_grid.h"
#include "util/error.h"
#include "util/half.h"

using namespace mosaic;

namespace {

// Every weight of dequantize(w) equals u_n * (m q + m_r r) with that sum in -128..127.
void expect_int8_weights(const PackedLinear& w, const IntScaleGrid& g) {
  const std::vector<float> W = dequantize(w), Wb = dequantize_base(w);
  const int64_t ng = w.num_groups();
  int64_t bad = 0;
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k) {
      const float u = g.unit[size_t(n)];
      const int q = int(nibble_at(&w.qweight[size_t(n * (w.K / 2))], k)) - 8;
      const float base = u * float(int(g.base_m[size_t(n * ng + k / w.group)]) * q);
      bad += Wb[size_t(n * w.K + k)] != base;
      const float v = W[size_t(n * w.K + k)] / u;  // exact: u is a power of two
      bad += v != std::floor(v) || v < -128.f || v > 127.f;
    }
  EXPECT_EQ(bad, 0);
}

TEST(IntScaleGrid, FreeScalesHaveNoGridSnappedOnesDo) {
  for (const int group : {64, 128})
    for (const double budget : {0.0, 0.1, 0.5}) {
      const PackedLinear w0 = random_packed_linear(96, 512, group, 16, 64, budget, ResidualPattern::kUniform, 7 + group);
      std::string why;
      EXPECT_FALSE(find_int_scale_grid(w0, &why).has_value());
      EXPECT_NE(why.find("not a multiple"), std::string::npos) << why;
      PackedLinear w = w0;
      snap_to_int_scale_grid(w);
      validate(w);
      const auto g = find_int_scale_grid(w, &why);
      ASSERT_TRUE(g.has_value()) << why;
      {  // every base weight moves by at most half a new step where the scale rounded by <= u / 2
        const std::vector<float> W0 = dequantize_base(w0), W1 = dequantize_base(w);
        int64_t far = 0;
        for (int64_t n = 0; n < w.N; ++n) {
          float smax = 0;
          for (int64_t i = 0; i < w.num_groups(); ++i) smax = std::max(smax, fp16_to_float(w0.scales[size_t(n * w.num_groups() + i)]));
          const float us = std::exp2(std::ceil(std::log2(smax / 16.5f)));
          for (int64_t k = 0; k < w.K; ++k) far += std::fabs(W1[size_t(n * w.K + k)] - W0[size_t(n * w.K + k)]) > 4.5f * us;
        }
        EXPECT_EQ(far, 0);
      }
      const int64_t ng = w.num_groups();
      for (int64_t n = 0; n < w.N; ++n) {
        const float u = g->unit[size_t(n)];
        EXPECT_EQ(u, std::exp2(std::round(std::log2(u))));  // a power of two
        // The snapping unit (header): the smallest power of two with (largest scale) / u <= 16.5;
        // find_int_scale_grid may name a finer one for the same values.
        float smax = 0;
        for (int64_t i = 0; i < ng; ++i) smax = std::max(smax, fp16_to_float(w0.scales[size_t(n * ng + i)]));
        const float us = std::exp2(std::ceil(std::log2(smax / 16.5f)));
        for (int64_t i = 0; i < ng; ++i) {
          const float s0 = fp16_to_float(w0.scales[size_t(n * ng + i)]), s = fp16_to_float(w.scales[size_t(n * ng + i)]);
          EXPECT_LE(std::fabs(s - s0), 0.5f * us) << "row " << n;
          EXPECT_GE(g->base_m[size_t(n * ng + i)], 1);
        }
      }
      expect_int8_weights(w, *g);
      // Snapping is idempotent.
      PackedLinear w2 = w;
      snap_to_int_scale_grid(w2);
      EXPECT_EQ(w2.scales, w.scales);
      EXPECT_EQ(w2.res_scales, w.res_scales);
      EXPECT_EQ(w2.res_qvalues, w.res_qvalues);
    }
}

TEST(IntScaleGrid, ResidualCodesThatWouldOverflowInt8ArePulledIn) {
  // Every row: base scale 16 units, every base code q = -8 (-128 units); residual row scale 1 unit
  // (u = 2^-10, the coarsest unit dividing both) with r = -8 would give -136: out of INT8.
  PackedLinear w = random_packed_linear(16, 128, 128, 16, 64, 0.0, ResidualPattern::kNone, 3);
  for (auto& b : w.qweight) b = 0x00;  // code 0: q = -8
  for (auto& s : w.scales) s = float_to_fp16(16.f / 1024.f);
  w.res_rowptr = {0, 1};
  w.res_colidx = {1};
  w.res_qvalues.assign(16 * 32, 0x00);  // code 0: r = -8
  w.res_scales.assign(16, float_to_fp16(1.f / 1024.f));
  validate(w);
  std::string why;
  EXPECT_FALSE(find_int_scale_grid(w, &why).has_value());
  EXPECT_NE(why.find("outside INT8"), std::string::npos) << why;
  snap_to_int_scale_grid(w);
  const auto g = find_int_scale_grid(w, &why);
  ASSERT_TRUE(g.has_value()) << why;
  EXPECT_EQ(g->unit[0], 1.f / 1024.f);
  EXPECT_EQ(nibble_at(w.res_qvalues.data(), 0), 8);  // r = 0: -128 + 0 is the nearest that fits
  expect_int8_weights(w, *g);
}

// A row whose groups span more than 16x: the small groups get the row's unit and their codes are
// re-rounded, so their values stay within u / 2 (kept as-is they would grow by u / s).
TEST(IntScaleGrid, SmallGroupsOfAWideRowKeepTheirValues) {
  PackedLinear w = random_packed_linear(16, 256, 64, 16, 64, 0.0, ResidualPattern::kNone, 11);
  for (int64_t n = 0; n < 16; ++n) {
    w.scales[size_t(n * 4 + 0)] = float_to_fp16(1.0f);    // the row's largest: u = 1/16
    w.scales[size_t(n * 4 + 1)] = float_to_fp16(0.001f);  // 62x below the unit
  }
  const std::vector<float> W0 = dequantize(w);
  snap_to_int_scale_grid(w);
  ASSERT_TRUE(find_int_scale_grid(w).has_value());
  const std::vector<float> W1 = dequantize(w);
  for (int64_t n = 0; n < 16; ++n)
    for (int64_t k = 64; k < 128; ++k) EXPECT_LE(std::fabs(W1[size_t(n * 256 + k)] - W0[size_t(n * 256 + k)]), 0.5f / 16 + 1e-6f);
}

TEST(IntScaleGrid, RefusesAsymmetricAndNonUniformBases) {
  std::string why;
  PackedLinear a = random_packed_linear(16, 128, 64, 16, 64, 0.0, ResidualPattern::kNone, 1, /*symmetric=*/false);
  EXPECT_FALSE(find_int_scale_grid(a, &why).has_value());
  EXPECT_NE(why.find("asymmetric"), std::string::npos);
  EXPECT_THROW(snap_to_int_scale_grid(a), Error);
  PackedLinear nl = random_packed_linear(16, 128, 64, 16, 64, 0.0, ResidualPattern::kNone, 1);
  nl.grid = grid_nl4();
  EXPECT_FALSE(find_int_scale_grid(nl, &why).has_value());
  EXPECT_NE(why.find("non-uniform"), std::string::npos);
}

TEST(IntScaleGrid, AllZeroRowsAndZeroScales) {
  PackedLinear w = random_packed_linear(32, 256, 128, 16, 64, 0.0, ResidualPattern::kNone, 5);
  for (int64_t g = 0; g < w.num_groups(); ++g) w.scales[size_t(g)] = 0;  // row 0: every scale 0
  w.scales[size_t(w.num_groups() + 1)] = 0;                              // row 1: one group 0
  snap_to_int_scale_grid(w);
  const auto g = find_int_scale_grid(w);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->unit[0], 1.f);
  EXPECT_EQ(g->base_m[0], 0);
  EXPECT_EQ(g->base_m[size_t(w.num_groups() + 1)], 0);
  expect_int8_weights(w, *g);
}

}  // namespace
