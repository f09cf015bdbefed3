// CPU tests of the wgmma kernel's K-split model and dispatch rules (zipper_plan.h): on an H200's 132 SMs (1 CTA per
// SM with 128-token tiles, 2 with 32/64-token tiles) it must pick the split that measured fastest
// for the LLaMA-3-8B layers (bench/results/gemm-h200-2026-11-28-s8-ksplit.md: every split forced,
// wgmma kernel, budget 10%; M = 64 from the plan logs of gemm-h200-2026-11-28-s8-splitk.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/zipper_plan.h"

namespace mosaic::cuda::detail {
namespace {

constexpr int kSms = 132;

// Splits the model picks for a layer of N outputs (128 per CTA) and K inputs (128 per k-tile) at M tokens.
int splits(int64_t N, int64_t K, int64_t M) {
  const int tok = M <= 32 ? 32 : M <= 64 ? 64 : 128;
  const int occ = tok == 128 ? 1 : 2;
  const int k_tiles = int(K / 128);
  const int64_t base = (N + 127) / 128 * ((M + tok - 1) / tok);
  const int per = wgmma_k_tiles_per_cta(k_tiles, base, int64_t(occ) * kSms, tok);
  return (k_tiles + per - 1) / per;
}

TEST(ZipperPlan, PicksTheMeasuredFastestSplitsOnLlama3_8B) {
  struct Case {
    int64_t N, K, M;
    int splits;  // measured fastest (us: this split; the runner-up)
  };
  const Case cases[] = {
      {6144, 4096, 64, 5},     // qkv: one wave of 240 CTAs (plan log)
      {6144, 4096, 128, 2},    // 24.54; none 35.10
      {6144, 4096, 256, 1},    // 35.98; the old model's 4 splits 42.53
      {4096, 4096, 128, 4},    // o: 18.22; 2 splits 23.44
      {4096, 4096, 256, 2},    // 24.53; none 35.06
      {4096, 4096, 512, 1},    // 35.50-35.72; 2 splits 42.49
      {28672, 4096, 128, 1},   // gate_up: 68.46-68.61; 2 splits 81.77
      {28672, 4096, 256, 1},   // 137.23; 2 splits 145.92
      {28672, 4096, 512, 1},   // 237.52; 2 splits 285.50
      {4096, 14336, 128, 4},   // down: 4 x 3584 inputs 37.10; 7 splits 46.27
      {4096, 14336, 256, 2},   // 61.84; 4 splits 72.65
      {4096, 14336, 512, 1},   // 110.90; 4 splits 127.31
  };
  for (const Case& c : cases) EXPECT_EQ(splits(c.N, c.K, c.M), c.splits) << c.N << " x " << c.K << " M=" << c.M;
}

// The stream-K partition (zipper_plan.h, walked the same way by zipper_wgmma.cu): over tiles x k_tiles units and
// P CTAs, every unit belongs to exactly one CTA, each CTA's units are a contiguous run of at least one, a CTA's
// segments are the runs within one tile, and stream_k_segments counts the CTAs that meet each tile (what the
// split-K fix-up waits for). Shapes: the 8B layers on an H200's 264 slots (gate_up at M = 64: 224 tiles x 32
// k-tiles) and small odd ones (P = U: one unit per CTA; a prime number of CTAs).
TEST(ZipperPlan, StreamKPartitionCoversEveryUnitOnceAndCountsTheSegments) {
  struct Case {
    int64_t tiles, k_tiles, P;
  };
  const Case cases[] = {{224, 32, 264}, {48, 32, 264}, {32, 32, 132}, {32, 112, 264}, {192, 32, 264},
                        {3, 5, 15},     {2, 65, 127},  {150, 2, 264}, {7, 3, 5},     {1, 1, 1}};
  for (const Case& c : cases) {
    const int64_t U = c.tiles * c.k_tiles;
    ASSERT_LE(c.P, U);
    std::vector<int> owner(size_t(U), -1);
    std::vector<std::vector<int64_t>> ctas_of_tile(size_t(c.tiles));
    for (int64_t p = 0; p < c.P; ++p) {
      const int64_t u0 = stream_k_first_unit(U, c.P, p), u1 = stream_k_first_unit(U, c.P, p + 1);
      EXPECT_LT(u0, u1) << "CTA " << p << " has no unit";
      for (int64_t u = u0; u < u1;) {  // the kernel's segment walk
        const int64_t t = u / c.k_tiles, n = std::min(u1, (t + 1) * c.k_tiles) - u;
        ASSERT_GT(n, 0);
        ctas_of_tile[size_t(t)].push_back(p);
        for (int64_t v = u; v < u + n; ++v) {
          EXPECT_EQ(owner[size_t(v)], -1) << "unit " << v << " twice";
          owner[size_t(v)] = int(p);
          EXPECT_EQ(stream_k_cta_of(v, U, c.P), p) << "unit " << v;
        }
        u += n;
      }
    }
    EXPECT_EQ(std::count(owner.begin(), owner.end(), -1), 0) << "a unit no CTA takes";
    int most = 0;
    for (int64_t t = 0; t < c.tiles; ++t) {
      EXPECT_EQ(stream_k_segments(t, c.k_tiles, U, c.P), int(ctas_of_tile[size_t(t)].size())) << "tile " << t;
      most = std::max(most, int(ctas_of_tile[size_t(t)].size()));
    }
    EXPECT_EQ(stream_k_max_segments(c.tiles, c.k_tiles, c.P), most);
  }
  EXPECT_EQ(stream_k_max_segments(224, 32, 264), 3);  // gate_up at M = 64: 27.2 k-tiles per CTA, a tile of 32 meets <= 3
  EXPECT_EQ(stream_k_max_segments(2, 65, 130), 65);   // one k-tile per CTA: a tile of 65 segments
}

// The stream-K launch plan and where it is the default, on an H200 (132 SMs, 264 slots of the 32- / 64-token tiles),
// with the grid plans' K splits of the model (wgmma_k_tiles_per_cta): only Qwen3-8B's gate_up at M = 17..64 (192
// tiles x 4 splits, 2.9 waves: measured 9-13% faster with stream-K); LLaMA-3-8B's gate_up (224 tiles, no split),
// qkv, o and down (split into one wave) measured slower and keep the grid, as do layers with a wave of tiles or more.
TEST(ZipperPlan, StreamKWhereTheSplitGridRunsSeveralWaves) {
  const auto splits = [](int64_t tiles, int k_tiles, int64_t slots) {
    const int per = wgmma_k_tiles_per_cta(k_tiles, tiles, slots, 64);
    return (k_tiles + per - 1) / per;
  };
  EXPECT_EQ(splits(192, 32, 264), 4);  // the plan log of the H200 run
  EXPECT_TRUE(stream_k_by_default(192, splits(192, 32, 264), 64, 264));   // Qwen3-8B gate_up
  EXPECT_TRUE(stream_k_by_default(192, splits(192, 32, 264), 32, 264));   // the same at M = 17..32
  EXPECT_FALSE(stream_k_by_default(224, splits(224, 32, 264), 64, 264));  // LLaMA-3-8B gate_up: one wave
  EXPECT_FALSE(stream_k_by_default(48, splits(48, 32, 264), 64, 264));    // qkv
  EXPECT_FALSE(stream_k_by_default(32, 4, 64, 132));                      // o (deeper ring: 4 splits, 132 slots)
  EXPECT_FALSE(stream_k_by_default(32, splits(32, 112, 264), 64, 264));   // down
  EXPECT_FALSE(stream_k_by_default(448, 1, 64, 264));                     // LLaMA-3-70B gate_up: more than a wave
  EXPECT_FALSE(stream_k_by_default(192, 4, 128, 132));                    // the 128-token tile: not built
  const StreamKPlan q = stream_k_plan(192, 32, 264);
  EXPECT_EQ(q.ctas, 264);
  EXPECT_EQ(q.segs, stream_k_max_segments(192, 32, 264));
  EXPECT_EQ(stream_k_plan(32, 32, 132).ctas, 132);   // fewer tiles than SMs (forced only)
  EXPECT_EQ(stream_k_plan(448, 32, 132).ctas, 132);  // several tiles per CTA (forced only)
  EXPECT_EQ(stream_k_plan(3, 2, 264).ctas, 6);       // no more CTAs than units
}

// The deeper ring (wgmma_prefer_deeper_ring) at the 64-token tile (M = 33..64) on the 8B layers: only
// o, whose plan (3 stages, 2 CTAs per SM) cuts K into 8 CTAs of 4 k-tiles, takes 4 stages at 1 CTA per
// SM and 4 splits (measured 8-10% faster); qkv, gate_up and down keep their plans (measured slower
// with it); LLaMA-3-70B's layers and Qwen3-0.6B's o (4 splits either way) too.
TEST(ZipperPlan, DeeperRingOnlyWhereTheCtasAreAllFill) {
  struct Case {
    int64_t N, K;
    bool deeper;
  };
  const Case cases[] = {{6144, 4096, false},  {4096, 4096, true},   {28672, 4096, false}, {4096, 14336, false},
                        {24576, 4096, false}, {4096, 12288, false}, {10240, 8192, false}, {8192, 8192, false},
                        {57344, 8192, false}, {8192, 28672, false}, {1024, 2048, false}};
  for (const Case& c : cases) {
    const int k_tiles = int(c.K / 128);
    const int64_t base = (c.N + 127) / 128;  // one 64-token tile
    const int per = wgmma_k_tiles_per_cta(k_tiles, base, 2 * kSms, 64);
    EXPECT_EQ(wgmma_prefer_deeper_ring(64, k_tiles, per, 3, base, kSms), c.deeper) << c.N << " x " << c.K;
    EXPECT_FALSE(wgmma_prefer_deeper_ring(32, k_tiles, per, 5, base, kSms)) << "only the 64-token tile was measured";
    EXPECT_FALSE(wgmma_prefer_deeper_ring(64, k_tiles, per, 3, base, 0)) << "no deeper ring fits";
  }
}

// The dispatch between the wgmma kernel and dequantize + cuBLAS for M > 16 (the stream kernel
// takes M <= 8) on the LLaMA-3-8B layers, as measured (wgmma_by_default's comment).
TEST(ZipperPlan, WgmmaRangesPerLayer) {
  struct Layer {
    int64_t N, K, last_wgmma_m;
  };
  for (const Layer& l : {Layer{6144, 4096, 256}, Layer{4096, 4096, 512}, Layer{28672, 4096, 512},
                         Layer{4096, 14336, 512}}) {
    EXPECT_FALSE(wgmma_by_default(l.N, l.K, 1)) << l.N << " x " << l.K;
    EXPECT_FALSE(wgmma_by_default(l.N, l.K, 8)) << l.N << " x " << l.K;
    EXPECT_TRUE(wgmma_by_default(l.N, l.K, 17)) << l.N << " x " << l.K;
    EXPECT_TRUE(wgmma_by_default(l.N, l.K, l.last_wgmma_m)) << l.N << " x " << l.K;
    EXPECT_FALSE(wgmma_by_default(l.N, l.K, l.last_wgmma_m + 1)) << l.N << " x " << l.K;
    EXPECT_FALSE(wgmma_by_default(l.N, l.K, 4096)) << l.N << " x " << l.K;
  }
}

// M = 9..16: the 16-token wgmma tile on layers of >= 16 Mi weights (the 8B models' qkv, o, down;
// every LLaMA-3-70B layer), the stream kernel on the 8B models' gate_up and on small layers; the 8B
// models' o (16 Mi weights) only from M = 12 (the stream kernel measured faster at 9..11).
TEST(ZipperPlan, SixteenTokenTileForMidSizeLayers) {
  struct Layer {
    int64_t N, K;
    bool wgmma;      // at M = 12..16
    bool wgmma_low;  // at M = 9..11
  };
  for (const Layer& l : {Layer{6144, 4096, true, true}, Layer{4096, 4096, true, false}, Layer{4096, 14336, true, true},
                         Layer{4096, 12288, true, true}, Layer{28672, 4096, false, false},
                         Layer{24576, 4096, false, false}, Layer{1024, 1024, false, false},
                         Layer{10240, 8192, true, true}, Layer{8192, 8192, true, true}, Layer{57344, 8192, true, true},
                         Layer{8192, 28672, true, true}}) {
    for (int64_t M : {12, 16}) EXPECT_EQ(wgmma_by_default(l.N, l.K, M), l.wgmma) << l.N << " x " << l.K << " M=" << M;
    for (int64_t M : {9, 11})
      EXPECT_EQ(wgmma_by_default(l.N, l.K, M), l.wgmma_low) << l.N << " x " << l.K << " M=" << M;
    EXPECT_FALSE(wgmma_by_default(l.N, l.K, 8)) << l.N << " x " << l.K;
  }
}

TEST(ZipperPlan, KeepsAtLeastFourKTilesPerCtaAndCoversK) {
  for (int k_tiles : {1, 2, 3, 4, 5, 32, 112, 224})
    for (int64_t base : {1, 7, 48, 132, 1000})
      for (int tok : {16, 32, 64, 128}) {
        const int per = wgmma_k_tiles_per_cta(k_tiles, base, 132.0, tok);
        EXPECT_GE(per, k_tiles < 4 ? k_tiles : 4) << k_tiles << " " << base << " " << tok;
        EXPECT_LE(per, k_tiles);
      }
}

// The token-tile remainder (wgmma_tail_rows) on 132 SMs with one 128-token CTA per SM: split off
// where the whole tiles fill the GPU (measured faster: gate_up, LLaMA-3-70B qkv from M = 257), not
// where the layer's K split absorbs the extra tile (o, qkv of the 8B models), and only r <= max.
TEST(ZipperPlan, TileRemainderGoesToASecondLaunchWhereTheTilesFillTheGpu) {
  const int64_t gate_up = 28672 / 128, o = 4096 / 128, qkv8b = 6144 / 128, qkv70b = 10240 / 128;
  struct Case {
    int64_t M, tiles, max_rows, rows;
  };
  const Case cases[] = {
      {129, gate_up, 64, 1},  {144, gate_up, 64, 16}, {160, gate_up, 64, 32},  {192, gate_up, 64, 64},
      {193, gate_up, 64, 0},  {255, gate_up, 64, 0},  {256, gate_up, 64, 0},   {257, gate_up, 64, 1},
      {128, gate_up, 64, 0},  {100, gate_up, 64, 0},  {160, gate_up, 16, 0},   {129, gate_up, 0, 0},
      {129, o, 64, 0},        {144, o, 64, 0},        {129, qkv8b, 64, 0},     {257, qkv8b, 64, 0},
      {257, qkv70b, 64, 1},   {129, qkv70b, 64, 0},
  };
  for (const Case& c : cases)
    EXPECT_EQ(wgmma_tail_rows(c.M, c.tiles, kSms, c.max_rows), c.rows)
        << "M=" << c.M << " output tiles " << c.tiles << " max " << c.max_rows;
}

// The stream-plan tuner's choice of plans to time (ZipperLinear, first call of a layer shape and M).
TEST(ZipperPlan, TuneCandidatesAreTheModelsBestFewOnePerKind) {
  // index 0 is the model's best; kinds 7 (the best's), 8, 9, 10; costs relative to 100.
  const std::vector<double> costs{100, 101, 130, 103, 124, 110, 102, 125.5};
  const std::vector<int64_t> kind{7, 7, 8, 9, 10, 9, 8, 11};
  // Within 25%: 101 (kind 7: the best's own kind, left out), 103 (9), 124 (10), 110 (9 again), 102 (8);
  // 130 and 125.5 are out. Cheapest first, one per kind, at most 4 in all.
  EXPECT_EQ(tune_candidates(costs, kind, 4, 1.25), (std::vector<int>{0, 6, 3, 4}));
  EXPECT_EQ(tune_candidates(costs, kind, 2, 1.25), (std::vector<int>{0, 6}));
  EXPECT_EQ(tune_candidates(costs, kind, 4, 1.0), (std::vector<int>{0}));
  EXPECT_EQ(tune_candidates({100}, {1}, 4, 1.25), (std::vector<int>{0}));
  EXPECT_TRUE(tune_candidates({}, {}, 4, 1.25).empty());
  // `also` kinds come after the margin's, the cheapest plan of each, whatever its cost; a kind already
  // chosen or absent adds nothing.
  EXPECT_EQ(tune_candidates(costs, kind, 4, 1.25, {11, 8, 42}), (std::vector<int>{0, 6, 3, 4, 7}));
  EXPECT_EQ(tune_candidates(costs, kind, 2, 1.25, {10}), (std::vector<int>{0, 6, 4}));
  EXPECT_EQ(tune_candidates(costs, kind, 4, 1.0, {8}), (std::vector<int>{0, 6}));
}

TEST(ZipperPlan, TunePickKeepsTheModelsPlanOnANearTie) {
  // LLaMA-3-8B gate_up at M = 8 with the residual (H200, eleventh session): the model's 2-way K split
  // 40.80 us, 4 warps per row 32.98: kept.
  EXPECT_EQ(tune_pick({40.80f, 32.98f, 39.99f, 33.54f}, 0.03), 1);
  // LLaMA-3-70B gate_up at M = 4: 96.65 (model) vs 99.31 .. and a 2% faster one: the model's stays.
  EXPECT_EQ(tune_pick({96.65f, 106.59f, 105.17f, 99.31f}, 0.03), 0);
  EXPECT_EQ(tune_pick({100.f, 98.f}, 0.03), 0);
  EXPECT_EQ(tune_pick({100.f, 96.f}, 0.03), 1);
  EXPECT_EQ(tune_pick({100.f}, 0.03), 0);
}

// The wgmma K splits the (opt-in) tuner times: the model's, twice and half its split count, no split.
TEST(ZipperPlan, WgmmaTuneKTilesAreTheModelsNeighbours) {
  // K = 4096: 32 k-tiles. Model 8 k-tiles per CTA (4 splits): 8 splits (4), 2 splits (16), no split (32).
  EXPECT_EQ(wgmma_tune_k_tiles(32, 8), (std::vector<int>{8, 4, 16, 32}));
  // Model without a split: twice (2 splits = 16 k-tiles) only; half of 1 is 0, no split is the model's.
  EXPECT_EQ(wgmma_tune_k_tiles(32, 32), (std::vector<int>{32, 16}));
  // At least 4 k-tiles per CTA: 8 splits of 32 is the most, so 4 k-tiles (8 splits) has no twice.
  EXPECT_EQ(wgmma_tune_k_tiles(32, 4), (std::vector<int>{4, 8, 32}));
  // K = 14336 (down): 112 k-tiles; model 28 (4 splits): 14 (8), 56 (2), 112.
  EXPECT_EQ(wgmma_tune_k_tiles(112, 28), (std::vector<int>{28, 14, 56, 112}));
  // Fewer than 4 k-tiles: only the whole K.
  EXPECT_EQ(wgmma_tune_k_tiles(3, 3), (std::vector<int>{3}));
  for (int k = 1; k <= 224; ++k)
    for (int per = std::min(k, 4); per <= k; ++per)
      for (int v : wgmma_tune_k_tiles(k, per)) {
        EXPECT_GE(v, std::min(k, 4)) << k << " " << per;
        EXPECT_LE(v, k);
      }
}

// The stream kernel's row maps (stream_slot): every block row exactly once over the plan's warps,
// each warp's slots increasing in j (the kernel takes a prefix j < nrows), for partial last rounds too.
TEST(ZipperPlan, StreamSlotsCoverEveryRowOnce) {
  for (int map = 0; map <= 2; ++map)
    for (int R : {1, 7, 64, 256, 384, 1792})
      for (int RW : {8, 4, 1, 16})  // row lanes per CTA: 8 warps with KW = 1, 2, 8; 16 warps with KW = 1
        for (int rpw : {1, 2, 3, 7, 32}) {
          const int G = (R + RW * rpw - 1) / (RW * rpw);
          std::vector<int> seen(size_t(R), 0);
          for (int a = 0; a < G; ++a)
            for (int rw = 0; rw < RW; ++rw)
              for (int j = 0; j < rpw; ++j) {
                const int s = stream_slot(map, j, rw, a, RW, G);
                if (j > 0) {
                  ASSERT_GT(s, stream_slot(map, j - 1, rw, a, RW, G));
                }
                if (s >= R) break;
                ++seen[size_t(s)];
              }
          for (int r = 0; r < R; ++r) ASSERT_EQ(seen[size_t(r)], 1) << map << " R=" << R << " RW=" << RW << " rpw=" << rpw;
        }
}

// Rows dealt by weight: the order is by ring tiles, heaviest first, stable; only clustered residuals
// count as uneven; dealt by the snake map, the busiest warp of a plan carries at most one row's
// residual more than the mean, where the default map gives one warp several full rows.
TEST(ZipperPlan, ClusteredResidualRowsAreDealtByWeight) {
  // A K = 4096 layer (32 k-tiles, 64 blocks per row), 1792 rows (LLaMA-3-8B gate_up).
  const int R = 1792, k_tiles = 32;
  std::vector<int> even(static_cast<size_t>(R), 0), clustered(static_cast<size_t>(R), 0);
  uint32_t y = 777;  // a binomial residual: each of a row's 64 blocks kept with probability 0.1 (bench gemm's default)
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 64; ++c) {
      y = y * 1664525u + 1013904223u;
      even[size_t(r)] += (y >> 8) % 10 == 0;
    }
  // A tenth of the rows full, at pseudo-random places (bench e2e --res-rows 1): some warps of the default
  // map get two or more of them.
  uint32_t x = 12345;
  std::vector<int32_t> full;
  for (int r = 0; r < R; ++r) {
    x = x * 1664525u + 1013904223u;
    if ((x >> 8) % 10 == 0) {
      clustered[size_t(r)] = 64;
      full.push_back(r);
    }
  }
  EXPECT_FALSE(residual_rows_uneven(even, k_tiles));
  EXPECT_TRUE(residual_rows_uneven(clustered, k_tiles));
  EXPECT_FALSE(residual_rows_uneven(std::vector<int>(size_t(R), 64), k_tiles));  // all rows full: even
  const std::vector<int32_t> order = residual_row_order(clustered);
  ASSERT_EQ(order.size(), size_t(R));
  ASSERT_GT(full.size(), size_t(100));
  for (size_t i = 0; i < full.size(); ++i) EXPECT_EQ(order[i], full[i]);  // the full rows first, in index order
  EXPECT_LT(order[full.size()], order[full.size() + 1]);                 // then the rest, in index order
  EXPECT_EQ(order.back(), full.back() == R - 1 ? R - 2 : R - 1);
  // Plans of one CTA row lane per 8 warps (kw 8) with 7 rows per warp, and of kw 1 with 2 rows per warp.
  for (auto [kw, rpw] : {std::pair{8, 7}, std::pair{1, 2}, std::pair{2, 4}}) {
    const int RW = kWarps / kw, G = (R + RW * rpw - 1) / (RW * rpw);
    const double dealt = stream_residual_imbalance(clustered, order, 2, G, kw, rpw, 1);
    const double plain = stream_residual_imbalance(clustered, {}, 0, G, kw, rpw, 1);
    const double row = (64 / kw + 1) / 2;  // one full row's ring tiles per warp
    EXPECT_LE(dealt, row) << kw << " " << rpw;
    EXPECT_GT(plain, dealt) << kw << " " << rpw;
  }
  // 16 warps per CTA (twice the row lanes): the same bound.
  for (auto [kw, rpw] : {std::pair{4, 7}, std::pair{1, 3}}) {
    const int RW = 16 / kw, G = (R + RW * rpw - 1) / (RW * rpw);
    const double dealt = stream_residual_imbalance(clustered, order, 2, G, kw, rpw, 1, 16);
    EXPECT_LE(dealt, (64 / kw + 1) / 2) << kw << " " << rpw;
    EXPECT_GT(stream_residual_imbalance(clustered, {}, 0, G, kw, rpw, 1, 16), dealt) << kw << " " << rpw;
  }
  // With a residual spread evenly over the rows the imbalance stays below a row's share.
  EXPECT_LE(stream_residual_imbalance(even, {}, 0, 256, 8, 7, 1), 6.0);
  EXPECT_GE(*std::max_element(even.begin(), even.end()), 14);  // the fullest binomial row, still not uneven
}

}  // namespace
}  // namespace mosaic::cuda::detail
