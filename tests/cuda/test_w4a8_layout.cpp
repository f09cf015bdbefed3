// The W4A8 kernel's repacked layout (src/cuda/w4a8_layout.h) on the CPU: every base and residual
// code read back from the repacked words equals the checkpoint's, scales are the fp16 scales / 16
// at the right (k-tile, half, output), the residual index points at the right blocks, and
// unsupported layers are refused with errors naming the shapes. No GPU needed.
#include <gtest/gtest.h>

#include <string>

#include "cuda/w4a8_layout.h"
#include "util/error.h"
#include "util/half.h"
#include "w4a8_test_util.h"
#include "zipper_test_util.h"
#ifdef MOSAIC_SOURCE_DIR  // the CMake build links the CPU engine (scripts/gpu-check.sh does not)
#include "model/act_quant_linear.h"
#endif

namespace mosaic::cuda {
namespace {

using test::Pattern;

int q_of(const std::vector<uint8_t>& packed, int64_t row_bytes, int64_t n, int64_t k) {
  return int((packed[size_t(n * row_bytes + k / 2)] >> ((k & 1) * 4)) & 0xf) - 8;
}

TEST(W4A8Layout, CodesScalesAndResidualRoundTrip) {
  struct Case { int64_t N, K; int group; Pattern pat; };
  for (const Case c : {Case{48, 256, 128, Pattern::Uniform}, Case{16, 384, 64, Pattern::OneTile},
                       Case{32, 512, 512, Pattern::Clustered}, Case{144, 768, 256, Pattern::None}}) {
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N + c.K), 0.3);
    const W4A8Layout z = repack_for_w4a8(w);
    EXPECT_EQ(z.spt, c.group == 64 ? 2 : 1);
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k)
        ASSERT_EQ(w4a8_base_q(z, n, k), q_of(w.qweight, c.K / 2, n, k)) << "n=" << n << " k=" << k;
    for (int64_t kt = 0; kt < c.K / 128; ++kt)
      for (int h = 0; h < z.spt; ++h)
        for (int64_t n = 0; n < c.N; ++n) {
          const int64_t g = (kt * 128 + h * 64) / c.group;
          ASSERT_EQ(z.scales[size_t((kt * z.spt + h) * c.N + n)],
                    fp16_to_float(w.scales[size_t(n * (c.K / c.group) + g)]) / 16.f);
        }
    ASSERT_EQ(z.nnzb, w.num_blocks_kept());
    if (z.nnzb == 0) {
      EXPECT_TRUE(z.res_index.empty());
      continue;
    }
    int64_t seen = 0;
    for (int64_t r = 0; r < c.N / 16; ++r)
      for (int64_t bc = 0; bc < c.K / 64; ++bc) {
        const int32_t b = z.res_index[size_t(r * (c.K / 64) + bc)];
        if (b < 0) continue;
        ++seen;
        ASSERT_GE(b, w.res_rowptr[size_t(r)]);
        ASSERT_LT(b, w.res_rowptr[size_t(r + 1)]);
        ASSERT_EQ(w.res_colidx[size_t(b)], bc);
        for (int dn = 0; dn < 16; ++dn) {
          ASSERT_EQ(z.res_scales[size_t(b * 16 + dn)], fp16_to_float(w.res_scales[size_t(b * 16 + dn)]) / 16.f);
          for (int dk = 0; dk < 64; ++dk)
            ASSERT_EQ(w4a8_res_q(z, b, dn, dk),
                      int((w.res_qvalues[size_t((b * 16 + dn) * 32 + dk / 2)] >> ((dk & 1) * 4)) & 0xf) - 8);
        }
      }
    EXPECT_EQ(seen, z.nnzb);
  }
}

TEST(W4A8Layout, RefusesUnsupportedLayersNamingShapes) {
  auto message = [](const PackedLinear& w) {
    try {
      check_w4a8_supported(w);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  PackedLinear w = test::random_layer(32, 256, 128, Pattern::OneTile, 1);
  EXPECT_EQ(message(w), "accepted");
  PackedLinear g32 = test::random_layer(32, 256, 32, Pattern::None, 2);
  EXPECT_NE(message(g32).find("group size must be 64 or a multiple of 128"), std::string::npos) << message(g32);
  EXPECT_NE(message(g32).find("[N=32, K=256, group=32]"), std::string::npos);
  PackedLinear n24 = test::random_layer(16, 256, 128, Pattern::None, 3);
  n24.N = 24;
  n24.qweight.resize(24 * 128);
  n24.scales.resize(24 * 2);
  EXPECT_NE(message(n24).find("N must be a multiple of 16"), std::string::npos) << message(n24);
  PackedLinear k192 = test::random_layer(16, 192, 64, Pattern::None, 4);
  EXPECT_NE(message(k192).find("K must be a multiple of 128"), std::string::npos) << message(k192);
  PackedLinear asym = w;
  asym.symmetric = false;
  asym.qzeros.assign(w.scales.size(), 8);
  EXPECT_NE(message(asym).find("asymmetric"), std::string::npos) << message(asym);
  PackedLinear blocks = w;
  blocks.block_cols = 32;
  EXPECT_NE(message(blocks).find("16 x 64"), std::string::npos) << message(blocks);
  PackedLinear short_scales = w;
  short_scales.scales.pop_back();
  EXPECT_THROW(check_w4a8_supported(short_scales), Error);
  EXPECT_THROW(repack_for_w4a8(g32), Error);
}

#ifdef MOSAIC_SOURCE_DIR
// The GPU tests' oracle (w4a8_test_util.h) is the CPU engine's rule: s * code equals what
// fake_quantize_rows (src/model/act_quant_linear.cpp, the W4A8 CPU reference path) writes, bit for
// bit, on outlier rows, a zero row and a row of exact ties.
TEST(W4A8Layout, TestOracleEqualsTheCpuEnginesActivationQuantizer) {
  for (const bool bf16 : {false, true}) {
    const int64_t M = 9, K = 640;
    std::vector<uint16_t> bits;
    std::vector<float> x;
    test::random_activations(M, K, bf16, 77, bits, x);
    for (int64_t k = 0; k < K; ++k) {
      x[size_t(K + k)] = 0.f;
      x[size_t(2 * K + k)] = k == 0 ? 254.f : float(int((k * 37) % 255) - 127);
    }
    std::vector<int8_t> codes;
    std::vector<float> scales;
    test::quantize_rows_int8(x, M, K, codes, scales);
    std::vector<float> fq = x;
    fake_quantize_rows(fq.data(), M, K, 8);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        ASSERT_EQ(fq[size_t(m * K + k)], scales[size_t(m)] * float(codes[size_t(m * K + k)]))
            << "m=" << m << " k=" << k << (bf16 ? " bf16" : " fp16");
  }
}
#endif

}  // namespace
}  // namespace mosaic::cuda
