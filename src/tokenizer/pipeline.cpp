#include "tokenizer/pipeline.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace mosaic::tok {

namespace {

// ---- normalizers ------------------------------------------------------------------------------

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::Form f) : form_(f) {}
  std::string apply(std::string_view text) const override { return unicode::normalize(text, form_); }

 private:
  unicode::Form form_;
};

class NormalizerSequence final : public Normalizer {
 public:
  explicit NormalizerSequence(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  std::string apply(std::string_view text) const override {
    std::string s(text);
    for (const auto& n : steps_) s = n->apply(s);
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// ---- splitting, shared by Split and Digits -----------------------------------------------------

// tokenizers' SplitDelimiterBehavior.
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct Span {
  size_t b, e;
  bool is_match;
};

// Turns match positions into a covering list of spans, as tokenizers' Pattern::find_matches.
std::vector<Span> cover(size_t len, const std::vector<std::pair<size_t, size_t>>& matches) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, false});
    spans.push_back({b, e, true});
    prev = e;
  }
  if (prev != len) spans.push_back({prev, len, false});
  return spans;
}

// NormalizedString::split: combine spans according to the behavior, then cut the piece. The
// returned spans' is_match means "remove".
std::vector<Span> combine(std::vector<Span> m, Behavior behavior) {
  std::vector<Span> acc;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::Isolated:
      for (auto& s : m) s.is_match = false;
      return m;
    case Behavior::Removed:
      return m;
    case Behavior::Contiguous:
      for (const auto& s : m) {
        if (s.is_match == previous_match && !acc.empty()) acc.back().e = s.e;
        else acc.push_back({s.b, s.e, false});
        previous_match = s.is_match;
      }
      return acc;
    case Behavior::MergedWithPrevious:
      for (const auto& s : m) {
        if (s.is_match && !previous_match && !acc.empty()) acc.back().e = s.e;
        else acc.push_back({s.b, s.e, false});
        previous_match = s.is_match;
      }
      return acc;
    case Behavior::MergedWithNext:
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->is_match && !previous_match && !acc.empty()) acc.back().b = it->b;
        else acc.push_back({it->b, it->e, false});
        previous_match = it->is_match;
      }
      return {acc.rbegin(), acc.rend()};
  }
  return m;
}

void cut(const std::string& piece, const std::vector<Span>& spans, std::vector<std::string>& out) {
  for (const auto& s : spans)
    if (!s.is_match && s.e > s.b) out.emplace_back(piece, s.b, s.e - s.b);
}

// Applies `split_one` to every piece of the list, replacing it by its sub-pieces.
void split_all(std::vector<std::string>& pieces,
               const std::function<void(const std::string&, std::vector<std::string>&)>& split_one) {
  std::vector<std::string> out;
  out.reserve(pieces.size() * 2);
  for (const auto& p : pieces) split_one(p, out);
  pieces = std::move(out);
}

// ---- pre-tokenizers ------------------------------------------------------------------------------

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::optional<Regex> regex, std::string literal, Behavior behavior, bool invert)
      : regex_(std::move(regex)), literal_(std::move(literal)), behavior_(behavior), invert_(invert) {}

  void apply(std::vector<std::string>& pieces) const override {
    split_all(pieces, [this](const std::string& p, std::vector<std::string>& out) {
      std::vector<Span> spans = cover(p.size(), find(p));
      if (invert_)
        for (auto& s : spans) s.is_match = !s.is_match;
      cut(p, combine(std::move(spans), behavior_), out);
    });
  }

 private:
  std::vector<std::pair<size_t, size_t>> find(const std::string& p) const {
    if (regex_) return regex_->find_all(p);
    std::vector<std::pair<size_t, size_t>> m;
    // An empty literal matches the empty string everywhere; empty matches cut nothing.
    if (literal_.empty()) return m;
    for (size_t at = p.find(literal_); at != std::string::npos; at = p.find(literal_, at + literal_.size()))
      m.emplace_back(at, at + literal_.size());
    return m;
  }

  std::optional<Regex> regex_;
  std::string literal_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, which ByteLevel uses when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_.emplace(kGpt2Pattern);
  }

  void apply(std::vector<std::string>& pieces) const override {
    // Like tokenizers: the prefix space goes in front of every piece that reaches this stage
    // (not only the first one), then the regex splits, then every byte becomes a printable char.
    split_all(pieces, [this](const std::string& piece, std::vector<std::string>& out) {
      std::string p = (add_prefix_space_ && piece[0] != ' ') ? " " + piece : piece;
      if (!regex_) {
        out.push_back(unicode::bytes_to_chars(p));
        return;
      }
      for (const auto& s : cover(p.size(), regex_->find_all(p)))
        if (s.e > s.b) out.push_back(unicode::bytes_to_chars(std::string_view(p).substr(s.b, s.e - s.b)));
    });
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

  void apply(std::vector<std::string>& pieces) const override {
    split_all(pieces, [this](const std::string& p, std::vector<std::string>& out) {
      // Each numeric character is its own match (Rust char::is_numeric); Contiguous then glues
      // runs of digits back together when individual_digits is false.
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t i = 0; i < p.size();) {
        const size_t b = i;
        if (unicode::is_numeric(unicode::next_codepoint(p, i))) matches.emplace_back(b, i);
      }
      cut(p, combine(cover(p.size(), matches), individual_ ? Behavior::Isolated : Behavior::Contiguous), out);
    });
  }

 private:
  bool individual_;
};

