// SmoothQuant migration (quant/smooth.h) and quantized activations end to end:
// - the folded smoothing is exact: the FP golden models (LLaMA with GQA, Qwen3 with q/k norm)
//   with random scales folded into their norms / v_proj / up_proj give the original logits;
// - the alpha search prefers smoothing on inputs with outlier channels;
// - quantize_model --act-bits writes act_bits and smoothing into quantization_config, the engine
//   applies it (against an explicit fake-quant computation), and W4A8 is closer to FP than W4A4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/act_quant_linear.h"
#include "model/model.h"
#include "model/quant_linear.h"
#include "format/packed_checkpoint.h"
#include "quant/calibration.h"
#include "quant/model_quantizer.h"
#include "quant/smooth.h"
#include "util/error.h"
#include "model_distance.h"
#include "golden_models.h"
#include "quant_test_data.h"

namespace fs = std::filesystem;
using namespace mosaic;

namespace {

using testdata::golden;
using testdata::kGoldenModels;
using testdata::random_tokens;
using testdata::forward_logits;
using testdata::rel_max_err;

// A temp directory of this test file.
struct TempDir : testdata::TempDir {
  TempDir() : testdata::TempDir("mosaic_smooth") {}
};

// Log-uniform scales in [1/8, 8]: far from 1, so a wrong fold shows.
std::vector<float> random_scales(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-std::log(8.0f), std::log(8.0f));
  std::vector<float> s(n);
  for (auto& v : s) v = std::exp(u(rng));
  return s;
}

// Writes `src` with every layer smoothed by random scales (all four sites) as an F32 checkpoint.
// `skip_norm_fold` breaks the fold on purpose (the norms keep gamma), to show the test can fail.
void write_smoothed(const fs::path& src, const fs::path& dst, uint32_t seed, bool skip_norm_fold = false) {
  const ModelConfig cfg = ModelConfig::load(src);
  const Checkpoint ck = Checkpoint::open(src);
  fs::create_directories(dst);
  fs::copy_file(src / "config.json", dst / "config.json");
  std::mt19937 rng(seed);
  SafetensorsWriter w;
  std::vector<std::string> done;
  for (int i = 0; i < cfg.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    std::array<std::vector<float>, 7> W;
    std::array<std::vector<float>*, 7> wp;
    for (LinearId id : {LinearId::Q, LinearId::K, LinearId::V, LinearId::O, LinearId::Gate, LinearId::Up,
                        LinearId::Down}) {
      W[size_t(id)] = ck.get(p + linear_name(id) + ".weight").to_f32();
      wp[size_t(id)] = &W[size_t(id)];
    }
    std::vector<float> an = ck.get(p + "input_layernorm.weight").to_f32();
    std::vector<float> fn = ck.get(p + "post_attention_layernorm.weight").to_f32();
    LayerSmoothing s;
    s.attn = random_scales(size_t(cfg.hidden_size), rng);
    s.o = random_scales(size_t(cfg.num_kv_heads * cfg.head_dim), rng);
    s.mlp = random_scales(size_t(cfg.hidden_size), rng);
    s.down = random_scales(size_t(cfg.intermediate_size), rng);
    apply_smoothing(cfg, s, wp, skip_norm_fold ? nullptr : &an, skip_norm_fold ? nullptr : &fn);
    for (LinearId id : {LinearId::Q, LinearId::K, LinearId::V, LinearId::O, LinearId::Gate, LinearId::Up,
                        LinearId::Down}) {
      const std::string n = p + linear_name(id) + ".weight";
      w.add_f32(n, ck.get(n).shape, W[size_t(id)].data());
      done.push_back(n);
    }
    w.add_f32(p + "input_layernorm.weight", {cfg.hidden_size}, an.data());
    w.add_f32(p + "post_attention_layernorm.weight", {cfg.hidden_size}, fn.data());
    done.push_back(p + "input_layernorm.weight");
    done.push_back(p + "post_attention_layernorm.weight");
  }
  for (const std::string& n : ck.names())
    if (std::find(done.begin(), done.end(), n) == done.end()) {
      const std::vector<float> v = ck.get(n).to_f32();
      w.add_f32(n, ck.get(n).shape, v.data());
    }
  w.write(dst / "model.safetensors");
}

}  // namespace

