// The W4A8 FP8 (wgmma) kernel's repacked layout (src/cuda/w4a8_fp8_layout.h) on the CPU: every base
// and residual code read back from the repacked words equals the checkpoint's, padding outputs are
// zero, the scales sit at (k-tile, half, output), and the device's nibble -> e4m3 conversion
// (emulated instruction by instruction) gives the exact e4m3 value of every code. No GPU needed.
#include <gtest/gtest.h>

#include <random>

#include "cuda/w4a8_fp8_layout.h"
#include "format/int_scale_grid.h"
#include "util/error.h"
#include "util/half.h"
#include "w4a8_test_util.h"
#include "zipper_test_util.h"
#ifdef MOSAIC_SOURCE_DIR  // the CMake build links the CPU engine (scripts/gpu-w4a8.sh does not)
#include "model/act_quant_linear.h"
#endif

namespace mosaic::cuda {
namespace {

using test::Pattern;

TEST(W4A8Fp8Layout, NibbleToE4m3ConversionIsExactForEveryCode) {
  // Every code in every nibble position (others random), plus random words.
  std::mt19937_64 rng(5);
  auto check = [](uint32_t word) {
    uint32_t lo, hi;
    fp8_word_to_e4m3(word, lo, hi);
    for (int i = 0; i < 8; ++i) {
      const int q = fp8_nibble_q(word >> (4 * i));
      const uint8_t b = uint8_t(((i < 4 ? lo : hi) >> (8 * (i % 4))) & 0xff);
      ASSERT_EQ(test::e4m3_to_float(b), float(q)) << "word " << std::hex << word << " nibble " << i;
      if (q == 0) {
        ASSERT_EQ(b, 0) << "zero must be +0";
      }
    }
  };
  for (int pos = 0; pos < 8; ++pos)
    for (uint32_t v = 0; v < 16; ++v) check((uint32_t(rng()) & ~(0xfu << (4 * pos))) | v << (4 * pos));
  for (int i = 0; i < 100000; ++i) check(uint32_t(rng()));
}

TEST(W4A8Fp8Layout, CodesScalesPaddingAndResidualRoundTrip) {
  struct Case { int64_t N, K; int group; Pattern pat; };
  for (const Case c : {Case{48, 256, 128, Pattern::Uniform}, Case{16, 384, 64, Pattern::OneTile},
                       Case{160, 512, 512, Pattern::Clustered}, Case{256, 768, 256, Pattern::None}}) {
    const PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N + c.K), 0.3);
    const W4A8Fp8Layout z = repack_for_w4a8_fp8(w);
    EXPECT_EQ(z.spt, c.group == 64 ? 2 : 1);
    EXPECT_EQ(z.Npad % 128, 0);
    EXPECT_LT(z.Npad - c.N, 128);
    for (int64_t n = 0; n < z.Npad; ++n)
      for (int64_t k = 0; k < c.K; ++k) {
        const int want = n < c.N ? int((w.qweight[size_t(n * (c.K / 2) + k / 2)] >> ((k & 1) * 4)) & 0xf) - 8 : 0;
        ASSERT_EQ(w4a8_fp8_base_q(z, n, k), want) << "n=" << n << " k=" << k;
      }
    for (int64_t kt = 0; kt < c.K / 128; ++kt)
      for (int h = 0; h < z.spt; ++h)
        for (int64_t n = 0; n < z.Npad; ++n) {
          const int64_t g = (kt * 128 + h * 64) / c.group;
          const float want = n < c.N ? fp16_to_float(w.scales[size_t(n * (c.K / c.group) + g)]) : 0.f;
          ASSERT_EQ(z.scales[size_t((kt * z.spt + h) * z.Npad + n)], want);
        }
    ASSERT_EQ(z.nnzb, w.num_blocks_kept());
    int64_t seen = 0;
    for (int64_t r = 0; r < c.N / 16 && z.nnzb > 0; ++r)
      for (int64_t bc = 0; bc < c.K / 64; ++bc) {
        const int32_t b = z.res_index[size_t(r * (c.K / 64) + bc)];
        if (b < 0) continue;
        ++seen;
        ASSERT_EQ(w.res_colidx[size_t(b)], bc);
        for (int dn = 0; dn < 16; ++dn) {
          ASSERT_EQ(z.res_scales[size_t(b * 16 + dn)], fp16_to_float(w.res_scales[size_t(b * 16 + dn)]));
          for (int dk = 0; dk < 64; ++dk)
            ASSERT_EQ(w4a8_fp8_res_q(z, b, dn, dk),
                      int((w.res_qvalues[size_t((b * 16 + dn) * 32 + dk / 2)] >> ((dk & 1) * 4)) & 0xf) - 8);
        }
      }
    EXPECT_EQ(seen, z.nnzb);
  }
  const PackedLinear g32 = test::random_layer(32, 256, 32, Pattern::None, 2);
  EXPECT_THROW(repack_for_w4a8_fp8(g32), Error);
}

