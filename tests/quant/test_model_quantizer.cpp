// The model-level quantizer end to end on the tiny golden models (3 layers, hidden 64,
// intermediate 96, vocab 301): RTN / GPTQ / MosaicQuant checkpoints written, reloaded by the CPU
// engine and compared with the FP model; the checkpoint's tensors against docs/format.md; the
// engine's QuantLinear against quant's dequantize(); atomic output; bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/quant_linear.h"
#include "quant/calibration.h"
#include "quant/model_quantizer.h"
#include "format/int8_rows.h"
#include "format/packed_checkpoint.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"
#include "model_distance.h"
#include "golden_models.h"
#include "quant_test_data.h"

namespace fs = std::filesystem;
using namespace mosaic;

namespace {

using testdata::golden;

// A temp directory of this test file.
struct TempDir : testdata::TempDir {
  TempDir() : testdata::TempDir("mosaic_mq") {}
};

ModelQuantOptions small_options(QuantMethod m) {
  ModelQuantOptions o;
  o.method = m;
  o.group = 32;
  o.block_rows = 16;
  o.block_cols = 32;  // K = 96 is not a multiple of 64
  o.budget = 0.25;
  o.allocation = Allocation::kPerLayer;  // tests that want global say so
  o.quiet = true;
  return o;
}


// quantize_model must fail with an Error whose message contains `needle`, leaving neither `out`
// nor `out`.partial behind.
void expect_quantize_error(const fs::path& model, const fs::path& out, const std::vector<std::vector<int32_t>>& calib,
                           const ModelQuantOptions& o, const std::string& needle) {
  try {
    quantize_model(model, out, calib, o);
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".partial"));
}

}  // namespace

TEST(QuantLinear, MatchesDenseMatmulOnDequantize) {
  for (bool sym : {true, false}) {
    const PackedLinear p = random_packed_linear(64, 128, 32, 16, 32, 0.2, ResidualPattern::kUniform, 7, sym);
    ASSERT_TRUE(p.has_residual());
    const QuantLinear q(p, "test");
    const std::vector<float> W = dequantize(p);
    for (size_t i = 0; i < W.size(); ++i) ASSERT_EQ(q.data()[i], W[i]) << "element " << i << " sym " << sym;
    const int64_t M = 5;
    std::vector<float> X(size_t(M * 128)), Y(size_t(M * 64)), R(size_t(M * 64));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    for (auto& x : X) x = nd(rng);
    q.forward(X.data(), M, Y.data());
    reference_matmul(p, X.data(), M, R.data());
    for (size_t i = 0; i < Y.size(); ++i) EXPECT_NEAR(Y[i], R[i], 1e-4 * (1 + std::abs(R[i])));
  }
}

TEST(QuantLinear, BadTensorsAreErrors) {
  PackedLinear p = random_packed_linear(32, 64, 32, 16, 32, 0.5, ResidualPattern::kUniform, 1);
  p.res_colidx[0] = 99;  // out of range
  EXPECT_THROW(QuantLinear(p, "bad"), Error);
  p = random_packed_linear(32, 64, 32, 16, 32, 0.0, ResidualPattern::kNone, 1);
  p.scales.pop_back();
  EXPECT_THROW(QuantLinear(p, "bad"), Error);
}

TEST(Calibration, WindowsAreSeededAndChecked) {
  std::vector<int32_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[size_t(i)] = i;
  const auto a = sample_calibration_windows(ids, 4, 10, 5), b = sample_calibration_windows(ids, 4, 10, 5);
  EXPECT_EQ(a, b);
  for (const auto& w : a) {
    ASSERT_EQ(w.size(), 10u);
    for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i], w[i - 1] + 1);  // contiguous text windows
  }
  EXPECT_THROW(sample_calibration_windows({}, 4, 10, 5), Error);
  EXPECT_THROW(sample_calibration_windows(std::vector<int32_t>(9, 1), 4, 10, 5), Error);
  EXPECT_THROW(sample_calibration_windows(ids, 0, 10, 5), Error);
}

// RTN, GPTQ and MosaicQuant on two architectures: every checkpoint reloads, its logits stay near
// the FP model's, and MosaicQuant (GPTQ + 25% residual) is closer than GPTQ alone.
TEST(ModelQuantizer, EndToEndCloserWithResidual) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  for (const char* name : {"llama_tied", "qwen3_untied_bf16"}) {
    const Model ref = Model::load(golden(name));
    double kl[3];
    int i = 0;
    for (QuantMethod m : {QuantMethod::kRtn, QuantMethod::kGptq, QuantMethod::kMosaic}) {
      const fs::path out = tmp.path / (std::string(name) + "_" + quant_method_name(m));
      const ModelQuantReport r = quantize_model(golden(name), out, calib, small_options(m));
      const Model q = Model::load(out);
      EXPECT_NE(q.linear(0, LinearId::Q).kind().find("mosaic-w4g32"), std::string::npos) << q.linear(0, LinearId::Q).kind();
      const testdata::Distance d = testdata::logits_distance(ref, q, eval);
      std::printf("%-18s %-6s bits/weight %.3f  KL %.5f  rel RMS logits err %.4f\n", name, quant_method_name(m),
                  r.bits_per_weight(), d.kl, d.rel_rms);
      EXPECT_LT(d.rel_rms, 0.25) << name << " " << quant_method_name(m);
      EXPECT_GT(d.kl, 0.0);
      kl[i++] = d.kl;
      if (m == QuantMethod::kMosaic) {
        EXPECT_GT(r.residual_blocks, 0);
        EXPECT_GT(r.bits_per_weight(), 4.5);
      } else {
        EXPECT_NEAR(r.bits_per_weight(), 4.5, 1e-9);  // 4 bits + fp16 scale per 32
      }
    }
    EXPECT_LT(kl[2], kl[1]) << name << ": mosaic should beat GPTQ alone";
  }
}