// Folding is exact in real arithmetic; in FP32 the logits agree to rounding (bound 1e-5 of the
// largest logit, as the golden tests), on GQA (4 heads, 2 kv heads) and Qwen3's q/k norm.
TEST(Smooth, FoldedSmoothingKeepsTheLogits) {
  TempDir tmp;
  for (const std::string& name : kGoldenModels) {
    const Model ref = Model::load(golden(name));
    write_smoothed(golden(name), tmp.path / name, 7);
    const Model sm = Model::load(tmp.path / name);
    double worst = 0;
    for (uint64_t seed : {1, 2, 3}) {
      const auto t = random_tokens(33, seed);
      worst = std::max(worst, rel_max_err(forward_logits(sm, t), forward_logits(ref, t)));
    }
    EXPECT_LE(worst, 1e-5) << name;
    std::printf("[ smooth ] %-22s folded smoothing: max |logit diff| / max |logit| = %.2e\n", name.c_str(), worst);
    // The same scales without the norm fold change the logits a lot: the check has teeth.
    write_smoothed(golden(name), tmp.path / (name + "_broken"), 7, true);
    const Model broken = Model::load(tmp.path / (name + "_broken"));
    const auto t = random_tokens(33, 1);
    EXPECT_GT(rel_max_err(forward_logits(broken, t), forward_logits(ref, t)), 1e-2) << name;
  }
}

TEST(Smooth, OScaleIsSharedAcrossTheQueryHeadsOfAKvHead) {
  ModelConfig c;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 3;
  const std::vector<float> s = {1, 2, 3, 4, 5, 6};  // (kv 0: 1 2 3) (kv 1: 4 5 6)
  const std::vector<float> e = expand_o_scale(c, s);
  const std::vector<float> want = {1, 2, 3, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5, 6};
  EXPECT_EQ(e, want);
  EXPECT_THROW(expand_o_scale(c, std::vector<float>(5, 1.0f)), Error);
}

TEST(Smooth, ScalesFormulaAndWrappers) {
  const std::vector<float> xmax = {4, 0, 1, 100}, wmax = {1, 2, 0, 0.25};
  const auto s = smooth_scales(xmax, wmax, 0.5);
  EXPECT_FLOAT_EQ(s[0], 2.0f);   // sqrt(4) / sqrt(1)
  EXPECT_FLOAT_EQ(s[1], 1.0f);   // zero input max: identity
  EXPECT_FLOAT_EQ(s[2], 1.0f);   // zero weight max: identity
  EXPECT_FLOAT_EQ(s[3], 20.0f);  // 10 / 0.5
  EXPECT_FLOAT_EQ(smooth_scales(xmax, wmax, 1.0)[0], 4.0f);
  EXPECT_FLOAT_EQ(smooth_scales(xmax, wmax, 0.0)[3], 4.0f);
  EXPECT_THROW(smooth_scales(xmax, wmax, 1.5), Error);

  // StatsLinear: per-column max |x| over all rows, every 2nd row sampled up to 2 rows.
  auto st = std::make_shared<InputStats>(3, 2, 2);
  auto w = std::make_shared<const std::vector<float>>(std::vector<float>{1, 0, 0, 0, 1, 0});
  StatsLinear sl(std::make_unique<DenseLinear>(2, 3, w), st);
  const std::vector<float> x = {1, -5, 0, 2, 1, 0, -3, 0, 7, 0, 0, 0, 9, 9, 9};
  std::vector<float> y(10);
  sl.forward(x.data(), 5, y.data());
  EXPECT_EQ(st->absmax, (std::vector<float>{9, 9, 9}));
  EXPECT_EQ(st->sample, (std::vector<float>{1, -5, 0, -3, 0, 7}));
  EXPECT_EQ(y[0], 1);
  EXPECT_EQ(y[1], -5);
  // ScaledInputLinear divides the inputs by s.
  ScaledInputLinear si(std::make_unique<DenseLinear>(2, 3, w), {2, 4, 1});
  si.forward(x.data(), 1, y.data());
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_FLOAT_EQ(y[1], -1.25f);
}

