// Tokenizer: ties the pieces together in the order of tokenizers' TokenizerImpl::encode:
//   added tokens cut out of the raw text -> normalizer -> normalized added tokens ->
//   pre-tokenizer -> BPE per pre-token.
// and decode: ids -> token strings (added tokens by content) -> decoder (ByteLevel or none).
#include "tokenizer/tokenizer.h"

#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace mosaic {

using tok::json;
using tok::Where;

enum class DecoderKind { None, ByteLevel };

struct Tokenizer::Impl {
  std::string source;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Bpe> model;
  tok::AddedVocab added;
  DecoderKind decoder = DecoderKind::None;
};

namespace {

DecoderKind parse_decoder(const json& j, const Where& w) {
  if (j.is_null()) return DecoderKind::None;
  const std::string type = tok::get_string(j, "type", w);
  if (type == "ByteLevel") return DecoderKind::ByteLevel;
  (w / "type").fail("'", type, "' is not a supported decoder (ByteLevel or null)");
}

}  // namespace

Tokenizer Tokenizer::from_json_string(std::string_view text, const std::string& source) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("malformed tokenizer.json ", source, ": not valid JSON (", e.what(), ")");
  }
  const Where w{source, ""};
  tok::require_object(root, w);

  auto impl = std::make_unique<Impl>();
  impl->source = source;
  const json null_value;
  auto field = [&](const char* key) -> const json& {
    const json* f = tok::optional_member(root, key, w);
    return f ? *f : null_value;
  };
  impl->normalizer = tok::make_normalizer(field("normalizer"), w / "normalizer");
  impl->pre_tokenizer = tok::make_pre_tokenizer(field("pre_tokenizer"), w / "pre_tokenizer");
  impl->decoder = parse_decoder(field("decoder"), w / "decoder");

  const json& model = tok::member(root, "model", w);
  const Where wm = w / "model";
  tok::require_object(model, wm);
  // tokenizers writes "type" on models; files from older versions may omit it for BPE.
  const std::string type = model.contains("type") ? tok::get_string(model, "type", wm) : "BPE";
  if (type != "BPE") (wm / "type").fail("'", type, "' is not supported (only BPE models are)");
  impl->model = std::make_unique<tok::Bpe>(model, wm);

  const tok::Bpe& bpe = *impl->model;
  impl->added.load(field("added_tokens"), w / "added_tokens",
                   [&bpe](std::string_view s) { return bpe.token_to_id(s); }, bpe.size(), impl->normalizer.get());
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = path / "tokenizer.json";
  if (!std::filesystem::exists(file, ec)) fail("tokenizer file ", file.string(), " does not exist");
  return from_json_string(read_file(file), file.string());
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (size_t bad = unicode::first_invalid_utf8(text); bad != std::string_view::npos)
    fail("cannot tokenize text: invalid UTF-8 at byte ", bad);
  std::vector<int32_t> ids;
  std::vector<std::string> pieces;
  for (auto& seg : impl_->added.split(text, impl_->normalizer.get())) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(std::move(seg.text));
    if (impl_->pre_tokenizer) impl_->pre_tokenizer->apply(pieces);
    for (const auto& p : pieces) impl_->model->tokenize(p, ids);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  // Token strings first (ids that are neither added nor in the vocabulary are skipped, as
  // tokenizers does), then the decoder over the whole list.
  std::vector<const std::string*> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* s = nullptr;
    if (const auto* t = impl_->added.by_id(id)) s = &t->decode_form;
    else s = impl_->model->id_to_token(id);
    if (s == nullptr) continue;
    if (skip_special && impl_->added.is_special_content(*s)) continue;
    tokens.push_back(s);
  }
  std::string out;
  if (impl_->decoder == DecoderKind::None) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += *tokens[i];
    }
    return out;
  }
  // ByteLevel: map every character back to its byte; a token holding a character outside the
  // byte table (an added token like "<|im_start|>" is fine, "é" is not) contributes its raw
  // UTF-8 instead. The byte string is then read as UTF-8 with U+FFFD for invalid sequences.
  std::string bytes;
  for (const std::string* t : tokens) {
    const size_t mark = bytes.size();
    bool all_mapped = true;
    for (size_t i = 0; i < t->size();) {
      const int b = unicode::char_to_byte(unicode::next_codepoint(*t, i));
      if (b < 0) {
        all_mapped = false;
        break;
      }
      bytes.push_back(static_cast<char>(b));
    }
    if (!all_mapped) {
      bytes.resize(mark);
      bytes += *t;
    }
  }
  return unicode::utf8_lossy(bytes);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const auto* t = impl_->added.by_id(id)) return t->content;
  if (const std::string* s = impl_->model->id_to_token(id)) return *s;
  fail("token id ", id, " is not in the vocabulary of ", impl_->source);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = impl_->added.by_content(token)) return id;
  return impl_->model->token_to_id(token);
}

int32_t Tokenizer::vocab_size() const {
  return std::max(impl_->model->max_id(), impl_->added.max_id()) + 1;
}

bool Tokenizer::is_special(int32_t id) const {
  const auto* t = impl_->added.by_id(id);
  return t != nullptr && t->special;
}

}  // namespace mosaic
