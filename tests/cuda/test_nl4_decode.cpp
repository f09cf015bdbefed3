// The nl4 table lookup prepared for the kernels' nibble decode (src/cuda/nl4_decode.h), on the
// host: for every code at every position, and for random code words, the words it makes hold the
// fp16 bits of 1024 + 128 + grid[c] x 127 in the same pairs as the uniform decode.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

#include "cuda/nl4_decode.h"
#include "format/packed_linear.h"
#include "util/half.h"

namespace mosaic::cuda::detail {
namespace {

// grid_nl4() x 127, which must be integers in -128..127 (the table's bytes).
void grid127(int (&g)[16]) {
  for (int c = 0; c < 16; ++c) {
    const float v = grid_nl4()[size_t(c)] * 127.0f;
    g[c] = int(std::lround(v));
    ASSERT_NEAR(v, float(g[c]), 1e-4f) << c;
    ASSERT_GE(g[c], -128);
    ASSERT_LE(g[c], 127);
  }
}

// The values a word's halves decode to after the caller's hsub2 of 1152.
std::pair<float, float> halves(uint32_t w) {
  return {fp16_to_float(uint16_t(w & 0xFFFF)) - 1152.0f, fp16_to_float(uint16_t(w >> 16)) - 1152.0f};
}

void check_word(uint32_t q, const Nl4Table& tab, const int (&g)[16]) {
  uint32_t w[4];
  nl4_decode_words(q, tab, w);
  for (int j = 0; j < 4; ++j) {
    const int pj = int((q >> (4 * j)) & 0xF), pj4 = int((q >> (4 * (j + 4))) & 0xF);
    const auto [x, y] = halves(w[j]);
    ASSERT_EQ(x, float(g[pj])) << std::hex << "q=" << q << " word " << j;
    ASSERT_EQ(y, float(g[pj4])) << std::hex << "q=" << q << " word " << j;
  }
}

TEST(Nl4Decode, EveryCodeAtEveryPositionAndRandomWords) {
  int g[16];
  grid127(g);
  const Nl4Table tab = nl4_table(g);
  for (int c = 0; c < 16; ++c) EXPECT_EQ(g[c], kIq4Nl[c]) << "the quantizer's grid is IQ4_NL's table";
  for (int pos = 0; pos < 8; ++pos)
    for (uint32_t c = 0; c < 16; ++c)
      for (uint32_t fill : {0x00000000u, 0x88888888u, 0xFFFFFFFFu, 0x76543210u, 0xFEDCBA98u}) {
        const uint32_t q = (fill & ~(0xFu << (4 * pos))) | (c << (4 * pos));
        check_word(q, tab, g);
      }
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) check_word(uint32_t(rng()), tab, g);
}

TEST(Nl4Decode, ByteSelectEmulationFollowsPrmt) {
  // prmt.b32 default mode: bytes of {b, a} by selector nibble, bit 3 replicates the sign (the
  // host side of byte_perm is w4a8_fp8_layout.h's prmt_emulated).
  EXPECT_EQ(byte_perm(0x33221100u, 0x77665544u, 0x3210u), 0x33221100u);
  EXPECT_EQ(byte_perm(0x33221100u, 0x77665544u, 0x7654u), 0x77665544u);
  EXPECT_EQ(byte_perm(0x33221100u, 0x77665544u, 0x0415u), 0x00441155u);
  EXPECT_EQ(byte_perm(0x000080FFu, 0u, 0x4489u), 0x0000FFFFu);  // signs of 0xFF and 0x80 (set), then b = 0
  EXPECT_EQ(byte_perm(0x0000007Fu, 0u, 0x4448u), 0x00000000u);  // sign of 0x7F: clear
}

}  // namespace
}  // namespace mosaic::cuda::detail
