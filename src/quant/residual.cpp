// Residual blocks: quantization, scoring, top-k selection (per layer and global), CSR packing,
// and the whole-layer MosaicQuant entry point.
#include "quant/residual.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/parallel.h"
#include "quant/hessian.h"
#include "util/error.h"
#include "util/half.h"

namespace mosaic {

BlockScorer parse_block_scorer(std::string_view name) {
  if (name == "delta_hessian") return BlockScorer::kDeltaHessian;
  if (name == "full_hessian") return BlockScorer::kFullHessian;
  if (name == "residual") return BlockScorer::kResidualMagnitude;
  if (name == "weight") return BlockScorer::kWeightMagnitude;
  fail("unknown block scorer '", name, "' (expected delta_hessian|full_hessian|residual|weight)");
}

const char* block_scorer_name(BlockScorer s) {
  switch (s) {
    case BlockScorer::kDeltaHessian: return "delta_hessian";
    case BlockScorer::kFullHessian: return "full_hessian";
    case BlockScorer::kResidualMagnitude: return "residual";
    case BlockScorer::kWeightMagnitude: return "weight";
  }
  return "?";
}

void quantize_residual_block(const float* R, int64_t ld, int Br, int Bc, uint8_t* packed,
                             uint16_t* scales, float* deq) {
  std::vector<uint8_t> codes(static_cast<size_t>(Bc));
  for (int i = 0; i < Br; ++i) {
    const float* r = R + i * ld;
    const GroupParams g = fit_group(r, Bc, 1, /*symmetric=*/true);
    scales[i] = float_to_fp16(g.scale);
    for (int j = 0; j < Bc; ++j) {
      codes[j] = uint8_t(quantize_code(r[j], g));
      if (deq) deq[i * Bc + j] = dequantize_code(codes[j], g);
    }
    pack_nibbles(codes, std::span<uint8_t>(packed + int64_t(i) * (Bc / 2), size_t(Bc / 2)));
  }
}

std::vector<float> base_residual(std::span<const float> W, const PackedLinear& base) {
  MOSAIC_CHECK(int64_t(W.size()) == base.N * base.K, "base_residual: weight has ", W.size(),
               " values, base is [", base.N, ", ", base.K, "]");
  std::vector<float> R = dequantize_base(base);
  for (size_t i = 0; i < R.size(); ++i) R[i] = W[i] - R[i];
  return R;
}

namespace {

// method.md's S_B = [sum h_j R_ij^2 - sum h_j (R_ij - deq(Q(R))_ij)^2]_+ for every block.
std::vector<double> delta_hessian_scores(std::span<const float> R, int64_t N, int64_t K,
                                         std::span<const float> h, int Br, int Bc) {
  const int64_t nbr = N / Br, nbc = K / Bc;
  std::vector<double> scores(static_cast<size_t>(nbr * nbc), 0.0);
  // Block rows are independent: split them over the threads (each block's arithmetic is the same
  // as single-threaded, so the scores are too). ~0.3 s per LLaMA-3-8B MLP matrix on one core.
  parallel_for(nbr, int64_t(Br) * K * 8, [&](int64_t r_begin, int64_t r_end) {
    std::vector<uint8_t> packed(static_cast<size_t>(Br * Bc / 2));
    std::vector<uint16_t> sc(static_cast<size_t>(Br));
    std::vector<float> dq(static_cast<size_t>(Br * Bc));
    for (int64_t r = r_begin; r < r_end; ++r)
      for (int64_t c = 0; c < nbc; ++c) {
        const int64_t r0 = r * Br, c0 = c * Bc;
        quantize_residual_block(R.data() + r0 * K + c0, K, Br, Bc, packed.data(), sc.data(), dq.data());
        double s = 0.0;
        for (int64_t i = 0; i < Br; ++i) {
          const float* ri = R.data() + (r0 + i) * K + c0;
          const float* qi = dq.data() + i * Bc;
          for (int64_t j = 0; j < Bc; ++j) {
            const double e = double(ri[j]) - qi[j];
            s += double(h[c0 + j]) * (double(ri[j]) * ri[j] - e * e);
          }
        }
        scores[r * nbc + c] = std::max(s, 0.0);
      }
  });
  return scores;
}

void check_blocks(int64_t N, int64_t K, int Br, int Bc, const char* what) {
  MOSAIC_CHECK(Br > 0 && N % Br == 0, what, ": block rows ", Br, " do not divide N=", N);
  MOSAIC_CHECK(Bc > 0 && Bc % 2 == 0 && K % Bc == 0, what, ": block cols ", Bc,
               " must be even and divide K=", K);
}

}  // namespace

std::vector<double> score_blocks(std::span<const float> W, std::span<const float> R, int64_t N,
                                 int64_t K, std::span<const float> H, int Br, int Bc,
                                 BlockScorer scorer) {
  check_blocks(N, K, Br, Bc, "score_blocks");
  MOSAIC_CHECK(int64_t(W.size()) == N * K && int64_t(R.size()) == N * K, "score_blocks: W/R have ",
               W.size(), "/", R.size(), " values, expected N*K = ", N, "*", K);
  const bool needs_h = scorer == BlockScorer::kDeltaHessian || scorer == BlockScorer::kFullHessian;
  MOSAIC_CHECK(!needs_h || int64_t(H.size()) == K * K, "score_blocks: ",
               block_scorer_name(scorer), " needs a [", K, ", ", K, "] Hessian, got ", H.size(),
               " values");
  for (size_t i = 0; i < R.size(); ++i)
    MOSAIC_CHECK(std::isfinite(R[i]) && std::isfinite(W[i]), "score_blocks: non-finite weight or"
                 " residual at [", int64_t(i) / K, ", ", int64_t(i) % K, "]");
  const int64_t nbr = N / Br, nbc = K / Bc;
  std::vector<double> scores(static_cast<size_t>(nbr * nbc), 0.0);

  if (scorer == BlockScorer::kResidualMagnitude || scorer == BlockScorer::kWeightMagnitude) {
    const std::span<const float> src = scorer == BlockScorer::kResidualMagnitude ? R : W;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) scores[(n / Br) * nbc + k / Bc] += double(src[n * K + k]) * src[n * K + k];
    return scores;
  }

