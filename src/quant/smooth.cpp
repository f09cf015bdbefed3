#include "quant/smooth.h"

#include <algorithm>
#include <cmath>

#include "format/packed_linear.h"
#include "model/act_quant_linear.h"
#include "model/model.h"
#include "model/ops.h"
#include "quant/rtn.h"
#include "util/error.h"

namespace mosaic {

const char* smooth_site_name(SmoothSite s) {
  switch (s) {
    case SmoothSite::kAttnIn: return "qkv";
    case SmoothSite::kOIn: return "o";
    case SmoothSite::kMlpIn: return "gate_up";
    case SmoothSite::kDownIn: return "down";
  }
  return "?";
}

std::vector<int64_t> o_scale_map(const ModelConfig& cfg) {
  const int64_t H = cfg.num_heads, Hkv = cfg.num_kv_heads, hd = cfg.head_dim;
  MOSAIC_CHECK(Hkv > 0 && H % Hkv == 0, "smoothing: ", H, " heads are not a multiple of ", Hkv, " kv heads");
  std::vector<int64_t> map(size_t(H * hd));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t d = 0; d < hd; ++d) map[size_t(h * hd + d)] = (h / (H / Hkv)) * hd + d;
  return map;
}

std::vector<float> expand_o_scale(const ModelConfig& cfg, std::span<const float> s_o) {
  const std::vector<int64_t> map = o_scale_map(cfg);
  MOSAIC_CHECK(int64_t(s_o.size()) == int64_t(cfg.num_kv_heads) * cfg.head_dim, "o smoothing has ", s_o.size(),
               " scales, expected kv_heads x head_dim = ", int64_t(cfg.num_kv_heads) * cfg.head_dim);
  std::vector<float> out(map.size());
  for (size_t j = 0; j < map.size(); ++j) out[j] = s_o[size_t(map[j])];
  return out;
}

namespace {

// W [N, K] columns *= s (s empty: nothing).
void scale_columns(std::vector<float>& W, std::span<const float> s) {
  if (s.empty()) return;
  const size_t K = s.size();
  MOSAIC_CHECK(W.size() % K == 0, "smoothing: weight of ", W.size(), " values has no ", K, " columns");
  for (size_t i = 0; i < W.size(); ++i) W[i] *= s[i % K];
}

// W [N, K] rows /= s (s has N entries; empty: nothing).
void divide_rows(std::vector<float>& W, std::span<const float> s) {
  if (s.empty()) return;
  const size_t N = s.size();
  MOSAIC_CHECK(W.size() % N == 0, "smoothing: weight of ", W.size(), " values has no ", N, " rows");
  const size_t K = W.size() / N;
  for (size_t n = 0; n < N; ++n)
    for (size_t k = 0; k < K; ++k) W[n * K + k] /= s[n];
}

void divide(std::vector<float>* v, std::span<const float> s) {
  if (!v || s.empty()) return;
  MOSAIC_CHECK(v->size() == s.size(), "smoothing: norm of ", v->size(), " values for ", s.size(), " scales");
  for (size_t j = 0; j < s.size(); ++j) (*v)[j] /= s[j];
}

}  // namespace

void apply_smoothing(const ModelConfig& cfg, const LayerSmoothing& s, std::array<std::vector<float>*, 7> W,
                     std::vector<float>* attn_norm, std::vector<float>* ffn_norm) {
  for (auto* w : W) MOSAIC_CHECK(w, "apply_smoothing: missing weight");
  auto w = [&](LinearId id) -> std::vector<float>& { return *W[size_t(id)]; };
  for (LinearId id : {LinearId::Q, LinearId::K, LinearId::V}) scale_columns(w(id), s.attn);
  divide(attn_norm, s.attn);
  if (!s.o.empty()) {
    divide_rows(w(LinearId::V), s.o);  // v rows (kv head g, dim d) = index g * hd + d
    scale_columns(w(LinearId::O), expand_o_scale(cfg, s.o));
  }
  for (LinearId id : {LinearId::Gate, LinearId::Up}) scale_columns(w(id), s.mlp);
  divide(ffn_norm, s.mlp);
  divide_rows(w(LinearId::Up), s.down);
  scale_columns(w(LinearId::Down), s.down);
}

InputStats::InputStats(int64_t k, int64_t st, int64_t mr) : K(k), stride(std::max<int64_t>(1, st)), max_rows(mr) {
  MOSAIC_CHECK(K > 0 && max_rows > 0, "InputStats: K ", K, ", max_rows ", max_rows);
  absmax.assign(size_t(K), 0.0f);
}

void InputStats::add(const float* X, int64_t M) {
  for (int64_t r = 0; r < M; ++r, ++seen) {
    const float* x = X + r * K;
    for (int64_t k = 0; k < K; ++k) absmax[size_t(k)] = std::max(absmax[size_t(k)], std::fabs(x[k]));
    if (seen % stride == 0 && rows() < max_rows) sample.insert(sample.end(), x, x + K);
  }
}

StatsLinear::StatsLinear(std::unique_ptr<Linear> inner, std::shared_ptr<InputStats> stats)
    : Linear(inner->N, inner->K), inner_(std::move(inner)), stats_(std::move(stats)) {
  MOSAIC_CHECK(stats_->K == K, "StatsLinear: stats of width ", stats_->K, " for a layer with ", K, " inputs");
}

void StatsLinear::forward(const float* x, int64_t M, float* y) const {
  stats_->add(x, M);
  inner_->forward(x, M, y);
}

ScaledInputLinear::ScaledInputLinear(std::unique_ptr<Linear> inner, std::vector<float> s)
    : Linear(inner->N, inner->K), inner_(std::move(inner)), inv_(std::move(s)) {
  MOSAIC_CHECK(int64_t(inv_.size()) == K, "ScaledInputLinear: ", inv_.size(), " scales for ", K, " inputs");
  for (float& v : inv_) v = 1.0f / v;
}

