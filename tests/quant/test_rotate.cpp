// Offline rotations (quant/rotate.h):
// - the matrices are orthogonal to 1e-12 (Hadamard, random orthogonal, their Kronecker product at
//   SmolLM2's 576 = 64 x 9) and seeded;
// - the folded rotation is exact: the rotated FP golden models (LLaMA tied / untied with llama3
//   rope scaling, Qwen3 with q/k norm, tied and untied) give the original logits within 1e-5 of
//   the largest logit (FP32 rounding; the golden tests' bound), for r1 and r1r2, Hadamard and random;
// - a rotated + quantized checkpoint (with and without smoothing / quantized activations)
//   round-trips through the writer, the reader and the CPU engine, untied, with
//   quantization_config.rotation, and stays close to the FP model;
// - bad input (unknown rotation or matrix name, a quantized model) is a clear error.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "quant/model_quantizer.h"
#include "quant/rotate.h"
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
  TempDir() : testdata::TempDir("mosaic_rotate") {}
};

}  // namespace

TEST(Rotate, MatricesAreOrthogonalAndSeeded) {
  for (int64_t n : {1, 2, 64, 256}) EXPECT_LT(orthogonality_error(random_hadamard(n, 3)), 1e-12) << n;
  for (int64_t n : {1, 3, 9, 64, 100}) EXPECT_LT(orthogonality_error(random_orthogonal(n, 3)), 1e-12) << n;
  // SmolLM2's hidden size: Hadamard(64) x orthogonal(9); head_dim 64: pure Hadamard.
  const Orthogonal q = make_rotation(576, RotationMatrix::kHadamard, 5);
  EXPECT_EQ(q.n, 576);
  EXPECT_EQ(q.describe, "hadamard(64) x orthogonal(9)");
  EXPECT_LT(orthogonality_error(q), 1e-12);
  EXPECT_LT(orthogonality_error(make_rotation(576, RotationMatrix::kRandom, 5)), 1e-12);
  EXPECT_LT(orthogonality_error(make_rotation(96, RotationMatrix::kHadamard, 5)), 1e-12);  // 32 x 3
  EXPECT_LT(orthogonality_error(make_rotation(7, RotationMatrix::kHadamard, 5)), 1e-12);   // odd: random
  // Dense: a single channel is spread over every output (the point of rotating).
  for (double v : q.q) EXPECT_NE(v, 0.0);
  // Seeded: same seed, same matrix; another seed, another one.
  EXPECT_EQ(make_rotation(576, RotationMatrix::kHadamard, 5).q, q.q);
  EXPECT_NE(make_rotation(576, RotationMatrix::kHadamard, 6).q, q.q);
  EXPECT_THROW(random_hadamard(48, 0), Error);
}

TEST(Rotate, FoldsAreTheMatrixProducts) {
  // rotate_input_side = W diag(gamma) Q and rotate_output_side = Q^T W, against a naive float64 loop.
  const int64_t N = 5, K = 8;
  const Orthogonal q = random_orthogonal(K, 1);
  const std::vector<float> W0 = testdata::weights(N, K, 2);
  std::vector<float> gamma(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) gamma[size_t(k)] = 0.5f + 0.25f * float(k);
  std::vector<float> W = W0;
  rotate_input_side(W, N, K, gamma, q);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K; ++j) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += double(W0[size_t(n * K + k)]) * gamma[size_t(k)] * q.q[size_t(k * K + j)];
      EXPECT_NEAR(W[size_t(n * K + j)], ref, 1e-7);
    }
  const std::vector<float> U0 = testdata::weights(K, N, 3);
  std::vector<float> U = U0;
  rotate_output_side(U, K, N, q);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t c = 0; c < N; ++c) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += q.q[size_t(k * K + i)] * double(U0[size_t(k * N + c)]);
      EXPECT_NEAR(U[size_t(i * N + c)], ref, 1e-7);
    }
}