  const std::vector<float> h = hessian_diagonal(H, K);
  if (scorer == BlockScorer::kDeltaHessian) return delta_hessian_scores(R, N, K, h, Br, Bc);
  // Full Hessian: the exact drop ||d||_H^2 - ||d - q||_H^2 = 2 q.(H d)_B - q H_BB q of each row
  // d of R when q (the quantized block row) is added; H d for all rows is one GEMM, G = R H.
  std::vector<float> Gm(static_cast<size_t>(N * K));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(K), int(K), 1.0f, R.data(),
              int(K), H.data(), int(K), 0.0f, Gm.data(), int(K));
  std::vector<uint8_t> packed(static_cast<size_t>(Br * Bc / 2));
  std::vector<uint16_t> sc(static_cast<size_t>(Br));
  std::vector<float> dq(static_cast<size_t>(Br * Bc));
  for (int64_t r = 0; r < nbr; ++r) {
    for (int64_t c = 0; c < nbc; ++c) {
      const int64_t r0 = r * Br, c0 = c * Bc;
      quantize_residual_block(R.data() + r0 * K + c0, K, Br, Bc, packed.data(), sc.data(), dq.data());
      double s = 0.0;
      for (int64_t i = 0; i < Br; ++i) {
        const float* qi = dq.data() + i * Bc;
        const float* gi = Gm.data() + (r0 + i) * K + c0;
        double lin = 0.0, quad = 0.0;
        for (int64_t a = 0; a < Bc; ++a) {
          lin += double(qi[a]) * gi[a];
          const float* Ha = H.data() + (c0 + a) * K + c0;
          double t = 0.0;
          for (int64_t b = 0; b < Bc; ++b) t += double(Ha[b]) * qi[b];
          quad += double(qi[a]) * t;
        }
        s += 2.0 * lin - quad;
      }
      scores[r * nbc + c] = std::max(s, 0.0);  // [.]_+ : a block that adds distortion scores 0
    }
  }
  return scores;
}

