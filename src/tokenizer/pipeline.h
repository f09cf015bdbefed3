// The text-to-pieces half of a Hugging Face tokenizer: normalizers and pre-tokenizers, built from
// their tokenizer.json descriptions. Each stage mirrors the `tokenizers` component of the same
// name closely enough to give identical pieces on the configurations mosaic supports:
//   normalizers:     NFC, NFD, NFKC, NFKD, Sequence (or null)
//   pre-tokenizers:  Split (Regex or String pattern, any behavior, invert), ByteLevel
//                    (add_prefix_space, use_regex), Digits (individual_digits), Sequence
// Anything else is rejected at load time with a one-line error.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/json_fields.h"

namespace mosaic::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string apply(std::string_view text) const = 0;
};

// Returns nullptr for a null normalizer.
std::unique_ptr<Normalizer> make_normalizer(const json& j, const Where& w);

// A pre-tokenizer rewrites a list of pieces into a finer list (and ByteLevel also maps each
// piece's bytes to printable characters). Empty pieces are dropped, as `tokenizers` does.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<std::string>& pieces) const = 0;
};

// Returns nullptr for a null pre-tokenizer.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const Where& w);

}  // namespace mosaic::tok
