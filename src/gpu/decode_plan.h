// The split plan of the decode attention kernel (decode_attention.cu): a pure function of the
// batch's work groups, the keys to attend and the GPU's SM count, so a CPU test
// (tests/gpu/test_decode_plan.cpp) can pin it to the plans measured fastest on the GPU.
#pragma once
#include <algorithm>
#include <cstdint>

namespace mosaic::gpu::kern::detail {

// How the splits of one (sequence, kv head, head chunk) group are merged: through global partials
// and an arrival counter (the last CTA merges), or as one thread-block cluster through distributed
// shared memory. Auto picks by decode_split_plan's rule; Off / On are for tests and tuning
// (MOSAIC_DECODE_CLUSTER=0 / 1).
enum class ClusterMerge { Auto, Off, On };

struct DecodeSplits {
  int nsplit = 1;        // CTAs per group, each taking an even share of the keys
  bool cluster = false;  // the group's CTAs are one cluster and merge in distributed shared memory
};

constexpr int kMaxDecodeSplits = 256;
constexpr int kMaxClusterSplits = 16;  // the non-portable cluster size limit on sm_90

// groups: B x Hkv x head chunks; keys: the most keys a sequence of the step is expected to attend
// to (the plan is fixed while a CUDA graph replays it; more keys stay correct, only slower); keys_per_pass: keys one CTA takes per pass of
// its warps (the split count never leaves a CTA less than one pass); ctas_per_sm: the global-merge
// plan's target (2).
//
// Global merge: about ctas_per_sm CTAs per SM in all. Cluster merge (measured on an H200,
// LLaMA-3-8B, eleventh session, bench/results/e2e-h200-2026-11-28-s11-cluster.md): it saves the
// merge's fence, counter atomic and the last CTA's two L2 rounds (a chain of latencies that
// dominates a short batch-1 step), but its CTAs are gang-scheduled and it caps the splits at 16.
// It won wherever the whole grid fits in one CTA per SM with <= ~136 keys per CTA (batch 1 at 192
// and 2176 keys: step 2.676 -> 2.488 ms, 2.778 -> 2.698; batch 2..4 at 192 keys: -2.7..-3.5%) and
// lost wherever a CTA had >= 264 keys (batch 2..4 at 2176 keys: +2..15%). So: a power-of-two split
// count of ~48 keys per CTA, at most 16 and at most SMs / groups; cluster iff >= 2 splits and
// <= kClusterMaxKeysPerCta keys per CTA.
constexpr int64_t kClusterKeysPerCta = 48, kClusterMaxKeysPerCta = 192, kClusterMaxKeysPerCtaMma = 272;

// max_cluster_keys: kClusterMaxKeysPerCta for the scalar key loop; the tensor-core loop (head_dim 128) takes
// kClusterMaxKeysPerCtaMma: H200, LLaMA-3-8B W4A16, 2176 keys, batch 2: a cluster of 8 (272 keys per CTA)
// 731.2 tok/s against the global merge of 17 splits 694.2 (+5.3%); batch 4 kept the global plan (g9 1307.0
// tok/s against c4, 544 keys per CTA, 1277.9) (bench/results/e2e-h200-2026-11-29-s17-attn-plan.md).
inline DecodeSplits decode_split_plan(int64_t groups, int64_t keys, int sms, int ctas_per_sm, int keys_per_pass,
                                      int max_splits, ClusterMerge mode,
                                      int64_t max_cluster_keys = kClusterMaxKeysPerCta) {
  groups = std::max<int64_t>(1, groups);
  keys = std::max<int64_t>(1, keys);
  const int64_t target = int64_t(std::max(1, ctas_per_sm)) * std::max(1, sms);
  const int64_t by_keys = std::max<int64_t>(1, keys / std::max(1, keys_per_pass));
  DecodeSplits p;
  p.nsplit = int(std::clamp<int64_t>((target + groups - 1) / groups, 1, std::min<int64_t>(kMaxDecodeSplits, by_keys)));
  if (max_splits > 0) p.nsplit = std::min(p.nsplit, max_splits);
  if (mode == ClusterMerge::On) {
    p.nsplit = std::min(p.nsplit, kMaxClusterSplits);
    p.cluster = p.nsplit > 1;
    return p;
  }
  if (mode == ClusterMerge::Off) return p;
  const int64_t fit = std::min<int64_t>({kMaxClusterSplits, std::max(1, sms) / groups, by_keys});
  int64_t n = 1;
  while (n < fit && n * kClusterKeysPerCta < keys) n *= 2;  // power of two: the cluster divides the grid evenly
  if (n > fit) n /= 2;
  if (max_splits > 0) n = std::min<int64_t>(n, max_splits);
  if (n >= 2 && (keys + n - 1) / n <= max_cluster_keys) {
    p.nsplit = int(n);
    p.cluster = true;
  }
  return p;
}

// The key bound a decode step's plan is made for: the longest sequence's keys after this step's
// append, rounded up to a power of two (>= 64) and capped at the cache capacity, so the engine
// captures one CUDA graph per bound (a handful over a generation) rather than one per length.
inline int64_t decode_keys_bound(int64_t max_len_after, int64_t cap) {
  int64_t b = 64;
  while (b < max_len_after) b *= 2;
  return std::min(b, std::max<int64_t>(1, cap));
}

}  // namespace mosaic::gpu::kern::detail
