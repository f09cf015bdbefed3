// Host-side plan models of the ZipperEngine kernels: pure functions of the layer and the GPU's
// resident-CTA slots, so a CPU test (tests/cuda/test_zipper_plan.cpp) can pin them to the plans
// measured fastest on the GPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/zipper_launch.h"

namespace mosaic::cuda::detail {

// A wgmma CTA's fixed cost in k-tiles: filling its ring and its epilogue. With 128-token tiles
// (5 stages of 40 KB, 1 CTA per SM) 2 made the plan split qkv and gate_up at M = 256 into 3 and 7
// waves, 15% and 6% slower than no split (H200, eighth session, MOSAIC_ZIPPER_WGMMA_KSPLIT forced:
// bench/results/gemm-h200-2026-11-28-s8-ksplit.md); 6 keeps every other measured 128-token plan.
// The smaller tiles (16-24 KB stages, 2 CTAs per SM) keep 2, measured right at M = 17..64.
inline double wgmma_cta_fixed_tiles(int tok) { return tok == 128 ? 6.0 : 2.0; }

// The wgmma kernel's K split: k-tiles per CTA for a layer of k_tiles k-tiles whose output and
// token tiles make base_ctas CTAs, with `slots` CTAs resident at once. Model: waves of resident CTAs
// x (k-tiles per CTA + the fixed cost), + 1 for the split-K fix-up; ties go to fewer splits; at
// least 4 k-tiles per CTA (or all of them).
inline int wgmma_k_tiles_per_cta(int k_tiles, int64_t base_ctas, int64_t slots, int tok) {
  double best = 1e30;
  int best_per = k_tiles;
  const int lo = k_tiles < 4 ? k_tiles : 4;
  for (int per = k_tiles; per >= lo; --per) {
    const int splits = (k_tiles + per - 1) / per;
    const double waves = static_cast<double>((base_ctas * splits + slots - 1) / slots);
    const double cost = waves * (per + wgmma_cta_fixed_tiles(tok)) + (splits > 1 ? 1.0 : 0.0);
    if (cost < best * 0.999) {
      best = cost;
      best_per = per;
    }
  }
  return best_per;
}

// One ring stage deeper at the occupancy that leaves (1 CTA per SM instead of 2), with the K split
// the model picks for those slots, for 64-token tiles whose CTAs hold too few k-tiles to reach a
// steady state (per <= stages + 1: the ring's fill is most of the CTA's life), when the deeper plan
// still runs in one wave with at most half the splits. The cost model above cannot see this (it
// charges a CTA per k-tile, not for a ring that never fills). Measured, forced (H200, twenty-fifth
// session, bench/results/gemm-h200-2026-11-30-s25-wgmma-stages-ksplit.md): LLaMA-3-8B o (N = K = 4096)
// at M = 33 / 64 15.04 -> 13.51 / 15.12 -> 13.90 us with 4 stages and 4 splits against 3 stages and 8
// splits of 4 k-tiles; qkv (7 k-tiles per CTA), gate_up (32) and down (14) were slower so and do
// not pass this test. deep_slots: resident CTAs with the deeper ring (0: it does not fit).
inline bool wgmma_prefer_deeper_ring(int tok, int k_tiles, int per, int stages, int64_t base, int64_t deep_slots) {
  if (tok != 64 || per > stages + 1 || deep_slots <= 0) return false;
  const int splits = (k_tiles + per - 1) / per;
  const int per_d = wgmma_k_tiles_per_cta(k_tiles, base, deep_slots, tok);
  const int splits_d = (k_tiles + per_d - 1) / per_d;
  return base * splits_d <= deep_slots && 2 * splits_d <= splits;
}

// ---- stream-K partition of the wgmma kernel (f.sk_ctas > 0; zipper_wgmma.cu walks it on the device) ----
// U = tiles x k_tiles units (one k-tile of one CTA tile, tile-major) over P persistent CTAs: CTA p takes
// units [U p / P, U (p + 1) / P), i.e. a run of segments (a tile's k-tiles within the range). Why: where
// the output tiles do not fill whole waves of resident CTAs (LLaMA-3-8B gate_up at M = 33..64: 224
// tiles in 264 slots, 92 SMs with two tiles and 40 with one; ncu, twenty-seventh session) or a K split
// leaves CTAs of a few k-tiles that never reach a steady state, every SM gets the same share of k-tiles
// and the ring flows from one segment into the next.
#if defined(__CUDACC__)
#define MOSAIC_PLAN_HD __host__ __device__
#else
#define MOSAIC_PLAN_HD
#endif
MOSAIC_PLAN_HD inline int64_t stream_k_first_unit(int64_t U, int64_t P, int64_t p) { return U * p / P; }
// The CTA whose units hold unit u (the largest p with U p / P <= u).
MOSAIC_PLAN_HD inline int64_t stream_k_cta_of(int64_t u, int64_t U, int64_t P) { return ((u + 1) * P - 1) / U; }
// CTAs that share tile t (its segments; > 1: the split-K fix-up sums them).
MOSAIC_PLAN_HD inline int stream_k_segments(int64_t t, int64_t k_tiles, int64_t U, int64_t P) {
  return int(stream_k_cta_of((t + 1) * k_tiles - 1, U, P) - stream_k_cta_of(t * k_tiles, U, P) + 1);
}
#undef MOSAIC_PLAN_HD
// The most CTAs any tile is shared by (the fix-up's workspace holds that many - 1 slices).
inline int stream_k_max_segments(int64_t tiles, int64_t k_tiles, int64_t P) {
  int most = 1;
  for (int64_t t = 0; t < tiles; ++t) most = std::max(most, stream_k_segments(t, k_tiles, tiles * k_tiles, P));
  return most;
}

// A stream-K launch: `ctas` CTAs (every resident slot, at most one per unit); `segs`: the most CTAs one tile is
// shared by. ctas = 0: none (no work).
struct StreamKPlan {
  int ctas = 0, segs = 1;
};
inline StreamKPlan stream_k_plan(int64_t tiles, int64_t k_tiles, int64_t slots) {
  StreamKPlan p;
  if (tiles <= 0 || k_tiles <= 0 || slots <= 0) return p;
  p.ctas = int(std::min(slots, tiles * k_tiles));
  p.segs = stream_k_max_segments(tiles, k_tiles, p.ctas);
  return p;
}
// Where the wgmma kernel's plan runs stream-K by default: its tiles are fewer than the resident slots but its K
// split makes the grid more than one wave (Qwen3-8B gate_up at M = 17..64: 192 tiles x 4 splits = 768 CTAs of 8
// k-tiles in 264 slots, 2.9 waves). There stream-K runs one wave of equal shares (23.3 k-tiles each) with a
// ring that never drains. Measured (H200, twenty-seventh session, bench/results/gemm-h200-2026-11-30-s27-
// stream-k.md, same binary against the grid): Qwen3-8B gate_up -9..-13% at M = 17..64; where the grid is one
// wave stream-K loses: LLaMA-3-8B gate_up (224 tiles, no split) +3..+5%, qkv / o / down (split into one wave)
// +6..+21% (its own cost: a second epilogue and fix-up per CTA). Also refuted: the first SMs' worth of tiles
// whole and stream-K over the rest (no gain on either gate_up).
inline bool stream_k_by_default(int64_t tiles, int splits, int tok, int64_t slots) {
  return tok <= 64 && tiles < slots && tiles * splits > slots;
}

// Where GemmPath::Auto sends M > 16 to the wgmma kernel rather than dequantize + cuBLAS: where it
// measured faster (H200, eighth session, budgets 0 and 10%, bench/results/gemm-h200-2026-11-28-
// s8-splitk.md, ...-s8-diet.md, after the split-K fix-up without atomics): every LLaMA-3-8B layer
// up to M = 512 except the small wide qkv (N > K, < 40 Mi weights), up to 256 there: with 4 K-splits
// it tied the dequantize path at 256 (42.78 vs 42.25 us) and lost at 512 (63.71 vs 56.07); without
// a split (the model since wgmma_cta_fixed_tiles = 6) it took 35.98 us at 256 where 4 splits took
// 42.53 in the same call (...-s8-ksplit.md). From M = 1024 on the dequantize path wins on all four.
//
// M = 9..16 (tenth session, H200, bench/results/gemm-h200-2026-11-28-s10-tok16.md: the 16-token
// tile against the stream kernel in the same calls): the wgmma kernel wins on every layer of at
// least 16 Mi weights (at M = 16: LLaMA-3-8B qkv 12.9 vs 16.6 us, o 11.0 vs 12.8, down 20.5 vs
// 25.5; LLaMA-3-70B qkv 27.1 vs 38.5, o 21.9 vs 33.2, gate_up 130.4 vs 171.0, down 61.7 vs 67.9)
// except the 8B models' gate_up (N > 4 K within one wave of output tiles, < 128 Mi weights):
// Qwen3-8B's is slower on it (35.2 vs 32.8 us), LLaMA-3-8B's about even; those, M <= 8 and the
// small layers keep the stream kernel. Since the stream kernel may run 16 warps per CTA (twenty-fifth
// session) it wins again below M = 12 on layers of < 20 Mi weights (the 8B models' o, 16 Mi): o at
// M = 9 / 10 / 11 10.1 / 10.7 / 10.6 us against 11.2 on the wgmma kernel, at 12 a tie (11.2 vs 11.0),
// at 16 slower (12.5 vs 11.1); qkv (24 Mi) gains only at M = 9 (-3..-4%) and ties or loses from 10
// (H200, twenty-sixth session, two processes each, bench/results/gemm-h200-2026-11-30-s26-m9-16.md).
inline bool wgmma_by_default(int64_t N, int64_t K, int64_t M) {
  const int64_t weights = N * K;
  if (M >= 9 && M <= 11 && weights < (int64_t(20) << 20)) return false;
  if (M >= 9 && M <= 16) return weights >= (int64_t(16) << 20) && !(N > 4 * K && weights < (int64_t(128) << 20));
  const bool small_wide = N > K && weights < (int64_t(40) << 20);
  return M >= 17 && M <= (small_wide ? 256 : 512);
}

// Rows of M = 128 q + r (q >= 1) that Auto runs as a second launch after the wgmma kernel's q
// 128-token tiles (ZipperLinear::gemm), or 0. Worth it where the q tiles alone fill the GPU
// (output tiles x q >= the resident CTAs): there one more tile costs a whole wave (LLaMA-3-8B
// gate_up, 224 output tiles: M = 129 153.9 us against 94.1 split, M = 160 145.1 against 108.0);
// layers with fewer output tiles split K and absorb the extra tile for less than a second launch
// costs (o, 32 tiles: M = 129 25.0 us vs 18.2 at 128). r up to max_rows (<= 64: the stream kernel
// takes r <= 16, the wgmma kernel's 32- / 64-token tiles the rest). H200, ninth session,
// bench/results/gemm-h200-2026-11-28-s9-tail.md.
inline int64_t wgmma_tail_rows(int64_t M, int64_t output_tiles, int64_t slots, int64_t max_rows) {
  const int64_t q = M / 128, r = M % 128;
  if (q < 1 || r < 1 || r > max_rows) return 0;
  return output_tiles * q >= slots ? r : 0;
}

// The wgmma kernel's K splits the first-use tuner times (ZipperLinear, MOSAIC_ZIPPER_TUNE_WGMMA=1;
// prepared in the eleventh session, not measured yet): the model's k-tiles per CTA, then those of
// twice and half its split count and of no split, each kept to >= 4 k-tiles per CTA (or all of them)
// and listed once. Returns k-tiles per CTA, the model's first.
inline std::vector<int> wgmma_tune_k_tiles(int k_tiles, int model_per) {
  std::vector<int> out{model_per};
  const int s0 = (k_tiles + model_per - 1) / model_per;
  const int max_splits = std::max(1, k_tiles / std::min(k_tiles, 4));
  for (int sp : {2 * s0, s0 / 2, 1}) {
    if (sp < 1 || sp > max_splits) continue;
    const int per = (k_tiles + sp - 1) / sp;
    if (std::find(out.begin(), out.end(), per) == out.end()) out.push_back(per);
  }
  return out;
}

// Stream-plan tuning at first use (ZipperLinear, eleventh session). Which plans to time: the model's
// best (index 0 of `costs`) and up to max_cands - 1 others whose modelled cost is within `margin` of
// it, cheapest first; `kind[i]` names a plan's (K range, warps per row): only one per kind (its
// rows-per-warp variants cost about the same). Returns indices into costs.
// `also`: kinds timed besides, whatever their modelled cost (the cheapest plan of each, after the
// margin's candidates): the best plan's neighbours in warps per row at the same K range, which the
// model prices worst (twelfth session, H200: LLaMA-3-8B o at M = 4, K range 4096 with 4 warps per row
// 9.26 us against the model's 8 warps per row 10.67, outside the 25% margin).
inline std::vector<int> tune_candidates(const std::vector<double>& costs, const std::vector<int64_t>& kind,
                                        int max_cands, double margin, const std::vector<int64_t>& also = {}) {
  std::vector<int> out;
  if (costs.empty()) return out;
  out.push_back(0);
  const auto add_also = [&]() {
    for (int64_t k : also) {
      int pick = -1;
      for (int i = 0; i < int(costs.size()); ++i)
        if (kind[size_t(i)] == k && (pick < 0 || costs[size_t(i)] < costs[size_t(pick)])) pick = i;
      bool seen = false;
      for (int j : out) seen = seen || kind[size_t(j)] == k;
      if (pick >= 0 && !seen) out.push_back(pick);
    }
  };
  std::vector<int> rest;
  for (int i = 1; i < int(costs.size()); ++i)
    if (kind[size_t(i)] != kind[0] && costs[size_t(i)] <= costs[0] * margin) rest.push_back(i);
  std::stable_sort(rest.begin(), rest.end(), [&](int a, int b) { return costs[size_t(a)] < costs[size_t(b)]; });
  for (int i : rest) {
    if (int(out.size()) >= max_cands) break;
    bool seen = false;
    for (int j : out) seen = seen || kind[size_t(j)] == kind[size_t(i)];
    if (!seen) out.push_back(i);
  }
  add_also();
  return out;
}
// Which timed candidate to keep: the fastest, unless it beats the model's plan (index 0) by less
// than min_gain (a near-tie is timing noise: H200, LLaMA-3-70B gate_up at M = 4 picked its 96.7 or a
// 99.3 us plan in two runs).
inline int tune_pick(const std::vector<float>& ms, double min_gain) {
  if (ms.empty()) return 0;
  const int win = int(std::min_element(ms.begin(), ms.end()) - ms.begin());
  return ms[size_t(win)] > ms[0] * (1.0 - min_gain) ? 0 : win;
}

// Residual blocks of each block row, from the CSR row pointers (N/16 + 1 entries).
inline std::vector<int> residual_row_counts(const std::vector<int32_t>& rowptr) {
  std::vector<int> kept(rowptr.empty() ? 0 : rowptr.size() - 1);
  for (size_t r = 0; r < kept.size(); ++r) kept[r] = rowptr[r + 1] - rowptr[r];
  return kept;
}

// Where the residual clusters in a few block rows (real checkpoints: whole rows of v_proj, k_proj,
// kernels-notes eighteenth session), the stream kernel deals the rows out by weight
// (DeviceLayer::res_row_order). Uneven: the fullest row carries at least max(2, k_tiles / 4) ring
// tiles (two blocks each) more than the mean row, i.e. >= 1/4 of a row's dense tiles. A binomial
// 10% residual of a K = 4096 layer (mean 6.4, fullest ~16 of 64 blocks: 5 tiles over the mean) is
// not: with k_tiles / 8 it was, and the order plus the plan model's imbalance term made LLaMA-3-8B
// qkv at M = 4 10% slower (H200, nineteenth session); rows half full or more are.
// MOSAIC_ZIPPER_ROW_ORDER = 0 / 1 forces it off / on.
inline bool residual_rows_uneven(const std::vector<int>& kept, int k_tiles) {
  if (kept.empty()) return false;
  double sum = 0;
  int most = 0;
  for (int k : kept) {
    sum += (k + 1) / 2;
    most = std::max(most, (k + 1) / 2);
  }
  return most - sum / double(kept.size()) >= std::max(2.0, k_tiles / 4.0);
}

// The row order: block rows by ring tiles, most first, ties by index (light rows keep their order).
inline std::vector<int32_t> residual_row_order(const std::vector<int>& kept) {
  std::vector<int32_t> order(kept.size());
  for (size_t r = 0; r < kept.size(); ++r) order[r] = int32_t(r);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return (kept[size_t(a)] + 1) / 2 > (kept[size_t(b)] + 1) / 2; });
  return order;
}

