// Added tokens (tokenizer.json "added_tokens"): strings such as <|begin_of_text|> that are cut
// out of the text before normalization and pre-tokenization and map straight to their id.
// Matching follows tokenizers' AddedVocabulary: leftmost-longest over all patterns, then the
// per-token single_word / lstrip / rstrip rules. Tokens with normalized=true are matched in the
// normalized text, the others in the raw text.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/json_fields.h"
#include "tokenizer/pipeline.h"

namespace mosaic::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  // What decode() emits for this token: the normalized content for normalized tokens (as
  // tokenizers' simple_id_to_token does, so the decoder can invert it), else the content.
  std::string decode_form;
};

// A stretch of the input: either an added token (id >= 0) or text still to be tokenized.
struct Segment {
  std::string text;
  int32_t id = -1;
};

class AddedVocab {
 public:
  AddedVocab() = default;
  // `model_lookup` gives the model's id for a token string, `model_size` the model's vocab size:
  // like tokenizers, an added token whose content is already a model token takes that id, and a
  // new one takes the next free id (the ids written in the file are only a cross-check there).
  void load(const json& list, const Where& w, const std::function<std::optional<int32_t>(std::string_view)>& model_lookup,
            size_t model_size, const Normalizer* normalizer);

  // Splits `text` into segments. Raw-text tokens first, then `normalizer` on the remaining text,
  // then normalized tokens.
  std::vector<Segment> split(std::string_view text, const Normalizer* normalizer) const;

  const AddedToken* by_id(int32_t id) const;
  std::optional<int32_t> by_content(std::string_view content) const;
  bool is_special_content(std::string_view content) const;
  int32_t max_id() const { return max_id_; }

 private:
  // Byte trie for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::map<unsigned char, int32_t> next;
      int32_t token = -1;  // index into tokens_ when a pattern ends here
    };
    std::vector<Node> nodes{Node{}};
    void insert(std::string_view s, int32_t token);
    // Longest pattern starting at text[pos]: (token index, length) or token -1.
    std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const;
    bool empty() const { return nodes.size() == 1; }
  };

  void split_with(const Trie& trie, std::string_view text, std::vector<Segment>& out) const;

  std::vector<AddedToken> tokens_;          // one per distinct id
  int32_t max_id_ = -1;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie raw_trie_, normalized_trie_;
};

}  // namespace mosaic::tok