// The tensors of docs/format.md with their dtypes and shapes; config.json's quantization_config.
TEST(ModelQuantizer, CheckpointFollowsFormat) {
  TempDir tmp;
  const fs::path out = tmp.path / "q";
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.symmetric = false;
  o.calibration_info = {{"file", "test"}, {"samples", 16}, {"seq_len", 48}};
  quantize_model(golden("qwen3_untied_bf16"), out, testdata::token_windows(16, 48, 11), o);
  EXPECT_FALSE(fs::exists(tmp.path / "q.partial"));
  const ModelConfig cfg = ModelConfig::load(out);
  const auto& qc = cfg.quantization_config;
  EXPECT_EQ(qc["quant_method"], "mosaicquant");
  EXPECT_EQ(qc["format_version"], 1);
  EXPECT_EQ(qc["bits"], 4);
  EXPECT_EQ(qc["group_size"], 32);
  EXPECT_EQ(qc["symmetric"], false);
  EXPECT_EQ(qc["base_method"], "gptq");
  EXPECT_EQ(qc["residual"]["block_rows"], 16);
  EXPECT_EQ(qc["residual"]["block_cols"], 32);
  EXPECT_EQ(qc["residual"]["budget"], 0.25);
  EXPECT_EQ(qc["residual"]["scorer"], "delta_hessian");
  EXPECT_EQ(qc["calibration"]["samples"], 16);

  const Checkpoint ck = Checkpoint::open(out);
  EXPECT_EQ(ck.get("model.embed_tokens.weight", {301, 64}).dtype, DType::F16);
  EXPECT_EQ(ck.get("lm_head.weight", {301, 64}).dtype, DType::F16);  // untied: kept in FP16
  EXPECT_EQ(ck.get("model.layers.2.self_attn.q_norm.weight").dtype, DType::F16);
  const int64_t shapes[7][2] = {{64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64}, {64, 96}};
  int64_t kept = 0, total = 0;
  for (int l = 0; l < 3; ++l)
    for (int j = 0; j < 7; ++j) {
      const std::string p = "model.layers." + std::to_string(l) + "." + linear_name(LinearId(j));
      const int64_t N = shapes[j][0], K = shapes[j][1];
      EXPECT_FALSE(ck.has(p + ".weight")) << p;
      EXPECT_EQ(ck.get(p + ".qweight", {N, K / 2}).dtype, DType::U8);
      EXPECT_EQ(ck.get(p + ".scales", {N, K / 32}).dtype, DType::F16);
      EXPECT_EQ(ck.get(p + ".qzeros", {N, K / 32}).dtype, DType::U8);
      const int64_t blocks = (N / 16) * (K / 32), nnzb = int64_t(std::floor(0.25 * double(blocks) + 1e-9));
      total += blocks;
      if (nnzb == 0) continue;
      kept += nnzb;
      EXPECT_EQ(ck.get(p + ".res_rowptr", {N / 16 + 1}).dtype, DType::I32);
      EXPECT_EQ(ck.get(p + ".res_colidx", {nnzb}).dtype, DType::I32);
      EXPECT_EQ(ck.get(p + ".res_qvalues", {nnzb, 16, 16}).dtype, DType::U8);
      EXPECT_EQ(ck.get(p + ".res_scales", {nnzb, 16}).dtype, DType::F16);
      const PackedLinear back = read_packed_linear(ck, p, N, K);  // validate()s
      EXPECT_EQ(back.num_blocks_kept(), nnzb);
      EXPECT_EQ(back.block_cols, 32);
    }
  EXPECT_GT(kept, total / 5);
}

// --grid nl4: every quantized linear carries its codebook (<prefix>.qgrid, F32 [16]), the config
// names it, and the checkpoint reloads into the CPU engine with logits near the FP model's.
TEST(ModelQuantizer, NonUniformGridCheckpointRoundTrips) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.grid = grid_nl4();
  quantize_model(golden("llama_tied"), tmp.path / "nl4", calib, o);
  const Checkpoint ck = Checkpoint::open(tmp.path / "nl4");
  for (int j = 0; j < 7; ++j) {
    const std::string p = std::string("model.layers.0.") + linear_name(LinearId(j));
    EXPECT_EQ(ck.get(p + ".qgrid", {16}).dtype, DType::F32) << p;
    EXPECT_EQ(ck.get(p + ".qgrid").to_f32(), grid_nl4()) << p;
  }
  const ModelConfig cfg = ModelConfig::load(tmp.path / "nl4");
  EXPECT_EQ(cfg.quantization_config.value("grid", ""), "nl4");
  const testdata::Distance d = testdata::logits_distance(Model::load(golden("llama_tied")), Model::load(tmp.path / "nl4"), eval);
  std::printf("llama_tied mosaic nl4: KL %.5f  rel RMS logits err %.4f\n", d.kl, d.rel_rms);
  EXPECT_GT(d.kl, 0.0);
  EXPECT_LT(d.rel_rms, 0.25);
  o.symmetric = false;  // the grid is symmetric only: a clear error, nothing written
  EXPECT_THROW(quantize_model(golden("llama_tied"), tmp.path / "nl4a", calib, o), Error);
  EXPECT_FALSE(fs::exists(tmp.path / "nl4a"));
}