// A stream plan's residual imbalance in ring tiles: the busiest warp's residual tiles minus the mean
// warp's, with the rows dealt as the kernel deals them (stream_slot's map; slot s holds row
// order[s], or row s with an empty order). Plan: G CTAs of RW = warps / kw row lanes, rpw rows each, K
// split over `splits` CTAs (a row's blocks counted evenly over the splits: the kernel's K-ranges
// hold whatever falls in them) and over the kw warps of a row lane. The stream plan model adds it
// to a residual plan's cost where the rows are uneven (the slowest warp sets the kernel's time).
inline double stream_residual_imbalance(const std::vector<int>& kept, const std::vector<int32_t>& order, int map,
                                        int G, int kw, int rpw, int splits, int warps = kWarps) {
  const int R = int(kept.size()), RW = warps / kw;
  if (R == 0 || G <= 0) return 0.0;
  double total = 0, most = 0;
  for (int a = 0; a < G; ++a)
    for (int rw = 0; rw < RW; ++rw) {
      int load = 0;
      for (int j = 0; j < rpw; ++j) {
        const int s = stream_slot(map, j, rw, a, RW, G);
        if (s >= R) break;
        const int k = kept[size_t(order.empty() ? s : order[size_t(s)])];
        const int per_split = (k + splits - 1) / splits, per_warp = (per_split + kw - 1) / kw;
        load += (per_warp + 1) / 2;
      }
      total += load;
      most = std::max(most, double(load));
    }
  return most - total / (double(G) * RW);
}

}  // namespace mosaic::cuda::detail
