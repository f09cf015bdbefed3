#include "tokenizer/added_vocab.h"

#include <algorithm>
#include <climits>
#include <functional>

#include "tokenizer/unicode.h"

namespace mosaic::tok {

void AddedVocab::Trie::insert(std::string_view s, int32_t token) {
  int32_t n = 0;
  for (unsigned char c : s) {
    auto it = nodes[n].next.find(c);
    if (it == nodes[n].next.end()) {
      nodes.emplace_back();
      it = nodes[n].next.emplace(c, static_cast<int32_t>(nodes.size() - 1)).first;
    }
    n = it->second;
  }
  nodes[n].token = token;
}

std::pair<int32_t, size_t> AddedVocab::Trie::longest_at(std::string_view text, size_t pos) const {
  std::pair<int32_t, size_t> best{-1, 0};
  int32_t n = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = nodes[n].next.find(static_cast<unsigned char>(text[i]));
    if (it == nodes[n].next.end()) break;
    n = it->second;
    if (nodes[n].token >= 0) best = {nodes[n].token, i + 1 - pos};
  }
  return best;
}

void AddedVocab::load(const json& list, const Where& w,
                      const std::function<std::optional<int32_t>(std::string_view)>& model_lookup,
                      size_t model_size, const Normalizer* normalizer) {
  if (list.is_null()) return;
  if (!list.is_array()) w.fail("must be an array, got ", type_name(list));
  for (size_t i = 0; i < list.size(); ++i) {
    const Where wi = w[i];
    const json& t = list[i];
    AddedToken tok;
    tok.content = get_string(t, "content", wi);
    (void)as_id(member(t, "id", wi), wi / "id");
    tok.special = get_bool(t, "special", wi, false);
    tok.single_word = get_bool(t, "single_word", wi, false);
    tok.lstrip = get_bool(t, "lstrip", wi, false);
    tok.rstrip = get_bool(t, "rstrip", wi, false);
    tok.normalized = get_bool(t, "normalized", wi, !tok.special);
    if (tok.content.empty()) continue;  // tokenizers ignores empty added tokens
    if (auto it = by_content_.find(tok.content); it != by_content_.end()) {
      tok.id = tokens_[it->second].id;  // same content again: the later flags win
      tokens_[it->second] = tok;
      continue;
    }
    if (auto id = model_lookup(tok.content)) {
      tok.id = *id;
    } else {
      // Next free id, computed as tokenizers' AddedVocabulary::add_tokens does.
      const int32_t m = max_id();
      if (m == INT32_MAX) wi.fail("cannot be given an id: ids are exhausted");
      tok.id = (m < 0) ? static_cast<int32_t>(model_size)
               : (static_cast<size_t>(m) >= model_size || model_size == 0) ? m + 1
                                                                             : static_cast<int32_t>(model_size);
    }
    if (auto it = by_id_.find(tok.id); it != by_id_.end()) {
      // Two contents on one id (only possible in odd files): the later one replaces the mapping.
      by_content_.erase(tokens_[it->second].content);
      tokens_[it->second] = tok;
      by_content_[tok.content] = it->second;
      continue;
    }
    max_id_ = std::max(max_id_, tok.id);
    by_id_[tok.id] = tokens_.size();
    by_content_[tok.content] = tokens_.size();
    tokens_.push_back(std::move(tok));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    AddedToken& t = tokens_[i];
    t.decode_form = (t.normalized && normalizer != nullptr) ? normalizer->apply(t.content) : t.content;
    (t.normalized ? normalized_trie_ : raw_trie_).insert(t.decode_form, static_cast<int32_t>(i));
  }
}

namespace {

// The last character of s is a "word" character (Rust char::is_alphanumeric).
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  size_t i = b;
  return unicode::is_alphanumeric(unicode::next_codepoint(s, i));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return unicode::is_alphanumeric(unicode::next_codepoint(s, i));
}

// Start of the run of whitespace that ends s.
size_t space_leftmost_at_end(std::string_view s) {
  size_t start = s.size();
  while (start > 0) {
    size_t b = start - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!unicode::is_whitespace(unicode::next_codepoint(s, i))) break;
    start = b;
  }
  return start;
}

// Length of the run of whitespace that starts s.
size_t space_rightmost_at_start(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!unicode::is_whitespace(unicode::next_codepoint(s, j))) break;
    i = j;
  }
  return i;
}

}  // namespace

void AddedVocab::split_with(const Trie& trie, std::string_view text, std::vector<Segment>& out) const {
  if (trie.empty()) {
    if (!text.empty()) out.push_back({std::string(text), -1});
    return;
  }
  size_t start_offset = 0;  // end of the previous accepted match
  size_t pos = 0;           // where the leftmost-longest scan resumes
  while (pos < text.size()) {
    auto [tok, len] = trie.longest_at(text, pos);
    if (tok < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the scan continues after this match whether or not it is accepted
    const AddedToken& t = tokens_[tok];
    if (t.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(space_leftmost_at_end(text.substr(0, start)), start_offset);
    if (t.rstrip) stop += space_rightmost_at_start(text.substr(stop));
    if (start_offset < start) out.push_back({std::string(text.substr(start_offset, start - start_offset)), -1});
    out.push_back({std::string(text.substr(start, stop - start)), t.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({std::string(text.substr(start_offset)), -1});
}

std::vector<Segment> AddedVocab::split(std::string_view text, const Normalizer* normalizer) const {
  std::vector<Segment> raw;
  split_with(raw_trie_, text, raw);
  std::vector<Segment> out;
  for (auto& seg : raw) {
    if (seg.id >= 0) {
      out.push_back(std::move(seg));
      continue;
    }
    const std::string norm = normalizer ? normalizer->apply(seg.text) : std::move(seg.text);
    split_with(normalized_trie_, norm, out);
  }
  return out;
}

const AddedToken* AddedVocab::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocab::by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

bool AddedVocab::is_special_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it != by_content_.end() && tokens_[it->second].special;
}


}  // namespace mosaic::tok