// Inputs with a few outlier channels (100x), as LLM norms produce: per-token quantization spends
// its range on them; smoothing moves them into the weights, and the search finds that.
TEST(Smooth, SearchPrefersSmoothingOnOutlierChannels) {
  const int64_t K = 128, N = 96, R = 256;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  InputStats st(K, 1, R);
  std::vector<float> X(size_t(R * K));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) X[size_t(r * K + k)] = nd(rng) * (k % 37 == 3 ? 100.0f : 1.0f);
  st.add(X.data(), R);
  std::vector<float> W(size_t(N * K));
  for (auto& v : W) v = nd(rng) * 0.05f;
  const std::vector<float>* ws[] = {&W};
  for (int bits : {8, 4}) {
    SmoothSearchOptions o;
    o.act_bits = bits;
    o.group = 32;
    double alpha = -2;
    std::vector<double> errs;
    const auto s = search_smoothing(st, ws, {}, K, o, &alpha, &errs);
    ASSERT_EQ(errs.size(), o.grid.size() + 1);
    EXPECT_GE(alpha, 0.0) << bits << " bits: smoothing should win";
    EXPECT_EQ(s.size(), size_t(K));
    const double best = *std::min_element(errs.begin(), errs.end());
    EXPECT_LT(best, 0.7 * errs[0]) << bits << " bits: clearly lower error than no smoothing (measured 2.0x A8, 1.7x A4)";
    std::printf("[ smooth ] outliers, A%d: relative output error none %.4f -> alpha %.1f %.4f\n", bits, errs[0], alpha,
                best);
    // A fixed alpha is used as given.
    o.fixed_alpha = 0.3;
    double a2 = -2;
    const auto s2 = search_smoothing(st, ws, {}, K, o, &a2);
    EXPECT_EQ(a2, 0.3);
    float xmax[K], wmax[K];
    for (int64_t k = 0; k < K; ++k) {
      xmax[k] = st.absmax[size_t(k)];
      wmax[k] = 0;
      for (int64_t n = 0; n < N; ++n) wmax[k] = std::max(wmax[k], std::fabs(W[size_t(n * K + k)]));
    }
    EXPECT_EQ(s2, smooth_scales(std::span<const float>(xmax, K), std::span<const float>(wmax, K), 0.3));
  }
}

namespace {

ModelQuantOptions act_options(QuantMethod m, int act_bits) {
  ModelQuantOptions o;
  o.method = m;
  o.group = 32;
  o.block_rows = 16;
  o.block_cols = 32;
  o.budget = 0.25;
  o.act_bits = act_bits;
  o.smooth = m != QuantMethod::kRtn && act_bits < 16;
  o.quiet = true;
  return o;
}


// Test-local explicit per-token fake quant, independent of fake_quantize_rows.
class ExplicitActQuant : public Linear {
 public:
  ExplicitActQuant(std::unique_ptr<Linear> inner, int bits) : Linear(inner->N, inner->K), inner_(std::move(inner)), bits_(bits) {}
  void forward(const float* x, int64_t M, float* y) const override {
    std::vector<float> q(x, x + M * K);
    const float qmax = float((1 << (bits_ - 1)) - 1);
    for (int64_t m = 0; m < M; ++m) {
      float amax = 0;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(q[size_t(m * K + k)]));
      if (amax == 0) continue;
      const float s = amax / qmax;
      for (int64_t k = 0; k < K; ++k) {
        float& v = q[size_t(m * K + k)];
        v = s * std::max(-qmax, std::min(qmax, float(std::lround(v / s))));
      }
    }
    inner_->forward(q.data(), M, y);
  }
  size_t weight_bytes() const override { return 0; }
  std::string kind() const override { return "explicit"; }

 private:
  std::unique_ptr<Linear> inner_;
  int bits_;
};

}  // namespace

// The checkpoint records act_bits (and smoothing) and the engine applies it: the loaded model's
// logits equal those of the same tensors with an explicit per-token fake quant around each linear.
TEST(ActQuantModel, CheckpointRecordsActBitsAndEngineAppliesThem) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 64, 99)[0];
  for (const char* name : {"llama_tied", "qwen3_untied_bf16"}) {
    for (int bits : {8, 4}) {
      const fs::path out = tmp.path / (std::string(name) + "_a" + std::to_string(bits));
      const ModelQuantReport r = quantize_model(golden(name), out, calib, act_options(QuantMethod::kMosaic, bits));
      const ModelConfig cfg = ModelConfig::load(out);
      const auto& qc = cfg.quantization_config;
      EXPECT_EQ(qc["act_bits"], bits);
      EXPECT_EQ(qc["act_quant"]["granularity"], "per_token");
      ASSERT_TRUE(qc["smoothing"].is_object());
      EXPECT_EQ(qc["smoothing"]["alpha"], "auto");
      EXPECT_EQ(qc["smoothing"]["alphas"].size(), size_t(cfg.num_layers));
      EXPECT_EQ(r.smooth_alphas.size(), size_t(cfg.num_layers));
      const Model q = Model::load(out);
      EXPECT_EQ(q.linear(1, LinearId::Down).kind().substr(q.linear(1, LinearId::Down).kind().size() - 3),
                "-a" + std::to_string(bits));
      LoadOptions lo;
      lo.linear_factory = [bits](const Checkpoint& ck, const std::string& p, int64_t N, int64_t K) {
        std::unique_ptr<Linear> l = load_quant_or_dense_linear(ck, p, N, K);  // act_bits 16: plain
        if (p.starts_with("model.layers.")) l = std::make_unique<ExplicitActQuant>(std::move(l), bits);
        return l;
      };
      const Model expl = Model::load(out, lo);
      const double err = rel_max_err(forward_logits(q, eval), forward_logits(expl, eval));
      EXPECT_LE(err, 1e-5) << name << " A" << bits;
      // Without activation quantization the same weights give different logits (the check bites).
      LoadOptions plain;
      plain.linear_factory = [](const Checkpoint& ck, const std::string& p, int64_t N, int64_t K) {
        return load_quant_or_dense_linear(ck, p, N, K);
      };
      EXPECT_GT(rel_max_err(forward_logits(Model::load(out, plain), eval), forward_logits(q, eval)), 1e-4) << name << " A" << bits;
    }
  }
}

