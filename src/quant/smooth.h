// SmoothQuant-style migration (Xiao et al. 2023) for W4A8 / W4A4: a linear's inputs X [M, K] are
// divided per channel by s and its weight columns multiplied by s, X' = X diag(s)^-1,
// W' = W diag(s), so X' W'^T = X W^T exactly while outlier channels move from the activations
// (hard to quantize per token) into the weights (quantized per group with the help of H).
// Every s is folded into the op that produces X, so it costs nothing at run time:
//   q/k/v inputs  <- input_layernorm weight       gamma_j / s_j
//   gate/up inputs <- post_attention_layernorm     gamma_j / s_j
//   down inputs   <- up_proj rows                  (silu(gate) * up is linear in up's row j)
//   o inputs      <- v_proj rows, per kv head      (attention mixes positions, not channels:
//                                                  head h's output channel d is a convex
//                                                  combination of v[kv(h)][d]; kv(h) = h / (H/Hkv))
// so the o scale is one per (kv head, dim), shared by the query heads of that kv head.
// Qwen3's q/k RMSNorm acts on q/k after the projection; q = X' W'^T = X W^T is unchanged, so it
// sees the same values (tests/quant/test_smooth.cpp checks the logits of the folded golden models).
//
// The scale per channel group (SmoothQuant): s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha), max
// over the calibration rows and over the rows of every linear fed by X; alpha is chosen per layer
// and site from a grid (plus "no smoothing") by the output error of the layer with both its
// activations (per token, act_bits) and its weights (RTN, the model's group) quantized, on a
// sample of the calibration inputs.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/act_quant_linear.h"
#include "model/linear.h"

namespace mosaic {

// The four smoothing sites of a decoder layer.
enum class SmoothSite { kAttnIn, kOIn, kMlpIn, kDownIn };
inline constexpr int kSmoothSites = 4;
const char* smooth_site_name(SmoothSite s);  // "qkv", "o", "gate_up", "down"

// One layer's factors; an empty vector is the identity (site not smoothed).
struct LayerSmoothing {
  std::vector<float> attn;  // [hidden]
  std::vector<float> o;     // [num_kv_heads * head_dim]
  std::vector<float> mlp;   // [hidden]
  std::vector<float> down;  // [intermediate]
  std::array<double, kSmoothSites> alpha = {-1, -1, -1, -1};  // chosen alpha; -1: none
};

// The o_proj input scale of every one of its H * head_dim columns: column h * hd + d gets
// s_o[(h / (H / Hkv)) * hd + d].
std::vector<float> expand_o_scale(const ModelConfig& cfg, std::span<const float> s_o);

// Applies the smoothing to one layer's FP32 tensors in place: the 7 linears (indexed by
// LinearId, HF layout [N, K]) get W' = W diag(s) on their input columns and, for v_proj and
// up_proj, rows divided by the o / down scales; the norms get gamma / s. Either norm pointer may
// be null (the quantizer folds the norms when it writes them).
void apply_smoothing(const ModelConfig& cfg, const LayerSmoothing& s, std::array<std::vector<float>*, 7> W,
                     std::vector<float>* attn_norm, std::vector<float>* ffn_norm);

// Per-channel max |x| of a linear's inputs and a row sample (every `stride`-th row, at most
// max_rows), gathered while calibration runs.
struct InputStats {
  InputStats(int64_t K, int64_t stride, int64_t max_rows);
  void add(const float* X, int64_t M);
  int64_t K, stride, max_rows;
  int64_t seen = 0;
  std::vector<float> absmax;  // [K]
  std::vector<float> sample;  // [rows, K]
  int64_t rows() const { return int64_t(sample.size()) / K; }
};

// A Linear that records its inputs into InputStats and runs `inner`.
class StatsLinear : public Linear {
 public:
  StatsLinear(std::unique_ptr<Linear> inner, std::shared_ptr<InputStats> stats);
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  std::string kind() const override { return "stats(" + inner_->kind() + ")"; }

 private:
  std::unique_ptr<Linear> inner_;
  std::shared_ptr<InputStats> stats_;
};

// A Linear whose input is divided per channel by s before `inner` runs: what the smoothed norm
// produces, for the quantizer's calibration passes (the checkpoint folds s into the norm instead).
class ScaledInputLinear : public Linear {
 public:
  ScaledInputLinear(std::unique_ptr<Linear> inner, std::vector<float> s);
  void forward(const float* x, int64_t M, float* y) const override;
  size_t weight_bytes() const override { return inner_->weight_bytes(); }
  std::string kind() const override { return "smooth(" + inner_->kind() + ")"; }

 private:
  std::unique_ptr<Linear> inner_;
  std::vector<float> inv_;
};

struct SmoothSearchOptions {
  int act_bits = 8;           // per-token activation bits used in the error
  ActFormat act_format = ActFormat::kInt;
  int group = 128;            // weight RTN group (the model's)
  bool symmetric = true;
  std::vector<float> weight_grid;  // the base codebook the weights will get (empty: uniform; rtn.h ScaleOptions::grid)
  double fixed_alpha = -1;    // >= 0: use this alpha, no search
  std::vector<double> grid = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
};

// s_j = max|X_j|^alpha / max|W_:j|^(1-alpha) for channels j (zero maxima give s_j = 1), clamped
// to [1e-4, 1e4].
std::vector<float> smooth_scales(std::span<const float> xmax, std::span<const float> wmax, double alpha);

// One site: inputs `stats` (K columns), the linears fed by it (each [N_l, K]), and an optional
// column -> scale map (o_proj: expand_o_scale's map; empty = identity, one scale per column) with
// `n_scales` scales. Returns the chosen scales (empty = no smoothing was best) and writes the
// alpha (-1 for none) and the errors (relative to ||X W^T||^2; `errors` gets one per candidate,
// none first, may be null).
std::vector<float> search_smoothing(const InputStats& stats, std::span<const std::vector<float>* const> weights,
                                    std::span<const int64_t> col_map, int64_t n_scales,
                                    const SmoothSearchOptions& opt, double* alpha,
                                    std::vector<double>* errors = nullptr);

// The map of o_proj's input columns to its (kv head, dim) scales, for search_smoothing.
std::vector<int64_t> o_scale_map(const ModelConfig& cfg);

}  // namespace mosaic