std::vector<double> score_blocks_gptq(std::span<const float> W, const GptqTrace& trace, int64_t N,
                                      int64_t K, int Br, int Bc, BlockScorer scorer) {
  check_blocks(N, K, Br, Bc, "score_blocks_gptq");
  MOSAIC_CHECK(int64_t(W.size()) == N * K && int64_t(trace.err.size()) == N * K &&
                   int64_t(trace.hinv_diag.size()) == K,
               "score_blocks_gptq: weight/trace sizes do not match [", N, ", ", K, "]");
  MOSAIC_CHECK(scorer != BlockScorer::kFullHessian,
               "score_blocks_gptq: the full_hessian scorer applies to the plain residual only");
  if (scorer != BlockScorer::kDeltaHessian)
    return score_blocks(W, trace.err, N, K, {}, Br, Bc, scorer);
  std::vector<float> h(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    MOSAIC_CHECK(trace.hinv_diag[k] > 0.0f && std::isfinite(trace.hinv_diag[k]),
                 "score_blocks_gptq: trace inverse-Hessian diagonal [", k, "] = ",
                 trace.hinv_diag[k], " is not positive");
    h[k] = 1.0f / trace.hinv_diag[k];
  }
  return delta_hessian_scores(trace.err, N, K, h, Br, Bc);
}