// The analysis switch MOSAIC_ACT_QUANT_SKIP (docs/results.md "Where W4A8 loses") leaves the inputs
// of the named linears at 16 bits: "down_proj" unwraps only those, "proj" every one, and then the
// model computes exactly what the same tensors give without activation quantization.
TEST(ActQuantModel, SkipSwitchLeavesTheNamedInputsAt16Bits) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 64, 99)[0];
  const fs::path out = tmp.path / "llama_tied_a8";
  quantize_model(golden("llama_tied"), out, calib, act_options(QuantMethod::kMosaic, 8));
  struct EnvGuard {
    explicit EnvGuard(const char* v) { setenv("MOSAIC_ACT_QUANT_SKIP", v, 1); }
    ~EnvGuard() { unsetenv("MOSAIC_ACT_QUANT_SKIP"); }
  };
  const auto ends_a8 = [](const Linear& l) { return l.kind().ends_with("-a8"); };
  {
    const EnvGuard g("down_proj");
    const Model m = Model::load(out);
    EXPECT_FALSE(ends_a8(m.linear(1, LinearId::Down)));
    EXPECT_TRUE(ends_a8(m.linear(1, LinearId::Q)));
    EXPECT_TRUE(ends_a8(m.linear(1, LinearId::Up)));
  }
  LoadOptions plain;
  plain.linear_factory = [](const Checkpoint& ck, const std::string& p, int64_t N, int64_t K) {
    return load_quant_or_dense_linear(ck, p, N, K);  // act_bits 16: no wrapper
  };
  const auto ref = forward_logits(Model::load(out, plain), eval);
  const EnvGuard g("proj");
  const Model all = Model::load(out);
  EXPECT_FALSE(ends_a8(all.linear(1, LinearId::Q)));
  EXPECT_LE(rel_max_err(forward_logits(all, eval), ref), 1e-6);
}

// The analysis switch MOSAIC_DENSE_LINEARS + MOSAIC_DENSE_FROM (docs/results.md "Where W4 loses") runs the
// named linears of a MosaicQuant checkpoint with the FP model's own weights: all of them give the
// logits of the same substitution done explicitly (the FP model's up to its norms and embeddings,
// which the checkpoint stores in fp16), "down_proj" only those; a smoothed checkpoint is refused.
TEST(ActQuantModel, DenseSubstitutionSwitch) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 64, 99)[0];
  const fs::path w4 = tmp.path / "llama_tied_w4", a8 = tmp.path / "llama_tied_a8";
  quantize_model(golden("llama_tied"), w4, calib, act_options(QuantMethod::kMosaic, 16));
  quantize_model(golden("llama_tied"), a8, calib, act_options(QuantMethod::kMosaic, 8));  // smoothed
  const auto fp = forward_logits(Model::load(golden("llama_tied")), eval);
  struct EnvGuard {
    EnvGuard(const char* names, const std::string& from) {
      setenv("MOSAIC_DENSE_LINEARS", names, 1);
      setenv("MOSAIC_DENSE_FROM", from.c_str(), 1);
    }
    ~EnvGuard() {
      unsetenv("MOSAIC_DENSE_LINEARS");
      unsetenv("MOSAIC_DENSE_FROM");
    }
  };
  const double quantized_err = rel_max_err(forward_logits(Model::load(w4), eval), fp);
  EXPECT_GT(quantized_err, 1e-4);  // (the check bites)
  {
    const EnvGuard g("down_proj", golden("llama_tied").string());
    const Model m = Model::load(w4);
    EXPECT_EQ(m.linear(1, LinearId::Down).kind(), "dense-f32");
    EXPECT_NE(m.linear(1, LinearId::Q).kind(), "dense-f32");
  }
  const Checkpoint base = Checkpoint::open(golden("llama_tied"));
  LoadOptions explicit_sub;
  explicit_sub.linear_factory = [&](const Checkpoint& ck, const std::string& p, int64_t N, int64_t K) {
    if (!p.starts_with("model.layers.")) return load_quant_or_dense_linear(ck, p, N, K);
    return std::unique_ptr<Linear>(std::make_unique<DenseLinear>(
        N, K, std::make_shared<const std::vector<float>>(base.get(p + ".weight", {N, K}).to_f32())));
  };
  const auto expected = forward_logits(Model::load(w4, explicit_sub), eval);
  EXPECT_LT(rel_max_err(expected, fp), quantized_err / 10);
  {
    const EnvGuard g("proj", golden("llama_tied").string());
    EXPECT_LE(rel_max_err(forward_logits(Model::load(w4), eval), expected), 1e-6);
    try {
      (void)Model::load(a8);
      FAIL() << "a smoothed checkpoint must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("smoothing"), std::string::npos) << e.what();
    }
  }
}

