// The decode attention's split plan (src/gpu/decode_plan.h): pure host code, runs without a GPU.
// Pins the plans measured fastest end to end on an H200 (LLaMA-3-8B: 8 kv heads, one head chunk,
// 132 SMs, 8 keys per CTA pass; bench/results/e2e-h200-2026-11-28-s11-cluster.md).
#include <gtest/gtest.h>

#include "gpu/decode_plan.h"

namespace mosaic::gpu::kern::detail {
namespace {

DecodeSplits plan(int B, int64_t keys, ClusterMerge mode = ClusterMerge::Auto, int max_splits = 0) {
  return decode_split_plan(int64_t(B) * 8, keys, 132, 2, 8, max_splits, mode);
}

TEST(DecodePlan, ClusterMergeForShortBatchesWithFewKeysPerCta) {
  // Batch 1, 2176 keys: 16 splits in a cluster (step 2.698 ms vs 2.778 with 33 splits merged globally).
  EXPECT_EQ(plan(1, 2176).nsplit, 16);
  EXPECT_TRUE(plan(1, 2176).cluster);
  // Batch 1, 192 keys: 4 (cluster of 4: 2.484 ms, of 8: 2.488, global 24 splits: 2.676).
  EXPECT_EQ(plan(1, 192).nsplit, 4);
  EXPECT_TRUE(plan(1, 192).cluster);
  EXPECT_EQ(plan(1, 256).nsplit, 8);
  // Batch 4, 192 keys: clusters of 4 fill the SMs once (2.896 ms vs 2.980 global).
  EXPECT_EQ(plan(4, 192).nsplit, 4);
  EXPECT_TRUE(plan(4, 192).cluster);
  // Batch 2..4 at 2176 keys: a cluster would give a CTA >= 264 keys (measured 2-15% slower): global.
  for (int B : {2, 3, 4}) {
    const DecodeSplits p = plan(B, 2176);
    EXPECT_FALSE(p.cluster) << B;
    EXPECT_EQ(p.nsplit, (264 + 8 * B - 1) / (8 * B)) << B;  // ~2 CTAs per SM
  }
  // Batch 16: 128 groups leave no room for a cluster per group.
  EXPECT_FALSE(plan(16, 192).cluster);
}

TEST(DecodePlan, SplitCountsStayInRange) {
  for (int B : {1, 2, 3, 5, 16, 64, 200})
    for (int64_t keys : {1, 2, 7, 8, 9, 64, 100, 193, 1000, 4096, 131072})
      for (ClusterMerge m : {ClusterMerge::Auto, ClusterMerge::Off, ClusterMerge::On}) {
        const DecodeSplits p = plan(B, keys, m);
        EXPECT_GE(p.nsplit, 1);
        EXPECT_LE(p.nsplit, p.cluster ? kMaxClusterSplits : kMaxDecodeSplits);
        EXPECT_LE(p.nsplit, std::max<int64_t>(1, keys / 8)) << "a CTA gets at least one pass of keys";
        if (p.cluster) {
          EXPECT_GE(p.nsplit, 2);
          if (m == ClusterMerge::Auto) {
            EXPECT_EQ(p.nsplit & (p.nsplit - 1), 0) << "power-of-two clusters";
          }
        }
        if (m == ClusterMerge::Off) {
          EXPECT_FALSE(p.cluster);
        }
        // The global plan has the most splits: the scratch sized for it covers every plan.
        EXPECT_LE(p.nsplit, plan(B, keys, ClusterMerge::Off).nsplit);
      }
  // A cap (MOSAIC_DECODE_SPLITS) lowers both plans.
  EXPECT_EQ(plan(1, 2176, ClusterMerge::Auto, 4).nsplit, 4);
  EXPECT_EQ(plan(1, 2176, ClusterMerge::Off, 4).nsplit, 4);
  // Forced cluster merge: the global plan capped at 16, clustered when split.
  EXPECT_EQ(plan(2, 2176, ClusterMerge::On).nsplit, 16);
  EXPECT_TRUE(plan(2, 2176, ClusterMerge::On).cluster);
  EXPECT_FALSE(plan(1, 5, ClusterMerge::On).cluster);
}

// The tensor-core key loop (head_dim 128) clusters up to 272 keys per CTA: batch 2 at 2176 keys is a cluster
// of 8 (+5.3% end to end on an H200 against the global merge); batch 4 keeps the global plan (a cluster of 4,
// 544 keys per CTA, measured 2.3% slower); batch 1 as the scalar plan (bench/results/e2e-h200-2026-11-29-s17-attn-plan.md).
TEST(DecodePlan, TensorCoreLoopClustersUpTo272KeysPerCta) {
  auto plan_mma = [](int B, int64_t keys) {
    return decode_split_plan(int64_t(B) * 8, keys, 132, 2, 8, 0, ClusterMerge::Auto, kClusterMaxKeysPerCtaMma);
  };
  EXPECT_EQ(plan_mma(2, 2176).nsplit, 8);
  EXPECT_TRUE(plan_mma(2, 2176).cluster);
  EXPECT_FALSE(plan(2, 2176).cluster);
  for (int B : {1, 4, 8, 16}) {
    EXPECT_EQ(plan_mma(B, 2176).nsplit, plan(B, 2176).nsplit) << B;
    EXPECT_EQ(plan_mma(B, 2176).cluster, plan(B, 2176).cluster) << B;
  }
  EXPECT_FALSE(plan_mma(4, 2176).cluster);
}

TEST(DecodePlan, KeyBoundsArePowersOfTwoCappedAtCapacity) {
  EXPECT_EQ(decode_keys_bound(1, 4096), 64);
  EXPECT_EQ(decode_keys_bound(64, 4096), 64);
  EXPECT_EQ(decode_keys_bound(65, 4096), 128);
  EXPECT_EQ(decode_keys_bound(2049, 4096), 4096);
  EXPECT_EQ(decode_keys_bound(2049, 2176), 2176);
  EXPECT_EQ(decode_keys_bound(10, 32), 32);
}

}  // namespace
}  // namespace mosaic::gpu::kern::detail