void ScaledInputLinear::forward(const float* x, int64_t M, float* y) const {
  std::vector<float> xs(size_t(M * K));
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < K; ++k) xs[size_t(r * K + k)] = x[r * K + k] * inv_[size_t(k)];
  inner_->forward(xs.data(), M, y);
}

std::vector<float> smooth_scales(std::span<const float> xmax, std::span<const float> wmax, double alpha) {
  MOSAIC_CHECK(xmax.size() == wmax.size(), "smooth_scales: ", xmax.size(), " vs ", wmax.size(), " channels");
  MOSAIC_CHECK(alpha >= 0 && alpha <= 1, "smoothing alpha ", alpha, " is out of range [0, 1]");
  std::vector<float> s(xmax.size(), 1.0f);
  for (size_t j = 0; j < s.size(); ++j) {
    if (!(xmax[j] > 0) || !(wmax[j] > 0)) continue;
    const double v = std::pow(double(xmax[j]), alpha) / std::pow(double(wmax[j]), 1 - alpha);
    s[j] = float(std::clamp(v, 1e-4, 1e4));
  }
  return s;
}

namespace {

// ||Q_a(X diag(s)^-1) Q_w(W diag(s))^T - Y||^2 summed over the site's linears.
double site_error(const InputStats& st, std::span<const std::vector<float>* const> weights,
                  const std::vector<std::vector<float>>& Y, std::span<const float> s_full,
                  const SmoothSearchOptions& opt) {
  const int64_t R = st.rows(), K = st.K;
  std::vector<float> xq = st.sample;
  if (!s_full.empty())
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) xq[size_t(r * K + k)] /= s_full[size_t(k)];
  if (opt.act_bits < 16) fake_quantize_rows(xq.data(), R, K, ActQuant{opt.act_bits, opt.act_format});
  double err = 0;
  for (size_t l = 0; l < weights.size(); ++l) {
    std::vector<float> w = *weights[l];
    const int64_t N = int64_t(w.size()) / K;
    if (!s_full.empty()) scale_columns(w, s_full);
    ScaleOptions so;
    so.grid = opt.weight_grid;  // score each alpha on the grid the weights will be quantized to
    const std::vector<float> wq = dequantize(quantize_rtn(w, N, K, opt.group, opt.symmetric, so));
    std::vector<float> y(size_t(R * N));
    ops::matmul_nt(xq.data(), wq.data(), R, N, K, y.data());
    for (size_t i = 0; i < y.size(); ++i) {
      const double d = double(y[i]) - double(Y[l][i]);
      err += d * d;
    }
  }
  return err;
}

}  // namespace

std::vector<float> search_smoothing(const InputStats& st, std::span<const std::vector<float>* const> weights,
                                    std::span<const int64_t> col_map, int64_t n_scales,
                                    const SmoothSearchOptions& opt, double* alpha, std::vector<double>* errors) {
  const int64_t K = st.K, R = st.rows();
  MOSAIC_CHECK(R > 0, "smoothing search: no calibration rows");
  MOSAIC_CHECK(col_map.empty() ? n_scales == K : int64_t(col_map.size()) == K,
               "smoothing search: column map of ", col_map.size(), " for ", K, " inputs");
  auto scale_of = [&](int64_t k) { return col_map.empty() ? k : col_map[size_t(k)]; };
  // Per-scale maxima of the inputs and of the weight columns (over every linear of the site).
  std::vector<float> xmax(size_t(n_scales), 0.0f), wmax(size_t(n_scales), 0.0f);
  for (int64_t k = 0; k < K; ++k) xmax[size_t(scale_of(k))] = std::max(xmax[size_t(scale_of(k))], st.absmax[size_t(k)]);
  std::vector<std::vector<float>> Y(weights.size());
  double ref = 0;
  for (size_t l = 0; l < weights.size(); ++l) {
    const std::vector<float>& w = *weights[l];
    MOSAIC_CHECK(!w.empty() && int64_t(w.size()) % K == 0, "smoothing search: weight ", l, " has no ", K, " columns");
    const int64_t N = int64_t(w.size()) / K;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        float& m = wmax[size_t(scale_of(k))];
        m = std::max(m, std::fabs(w[size_t(n * K + k)]));
      }
    Y[l].resize(size_t(R * N));
    ops::matmul_nt(st.sample.data(), w.data(), R, N, K, Y[l].data());
    for (float v : Y[l]) ref += double(v) * v;
  }
  ref = std::max(ref, 1e-30);
  auto expand = [&](const std::vector<float>& s) {
    std::vector<float> full(static_cast<size_t>(K), 0.0f);
    for (int64_t k = 0; k < K; ++k) full[size_t(k)] = s[size_t(scale_of(k))];
    return full;
  };
  std::vector<double> alphas;
  if (opt.fixed_alpha >= 0)
    alphas = {opt.fixed_alpha};
  else
    alphas = opt.grid;
  if (errors) errors->clear();
  // Candidate "none" first; a fixed alpha is used even when it is worse.
  double best = opt.fixed_alpha >= 0 ? INFINITY : site_error(st, weights, Y, {}, opt) / ref;
  if (errors && opt.fixed_alpha < 0) errors->push_back(best);
  std::vector<float> best_s;
  *alpha = -1;
  for (double a : alphas) {
    std::vector<float> s = smooth_scales(xmax, wmax, a);
    const double e = site_error(st, weights, Y, expand(s), opt) / ref;
    if (errors) errors->push_back(e);
    if (e < best) {
      best = e;
      best_s = std::move(s);
      *alpha = a;
    }
  }
  return best_s;
}

}  // namespace mosaic