// The folded rotation is exact in real arithmetic; in FP32 the logits agree to rounding.
TEST(Rotate, RotatedModelKeepsTheLogits) {
  TempDir tmp;
  for (const std::string& name : kGoldenModels) {
    const Model ref = Model::load(golden(name));
    for (RotationKind kind : {RotationKind::kR1, RotationKind::kR1R2})
      for (RotationMatrix mat : {RotationMatrix::kHadamard, RotationMatrix::kRandom})
       for (bool keep : {false, true}) {
        const std::string tag = name + "_" + rotation_name(kind) + "_" + rotation_matrix_name(mat) + (keep ? "_keep" : "");
        const fs::path dir = tmp.path / tag;
        RotationOptions o;
        o.kind = kind;
        o.matrix = mat;
        o.seed = 11;
        if (keep) o.keep_channels = {0, 5, 63};  // left out of R1: their norm weights stay in the norms
        const nlohmann::json info = rotate_checkpoint(golden(name), dir, o);
        EXPECT_EQ(info["seed"], 11);
        EXPECT_EQ(info["r2"].is_null(), kind == RotationKind::kR1);
        const ModelConfig cfg = ModelConfig::load(dir);
        EXPECT_FALSE(cfg.tie_word_embeddings) << tag;
        const Checkpoint ck = Checkpoint::open(dir);
        EXPECT_TRUE(ck.has("lm_head.weight")) << tag;
        const std::vector<float> n0 = ck.get("model.layers.0.input_layernorm.weight").to_f32(),
                                 n0_orig = Checkpoint::open(golden(name)).get("model.layers.0.input_layernorm.weight").to_f32();
        for (size_t k = 0; k < n0.size(); ++k)
          EXPECT_EQ(n0[k], keep && (k == 0 || k == 5 || k == 63) ? n0_orig[k] : 1.0f) << tag << " channel " << k;
        if (!keep) {
          for (float v : ck.get("model.norm.weight").to_f32()) EXPECT_EQ(v, 1.0f);
        }
        EXPECT_EQ(info["kept_channels"].size(), keep ? 3u : 0u) << tag;
        // The weights really changed (a no-op would pass the logits check too).
        const Checkpoint orig = Checkpoint::open(golden(name));
        EXPECT_NE(ck.get("model.layers.1.self_attn.q_proj.weight").to_f32(),
                  orig.get("model.layers.1.self_attn.q_proj.weight").to_f32());
        const Model rot = Model::load(dir);
        double worst = 0;
        for (uint64_t seed : {1, 2, 3}) {
          const auto t = random_tokens(33, seed);
          worst = std::max(worst, rel_max_err(forward_logits(rot, t), forward_logits(ref, t)));
        }
        EXPECT_LT(worst, 1e-5) << tag;
      }
  }
}

// A broken fold is caught by the logits check: rotating with Q but leaving the final norm's gamma
// out of lm_head (the golden models' norm weights are not 1) changes the logits.
TEST(Rotate, LogitsCheckCatchesAWrongFold) {
  TempDir tmp;
  const fs::path dir = tmp.path / "rot";
  RotationOptions o;
  o.kind = RotationKind::kR1R2;
  rotate_checkpoint(golden("llama3_untied_scaled"), dir, o);
  // Rewrite the rotated model with lm_head = the original lm_head Q (no gamma fold).
  const Checkpoint ck = Checkpoint::open(dir);
  const Checkpoint orig = Checkpoint::open(golden("llama3_untied_scaled"));
  const ModelConfig cfg = ModelConfig::load(dir);
  const ModelRotation r = make_model_rotation(cfg, o);
  SafetensorsWriter w;
  for (const std::string& n : ck.names()) {
    std::vector<float> v = ck.get(n).to_f32();
    if (n == "lm_head.weight") {
      v = orig.get(n).to_f32();
      rotate_input_side(v, cfg.vocab_size, cfg.hidden_size, {}, r.r1);
    }
    w.add_f32(n, ck.get(n).shape, v.data());
  }
  const fs::path bad = tmp.path / "bad";
  fs::create_directories(bad);
  fs::copy_file(dir / "config.json", bad / "config.json");
  w.write(bad / "model.safetensors");
  const auto t = random_tokens(33, 1);
  const Model ref = Model::load(golden("llama3_untied_scaled"));
  EXPECT_GT(rel_max_err(forward_logits(Model::load(bad), t), forward_logits(ref, t)), 1e-3);
}