std::vector<int64_t> select_top_blocks(std::span<const double> scores, int64_t count) {
  MOSAIC_CHECK(count >= 0 && count <= int64_t(scores.size()), "select_top_blocks: count ", count,
               " outside 0..", scores.size());
  for (size_t i = 0; i < scores.size(); ++i)
    MOSAIC_CHECK(!std::isnan(scores[i]), "select_top_blocks: score ", i, " is NaN");
  std::vector<int64_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + count, idx.end(), [&](int64_t a, int64_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  idx.resize(size_t(count));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int64_t> select_top_blocks_balanced(std::span<const double> scores, int64_t nbc,
                                                int64_t count, int64_t tile_block_rows,
                                                int64_t cap) {
  const int64_t total = int64_t(scores.size());
  MOSAIC_CHECK(nbc > 0 && total % nbc == 0, "select_top_blocks_balanced: ", total,
               " scores are not a grid of ", nbc, " block columns");
  MOSAIC_CHECK(tile_block_rows > 0 && cap >= 0, "select_top_blocks_balanced: bad tile ",
               tile_block_rows, " / cap ", cap);
  const int64_t nbr = total / nbc, tiles = (nbr + tile_block_rows - 1) / tile_block_rows;
  MOSAIC_CHECK(count >= 0 && count <= total && count <= cap * tiles,
               "select_top_blocks_balanced: cannot keep ", count, " blocks with at most ", cap,
               " in each of ", tiles, " tiles");
  std::vector<int64_t> order = select_top_blocks(scores, total);  // all ids, ascending
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  std::vector<int64_t> used(static_cast<size_t>(tiles), 0), out;
  for (int64_t id : order) {
    if (int64_t(out.size()) == count) break;
    int64_t& u = used[(id / nbc) / tile_block_rows];
    if (u < cap) {
      ++u;
      out.push_back(id);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> allocate_global(std::span<const std::vector<double>> layer_scores,
                                     double fraction, std::span<const BlockRowCap> caps) {
  struct Entry {
    double score;
    int64_t layer, id;
  };
  MOSAIC_CHECK(caps.empty() || caps.size() == layer_scores.size(), "allocate_global: ", caps.size(),
               " row caps for ", layer_scores.size(), " layers");
  std::vector<Entry> all;
  int64_t capacity = 0;  // with caps: the most blocks they let the model keep
  for (size_t l = 0; l < layer_scores.size(); ++l) {
    for (size_t i = 0; i < layer_scores[l].size(); ++i) {
      MOSAIC_CHECK(!std::isnan(layer_scores[l][i]), "allocate_global: layer ", l, " score ", i,
                   " is NaN");
      all.push_back({layer_scores[l][i], int64_t(l), int64_t(i)});
    }
    if (!caps.empty()) {
      const int64_t n = int64_t(layer_scores[l].size()), nbc = caps[l].nbc;
      MOSAIC_CHECK(nbc > 0 && n % nbc == 0 && caps[l].cap >= 0, "allocate_global: layer ", l, "'s ",
                   n, " scores are not a grid of ", nbc, " block columns, or its cap ", caps[l].cap,
                   " is negative");
      capacity += (n / nbc) * std::min(caps[l].cap, nbc);
    }
  }
  const int64_t budget = budget_blocks(fraction, int64_t(all.size()));
  const auto before = [](const Entry& a, const Entry& b) {
    if (a.score != b.score) return a.score > b.score;
    return a.layer != b.layer ? a.layer < b.layer : a.id < b.id;
  };
  std::vector<int64_t> counts(layer_scores.size(), 0);
  if (caps.empty()) {
    std::partial_sort(all.begin(), all.begin() + budget, all.end(), before);
    for (int64_t i = 0; i < budget; ++i) ++counts[all[i].layer];
    return counts;
  }
  MOSAIC_CHECK(budget <= capacity, "allocate_global: the per-block-row caps let the layers keep at most ",
               capacity, " blocks, fewer than the budget's ", budget, " (", fraction, " of ", all.size(), ")");
  // The same order; a block whose block row is full is passed over. Enough rows have room
  // (budget <= capacity), so the walk ends with exactly `budget` blocks.
  std::sort(all.begin(), all.end(), before);
  std::vector<std::vector<int64_t>> used(layer_scores.size());
  for (size_t l = 0; l < layer_scores.size(); ++l)
    used[l].assign(layer_scores[l].size() / size_t(caps[l].nbc), 0);
  int64_t taken = 0;
  for (const Entry& e : all) {
    if (taken == budget) break;
    int64_t& u = used[size_t(e.layer)][size_t(e.id / caps[size_t(e.layer)].nbc)];
    if (u < caps[size_t(e.layer)].cap) {
      ++u;
      ++counts[size_t(e.layer)];
      ++taken;
    }
  }
  return counts;
}

void attach_residual(PackedLinear& p, std::span<const float> R, std::span<const int64_t> blocks,
                     int Br, int Bc) {
  check_blocks(p.N, p.K, Br, Bc, "attach_residual");
  MOSAIC_CHECK(int64_t(R.size()) == p.N * p.K, "attach_residual: residual has ", R.size(),
               " values, expected N*K = ", p.N, "*", p.K);
  const int64_t nbr = p.N / Br, nbc = p.K / Bc;
  std::vector<int64_t> ids(blocks.begin(), blocks.end());
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size(); ++i) {
    MOSAIC_CHECK(ids[i] >= 0 && ids[i] < nbr * nbc, "attach_residual: block id ", ids[i],
                 " outside 0..", nbr * nbc - 1);
    MOSAIC_CHECK(i == 0 || ids[i] != ids[i - 1], "attach_residual: block ", ids[i], " listed twice");
  }
  p.block_rows = Br;
  p.block_cols = Bc;
  p.res_rowptr.clear();
  p.res_colidx.clear();
  p.res_qvalues.clear();
  p.res_scales.clear();
  if (ids.empty()) return;  // no residual tensors at all (docs/format.md)
  const int64_t nnzb = int64_t(ids.size());
  MOSAIC_CHECK(nnzb <= INT32_MAX, "attach_residual: too many blocks ", nnzb);
  p.res_rowptr.assign(size_t(nbr + 1), 0);
  p.res_colidx.resize(size_t(nnzb));
  p.res_qvalues.resize(size_t(nnzb * Br * (Bc / 2)));
  p.res_scales.resize(size_t(nnzb * Br));
  // Sorted block ids are block-row-major, so this order is already CSR with ascending columns.
  for (int64_t b = 0; b < nnzb; ++b) {
    const int64_t r = ids[b] / nbc, c = ids[b] % nbc;
    p.res_colidx[b] = int32_t(c);
    p.res_rowptr[r + 1]++;
    quantize_residual_block(R.data() + r * Br * p.K + c * Bc, p.K, Br, Bc,
                            p.res_qvalues.data() + b * Br * (Bc / 2), p.res_scales.data() + b * Br,
                            nullptr);
  }
  for (int64_t r = 0; r < nbr; ++r) p.res_rowptr[r + 1] += p.res_rowptr[r];
}

namespace {

// Shared front of quantize_mosaic / mosaic_block_scores: checks, the block count, the base.
struct MosaicStart {
  int64_t keep = 0;
  PackedLinear base;
  GptqTrace trace;  // filled on the residual_in_gptq path
  bool in_loop = false;
};

MosaicStart mosaic_start(std::span<const float> W, int64_t N, int64_t K, std::span<const float> H,
                         const MosaicOptions& opt) {
  check_weight_matrix(W, N, K, opt.group, "quantize_mosaic");
  check_blocks(N, K, opt.block_rows, opt.block_cols, "quantize_mosaic");
  const int64_t total = (N / opt.block_rows) * (K / opt.block_cols);
  MosaicStart st;
  st.keep = budget_blocks(opt.budget, total);  // validates the budget even when overridden
  if (opt.num_blocks >= 0) {
    MOSAIC_CHECK(opt.num_blocks <= total, "quantize_mosaic: ", opt.num_blocks,
                 " blocks requested but the layer has only ", total);
    st.keep = opt.num_blocks;
  }
  const bool needs_h = opt.base == BaseMethod::kGptq || opt.scorer == BlockScorer::kDeltaHessian ||
                       opt.scorer == BlockScorer::kFullHessian;
  MOSAIC_CHECK(!needs_h || int64_t(H.size()) == K * K, "quantize_mosaic: Hessian has ", H.size(),
               " values, expected K*K = ", K, "*", K);
  MOSAIC_CHECK(H.empty() || int64_t(H.size()) == K * K, "quantize_mosaic: Hessian has ", H.size(),
               " values, expected K*K = ", K, "*", K);
  st.in_loop = opt.base == BaseMethod::kGptq && opt.residual_in_gptq;
  if (opt.base == BaseMethod::kGptq) {
    st.base = quantize_gptq(W, N, K, H, opt.group, opt.symmetric, opt.gptq,
                            st.in_loop ? &st.trace : nullptr);
  } else {
    std::vector<float> h;
    if (!H.empty()) h = hessian_diagonal(H, K);
    st.base = quantize_rtn(W, N, K, opt.group, opt.symmetric, opt.rtn, h);
  }
  st.base.block_rows = opt.block_rows;
  st.base.block_cols = opt.block_cols;
  return st;
}

// The plain residual W - deq(base) with dead inputs (diag(H) == 0) zeroed: they never reach
// the output, and left in place they would inflate the scales of every block row they touch.
// (On the residual_in_gptq path the blocks are cut from GPTQ's rounding errors, st.trace.err.)
std::vector<float> plain_residual(std::span<const float> W, int64_t N, int64_t K,
                                  std::span<const float> H, const PackedLinear& base) {
  std::vector<float> R = base_residual(W, base);
  if (!H.empty())
    for (int64_t k = 0; k < K; ++k)
      if (H[k * K + k] == 0.0f)
        for (int64_t n = 0; n < N; ++n) R[n * K + k] = 0.0f;
  return R;
}

}  // namespace

std::vector<double> mosaic_block_scores(std::span<const float> W, int64_t N, int64_t K,
                                        std::span<const float> H, const MosaicOptions& opt,
                                        PackedLinear* base) {
  MosaicStart st = mosaic_start(W, N, K, H, opt);
  std::vector<double> scores =
      st.in_loop ? score_blocks_gptq(W, st.trace, N, K, opt.block_rows, opt.block_cols, opt.scorer)
                 : score_blocks(W, plain_residual(W, N, K, H, st.base), N, K, H, opt.block_rows,
                                opt.block_cols, opt.scorer);
  if (base) *base = std::move(st.base);
  return scores;
}

double diagonal_output_energy(std::span<const float> W, int64_t N, int64_t K, std::span<const float> H) {
  MOSAIC_CHECK(int64_t(W.size()) == N * K && int64_t(H.size()) == K * K, "diagonal_output_energy: sizes ",
               W.size(), ", ", H.size(), " do not match N = ", N, ", K = ", K);
  std::vector<double> col(size_t(K), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) col[size_t(k)] += double(W[n * K + k]) * W[n * K + k];
  double e = 0;
  for (int64_t k = 0; k < K; ++k) e += double(H[k * K + k]) * col[size_t(k)];
  return e;
}

PackedLinear quantize_mosaic(std::span<const float> W, int64_t N, int64_t K,
                             std::span<const float> H, const MosaicOptions& opt) {
  MosaicStart st = mosaic_start(W, N, K, H, opt);
  if (st.keep == 0) return std::move(st.base);
  PackedLinear p = std::move(st.base);
  MOSAIC_CHECK(opt.row_cap >= 0, "quantize_mosaic: row cap ", opt.row_cap, " is negative");
  MOSAIC_CHECK(opt.row_cap == 0 || opt.tile_rows <= 0,
               "quantize_mosaic: a row cap and tile balancing cannot be combined");
  MOSAIC_CHECK(opt.row_cap == 0 || st.keep <= opt.row_cap * (N / opt.block_rows), "quantize_mosaic: ",
               st.keep, " blocks cannot be kept with at most ", opt.row_cap, " in each of ",
               N / opt.block_rows, " block rows");
  auto select = [&](const std::vector<double>& scores) {
    if (opt.row_cap > 0)
      return select_top_blocks_balanced(scores, K / opt.block_cols, st.keep, 1, opt.row_cap);
    if (opt.tile_rows <= 0) return select_top_blocks(scores, st.keep);
    MOSAIC_CHECK(opt.tile_rows % opt.block_rows == 0, "quantize_mosaic: tile rows ", opt.tile_rows,
                 " are not a multiple of block rows ", opt.block_rows);
    MOSAIC_CHECK(std::isfinite(opt.tile_cap_factor) && opt.tile_cap_factor >= 1.0,
                 "quantize_mosaic: tile cap factor ", opt.tile_cap_factor, " must be >= 1");
    const int64_t tbr = opt.tile_rows / opt.block_rows;
    const int64_t tiles = (N / opt.block_rows + tbr - 1) / tbr;
    const int64_t cap = std::max<int64_t>(
        1, int64_t(std::ceil(opt.tile_cap_factor * double(st.keep) / double(tiles) - 1e-9)));
    return select_top_blocks_balanced(scores, K / opt.block_cols, st.keep, tbr, cap);
  };
  if (!st.in_loop) {
    const std::vector<float> R = plain_residual(W, N, K, H, p);
    const auto scores = score_blocks(W, R, N, K, H, opt.block_rows, opt.block_cols, opt.scorer);
    attach_residual(p, R, select(scores), opt.block_rows, opt.block_cols);
    return p;
  }
  // Pass 1 (the base above) recorded GPTQ's rounding errors: select on them, attach to fix the
  // layout and the kept rows' scales, then pass 2 re-quantizes base and residual codes together.
  const auto scores =
      score_blocks_gptq(W, st.trace, N, K, opt.block_rows, opt.block_cols, opt.scorer);
  attach_residual(p, st.trace.err, select(scores), opt.block_rows, opt.block_cols);
  std::vector<float>().swap(st.trace.err);
  return quantize_gptq_with_residual(W, N, K, H, opt.group, opt.symmetric, opt.gptq, p);
}

}  // namespace mosaic