// Per-linear group sizes (--group-for): each linear's scales have its own group's shape, the config
// lists the linears that differ, the engine loads it (closer to the FP model than all-group-32 is
// not required: the point is that it runs), and the parser / checks refuse malformed entries.
TEST(ModelQuantizer, PerLinearGroupSizes) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.group_for = parse_group_for("down_proj=16,mlp=64");  // first match wins: down 16, gate / up 64
  EXPECT_EQ(linear_group(o, LinearId::Down), 16);
  EXPECT_EQ(linear_group(o, LinearId::Gate), 64);
  EXPECT_EQ(linear_group(o, LinearId::Up), 64);
  EXPECT_EQ(linear_group(o, LinearId::Q), 32);
  o.allocation = Allocation::kGlobal;
  quantize_model(golden("llama_tied"), tmp.path / "mixed", calib, o);
  const Checkpoint ck = Checkpoint::open(tmp.path / "mixed");
  const ModelConfig cfg = ModelConfig::load(tmp.path / "mixed");
  const Checkpoint fp = Checkpoint::open(golden("llama_tied"));
  for (int j = 0; j < 7; ++j) {
    const LinearId id = LinearId(j);
    const std::string p = std::string("model.layers.1.") + linear_name(id);
    const std::vector<int64_t> nk = fp.get(p + ".weight").shape;  // [N, K]
    EXPECT_EQ(ck.get(p + ".scales").shape, (std::vector<int64_t>{nk[0], nk[1] / linear_group(o, id)})) << p;
  }
  const auto& per = cfg.quantization_config.at("group_size_per_linear");
  EXPECT_EQ(per.size(), 3u);
  EXPECT_EQ(per.at("mlp.down_proj").get<int>(), 16);
  EXPECT_EQ(per.at("mlp.up_proj").get<int>(), 64);
  EXPECT_EQ(cfg.quantization_config.at("group_size").get<int>(), 32);
  const testdata::Distance d =
      testdata::logits_distance(Model::load(golden("llama_tied")), Model::load(tmp.path / "mixed"), eval);
  std::printf("llama_tied mosaic, per-linear groups: KL %.5f  rel RMS logits err %.4f\n", d.kl, d.rel_rms);
  EXPECT_GT(d.kl, 0.0);
  EXPECT_LT(d.rel_rms, 0.25);

  EXPECT_THROW(parse_group_for("down_proj"), Error);
  EXPECT_THROW(parse_group_for("down_proj=x"), Error);
  EXPECT_THROW(parse_group_for("=32"), Error);
  EXPECT_THROW(parse_group_for("down_proj=32x"), Error);
  EXPECT_TRUE(parse_group_for("").empty());
  const fs::path bad = tmp.path / "bad";
  o.group_for = {{"lm_head", 32}};  // not a decoder linear: refused, nothing written
  expect_quantize_error(golden("llama_tied"), bad, calib, o, "matches no linear");
  o.group_for = {{"down_proj", 0}};
  expect_quantize_error(golden("llama_tied"), bad, calib, o, "must be positive");
  o.group_for = {{"q_proj", 16}};  // q/k/v are one fused GEMM in the engines: must share
  expect_quantize_error(golden("llama_tied"), bad, calib, o, "q_proj, k_proj and v_proj must share");
  o.group_for = {{"gate_proj", 16}};
  expect_quantize_error(golden("llama_tied"), bad, calib, o, "gate_proj and up_proj must share");
  o.group_for = {{"down_proj", 36}};  // does not divide down's K = 96
  expect_quantize_error(golden("llama_tied"), bad, calib, o, "mlp.down_proj.weight");
}

// --lm-head: the head of a tied model is quantized from the embedding (packed lm_head tensors, the
// config untied, quantization_config.lm_head true), the engine loads and runs it, its logits stay
// close to the FP model's (a little further than with the FP16 head), and act_bits < 16 is refused.
TEST(ModelQuantizer, QuantizedLmHead) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  const Model fp = Model::load(golden("llama_tied"));
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.block_rows = 1;  // the golden vocabulary (301) has no 16-row blocks
  quantize_model(golden("llama_tied"), tmp.path / "body", calib, o);
  o.quantize_lm_head = true;
  quantize_model(golden("llama_tied"), tmp.path / "head", calib, o);
  const Checkpoint ck = Checkpoint::open(tmp.path / "head");
  const ModelConfig cfg = ModelConfig::load(tmp.path / "head");
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_TRUE(cfg.quantization_config.at("lm_head").get<bool>());
  EXPECT_FALSE(ck.has("lm_head.weight"));
  EXPECT_EQ(ck.get("lm_head.scales").shape, (std::vector<int64_t>{cfg.vocab_size, cfg.hidden_size / o.group}));
  EXPECT_TRUE(ck.has("lm_head.res_colidx"));
  const Model body = Model::load(tmp.path / "body"), head = Model::load(tmp.path / "head");
  EXPECT_EQ(head.head().N, cfg.vocab_size);
  const testdata::Distance d0 = testdata::logits_distance(fp, body, eval), d1 = testdata::logits_distance(fp, head, eval);
  std::printf("llama_tied mosaic: KL %.5f with the FP16 head, %.5f with the quantized head\n", d0.kl, d1.kl);
  EXPECT_GT(d1.kl, 0.0);
  EXPECT_LT(d1.rel_rms, 0.25);
  EXPECT_LT(d1.kl, 4 * d0.kl + 0.01);
  // With a rotation: the head quantized is the rotated one (final norm folded in, untied).
  {
    ModelQuantOptions r = small_options(QuantMethod::kMosaic);
    r.block_rows = 1;
    r.quantize_lm_head = true;
    r.rotation.kind = RotationKind::kR1;
    quantize_model(golden("llama_tied"), tmp.path / "rot", calib, r);
    const Checkpoint rc = Checkpoint::open(tmp.path / "rot");
    EXPECT_TRUE(rc.has("lm_head.qweight"));
    EXPECT_FALSE(rc.has("lm_head.weight"));
    const testdata::Distance dr = testdata::logits_distance(fp, Model::load(tmp.path / "rot"), eval);
    std::printf("llama_tied mosaic, rotated r1, quantized head: KL %.5f\n", dr.kl);
    EXPECT_LT(dr.kl, 4 * d0.kl + 0.01);
  }
  // RTN (no calibration: the head without a Hessian) and the refusals.
  o = small_options(QuantMethod::kRtn);
  o.quantize_lm_head = true;
  quantize_model(golden("llama_tied"), tmp.path / "rtn", {}, o);
  EXPECT_TRUE(Checkpoint::open(tmp.path / "rtn").has("lm_head.qweight"));
  o = small_options(QuantMethod::kMosaic);
  o.quantize_lm_head = true;  // 16-row blocks do not tile 301 rows: a clear error before any work
  expect_quantize_error(golden("llama_tied"), tmp.path / "b16", calib, o, "--lm-head: residual block");
  o.block_rows = 1;
  o.act_bits = 8;
  expect_quantize_error(golden("llama_tied"), tmp.path / "a8", calib, o, "--lm-head quantizes the head's weights only");
}

