// PackedLinear: nibble round trips, dequantize against a direct loop written from
// docs/format.md, the reference matmul, validate() on corrupted layers, and random layers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "format/packed_linear.h"
#include "util/error.h"
#include "util/half.h"

using namespace mosaic;

TEST(Nibbles, RoundTripOddAndEvenSizes) {
  std::mt19937 rng(1);
  for (int n : {1, 2, 3, 7, 64, 129, 1001}) {
    std::vector<uint8_t> codes(n);
    for (auto& c : codes) c = uint8_t(rng() % 16);
    const auto packed = pack_nibbles(codes);
    ASSERT_EQ(packed.size(), size_t((n + 1) / 2));
    EXPECT_EQ(unpack_nibbles(packed, n), codes) << "n=" << n;
    for (int k = 0; k < n; ++k) ASSERT_EQ(nibble_at(packed.data(), k), codes[k]);
    if (n % 2) {
      EXPECT_EQ(packed.back() >> 4, 0) << "odd tail must leave the high nibble 0";
    }
  }
}

TEST(Nibbles, LayoutLowNibbleIsEvenColumn) {
  const std::vector<uint8_t> codes = {0x3, 0xA, 0xF, 0x1};
  const auto packed = pack_nibbles(codes);
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(packed[0], 0xA3);
  EXPECT_EQ(packed[1], 0x1F);
}

TEST(Nibbles, RejectsBadInput) {
  const std::vector<uint8_t> bad = {1, 16};
  EXPECT_THROW(pack_nibbles(bad), Error);
  std::vector<uint8_t> out(3);
  const std::vector<uint8_t> two = {1, 2};
  EXPECT_THROW(pack_nibbles(std::span<const uint8_t>(two), std::span<uint8_t>(out)), Error);
  EXPECT_THROW(unpack_nibbles(two, 7), Error);
}

// Dequantization written directly from the docs/format.md formula, with its own CSR search.
static float direct_deq(const PackedLinear& p, int64_t n, int64_t k) {
  const int64_t g = k / p.group, G = p.K / p.group;
  const uint8_t byte = p.qweight[n * (p.K / 2) + k / 2];
  const int code = (k % 2 == 0) ? (byte & 15) : (byte >> 4);
  const int zero = p.symmetric ? 8 : p.qzeros[n * G + g];
  float w = fp16_to_float(p.scales[n * G + g]) * float(code - zero);
  if (p.res_rowptr.empty()) return w;
  const int64_t r = n / p.block_rows, c = k / p.block_cols;
  for (int32_t b = p.res_rowptr[r]; b < p.res_rowptr[r + 1]; ++b) {
    if (p.res_colidx[b] != c) continue;
    const int64_t i = n % p.block_rows, j = k % p.block_cols;
    const uint8_t rb = p.res_qvalues[(b * p.block_rows + i) * (p.block_cols / 2) + j / 2];
    const int rc = (j % 2 == 0) ? (rb & 15) : (rb >> 4);
    w += fp16_to_float(p.res_scales[b * p.block_rows + i]) * float(rc - 8);
  }
  return w;
}

TEST(Dequantize, MatchesDirectLoopAllPatterns) {
  uint64_t seed = 10;
  for (auto pat : {ResidualPattern::kNone, ResidualPattern::kUniform, ResidualPattern::kClustered,
                   ResidualPattern::kOneTile}) {
    for (bool sym : {true, false}) {
      const PackedLinear p = random_packed_linear(48, 256, 64, 16, 32, 0.2, pat, seed++, sym);
      const auto W = dequantize(p);
      int nonzero = 0;
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t k = 0; k < p.K; ++k) {
          ASSERT_EQ(W[n * p.K + k], direct_deq(p, n, k)) << n << "," << k;
          nonzero += W[n * p.K + k] != 0.0f;
        }
      EXPECT_GT(nonzero, p.N * p.K / 2);  // not a test on zeros
      // The residual really changes the weights where blocks are kept.
      const auto base = dequantize_base(p);
      if (p.has_residual()) {
        EXPECT_NE(base, W);
      } else {
        EXPECT_EQ(base, W);
      }
    }
  }
}