class PreTokenizerSequence final : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<std::string>& pieces) const override {
    for (const auto& s : steps_) s->apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

Behavior parse_behavior(const json& j, const Where& w) {
  const std::string b = get_string(j, "behavior", w);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  (w / "behavior").fail("has unknown value '", b, "'");
}

const json& array_member(const json& j, const char* key, const Where& w) {
  const json& a = member(j, key, w);
  if (!a.is_array()) (w / key).fail("must be an array, got ", type_name(a));
  return a;
}

}  // namespace

// Sequences may nest; a hostile file must not recurse without bound.
constexpr size_t kMaxNesting = 32;

std::unique_ptr<Normalizer> make_normalizer(const json& j, const Where& w) {
  if (j.is_null()) return nullptr;
  if (std::count(w.path.begin(), w.path.end(), '[') > static_cast<long>(kMaxNesting)) w.fail("nests Sequences too deeply");
  const std::string type = get_string(j, "type", w);
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFKD);
  if (type == "Sequence") {
    const json& list = array_member(j, "normalizers", w);
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto n = make_normalizer(list[i], (w / "normalizers")[i]);
      if (n) steps.push_back(std::move(n));
    }
    return std::make_unique<NormalizerSequence>(std::move(steps));
  }
  (w / "type").fail("'", type, "' is not a supported normalizer (NFC, NFD, NFKC, NFKD, Sequence)");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const Where& w) {
  if (j.is_null()) return nullptr;
  if (std::count(w.path.begin(), w.path.end(), '[') > static_cast<long>(kMaxNesting)) w.fail("nests Sequences too deeply");
  const std::string type = get_string(j, "type", w);
  if (type == "Sequence") {
    const json& list = array_member(j, "pretokenizers", w);
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_pre_tokenizer(list[i], (w / "pretokenizers")[i]);
      if (p) steps.push_back(std::move(p));
    }
    return std::make_unique<PreTokenizerSequence>(std::move(steps));
  }
  if (type == "Split") {
    const json& pat = member(j, "pattern", w);
    const Where wp = w / "pattern";
    require_object(pat, wp);
    const Behavior behavior = parse_behavior(j, w);
    const bool invert = get_bool(j, "invert", w, false);
    if (pat.contains("Regex")) {
      const std::string re = get_string(pat, "Regex", wp);
      try {
        return std::make_unique<SplitPreTokenizer>(Regex(re), "", behavior, invert);
      } catch (const Error& e) {
        wp.fail(e.what());
      }
    }
    if (pat.contains("String"))
      return std::make_unique<SplitPreTokenizer>(std::nullopt, get_string(pat, "String", wp), behavior, invert);
    wp.fail("must hold either \"Regex\" or \"String\"");
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(get_bool(j, "add_prefix_space", w, true),
                                                   get_bool(j, "use_regex", w, true));
  if (type == "Digits") return std::make_unique<DigitsPreTokenizer>(get_bool(j, "individual_digits", w, false));
  (w / "type").fail("'", type, "' is not a supported pre-tokenizer (Split, ByteLevel, Digits, Sequence)");
}

}  // namespace mosaic::tok