// W4A8 is closer to the FP model than W4A4 (same method), and smoothing a W4A16 GPTQ model with a
// fixed alpha stays as close as without (a wrong fold would wreck the logits).
TEST(ActQuantModel, A8CloserThanA4AndSmoothedCheckpointsStayClose) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  for (const char* name : {"llama3_untied_scaled", "qwen3_tied"}) {
    const Model ref = Model::load(golden(name));
    for (QuantMethod m : {QuantMethod::kRtn, QuantMethod::kGptq, QuantMethod::kMosaic}) {
      double kl[2];
      for (int bits : {8, 4}) {
        const fs::path out = tmp.path / (std::string(name) + quant_method_name(m) + std::to_string(bits));
        quantize_model(golden(name), out, calib, act_options(m, bits));
        kl[bits == 4] = testdata::logits_distance(ref, Model::load(out), eval).kl;
      }
      std::printf("[ act ] %-22s %-6s KL W4A8 %.5f  W4A4 %.5f\n", name, quant_method_name(m), kl[0], kl[1]);
      EXPECT_LT(kl[0], kl[1]) << name << " " << quant_method_name(m);
    }
    double kl16[2];
    for (int smooth = 0; smooth < 2; ++smooth) {
      ModelQuantOptions o = act_options(QuantMethod::kGptq, 16);
      o.smooth = smooth;
      o.smooth_alpha = 0.5;
      const fs::path out = tmp.path / (std::string(name) + "w4a16s" + std::to_string(smooth));
      quantize_model(golden(name), out, calib, o);
      kl16[smooth] = testdata::logits_distance(ref, Model::load(out), eval).kl;
      if (smooth) {
        const ModelConfig cfg = ModelConfig::load(out);
        EXPECT_EQ(cfg.quantization_config["smoothing"]["alpha"], 0.5);
        EXPECT_EQ(cfg.quantization_config["act_bits"], 16);
      }
    }
    std::printf("[ act ] %-22s gptq W4A16 KL no smoothing %.5f, smoothed alpha 0.5 %.5f\n", name, kl16[0], kl16[1]);
    EXPECT_LT(kl16[1], 2 * kl16[0] + 0.01) << name;
  }
}

TEST(ActQuantModel, BadOptionsAreErrors) {
  TempDir tmp;
  ModelQuantOptions o = act_options(QuantMethod::kGptq, 5);
  EXPECT_THROW(quantize_model(golden("llama_tied"), tmp.path / "a", testdata::token_windows(2, 16, 1), o), Error);
  o = act_options(QuantMethod::kRtn, 8);
  o.smooth = true;  // no calibration activations
  EXPECT_THROW(quantize_model(golden("llama_tied"), tmp.path / "b", {}, o), Error);
  o = act_options(QuantMethod::kGptq, 8);
  o.smooth_alpha = 1.5;
  EXPECT_THROW(quantize_model(golden("llama_tied"), tmp.path / "c", testdata::token_windows(2, 16, 1), o), Error);
  EXPECT_FALSE(fs::exists(tmp.path / "a") || fs::exists(tmp.path / "b") || fs::exists(tmp.path / "c"));
}
