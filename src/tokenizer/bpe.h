// The BPE model of Hugging Face `tokenizers`: a vocabulary (token string -> id) and ranked merges.
// A pre-token is split into characters, then the lowest-ranked adjacent pair is merged
// repeatedly (ties: leftmost first), exactly like tokenizers' Word::merge_all. Results are
// cached per pre-token, which is what makes long texts fast (words repeat a lot).
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/json_fields.h"

namespace mosaic::tok {

// Hash map keyed by std::string that also accepts std::string_view lookups without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class Bpe {
 public:
  // Parses the "model" object of tokenizer.json (type "BPE").
  Bpe(const json& model, const Where& w);

  // Appends the ids of one pre-token (already byte-level mapped) to `out`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when unknown
  size_t size() const { return vocab_.size(); }
  int32_t max_id() const { return max_id_; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringIdMap vocab_;
  std::unordered_map<int32_t, std::string> vocab_r_;
  // (left id, right id) packed in 64 bits -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int32_t max_id_ = -1;

  // Per-pre-token cache; encode() is const and may run on several threads, hence the mutex.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace mosaic::tok