TEST(SplitResidualRows, SameWeightsInFinerBlocks) {
  uint64_t seed = 40;
  for (auto pat : {ResidualPattern::kNone, ResidualPattern::kUniform, ResidualPattern::kClustered,
                   ResidualPattern::kOneTile}) {
    const PackedLinear p = random_packed_linear(192, 512, 128, 64, 64, 0.25, pat, seed++, true);
    const PackedLinear q = split_residual_rows(p, 16);
    EXPECT_EQ(q.block_rows, 16);
    EXPECT_EQ(q.block_cols, 64);
    EXPECT_EQ(q.num_blocks_kept(), 4 * p.num_blocks_kept());
    EXPECT_NO_THROW(validate(q));
    EXPECT_EQ(dequantize(q), dequantize(p));  // bit for bit
    if (p.has_residual()) {
      // Fine block row 4r + s lists block row r's columns.
      for (int64_t r = 0; r < p.num_block_rows(); ++r)
        for (int s = 0; s < 4; ++s)
          EXPECT_EQ(q.res_rowptr[size_t(4 * r + s + 1)] - q.res_rowptr[size_t(4 * r + s)],
                    p.res_rowptr[size_t(r + 1)] - p.res_rowptr[size_t(r)]);
    }
  }
  const PackedLinear p = random_packed_linear(96, 256, 128, 32, 64, 0.3, ResidualPattern::kUniform, 7, true);
  EXPECT_THROW(split_residual_rows(p, 24), Error);  // 32 is not a multiple of 24
  EXPECT_EQ(dequantize(split_residual_rows(p, 32)), dequantize(p));
}

TEST(ReferenceMatmul, MatchesDoubleLoopOnDequantizedWeights) {
  const PackedLinear p = random_packed_linear(32, 128, 32, 16, 64, 0.25,
                                              ResidualPattern::kUniform, 7, true);
  const int64_t M = 5;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> X(M * p.K);
  for (auto& x : X) x = nd(rng);
  std::vector<float> Y(M * p.N);
  reference_matmul(p, X.data(), M, Y.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < p.N; ++n) {
      long double acc = 0;
      for (int64_t k = 0; k < p.K; ++k) acc += (long double)X[m * p.K + k] * direct_deq(p, n, k);
      ASSERT_NEAR(Y[m * p.N + n], double(acc), 1e-6 * (1 + std::fabs(double(acc))));
    }
}

// The random benches' concentrated residual: exactly `keep` blocks, every row 0 or `cap` except at
// most one partial row, a different row order per seed, and a keep that cannot fit is an error.
TEST(RandomPackedLinear, ConcentratedRowCounts) {
  std::mt19937_64 rng(3);
  const auto next = [&] { return uint64_t(rng()); };
  for (int64_t keep : {0, 1, 7, 8, 23, 64}) {
    const std::vector<int64_t> n = concentrated_row_counts(8, keep, 8, next);
    ASSERT_EQ(n.size(), 8u);
    int64_t sum = 0, partial = 0;
    for (int64_t x : n) {
      sum += x;
      EXPECT_LE(x, 8);
      if (x != 0 && x != 8) ++partial;
    }
    EXPECT_EQ(sum, keep);
    EXPECT_LE(partial, 1) << keep;
  }
  std::mt19937_64 r1(1), r2(2);
  EXPECT_NE(concentrated_row_counts(64, 8, 1, [&] { return uint64_t(r1()); }),
            concentrated_row_counts(64, 8, 1, [&] { return uint64_t(r2()); }));
  EXPECT_THROW(concentrated_row_counts(4, 9, 2, next), Error);
  EXPECT_EQ(row_cap_blocks(0.25, 64), 16);
  EXPECT_EQ(row_cap_blocks(1.0, 9), 9);
}