// The INT8 variant's conversion: every code 0..15 in every nibble position (others random) and
// every multiplier 0..16 gives the signed byte m (c - 8), in each register's own byte.
TEST(W4A8Int8Layout, ConversionIsExactForEveryCodeAndMultiplier) {
  std::mt19937_64 rng(6);
  for (uint32_t m_lo = 0; m_lo <= 16; ++m_lo)
    for (int pos = 0; pos < 8; ++pos)
      for (uint32_t c = 0; c < 16; ++c) {
        const uint32_t m_hi = uint32_t(rng() % 17);
        const uint32_t word = (uint32_t(rng()) & ~(0xfu << (4 * pos))) | c << (4 * pos);
        uint32_t lo, hi;
        i8_word_to_s8(word, m_lo, m_hi, lo, hi);
        for (int i = 0; i < 4; ++i) {
          const int clo = int((word >> (8 * i)) & 0xf), chi = int((word >> (8 * i + 4)) & 0xf);
          ASSERT_EQ(int(int8_t(lo >> (8 * i))), (clo - 8) * int(m_lo)) << std::hex << word << " byte " << i;
          ASSERT_EQ(int(int8_t(hi >> (8 * i))), (chi - 8) * int(m_hi)) << std::hex << word << " byte " << i;
        }
      }
}

// Snapped layers: codes read back, multipliers and units at their places, and u_n (m q + m_r r)
// is the checkpoint's weight exactly; layers off the grid are refused with the reason.
TEST(W4A8Int8Layout, CodesMultipliersUnitsAndResidualRoundTrip) {
  struct Case { int64_t N, K; int group; Pattern pat; };
  for (const Case c : {Case{48, 256, 128, Pattern::Uniform}, Case{16, 384, 64, Pattern::OneTile},
                       Case{160, 512, 512, Pattern::Clustered}}) {
    PackedLinear w = test::random_layer(c.N, c.K, c.group, c.pat, uint64_t(c.N + c.K), 0.3);
    EXPECT_THROW(repack_for_w4a8_int8_wgmma(w), Error);
    snap_to_int_scale_grid(w);
    const W4A8Fp8Layout z = repack_for_w4a8_int8_wgmma(w);
    ASSERT_TRUE(z.int8);
    ASSERT_EQ(z.chan_scale.size(), size_t(z.Npad));
    const std::vector<float> W = dequantize(w);
    for (int64_t n = 0; n < z.Npad; ++n)
      for (int64_t k = 0; k < c.K; ++k) {
        const int q = w4a8_fp8_base_q(z, n, k);
        if (n >= c.N) {
          ASSERT_EQ(q, 0);
          continue;
        }
        ASSERT_EQ(q, int((w.qweight[size_t(n * (c.K / 2) + k / 2)] >> ((k & 1) * 4)) & 0xf) - 8) << n << " " << k;
        const int64_t kt = k / 128, h = z.spt == 2 ? (k % 128) / 64 : 0;
        int v = int(z.scales[size_t((kt * z.spt + h) * z.Npad + n)]) * q;
        const int32_t b = w.has_residual() ? z.res_index[size_t((n / 16) * (c.K / 64) + k / 64)] : -1;
        if (b >= 0) v += w4a8_i8_res_mult(z, b, int(n % 16)) * w4a8_fp8_res_q(z, b, int(n % 16), int(k % 64));
        ASSERT_GE(v, -128);
        ASSERT_LE(v, 127);
        ASSERT_EQ(z.chan_scale[size_t(n)] * float(v), W[size_t(n * c.K + k)]) << n << " " << k;
      }
  }
}

#ifdef MOSAIC_SOURCE_DIR
// The GPU tests' FP8 oracle (w4a8_test_util.h round_e4m3_ref) is the CPU engine's round_e4m3.
TEST(W4A8Fp8Layout, TestOracleEqualsTheCpuEnginesE4m3Rounding) {
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> u(-12.f, 10.f);
  for (int i = 0; i < 200000; ++i) {
    const float v = (rng() & 1 ? -1.f : 1.f) * std::exp2(u(rng));
    ASSERT_EQ(test::round_e4m3_ref(v), round_e4m3(v)) << v;
  }
  for (int b = 0; b < 256; ++b) {  // every code and every midpoint between neighbours
    if ((b & 0x7f) == 0x7f) continue;
    const float v = test::e4m3_to_float(uint8_t(b));
    ASSERT_EQ(test::round_e4m3_ref(v), round_e4m3(v));
    ASSERT_EQ(test::round_e4m3_ref(v * 1.0625f), round_e4m3(v * 1.0625f));
  }
}
#endif

}  // namespace
}  // namespace mosaic::cuda
