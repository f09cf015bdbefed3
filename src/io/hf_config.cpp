// config.json -> ModelConfig, following the defaults of transformers' LlamaConfig and
// Qwen3Config (so a field left out means what Hugging Face would take it to mean). Reads both
// the classic layout (rope_theta / rope_scaling at top level) and the transformers 5 layout
// (rope_parameters {rope_type, rope_theta, ...}).
#include "io/hf_config.h"

#include <cmath>
#include <limits>

#include "util/atomic_file.h"
#include "util/error.h"

namespace mosaic {

using json = nlohmann::json;

namespace {

struct Reader {
  const json& j;
  const std::string& src;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int get_int(const char* key, std::optional<int> def = std::nullopt) const {
    if (!has(key)) {
      MOSAIC_CHECK(def.has_value(), src, ": missing required field '", key, "'");
      return *def;
    }
    const json& v = j.at(key);
    MOSAIC_CHECK(v.is_number_integer(), src, ": field '", key, "' must be an integer, got ", v.dump());
    const int64_t x = v.get<int64_t>();
    MOSAIC_CHECK(x >= std::numeric_limits<int>::min() && x <= std::numeric_limits<int>::max(), src,
                 ": field '", key, "' = ", x, " is out of range");
    return int(x);
  }

  double get_num(const json& obj, const char* key, double def) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return def;
    const json& v = obj.at(key);
    MOSAIC_CHECK(v.is_number(), src, ": field '", key, "' must be a number, got ", v.dump());
    return v.get<double>();
  }

  bool get_bool(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    MOSAIC_CHECK(v.is_boolean(), src, ": field '", key, "' must be true or false, got ", v.dump());
    return v.get<bool>();
  }