// --lm-head-int8 (docs/format.md "8-bit LM head"): on a tied and an untied model, the head is
// lm_head.weight_int8 I8 [V, D] + lm_head.weight_scale F16 [V], exactly quantize_int8_rows of the
// source (the embedding of the tied model, lm_head.weight of the untied one), no lm_head.weight,
// the config untied with lm_head_int8 true; the CPU engine loads it as a dense "int8-row" linear
// whose logits differ from the same quantization with the FP16 head by at most
// (1/2 + 127 * 2^-11) s_v ||h_t||_1 per logit (half a step of the int8 rounding plus the FP16 head's
// own rounding, <= 2^-11 |w| <= 127 * 2^-11 s_v), and KL(FP16 head || int8 head) < 1e-4 per token.
TEST(ModelQuantizer, Int8LmHead) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  const int64_t T = int64_t(eval.size());
  for (const char* name : {"llama_tied", "qwen3_untied_bf16"}) {
    ModelQuantOptions o = small_options(QuantMethod::kMosaic);
    const fs::path body = tmp.path / (std::string(name) + "_body"), head = tmp.path / (std::string(name) + "_int8");
    quantize_model(golden(name), body, calib, o);
    o.lm_head_int8 = true;
    const ModelQuantReport r = quantize_model(golden(name), head, calib, o);
    const ModelConfig cfg = ModelConfig::load(head);
    const int64_t V = cfg.vocab_size, D = cfg.hidden_size;
    EXPECT_FALSE(cfg.tie_word_embeddings) << name;
    EXPECT_TRUE(cfg.quantization_config.at("lm_head_int8").get<bool>()) << name;
    EXPECT_FALSE(cfg.quantization_config.at("lm_head").get<bool>()) << name;
    EXPECT_FALSE(ModelConfig::load(body).quantization_config.at("lm_head_int8").get<bool>()) << name;
    EXPECT_EQ(r.lm_head_params, V * D);
    EXPECT_EQ(r.lm_head_bytes, V * D + 2 * V);
    const Checkpoint ck = Checkpoint::open(head);
    EXPECT_FALSE(ck.has("lm_head.weight")) << name;
    EXPECT_FALSE(ck.has("lm_head.qweight")) << name;
    EXPECT_EQ(ck.get("lm_head.weight_int8", {V, D}).dtype, DType::I8) << name;
    EXPECT_EQ(ck.get("lm_head.weight_scale", {V}).dtype, DType::F16) << name;
    EXPECT_EQ(ck.get("model.embed_tokens.weight", {V, D}).dtype, DType::F16) << name;  // the embedding stays F16
    // Exactly the rule of format/int8_rows.h applied to the source.
    const Checkpoint src = Checkpoint::open(golden(name));
    const std::vector<float> W = src.get(src.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight",
                                         {V, D}).to_f32();
    std::vector<int8_t> q;
    std::vector<uint16_t> s;
    quantize_int8_rows(W.data(), V, D, q, s);
    const Int8Rows stored = read_int8_rows(ck, "lm_head", V, D);
    EXPECT_EQ(stored.q, q) << name;
    EXPECT_EQ(stored.scale, s) << name;
    // The decoder is the same quantization either way; only the head differs.
    const Model mb = Model::load(body), mh = Model::load(head);
    EXPECT_EQ(mh.head().kind(), "int8-row");
    EXPECT_EQ(mb.head().kind(), "dense-f32");
    std::vector<float> hb(size_t(T * D)), hh(size_t(T * D));
    KVCache cb = mb.make_cache(T), ch = mh.make_cache(T);
    mb.forward_hidden(eval.data(), T, cb, hb.data());
    mh.forward_hidden(eval.data(), T, ch, hh.data());
    ASSERT_EQ(hb, hh) << name << ": the decoder layers differ";
    const std::vector<float> lb = testdata::forward_logits(mb, eval), lh = testdata::forward_logits(mh, eval);
    double worst = 0;  // largest |logit difference| / its bound
    for (int64_t t = 0; t < T; ++t) {
      double l1 = 0;
      for (int64_t d = 0; d < D; ++d) l1 += std::fabs(hh[size_t(t * D + d)]);
      for (int64_t v = 0; v < V; ++v) {
        const double bound = (0.5 + 127 * 0x1p-11) * fp16_to_float(s[size_t(v)]) * l1 + 1e-5;
        worst = std::max(worst, std::fabs(double(lh[size_t(t * V + v)]) - lb[size_t(t * V + v)]) / bound);
      }
    }
    const testdata::Distance d = testdata::logits_distance(mb, mh, eval);
    std::printf("%-18s int8 head vs FP16 head: KL %.2e, rel RMS logits %.2e, worst |dlogit| / bound %.3f\n", name,
                d.kl, d.rel_rms, worst);
    EXPECT_LE(worst, 1.0) << name;
    EXPECT_LT(d.kl, 1e-4) << name;
    EXPECT_GT(d.rel_rms, 0.0) << name;  // the head did change
  }
  // Weights only, but the head's input is never activation-quantized: allowed with --act-bits 8,
  // and the head stays a plain int8-row linear.
  {
    ModelQuantOptions o = small_options(QuantMethod::kRtn);
    o.lm_head_int8 = true;
    o.act_bits = 8;
    quantize_model(golden("llama_tied"), tmp.path / "a8", {}, o);
    const Model m = Model::load(tmp.path / "a8");
    EXPECT_EQ(m.head().kind(), "int8-row");
    EXPECT_NE(m.linear(0, LinearId::Q).kind().find("-a8"), std::string::npos) << m.linear(0, LinearId::Q).kind();
  }
  // With a rotation the source is the rotated lm_head (final norm folded in); still no lm_head.weight.
  {
    ModelQuantOptions o = small_options(QuantMethod::kRtn);
    o.rotation.kind = RotationKind::kR1;
    quantize_model(golden("llama_tied"), tmp.path / "rot", {}, o);
    o.lm_head_int8 = true;
    quantize_model(golden("llama_tied"), tmp.path / "rot8", {}, o);
    EXPECT_FALSE(Checkpoint::open(tmp.path / "rot8").has("lm_head.weight"));
    const testdata::Distance d =
        testdata::logits_distance(Model::load(tmp.path / "rot"), Model::load(tmp.path / "rot8"), eval);
    std::printf("llama_tied rtn r1: int8 head vs FP16 head KL %.2e\n", d.kl);
    EXPECT_LT(d.kl, 1e-4);
  }
  // --lm-head and --lm-head-int8 together: refused before any work.
  ModelQuantOptions o = small_options(QuantMethod::kRtn);
  o.block_rows = 1;
  o.quantize_lm_head = true;
  o.lm_head_int8 = true;
  expect_quantize_error(golden("llama_tied"), tmp.path / "both", {}, o, "--lm-head and --lm-head-int8 are mutually exclusive");
}

