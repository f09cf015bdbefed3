// The MosaicQuant sparse residual: R = W - deq(base) cut into Br x Bc blocks; each block scored
// (Delta-Hessian by default), the top blocks within a budget kept and quantized to 4 bits with
// one fp16 scale per block row (docs/format.md), stored as CSR over block rows.
// On a GPTQ base the literal R hurts (GPTQ's errors cancel in X W^T; adding back part of them
// breaks that), so by default quantize_mosaic selects blocks on GPTQ's own rounding errors and
// re-runs GPTQ with the residual inside its loop (MosaicOptions::residual_in_gptq).
#pragma once
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "quant/gptq.h"
#include "format/packed_linear.h"
#include "quant/rtn.h"

namespace mosaic {

enum class BlockScorer {
  kDeltaHessian,      // method.md: [sum h_j R_ij^2 - sum h_j (R_ij - deq(Q(R))_ij)^2]_+, h = diag(H)
  kFullHessian,       // ours: the exact distortion drop tr(D H D^T) - tr((D-Q) H (D-Q)^T) of keeping
                      // this block alone (D = R, full H); needs H, costs one N x K x K GEMM
  kResidualMagnitude, // ablation: sum R_ij^2
  kWeightMagnitude,   // ablation: sum W_ij^2
};
BlockScorer parse_block_scorer(std::string_view name);  // delta_hessian|full_hessian|residual|weight
const char* block_scorer_name(BlockScorer s);

// Quantizes one block of R (rows ld apart) to symmetric 4 bits, one fp16 scale per row
// (max|r| / 7.5, codes -8..7). Writes Br*Bc/2 packed bytes and Br scales; `deq` (Br*Bc, may be
// null) receives the dequantized block exactly as docs/format.md reconstructs it.
void quantize_residual_block(const float* R, int64_t ld, int Br, int Bc, uint8_t* packed,
                             uint16_t* scales, float* deq);

// R = W - dequantize_base(base), row-major [N, K].
std::vector<float> base_residual(std::span<const float> W, const PackedLinear& base);

// One score per block, block-row-major (block b = r * (K/Bc) + c). `H` is the full [K, K]
// Hessian: only its diagonal is read unless scorer == kFullHessian; it may be empty for the
// magnitude scorers. Throws mosaic::Error on sizes or a block shape that does not tile W.
std::vector<double> score_blocks(std::span<const float> W, std::span<const float> R, int64_t N,
                                 int64_t K, std::span<const float> H, int Br, int Bc,
                                 BlockScorer scorer);

// The `count` highest-scoring block ids, ascending (ties: the lower id wins, so the choice is
// deterministic). 0 <= count <= scores.size().
std::vector<int64_t> select_top_blocks(std::span<const double> scores, int64_t count);

// Tile-balanced variant for the fused GPU kernel, whose output tiles take longer the more
// residual blocks they hold: the same greedy by score, but no tile (tile_block_rows consecutive
// block rows) gets more than `cap` blocks. cap * number of tiles must be >= count.
std::vector<int64_t> select_top_blocks_balanced(std::span<const double> scores, int64_t nbc,
                                                int64_t count, int64_t tile_block_rows,
                                                int64_t cap);

// (row_cap_blocks, the cap of a --row-cap fraction: format/packed_linear.h, beside budget_blocks.)

// A cap on the blocks one block row of a layer may keep (the fused GPU kernel's time is set by its
// fullest block row): the layer's scores are a grid of `nbc` block columns (block b is in block
// row b / nbc), and no block row keeps more than `cap` of them.
struct BlockRowCap {
  int64_t nbc = 0;
  int64_t cap = 0;
};

// Global allocation: the budget is budget_blocks(fraction, total blocks of all layers); the
// blocks with the highest scores over all layers win (ties: lower layer, then lower id).
// Returns each layer's count; select_top_blocks(layer_scores[l], counts[l]) then gives exactly
// that layer's share of the global choice. Scores must be comparable across layers (Delta-
// Hessian scores are output-distortion units of each layer; downstream sensitivity is ignored).
// With `caps` (empty = none, else one per layer) the same greedy over all blocks skips a block
// whose (layer, block row) already holds its cap, so the counts stay exactly the budget and
// select_top_blocks_balanced(layer_scores[l], caps[l].nbc, counts[l], 1, caps[l].cap) gives that
// layer's share. Throws mosaic::Error when the caps hold fewer blocks than the budget.
std::vector<int64_t> allocate_global(std::span<const std::vector<double>> layer_scores,
                                     double fraction, std::span<const BlockRowCap> caps = {});

// Fills p.res_* (CSR sorted) with the given blocks of R quantized by quantize_residual_block.
// Replaces any residual p had. `blocks` need not be sorted; duplicates are an error.
void attach_residual(PackedLinear& p, std::span<const float> R, std::span<const int64_t> blocks,
                     int Br, int Bc);

// Scores on a GPTQ base for residual_in_gptq: the residual GPTQ could not remove is what it
// rounded at each step (trace.err), and the price of that rounding is err^2 / [H_F^-1]_kk, so
// the Delta-Hessian score runs on R = trace.err with h_k = 1 / trace.hinv_diag[k]. Residual
// magnitude uses trace.err, weight magnitude W; full_hessian is not defined here (error).
std::vector<double> score_blocks_gptq(std::span<const float> W, const GptqTrace& trace, int64_t N,
                                      int64_t K, int Br, int Bc, BlockScorer scorer);

enum class BaseMethod { kRtn, kGptq };

template <typename T>
T with_clip_search() {
  T t;
  t.scale.clip_grid = 20;
  return t;
}

struct MosaicOptions {
  BaseMethod base = BaseMethod::kGptq;
  int group = 128;
  bool symmetric = true;
  int block_rows = 16;
  int block_cols = 64;
  double budget = 0.10;  // fraction of blocks kept, per layer: exactly budget_blocks(budget, total)
  int64_t num_blocks = -1;  // >= 0: keep exactly this many instead (global allocation's counts)
  BlockScorer scorer = BlockScorer::kDeltaHessian;
  // Tile balancing (0 = off): tiles of tile_rows output rows (a multiple of block_rows) get at
  // most ceil(tile_cap_factor * kept / tiles) blocks each (see select_top_blocks_balanced).
  int tile_rows = 0;
  double tile_cap_factor = 1.5;
  // Absolute per-block-row cap (0 = none): no block row keeps more than row_cap blocks
  // (select_top_blocks_balanced with one block row per tile); the kept count must fit,
  // count <= row_cap x block rows. Excludes tile_rows. mosaic quantize --row-cap F sets
  // row_cap_blocks(F, K / block_cols).
  int64_t row_cap = 0;
  // Clip search on by default for both bases: it lowered held-out layer error on every real
  // SmolLM2 layer tried (e.g. GPTQ-loop 10%: 0.78-0.93 -> 0.53-0.73 of GPTQ g64) and on synthetic data.
  GptqOptions gptq = with_clip_search<GptqOptions>();
  // GPTQ base only: select blocks on a first GPTQ pass (score_blocks_gptq), then run GPTQ again
  // with the residual quantized inside its loop (quantize_gptq_with_residual), so the residual's
  // own rounding is compensated too. false = the paper's literal recipe: R = W - deq(GPTQ base),
  // which breaks GPTQ's error cancellation (see the report / tests/quant/test_residual.cpp).
  bool residual_in_gptq = true;
  ScaleOptions rtn = ScaleOptions{kSymDivisor, 20, 0.75f, {}};  // for BaseMethod::kRtn
};

// The whole layer: base (RTN or GPTQ), residual, scores, per-layer top-k, residual attached.
// H is [K, K]; it may be empty only for RTN with a magnitude scorer.
PackedLinear quantize_mosaic(std::span<const float> W, int64_t N, int64_t K,
                             std::span<const float> H, const MosaicOptions& opt);

// The block scores quantize_mosaic would select from (same base, same scorer), for global
// allocation: score every layer of a group, allocate_global(), then quantize_mosaic each layer
// with opt.num_blocks = its count. Costs one base quantization per layer.
// When `base` is non-null it receives the base quantization the scores were computed on.
std::vector<double> mosaic_block_scores(std::span<const float> W, int64_t N, int64_t K,
                                        std::span<const float> H, const MosaicOptions& opt,
                                        PackedLinear* base = nullptr);

// The layer's output energy under the diagonal of H: sum_k h_k sum_n W_nk^2 (the Delta-Hessian
// score's units). Dividing block scores by it makes them relative output-error reductions,
// comparable across layers of different scale (model-level global allocation does).
double diagonal_output_energy(std::span<const float> W, int64_t N, int64_t K, std::span<const float> H);

}  // namespace mosaic
