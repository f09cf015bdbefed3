// The L2 look-ahead's split of prefetch spans over a kernel's CTAs (src/cuda/l2_prefetch.h): pure
// host code, runs without a GPU. Every byte of every span is prefetched by exactly one CTA, in
// pieces the instruction takes (16-byte aligned, multiples of 16, <= kMaxPiece), with the CTAs'
// shares even.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "cuda/l2_prefetch.h"

namespace mosaic::cuda {
namespace {

// Bytes of a fake address space, every one counted each time a piece covers it.
struct Coverage {
  std::vector<uint8_t> mem;
  std::vector<int> hits;
  explicit Coverage(size_t n) : mem(n + 64), hits(n + 64, 0) {}
  const char* base() const {  // 16-byte aligned start inside mem
    const auto p = reinterpret_cast<uintptr_t>(mem.data());
    return reinterpret_cast<const char*>((p + 15) & ~uintptr_t(15));
  }
};

void check_split(const L2Prefetch& pf, Coverage& cov, uint32_t parts) {
  std::fill(cov.hits.begin(), cov.hits.end(), 0);
  std::vector<uint64_t> share(parts, 0);
  for (uint32_t part = 0; part < parts; ++part)
    for_each_l2_piece(pf, part, parts, [&](const void* p, uint32_t bytes) {
      ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
      ASSERT_GT(bytes, 0u);
      ASSERT_EQ(bytes % 16, 0u);
      ASSERT_LE(bytes, L2Prefetch::kMaxPiece);
      const size_t off = size_t(static_cast<const char*>(p) - cov.base());
      ASSERT_LE(off + bytes, cov.hits.size());
      for (uint32_t i = 0; i < bytes; ++i) ++cov.hits[off + i];
      share[part] += bytes;
    });
  // Exactly the spans' bytes, once each.
  std::vector<int> want(cov.hits.size(), 0);
  for (int s = 0; s < pf.n; ++s) {
    const L2Span& sp = pf.span[s];
    const size_t off = size_t(static_cast<const char*>(sp.base) - cov.base());
    for (uint32_t r = 0; r < sp.rows; ++r)
      for (uint32_t i = 0; i < sp.bytes; ++i) ++want[off + r * sp.pitch + i];
  }
  ASSERT_EQ(cov.hits, want);
  // Even shares: every part but the last non-empty one gets the same (rounded to 16) amount.
  const uint64_t per = ((pf.total() + parts - 1) / parts + 15) / 16 * 16;
  for (uint32_t part = 0; part < parts; ++part) EXPECT_LE(share[part], per) << part;
}

TEST(L2Prefetch, EveryByteOnceOverAnyNumberOfCtas) {
  Coverage cov(1 << 20);
  const char* b = cov.base();
  L2Prefetch pf;
  ASSERT_TRUE(pf.add(b, 200000));                   // a whole buffer (one row)
  ASSERT_TRUE(pf.add(b + 300000, 37, 1024, 4096));  // a 2D span: the first KB of 37 rows 4 KB apart
  ASSERT_TRUE(pf.add(b + 500000, 3, 96 * 1024, 100 * 1024));  // rows longer than one piece
  EXPECT_EQ(pf.n, 3);
  EXPECT_EQ(pf.total(), 200000u + 37 * 1024 + 3 * 96 * 1024);
  for (uint32_t parts : {1u, 2u, 3u, 7u, 128u, 132u, 1000u, 50000u}) check_split(pf, cov, parts);
}

TEST(L2Prefetch, RandomSpans) {
  std::mt19937 rng(7);
  Coverage cov(1 << 20);
  for (int trial = 0; trial < 50; ++trial) {
    L2Prefetch pf;
    size_t at = 0;
    const int n = 1 + int(rng() % L2Prefetch::kMaxSpans);
    for (int s = 0; s < n; ++s) {
      const uint64_t rows = 1 + rng() % 20, bytes = 16 * (1 + rng() % 600), pitch = bytes + 16 * (rng() % 40);
      if (at + rows * pitch + bytes > (1u << 20)) break;
      ASSERT_TRUE(pf.add(cov.base() + at, rows, bytes, pitch));
      at += rows * pitch + 16 * (rng() % 10);
      at = (at + 15) / 16 * 16;
    }
    check_split(pf, cov, 1 + rng() % 300);
  }
}

TEST(L2Prefetch, SpansTheInstructionCannotTakeAreSkippedAndAFullListSaysSo) {
  Coverage cov(1 << 16);
  const char* b = cov.base();
  L2Prefetch pf;
  EXPECT_TRUE(pf.add(b + 8, 4096));       // misaligned base: skipped (a hint, not an error)
  EXPECT_TRUE(pf.add(b, 10));             // under 16 bytes: nothing left
  EXPECT_TRUE(pf.add(b, 2, 64, 40));      // pitch not a multiple of 16
  EXPECT_TRUE(pf.add(nullptr, 4096));
  EXPECT_EQ(pf.n, 0);
  EXPECT_TRUE(pf.add(b, 1000));           // rounded down to 992
  EXPECT_EQ(pf.total(), 992u);
  for (int i = 1; i < L2Prefetch::kMaxSpans; ++i) EXPECT_TRUE(pf.add(b + 1024 * i, 16));
  EXPECT_FALSE(pf.add(b + 8192, 16));     // full
  EXPECT_EQ(pf.n, L2Prefetch::kMaxSpans);
}

}  // namespace
}  // namespace mosaic::cuda
