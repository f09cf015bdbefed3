// config.json loading: real public configs (LLaMA-3-8B, LLaMA-3.1-8B-Instruct, Qwen3-8B,
// Qwen3-0.6B, SmolLM2-135M) and the errors for configs mosaic cannot run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/hf_config.h"
#include "util/error.h"

using mosaic::Arch;
using mosaic::ModelConfig;
using json = nlohmann::json;

namespace {
const std::filesystem::path kFixtures = std::filesystem::path(MOSAIC_SOURCE_DIR) / "tests/fixtures/io";

// Expects from_json(j) to throw a mosaic::Error whose message contains every needle.
void expect_error(const json& j, std::initializer_list<std::string> needles) {
  try {
    ModelConfig::from_json(j, "cfg.json");
    FAIL() << "no error for " << j.dump();
  } catch (const mosaic::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

json small_llama() {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 64},
              {"intermediate_size", 128}, {"num_hidden_layers", 2},
              {"num_attention_heads", 4}, {"vocab_size", 100}};
}
}  // namespace

TEST(HfConfig, Llama3_8B) {
  ModelConfig c = ModelConfig::load(kFixtures / "llama3_8b_config.json");
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_id, 128001);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_TRUE(c.quantization_config.is_null());
  EXPECT_EQ(c.raw["transformers_version"], "4.40.0.dev0");
}

TEST(HfConfig, Llama31RopeScalingAndEosList) {
  ModelConfig c = ModelConfig::load(kFixtures / "llama31_8b_instruct_config.json");
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_FLOAT_EQ(c.rope_scaling->factor, 8.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling->low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling->high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.eos_token_id, 128001);  // first of [128001, 128008, 128009]
}

TEST(HfConfig, Qwen3_8B) {
  ModelConfig c = ModelConfig::load(kFixtures / "qwen3_8b_config.json");
  EXPECT_EQ(c.arch, Arch::Qwen3);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_layers, 36);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.intermediate_size, 12288);
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(HfConfig, Qwen3_0_6B_HeadDimNotHiddenOverHeads) {
  // hidden 1024 / 16 heads = 64, but Qwen3 says head_dim 128: the explicit value wins.
  ModelConfig c = ModelConfig::load(kFixtures / "qwen3_0_6b_config.json");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(HfConfig, SmolLM2LoadsFromDirectory) {
  const auto dir = std::filesystem::temp_directory_path() / "mosaic_test_cfg_dir";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kFixtures / "smollm2_135m_config.json", dir / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  ModelConfig c = ModelConfig::load(dir);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  std::filesystem::remove_all(dir);
}

TEST(HfConfig, DefaultsFollowTransformers) {
  ModelConfig c = ModelConfig::from_json(small_llama());
  EXPECT_EQ(c.num_kv_heads, 4);       // = num_attention_heads
  EXPECT_EQ(c.head_dim, 16);          // hidden / heads
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.tie_word_embeddings);
  json q = small_llama();
  q["architectures"] = {"Qwen3ForCausalLM"};
  ModelConfig cq = ModelConfig::from_json(q);
  EXPECT_EQ(cq.head_dim, 128);  // Qwen3Config default
  EXPECT_EQ(cq.max_position_embeddings, 32768);
}

TEST(HfConfig, Transformers5RopeParameters) {
  // transformers >= 5 writes rope_theta and the scaling inside rope_parameters, and a bare
  // config has only model_type.
  json j = small_llama();
  j.erase("architectures");
  j["model_type"] = "llama";
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                          {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_FLOAT_EQ(c.rope_scaling->factor, 32.0f);
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = ModelConfig::from_json(j);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
}

TEST(HfConfig, RopeScalingOldTypeKey) {
  json j = small_llama();
  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}};
  ModelConfig c = ModelConfig::from_json(j);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_FLOAT_EQ(c.rope_scaling->factor, 8.0f);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);
}

TEST(HfConfig, QuantizationConfigKept) {
  json j = small_llama();
  j["quantization_config"] = {{"quant_method", "mosaicquant"}, {"bits", 4}};
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.quantization_config["quant_method"], "mosaicquant");
  EXPECT_EQ(c.quantization_config["bits"], 4);
}

TEST(HfConfig, Errors) {
  json j = small_llama();
  j["architectures"] = {"MistralForCausalLM"};
  expect_error(j, {"cfg.json", "unknown architecture 'MistralForCausalLM'", "LlamaForCausalLM",
                   "Qwen3ForCausalLM"});
  j = small_llama();
  j.erase("architectures");
  j["model_type"] = "gpt2";
  expect_error(j, {"unknown architecture 'gpt2'"});
  j.erase("model_type");
  expect_error(j, {"architectures"});
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "vocab_size"}) {
    j = small_llama();
    j.erase(field);
    expect_error(j, {"cfg.json", "missing required field", field});
  }
  j = small_llama();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error(j, {"cfg.json", "'yarn'", "rope_scaling"});
  j = small_llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  expect_error(j, {"'linear'"});
  j = small_llama();
  j["num_key_value_heads"] = 3;
  expect_error(j, {"num_attention_heads 4", "num_key_value_heads 3"});
  j = small_llama();
  j["attention_bias"] = true;
  expect_error(j, {"attention_bias"});
  j = small_llama();
  j["hidden_size"] = -64;
  expect_error(j, {"positive"});
  j = small_llama();
  j["hidden_size"] = "64";
  expect_error(j, {"hidden_size", "integer"});
  j = small_llama();
  j["hidden_size"] = 66;  // not divisible by 4 heads, no head_dim
  expect_error(j, {"head_dim"});
  j = small_llama();
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act"});
  expect_error(json::array(), {"not a JSON object"});
}

TEST(HfConfig, LoadErrorsNameTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "mosaic_test_cfg_bad";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << "{\"architectures\": [";
  try {
    ModelConfig::load(dir);
    FAIL();
  } catch (const mosaic::Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
  EXPECT_THROW(ModelConfig::load(dir), mosaic::Error);  // does not exist
}