// A checkpoint whose int8 head is malformed does not load: wrong shape or dtype, a missing scale
// tensor, or a second head next to it, each named; and a config that still says tied does not make
// the engine take the embedding over a stored int8 head.
TEST(ModelQuantizer, Int8LmHeadBadTensorsAreErrors) {
  TempDir tmp;
  ModelQuantOptions o = small_options(QuantMethod::kRtn);
  o.lm_head_int8 = true;
  const fs::path good = tmp.path / "good";
  quantize_model(golden("llama_tied"), good, {}, o);
  const Checkpoint ck = Checkpoint::open(good);
  // A copy of `good` with its tensors passed through `edit` (rename, reshape, retype, drop) plus `extra`.
  auto rewritten = [&](const std::string& tag, const std::function<bool(std::string&, DType&, std::vector<int64_t>&)>& edit,
                       const std::string& extra = "") {
    const fs::path d = tmp.path / tag;
    fs::create_directories(d);
    fs::copy_file(good / "config.json", d / "config.json");
    SafetensorsWriter w;
    for (const std::string& n : ck.names()) {
      const TensorView& t = ck.get(n);
      std::string name = n;
      DType dt = t.dtype;
      std::vector<int64_t> shape = t.shape;
      if (edit(name, dt, shape)) w.add(name, dt, shape, std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
    }
    if (!extra.empty()) {
      const TensorView& e = ck.get("model.embed_tokens.weight");
      w.add(extra, e.dtype, e.shape, std::string(reinterpret_cast<const char*>(e.data), e.nbytes));
    }
    w.write(d / "model.safetensors");
    return d;
  };
  auto load_error = [](const fs::path& d) -> std::string {
    try {
      Model::load(d);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string e = load_error(rewritten("shape", [](std::string& n, DType&, std::vector<int64_t>& s) {
    if (n == "lm_head.weight_int8") s = {s[1], s[0]};
    return true;
  }));
  EXPECT_NE(e.find("tensor 'lm_head.weight_int8' is I8 [64, 301], expected I8 [301, 64]"), std::string::npos) << e;
  e = load_error(rewritten("dtype", [](std::string& n, DType& t, std::vector<int64_t>&) {
    if (n == "lm_head.weight_int8") t = DType::U8;
    return true;
  }));
  EXPECT_NE(e.find("tensor 'lm_head.weight_int8' is U8 [301, 64], expected I8 [301, 64]"), std::string::npos) << e;
  e = load_error(rewritten("noscale", [](std::string& n, DType&, std::vector<int64_t>&) { return n != "lm_head.weight_scale"; }));
  EXPECT_NE(e.find("missing tensor 'lm_head.weight_scale'"), std::string::npos) << e;
  e = load_error(rewritten("scaledtype", [](std::string& n, DType& t, std::vector<int64_t>&) {
    if (n == "lm_head.weight_scale") t = DType::BF16;
    return true;
  }));
  EXPECT_NE(e.find("tensor 'lm_head.weight_scale' is BF16 [301], expected F16 [301]"), std::string::npos) << e;
  e = load_error(rewritten("twoheads", [](std::string&, DType&, std::vector<int64_t>&) { return true; }, "lm_head.weight"));
  EXPECT_NE(e.find("both 'lm_head.weight_int8' and 'lm_head.weight'"), std::string::npos) << e;
  // tie_word_embeddings true in the config: the stored int8 head still wins over the embedding.
  auto j = nlohmann::json::parse(read_file(good / "config.json"));
  j["tie_word_embeddings"] = true;
  write_file_atomic(good / "config.json", j.dump());
  EXPECT_EQ(Model::load(good).head().kind(), "int8-row");
}

// Global allocation: exactly budget_blocks(budget, all blocks of the model) kept in total, split
// unevenly over the linears (the per-layer split would give each linear floor(budget x blocks)),
// the checkpoint's counts equal the allocation, and the model is no worse than per-layer at the
// same number of blocks by more than noise (here it is compared, not required to win).
TEST(ModelQuantizer, GlobalAllocationKeepsTheModelBudget) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  const char* name = "llama_tied";
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.budget = 0.2;
  o.allocation = Allocation::kGlobal;
  const ModelQuantReport r = quantize_model(golden(name), tmp.path / "global", calib, o);
  const int64_t shapes[7][2] = {{64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64}, {64, 96}};
  int64_t total = 0, per_layer_total = 0;
  for (int j = 0; j < 7; ++j) {
    const int64_t blocks = (shapes[j][0] / 16) * (shapes[j][1] / 32);
    total += 3 * blocks;
    per_layer_total += 3 * budget_blocks(0.2, blocks);
  }
  EXPECT_EQ(r.residual_blocks, budget_blocks(0.2, total));
  ASSERT_EQ(r.global_counts.size(), size_t(3 * 7));
  bool uneven = false;
  const Checkpoint ck = Checkpoint::open(tmp.path / "global");
  for (int l = 0; l < 3; ++l)
    for (int j = 0; j < 7; ++j) {
      const std::string p = "model.layers." + std::to_string(l) + "." + linear_name(LinearId(j));
      const int64_t N = shapes[j][0], K = shapes[j][1];
      const int64_t count = r.global_counts[size_t(l * 7 + j)];
      EXPECT_EQ(read_packed_linear(ck, p, N, K).num_blocks_kept(), count) << p;
      uneven |= count != budget_blocks(0.2, (N / 16) * (K / 32));
    }
  EXPECT_TRUE(uneven) << "global allocation gave every linear its per-layer share";
  EXPECT_EQ(ModelConfig::load(tmp.path / "global").quantization_config["residual"]["allocation"], "global");
  EXPECT_EQ(r.score_windows, 16);
  EXPECT_EQ(ModelConfig::load(tmp.path / "global").quantization_config["residual"]["score_samples"], 16);

  // A scoring pass on fewer windows: recorded, the same model budget, counts from its own ranking.
  o.score_samples = 4;
  const ModelQuantReport r4 = quantize_model(golden(name), tmp.path / "global4", calib, o);
  EXPECT_EQ(r4.score_windows, 4);
  EXPECT_EQ(ModelConfig::load(tmp.path / "global4").quantization_config["residual"]["score_samples"], 4);
  EXPECT_EQ(r4.residual_blocks, budget_blocks(0.2, total));
  EXPECT_NE(r4.global_counts, r.global_counts) << "the scoring pass did not use fewer windows";
  o.score_samples = 16;

  o.allocation = Allocation::kPerLayer;
  const ModelQuantReport rp = quantize_model(golden(name), tmp.path / "per_layer", calib, o);
  EXPECT_EQ(rp.residual_blocks, per_layer_total);
  const Model ref = Model::load(golden(name));
  const double kl_global = testdata::logits_distance(ref, Model::load(tmp.path / "global"), eval).kl;
  const double kl_layer = testdata::logits_distance(ref, Model::load(tmp.path / "per_layer"), eval).kl;
  std::printf("budget 0.2: global %lld blocks KL %.5f, per-layer %lld blocks KL %.5f\n", (long long)r.residual_blocks,
              kl_global, (long long)rp.residual_blocks, kl_layer);
  EXPECT_GT(kl_global, 0.0);
  EXPECT_LT(kl_global, 2 * kl_layer);
}

// --alloc-exponent A (the power of each linear's output energy dividing its block scores in the global
// allocation): 0 ranks by absolute scores, which shares the same model budget differently from 0.75 (the
// default) and 1; the config records A under global allocation (null per layer); a value outside [0, 2]
// fails before any work, naming the option.
TEST(ModelQuantizer, GlobalAllocationExponent) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.budget = 0.2;
  o.allocation = Allocation::kGlobal;
  EXPECT_EQ(o.alloc_exponent, 0.75);
  const ModelQuantReport rd = quantize_model(golden("llama_tied"), tmp.path / "ed", calib, o);
  EXPECT_EQ(ModelConfig::load(tmp.path / "ed").quantization_config["residual"]["alloc_exponent"], 0.75);
  o.alloc_exponent = 1.0;
  const ModelQuantReport r1 = quantize_model(golden("llama_tied"), tmp.path / "e1", calib, o);
  o.alloc_exponent = 0.0;
  const ModelQuantReport r0 = quantize_model(golden("llama_tied"), tmp.path / "e0", calib, o);
  EXPECT_EQ(r0.residual_blocks, r1.residual_blocks);
  EXPECT_EQ(rd.residual_blocks, r1.residual_blocks);
  EXPECT_NE(r0.global_counts, r1.global_counts) << "the exponent did not change how the budget is shared";
  for (double bad : {-0.1, 2.5, std::nan("")}) {
    o.alloc_exponent = bad;
    try {
      quantize_model(golden("llama_tied"), tmp.path / "bad", calib, o);
      ADD_FAILURE() << "no error for --alloc-exponent " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--alloc-exponent"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(tmp.path / "bad")) << "a refused run left an output directory";
  }
  o.alloc_exponent = 0.75;
  o.allocation = Allocation::kPerLayer;
  quantize_model(golden("llama_tied"), tmp.path / "pl", calib, o);
  EXPECT_TRUE(ModelConfig::load(tmp.path / "pl").quantization_config["residual"]["alloc_exponent"].is_null());
}

// --row-cap F: under global and per-layer allocation no block row of any linear keeps more than
// ceil(F x block columns) blocks (here 1 of 2, 2 of 3), the model still keeps exactly its budget,
// the config records F; F = 0.999 (the capped code path with caps equal to the block columns, so
// never binding) writes the uncapped checkpoint byte for byte; caps that cannot hold the budget
// fail before any work, naming F and the budget.
TEST(ModelQuantizer, RowCapBoundsEveryBlockRow) {
  TempDir tmp;
  const auto calib = testdata::token_windows(16, 48, 11);
  const char* name = "llama_tied";
  const int64_t shapes[7][2] = {{64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64}, {64, 96}};
  // Kept blocks in total and the most any block row keeps beyond ceil(F x block columns).
  auto census = [&](const fs::path& dir, double F) {
    const Checkpoint ck = Checkpoint::open(dir);
    int64_t kept = 0, over = std::numeric_limits<int64_t>::min();
    for (int l = 0; l < 3; ++l)
      for (int j = 0; j < 7; ++j) {
        const std::string p = "model.layers." + std::to_string(l) + "." + linear_name(LinearId(j));
        const int64_t N = shapes[j][0], K = shapes[j][1];
        const PackedLinear q = read_packed_linear(ck, p, N, K);
        kept += q.num_blocks_kept();
        if (q.res_rowptr.empty()) continue;
        const int64_t cap = int64_t(std::ceil(F * double(K / 32) - 1e-9));
        for (int64_t r = 0; r < N / 16; ++r) over = std::max<int64_t>(over, q.res_rowptr[r + 1] - q.res_rowptr[r] - cap);
      }
    return std::pair<int64_t, int64_t>(kept, over);
  };
  int64_t total = 0;
  for (int j = 0; j < 7; ++j) total += 3 * (shapes[j][0] / 16) * (shapes[j][1] / 32);
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.budget = 0.4;
  o.allocation = Allocation::kGlobal;
  const ModelQuantReport free = quantize_model(golden(name), tmp.path / "free", calib, o);
  EXPECT_GT(census(tmp.path / "free", 0.5).second, 0) << "uncapped, no block row is above F = 0.5: the test is moot";
  EXPECT_EQ(ModelConfig::load(tmp.path / "free").quantization_config["residual"]["row_cap"], 1.0);

  o.row_cap = 0.5;
  const ModelQuantReport capped = quantize_model(golden(name), tmp.path / "capped", calib, o);
  const auto [kept, over] = census(tmp.path / "capped", 0.5);
  EXPECT_EQ(kept, budget_blocks(0.4, total));
  EXPECT_EQ(capped.residual_blocks, kept);
  EXPECT_LE(over, 0);
  EXPECT_NE(capped.global_counts, free.global_counts);
  EXPECT_EQ(ModelConfig::load(tmp.path / "capped").quantization_config["residual"]["row_cap"], 0.5);

  o.row_cap = 0.999;  // caps = block columns: the capped path, never binding
  const ModelQuantReport same = quantize_model(golden(name), tmp.path / "same", calib, o);
  EXPECT_EQ(same.global_counts, free.global_counts);
  int files = 0;
  for (const auto& e : fs::directory_iterator(tmp.path / "free")) {
    if (e.path().extension() != ".safetensors") continue;
    ++files;
    EXPECT_TRUE(read_file(e.path()) == read_file(tmp.path / "same" / e.path().filename())) << e.path().filename();
  }
  EXPECT_GT(files, 0);

  o.allocation = Allocation::kPerLayer;
  o.budget = 0.25;
  o.row_cap = 0.5;
  quantize_model(golden(name), tmp.path / "per_layer", calib, o);
  const auto [kept_pl, over_pl] = census(tmp.path / "per_layer", 0.5);
  int64_t per_layer_total = 0;
  for (int j = 0; j < 7; ++j) per_layer_total += 3 * budget_blocks(0.25, (shapes[j][0] / 16) * (shapes[j][1] / 32));
  EXPECT_EQ(kept_pl, per_layer_total);
  EXPECT_LE(over_pl, 0);

  // Infeasible: F = 0.5 holds 96 of the 180 blocks; 60% is 108 (global). Per layer, gate_proj's
  // 60% (7 of 12) does not fit 6 block rows of 1.
  o.budget = 0.6;
  expect_quantize_error(golden(name), tmp.path / "bad", calib, o, "--row-cap 0.5");
  expect_quantize_error(golden(name), tmp.path / "bad", calib, o, "mlp.gate_proj");
  o.allocation = Allocation::kGlobal;
  expect_quantize_error(golden(name), tmp.path / "bad", calib, o, "at most 96 of its 180");
  expect_quantize_error(golden(name), tmp.path / "bad", calib, o, "--budget 0.6");
  for (double F : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    o.row_cap = F;
    expect_quantize_error(golden(name), tmp.path / "bad", calib, o, "out of range (0, 1]");
  }
}

// True-sequential changes exactly what it should: q/k/v see the same Hessian either way (layer 0's
// attention input; later layers' inputs differ), o / gate / up / down of layer 0 are re-calibrated
// after the earlier linears are quantized.
TEST(ModelQuantizer, TrueSequentialRecalibratesLaterSites) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 11);
  const auto eval = testdata::token_windows(1, 96, 99)[0];
  ModelQuantOptions o = small_options(QuantMethod::kGptq);
  const fs::path a = tmp.path / "plain", b = tmp.path / "seq";
  quantize_model(golden("llama_tied"), a, calib, o);
  o.true_sequential = true;
  quantize_model(golden("llama_tied"), b, calib, o);
  EXPECT_EQ(ModelConfig::load(b).quantization_config["true_sequential"], true);
  EXPECT_EQ(ModelConfig::load(a).quantization_config["true_sequential"], false);
  const Checkpoint ca = Checkpoint::open(a), cb = Checkpoint::open(b);
  const int64_t shapes[7][2] = {{64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64}, {64, 96}};
  for (int j = 0; j < 7; ++j) {
    const std::string p = std::string("model.layers.0.") + linear_name(LinearId(j));
    const PackedLinear x = read_packed_linear(ca, p, shapes[j][0], shapes[j][1]);
    const PackedLinear y = read_packed_linear(cb, p, shapes[j][0], shapes[j][1]);
    const bool same = x.qweight == y.qweight && x.scales == y.scales;
    if (j <= int(LinearId::V))
      EXPECT_TRUE(same) << p << ": q/k/v of layer 0 have the same Hessian either way";
    else
      EXPECT_FALSE(same) << p << ": should have been re-calibrated";
  }
  const Model ref = Model::load(golden("llama_tied"));
  const double kl_a = testdata::logits_distance(ref, Model::load(a), eval).kl, kl_b = testdata::logits_distance(ref, Model::load(b), eval).kl;
  std::printf("GPTQ g32: KL %.5f, true-sequential %.5f\n", kl_a, kl_b);
  EXPECT_GT(kl_b, 0.0);
  EXPECT_LT(kl_b, 2 * kl_a);
}