  // Token ids may be an int, null, or (LLaMA-3.1 instruct eos) a list: keep the first.
  std::optional<int> get_token(const char* key) const {
    if (!has(key)) return std::nullopt;
    const json& v = j.at(key);
    if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int>();
    if (v.is_number_integer()) return v.get<int>();
    fail(src, ": field '", key, "' must be a token id or a list of them, got ", v.dump());
  }
};

// The rope description: classic rope_scaling object or transformers 5 rope_parameters.
std::optional<RopeScaling> parse_rope(const json& rs, const Reader& r, const char* field) {
  if (rs.is_null()) return std::nullopt;
  MOSAIC_CHECK(rs.is_object(), r.src, ": '", field, "' must be an object or null");
  std::string type;
  for (const char* key : {"rope_type", "type"})
    if (rs.contains(key) && rs.at(key).is_string()) {
      type = rs.at(key).get<std::string>();
      break;
    }
  if (type == "default" || (type.empty() && std::string(field) == "rope_parameters"))
    return std::nullopt;
  MOSAIC_CHECK(type == "llama3", r.src, ": unsupported ", field, " type '", type,
               "' (supported: llama3)");
  MOSAIC_CHECK(rs.contains("factor"), r.src, ": ", field, " of type llama3 is missing 'factor'");
  RopeScaling s;
  s.factor = float(r.get_num(rs, "factor", 1.0));
  s.low_freq_factor = float(r.get_num(rs, "low_freq_factor", 1.0));
  s.high_freq_factor = float(r.get_num(rs, "high_freq_factor", 4.0));
  s.original_max_position_embeddings =
      int(r.get_num(rs, "original_max_position_embeddings", 8192));
  MOSAIC_CHECK(s.factor > 0 && s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor &&
                   s.original_max_position_embeddings > 0,
               r.src, ": ", field, " llama3 values are out of range (factor ", s.factor,
               ", low_freq_factor ", s.low_freq_factor, ", high_freq_factor ", s.high_freq_factor,
               ", original_max_position_embeddings ", s.original_max_position_embeddings, ")");
  return s;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  MOSAIC_CHECK(j.is_object(), source, ": not a JSON object");
  Reader r{j, source};
  ModelConfig c;
  c.raw = j;

  // Architecture: "architectures": ["LlamaForCausalLM"] when saved from a model; a bare config
  // (e.g. LlamaConfig().save_pretrained) only has model_type.
  const char* supported = "(supported: LlamaForCausalLM, Qwen3ForCausalLM)";
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    const json& a = j["architectures"][0];
    MOSAIC_CHECK(a.is_string(), source, ": 'architectures' must list names");
    c.architecture = a.get<std::string>();
    if (c.architecture == "LlamaForCausalLM") c.arch = Arch::Llama;
    else if (c.architecture == "Qwen3ForCausalLM") c.arch = Arch::Qwen3;
    else fail(source, ": unknown architecture '", c.architecture, "' ", supported);
  } else if (j.contains("model_type") && j["model_type"].is_string()) {
    const std::string mt = j["model_type"].get<std::string>();
    if (mt == "llama") c.arch = Arch::Llama, c.architecture = "LlamaForCausalLM";
    else if (mt == "qwen3") c.arch = Arch::Qwen3, c.architecture = "Qwen3ForCausalLM";
    else fail(source, ": unknown architecture '", mt, "' ", supported);
  } else {
    fail(source, ": missing required field 'architectures' (or 'model_type')");
  }
  const bool qwen = c.arch == Arch::Qwen3;

  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.intermediate_size = r.get_int("intermediate_size");
  c.num_layers = r.get_int("num_hidden_layers");
  c.num_heads = r.get_int("num_attention_heads");
  MOSAIC_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 &&
                   c.num_layers > 0 && c.num_heads > 0,
               source, ": sizes must be positive (vocab_size ", c.vocab_size, ", hidden_size ",
               c.hidden_size, ", intermediate_size ", c.intermediate_size, ", num_hidden_layers ",
               c.num_layers, ", num_attention_heads ", c.num_heads, ")");
  c.num_kv_heads = r.get_int("num_key_value_heads", c.num_heads);
  MOSAIC_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0, source,
               ": num_attention_heads ", c.num_heads, " is not a multiple of num_key_value_heads ",
               c.num_kv_heads);
  if (r.has("head_dim")) {
    c.head_dim = r.get_int("head_dim");
  } else if (qwen) {
    c.head_dim = 128;  // Qwen3Config's default (not hidden / heads)
  } else {
    MOSAIC_CHECK(c.hidden_size % c.num_heads == 0, source, ": hidden_size ", c.hidden_size,
                 " is not a multiple of num_attention_heads ", c.num_heads, " and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  MOSAIC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, source, ": head_dim ", c.head_dim,
               " must be positive and even (RoPE rotates pairs)");
  c.max_position_embeddings = r.get_int("max_position_embeddings", qwen ? 32768 : 2048);
  MOSAIC_CHECK(c.max_position_embeddings > 0, source, ": max_position_embeddings must be positive");

  c.rms_norm_eps = float(r.get_num(j, "rms_norm_eps", 1e-6));
  MOSAIC_CHECK(c.rms_norm_eps > 0 && std::isfinite(c.rms_norm_eps), source,
               ": rms_norm_eps must be positive");

  // RoPE: rope_theta at top level (classic) or inside rope_parameters (transformers 5).
  c.rope_theta = float(r.get_num(j, "rope_theta", 10000.0));
  if (r.has("rope_parameters")) {
    const json& rp = j["rope_parameters"];
    MOSAIC_CHECK(rp.is_object(), source, ": 'rope_parameters' must be an object");
    c.rope_theta = float(r.get_num(rp, "rope_theta", c.rope_theta));
    c.rope_scaling = parse_rope(rp, r, "rope_parameters");
  }
  if (r.has("rope_scaling")) c.rope_scaling = parse_rope(j["rope_scaling"], r, "rope_scaling");
  MOSAIC_CHECK(c.rope_theta > 0 && std::isfinite(c.rope_theta), source, ": rope_theta must be positive");

  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  c.qk_norm = qwen;
  c.attention_bias = r.get_bool("attention_bias", false);
  MOSAIC_CHECK(!c.attention_bias, source, ": attention_bias = true is not supported");
  MOSAIC_CHECK(!r.get_bool("mlp_bias", false), source, ": mlp_bias = true is not supported");
  if (r.has("hidden_act")) {
    MOSAIC_CHECK(j["hidden_act"] == "silu", source, ": hidden_act ", j["hidden_act"].dump(),
                 " is not supported (only silu)");
  }
  MOSAIC_CHECK(!r.get_bool("use_sliding_window", false), source,
               ": use_sliding_window = true is not supported");

  c.bos_token_id = r.get_token("bos_token_id");
  c.eos_token_id = r.get_token("eos_token_id");
  for (const char* key : {"torch_dtype", "dtype"})
    if (r.has(key) && j[key].is_string()) {
      c.torch_dtype = j[key].get<std::string>();
      break;
    }
  if (r.has("quantization_config")) c.quantization_config = j["quantization_config"];
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& dir_or_file) {
  const std::filesystem::path path = std::filesystem::is_directory(dir_or_file)
                                         ? dir_or_file / "config.json"
                                         : dir_or_file;
  MOSAIC_CHECK(std::filesystem::exists(path), "no config.json: ", path.string(), " does not exist");
  json j = json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
  MOSAIC_CHECK(!j.is_discarded(), path.string(), ": not valid JSON");
  return from_json(j, path.string());
}

}  // namespace mosaic