TEST(RandomPackedLinear, ExactBlockCountsAndPatterns) {
  // 64 x 512 with 16 x 64 blocks: 4 x 8 = 32 blocks; 10% -> floor(3.2) = 3.
  for (auto pat : {ResidualPattern::kUniform, ResidualPattern::kClustered, ResidualPattern::kOneTile}) {
    for (double f : {0.0, 0.1, 0.25, 0.5, 1.0}) {
      const PackedLinear p = random_packed_linear(64, 512, 128, 16, 64, f, pat, 5);
      EXPECT_EQ(p.num_blocks_kept(), budget_blocks(f, 32));
      EXPECT_NO_THROW(validate(p));
    }
  }
  EXPECT_EQ(budget_blocks(0.1, 32), 3);
  EXPECT_EQ(budget_blocks(0.1, 100), 10);   // binary 0.1 * 100 must not floor to 9
  EXPECT_EQ(budget_blocks(0.3, 10), 3);
  EXPECT_EQ(budget_blocks(1.0, 7), 7);
  EXPECT_THROW(budget_blocks(-0.01, 10), Error);
  EXPECT_THROW(budget_blocks(1.01, 10), Error);
  EXPECT_THROW(budget_blocks(std::nan(""), 10), Error);
  // one_tile at 1/4 of a 4-block-row grid fills exactly one whole block row.
  const PackedLinear t = random_packed_linear(64, 512, 128, 16, 64, 0.25, ResidualPattern::kOneTile, 9);
  int rows_used = 0;
  for (int64_t r = 0; r < t.num_block_rows(); ++r) rows_used += t.res_rowptr[r + 1] > t.res_rowptr[r];
  EXPECT_EQ(rows_used, 1);
  EXPECT_EQ(parse_residual_pattern("clustered"), ResidualPattern::kClustered);
  EXPECT_THROW(parse_residual_pattern("diagonal"), Error);
  EXPECT_THROW(random_packed_linear(64, 500, 128, 16, 64, 0.1, ResidualPattern::kUniform, 1), Error);
}

TEST(Validate, RejectsEveryInconsistency) {
  const PackedLinear good = random_packed_linear(32, 256, 64, 16, 64, 0.25,
                                                 ResidualPattern::kUniform, 2, false);
  ASSERT_TRUE(good.has_residual());
  ASSERT_NO_THROW(validate(good));
  auto expect_bad = [&](auto mutate, const char* what) {
    PackedLinear p = good;
    mutate(p);
    EXPECT_THROW(validate(p), Error) << what;
    EXPECT_THROW(dequantize(p), Error) << what;
  };
  expect_bad([](PackedLinear& p) { p.group = 48; }, "group not dividing K");
  expect_bad([](PackedLinear& p) { p.group = 0; }, "group 0");
  expect_bad([](PackedLinear& p) { p.qweight.pop_back(); }, "short qweight");
  expect_bad([](PackedLinear& p) { p.scales.push_back(0); }, "long scales");
  expect_bad([](PackedLinear& p) { p.scales[3] = 0x7c00; }, "inf scale");
  expect_bad([](PackedLinear& p) { p.qzeros.clear(); }, "missing zeros");
  expect_bad([](PackedLinear& p) { p.qzeros[0] = 16; }, "zero out of range");
  expect_bad([](PackedLinear& p) { p.symmetric = true; }, "symmetric with zeros");
  expect_bad([](PackedLinear& p) { p.block_rows = 12; }, "Br not dividing N");
  expect_bad([](PackedLinear& p) { p.block_cols = 48; }, "Bc not dividing K");
  expect_bad([](PackedLinear& p) { p.res_rowptr.pop_back(); }, "short rowptr");
  expect_bad([](PackedLinear& p) { p.res_rowptr[0] = 1; }, "rowptr not from 0");
  expect_bad([](PackedLinear& p) { std::swap(p.res_rowptr[1], p.res_rowptr[2]);
                                   p.res_rowptr[1] = p.res_rowptr[2] + 1; }, "rowptr decreasing");
  expect_bad([](PackedLinear& p) { p.res_colidx[0] = int32_t(p.num_block_cols()); }, "colidx range");
  expect_bad([](PackedLinear& p) { p.res_colidx[0] = -1; }, "negative colidx");
  expect_bad([](PackedLinear& p) { p.res_qvalues.pop_back(); }, "short res_qvalues");
  expect_bad([](PackedLinear& p) { p.res_scales.push_back(0); }, "long res_scales");
  expect_bad([](PackedLinear& p) { p.res_scales[0] = 0x7e00; }, "NaN residual scale");
  expect_bad([](PackedLinear& p) { p.res_rowptr.clear(); }, "values without rowptr");
  // Non-ascending colidx inside one block row.
  PackedLinear p = good;
  for (int64_t r = 0; r < p.num_block_rows(); ++r)
    if (p.res_rowptr[r + 1] - p.res_rowptr[r] >= 2) {
      std::swap(p.res_colidx[p.res_rowptr[r]], p.res_colidx[p.res_rowptr[r] + 1]);
      EXPECT_THROW(validate(p), Error);
      break;
    }
}