TEST(ModelQuantizer, AtomicOutput) {
  TempDir tmp;
  const fs::path out = tmp.path / "q";
  ModelQuantOptions o = small_options(QuantMethod::kGptq);
  o.fail_after_layers = 1;  // injected failure mid-run
  EXPECT_THROW(quantize_model(golden("llama_tied"), out, testdata::token_windows(4, 32, 1), o), Error);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(tmp.path / "q.partial"));

  // Leftovers of an interrupted run are replaced; the result is complete.
  fs::create_directories(tmp.path / "q.partial");
  write_file_atomic(tmp.path / "q.partial/model-00001-of-00002.safetensors", "junk");
  o.fail_after_layers = -1;
  quantize_model(golden("llama_tied"), out, testdata::token_windows(4, 32, 1), o);
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_FALSE(fs::exists(tmp.path / "q.partial"));
  EXPECT_FALSE(fs::exists(out / "model-00001-of-00002.safetensors"));

  // An existing output is kept unless force.
  EXPECT_THROW(quantize_model(golden("llama_tied"), out, testdata::token_windows(4, 32, 1), o), Error);
  EXPECT_TRUE(fs::exists(out / "config.json"));
  o.force = true;
  o.method = QuantMethod::kRtn;
  quantize_model(golden("llama_tied"), out, {}, o);
  EXPECT_EQ(ModelConfig::load(out).quantization_config["base_method"], "rtn");
}

