// CPU-side tests of the ZipperEngine repack (no GPU needed; they run in CI): every code and
// scale of the canonical layout lands where the kernel's fragment decoding expects it, and
// layers the kernel cannot take are refused with a message naming the shapes.
#include <gtest/gtest.h>

#include "cuda/zipper_layout.h"
#include "util/error.h"
#include "zipper_test_util.h"

namespace mosaic::cuda {
namespace {

using test::Pattern;

int canonical_code(const PackedLinear& w, int64_t n, int64_t k) {
  return (w.qweight[size_t(n * (w.K / 2) + k / 2)] >> ((k & 1) * 4)) & 0xf;
}

TEST(ZipperLayout, RepackIsBitExactForEveryCode) {
  for (int group : {32, 128, 256}) {
    const PackedLinear w = test::random_layer(48, 256, group, Pattern::Uniform, 7 + group, 0.3);
    ASSERT_GT(w.num_blocks_kept(), 0);
    const ZipperLayout z = repack_for_zipper(w);
    for (int64_t n = 0; n < w.N; ++n)
      for (int64_t k = 0; k < w.K; ++k) ASSERT_EQ(zipper_base_code(z, n, k), canonical_code(w, n, k)) << n << "," << k;
    // Scales: set s of tile t covers inputs [128 t + s * 128/spt, ...): its group's scale.
    const int64_t ntile = w.K / 128;
    for (int64_t r = 0; r < w.N / 16; ++r)
      for (int64_t t = 0; t < ntile; ++t)
        for (int s = 0; s < z.scales_per_tile; ++s)
          for (int i = 0; i < 16; ++i) {
            const int64_t k = t * 128 + s * (128 / z.scales_per_tile);
            EXPECT_EQ(z.scales[size_t(((r * ntile + t) * z.scales_per_tile + s) * 16 + i)],
                      w.scales[size_t((r * 16 + i) * (w.K / group) + k / group)]);
          }
    for (int64_t b = 0; b < w.num_blocks_kept(); ++b)
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 64; ++j)
          ASSERT_EQ(zipper_res_code(z, b, i, j), (w.res_qvalues[size_t((b * 16 + i) * 32 + j / 2)] >> ((j & 1) * 4)) & 0xf);
    // Bitmap agrees with the CSR.
    int64_t bits = 0;
    for (uint64_t word : z.res_bitmap) bits += __builtin_popcountll(word);
    EXPECT_EQ(bits, w.num_blocks_kept());
    for (int64_t r = 0; r < w.N / 16; ++r)
      for (int64_t b = w.res_rowptr[size_t(r)]; b < w.res_rowptr[size_t(r + 1)]; ++b) {
        const int c = w.res_colidx[size_t(b)];
        EXPECT_TRUE((z.res_bitmap[size_t(r * z.words_per_row + c / 64)] >> (c % 64)) & 1);
        EXPECT_EQ(z.res_colidx[size_t(b)], c);  // the stream kernel's column list: CSR order
      }
    // ... then 32 zeros (a warp loads 32 columns at once).
    ASSERT_EQ(int64_t(z.res_colidx.size()), (w.num_blocks_kept() > 0 ? w.num_blocks_kept() + 32 : 0));
    for (size_t i = size_t(w.num_blocks_kept()); i < z.res_colidx.size(); ++i) EXPECT_EQ(z.res_colidx[i], 0);
  }
}

TEST(ZipperLayout, WeightBytesCountCodesScalesAndResidual) {
  const PackedLinear w = test::random_layer(128, 1024, 128, Pattern::Uniform, 3);
  const ZipperLayout z = repack_for_zipper(w);
  EXPECT_EQ(z.weight_bytes(false), 128 * 1024 / 2 + 128 * 8 * 2);
  EXPECT_EQ(z.weight_bytes(true) - z.weight_bytes(false),
            w.num_blocks_kept() * (512 + 32 + 2) + int64_t(z.res_bitmap.size()) * 8 + int64_t(z.res_rowptr.size()) * 4);
}

void expect_refused(const PackedLinear& w, const std::string& needle) {
  try {
    check_zipper_supported(w);
    FAIL() << "accepted a layer it cannot take; expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// 64 x 64 (and 32 x 64) residual blocks are accepted and repacked as their 16 x 64 split.
TEST(ZipperLayout, TallerResidualBlocksRepackAsTheirSplit) {
  for (const int Br : {32, 64}) {
    const PackedLinear w = random_packed_linear(192, 512, 128, Br, 64, 0.2, ResidualPattern::kClustered, uint64_t(Br));
    ASSERT_TRUE(w.has_residual());
    check_zipper_supported(w);
    const ZipperLayout a = repack_for_zipper(w), b = repack_for_zipper(split_residual_rows(w, 16));
    EXPECT_EQ(a.qweight, b.qweight);
    EXPECT_EQ(a.res_rowptr, b.res_rowptr);
    EXPECT_EQ(a.res_qweight, b.res_qweight);
    EXPECT_EQ(a.res_scales, b.res_scales);
    EXPECT_EQ(a.res_bitmap, b.res_bitmap);
    EXPECT_EQ(int64_t(a.res_rowptr.back()), 4 * w.num_blocks_kept() * Br / 64);
  }
}

TEST(ZipperLayout, RefusesShapesTheKernelCannotTake) {
  PackedLinear w = test::random_layer(64, 256, 128, Pattern::Uniform, 1, 0.3);
  check_zipper_supported(w);  // the valid layer passes
  PackedLinear a = w;
  a.symmetric = false;
  expect_refused(a, "asymmetric");
  PackedLinear nl = w;
  nl.grid = grid_nl4();
  expect_refused(nl, "non-uniform base grid");
  PackedLinear b = test::random_layer(40, 256, 128, Pattern::None, 2);  // N % 16 != 0 handled below
  b.N = 40;
  expect_refused(b, "N=40");
  PackedLinear c = test::random_layer(64, 192, 64, Pattern::None, 3);
  expect_refused(c, "K must be a multiple of 128");
  PackedLinear d = test::random_layer(64, 256, 128, Pattern::None, 4);
  d.group = 48;
  expect_refused(d, "group size");
  PackedLinear e = w;
  e.block_cols = 32;
  expect_refused(e, "16 x 64");
  PackedLinear e2 = w;
  e2.block_rows = 24;  // taller blocks must be whole multiples of 16 rows
  expect_refused(e2, "16 x 64");
  PackedLinear f = w;
  f.res_colidx[0] = 99;
  expect_refused(f, "res_colidx");
  PackedLinear g = w;
  g.qweight.pop_back();
  expect_refused(g, "qweight");
}

}  // namespace
}  // namespace mosaic::cuda
