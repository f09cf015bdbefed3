// Hugging Face config.json for the architectures mosaic runs: LlamaForCausalLM (LLaMA-3,
// SmolLM2) and Qwen3ForCausalLM. Unknown architectures and missing required fields throw
// mosaic::Error naming the file and field.
#pragma once
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace mosaic {

enum class Arch { Llama, Qwen3 };

// rope_scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
// "original_max_position_embeddings"}; other types are rejected.
struct RopeScaling {
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string architecture;  // as written: "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // config "head_dim" or hidden_size / num_heads
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool qk_norm = false;         // Qwen3: q_norm / k_norm RMSNorm over head_dim
  bool attention_bias = false;  // bias on q/k/v/o (rejected if true: not in the target models)
  std::optional<int> bos_token_id, eos_token_id;
  std::string torch_dtype;                 // "bfloat16" ...
  nlohmann::json quantization_config;      // null unless a quantized checkpoint
  nlohmann::json raw;                      // the whole file, for writers that copy it

  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  static ModelConfig load(const std::filesystem::path& dir_or_file);
};

}  // namespace mosaic