TEST(ModelQuantizer, BadInputsAreErrors) {
  TempDir tmp;
  const auto calib = testdata::token_windows(4, 32, 1);
  auto expect_error = [&](const ModelQuantOptions& o, const std::string& needle,
                          const std::vector<std::vector<int32_t>>& c, const fs::path& model) {
    expect_quantize_error(model, tmp.path / "q", c, o, needle);
  };
  const fs::path m = golden("llama_tied");
  ModelQuantOptions o = small_options(QuantMethod::kMosaic);
  o.budget = 1.5;
  expect_error(o, "budget", calib, m);
  o.budget = -0.1;
  expect_error(o, "budget", calib, m);
  o = small_options(QuantMethod::kMosaic);
  o.group = 48;  // does not divide 64
  expect_error(o, "model.layers.0.self_attn.q_proj.weight", calib, m);
  o = small_options(QuantMethod::kMosaic);
  o.block_cols = 64;  // does not divide 96
  expect_error(o, "mlp.down_proj.weight", calib, m);
  expect_error(small_options(QuantMethod::kGptq), "calibration", {}, m);
  expect_error(small_options(QuantMethod::kGptq), "vocabulary", {{1, 2, 5000}}, m);

  // A tensor the engine does not know.
  const fs::path extra = tmp.path / "extra";
  fs::create_directories(extra);
  fs::copy_file(m / "config.json", extra / "config.json");
  const Checkpoint ck = Checkpoint::open(m);
  SafetensorsWriter w;
  for (const std::string& n : ck.names()) {
    const TensorView& t = ck.get(n);
    w.add(n, t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
  }
  const float bias[4] = {1, 2, 3, 4};
  w.add_f32("model.layers.0.self_attn.q_proj.bias", {4}, bias);
  w.write(extra / "model.safetensors");
  expect_error(small_options(QuantMethod::kRtn), "unsupported tensor 'model.layers.0.self_attn.q_proj.bias'", {},
               extra);

  // A checkpoint from a future format version is refused by the loader.
  const fs::path q = tmp.path / "v2";
  quantize_model(m, q, {}, small_options(QuantMethod::kRtn));
  auto j = nlohmann::json::parse(read_file(q / "config.json"));
  j["quantization_config"]["format_version"] = 2;
  write_file_atomic(q / "config.json", j.dump());
  EXPECT_THROW(Model::load(q), Error);
}