TEST(Rotate, QuantizedRotatedCheckpointRoundTrips) {
  TempDir tmp;
  const auto calib = testdata::token_windows(8, 48, 5);
  const auto eval = random_tokens(64, 9);
  for (const std::string& name : {std::string("llama_tied"), std::string("qwen3_untied_bf16")})
    for (int act_bits : {16, 4}) {
      const Model ref = Model::load(golden(name));
      ModelQuantOptions o;
      o.group = 32;
      o.block_rows = 16;
      o.block_cols = 32;  // K = 96 is not a multiple of 64
      o.budget = 0.25;
      o.quiet = true;
      o.act_bits = act_bits;
      o.smooth = act_bits < 16;  // rotation first, then the smoothing search (norm weights are 1 then)
      o.rotation.kind = RotationKind::kR1R2;
      o.rotation.seed = 3;
      const fs::path out = tmp.path / (name + std::to_string(act_bits));
      const ModelQuantReport r = quantize_model(golden(name), out, calib, o);
      EXPECT_FALSE(fs::exists(out.string() + ".rotated")) << "scratch directory left behind";
      EXPECT_GT(r.residual_blocks, 0);
      const ModelConfig cfg = ModelConfig::load(out);
      EXPECT_FALSE(cfg.tie_word_embeddings);
      const nlohmann::json& rot = cfg.quantization_config["rotation"];
      ASSERT_TRUE(rot.is_object());
      EXPECT_EQ(rot["seed"], 3);
      EXPECT_EQ(rot["matrix"], "hadamard");
      EXPECT_EQ(rot["r1"], "hadamard(64)");
      EXPECT_TRUE(rot["r2"].is_string());
      EXPECT_EQ(cfg.quantization_config["smoothing"].is_null(), act_bits == 16);
      const Checkpoint ck = Checkpoint::open(out);
      EXPECT_TRUE(ck.has("lm_head.weight"));
      EXPECT_TRUE(ck.has("model.layers.0.self_attn.q_proj.qweight"));
      // The engine runs it (act_bits from the config) and it stays close to the FP model.
      const testdata::Distance d = testdata::logits_distance(ref, Model::load(out), eval);
      EXPECT_TRUE(std::isfinite(d.kl));
      EXPECT_LT(d.kl, act_bits == 16 ? 0.05 : 0.5) << name << " A" << act_bits;
      EXPECT_LT(d.rel_rms, act_bits == 16 ? 0.2 : 0.6) << name << " A" << act_bits;
    }
  // Without a rotation the field is null.
  ModelQuantOptions o;
  o.group = 16;
  o.quiet = true;
  o.method = QuantMethod::kRtn;
  quantize_model(golden("llama_tied"), tmp.path / "plain", {}, o);
  EXPECT_TRUE(ModelConfig::load(tmp.path / "plain").quantization_config["rotation"].is_null());
}

TEST(Rotate, BadInputsAreErrors) {
  EXPECT_THROW(parse_rotation("r3"), Error);
  EXPECT_THROW(parse_rotation("R1"), Error);
  EXPECT_THROW(parse_rotation_matrix("walsh"), Error);
  EXPECT_EQ(parse_rotation("r1r2"), RotationKind::kR1R2);
  try {
    parse_rotation("spin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown rotation 'spin'"), std::string::npos) << e.what();
  }
  TempDir tmp;
  RotationOptions o;
  o.kind = RotationKind::kR1;
  // A quantized model cannot be rotated (its weights are codes).
  ModelQuantOptions q;
  q.group = 16;
  q.quiet = true;
  q.method = QuantMethod::kRtn;
  quantize_model(golden("llama_tied"), tmp.path / "q", {}, q);
  EXPECT_THROW(rotate_checkpoint(tmp.path / "q", tmp.path / "r", o), Error);
  o.keep_channels = {64};  // hidden 64: out of range
  EXPECT_THROW(rotate_checkpoint(golden("llama_tied"), tmp.path / "r3", o), Error);
  o.keep_channels = {5, 3};  // not ascending
  EXPECT_THROW(rotate_checkpoint(golden("llama_tied"), tmp.path / "r4", o), Error);
  o.keep_channels = {};
  o.kind = RotationKind::kNone;
  EXPECT_THROW(rotate_checkpoint(golden("llama_tied"), tmp.path / "r2", o), Error);
}
