// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, producing the same ids as the
// `tokenizers` library for LLaMA-3, Qwen3 and SmolLM2 (GPT-2 style byte-level BPE): normalizer
// (NFC or none), pre-tokenizer (Split by regex / ByteLevel / Digits, in a Sequence), BPE model with
// merges ranks, added/special tokens matched before pre-tokenization, byte-level decoding.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mosaic {

class Tokenizer {
 public:
  // Throws mosaic::Error ("malformed tokenizer.json: ...") on anything it cannot honour.
  static Tokenizer load(const std::filesystem::path& tokenizer_json_or_dir);
  static Tokenizer from_json_string(std::string_view json, const std::string& source = "tokenizer.json");
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // No special tokens are added (like tokenizers' encode(add_special_tokens=False)); special and
  // added tokens written in the text are recognized.
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids that are neither in the vocabulary nor added tokens are skipped, as tokenizers does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  std::string id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t vocab_size() const;  // one past the largest id (model vocabulary or added tokens)
  bool is_special(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mosaic
