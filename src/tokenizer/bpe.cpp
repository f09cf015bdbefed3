#include "tokenizer/bpe.h"

#include <queue>

#include "tokenizer/unicode.h"

namespace mosaic::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Words longer than this are not cached (tokenizers uses the same idea: huge one-off runs of
// characters would only fill the cache).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 20;

}  // namespace

Bpe::Bpe(const json& model, const Where& w) {
  require_object(model, w);
  const json* dropout = optional_member(model, "dropout", w);
  if (dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0))
    (w / "dropout").fail("is set; BPE dropout is not supported (it makes encoding random)");
  if (get_bool(model, "byte_fallback", w, false))
    (w / "byte_fallback").fail("is true; byte fallback is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto v = get_optional_string(model, key, w);
    if (v && !v->empty()) (w / key).fail("is '", *v, "'; only an empty or null value is supported");
  }
  fuse_unk_ = get_bool(model, "fuse_unk", w, false);
  ignore_merges_ = get_bool(model, "ignore_merges", w, false);

  const json& vocab = member(model, "vocab", w);
  const Where wv = w / "vocab";
  if (!vocab.is_object()) wv.fail("must be an object mapping tokens to ids, got ", type_name(vocab));
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = as_id(it.value(), wv / it.key());
    vocab_[it.key()] = id;
    // Two tokens sharing an id would make decoding ambiguous; keep the first, like a map insert.
    vocab_r_.emplace(id, it.key());
    max_id_ = std::max(max_id_, id);
  }

  if (auto unk = get_optional_string(model, "unk_token", w)) {
    auto it = vocab_.find(*unk);
    // tokenizers only fails when the unknown token is actually needed; failing early is clearer.
    if (it == vocab_.end()) (w / "unk_token").fail("'", *unk, "' is not in the vocabulary");
    unk_id_ = it->second;
  }

  const json& merges = member(model, "merges", w);
  const Where wm = w / "merges";
  if (!merges.is_array()) wm.fail("must be an array, got ", type_name(merges));
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    std::string a, b;
    if (m.is_string()) {
      // Legacy "a b" form: exactly one space separates the two parts.
      const std::string& s = m.get_ref<const std::string&>();
      if (s.rfind("#version", 0) == 0) continue;  // merges.txt header line, skipped by tokenizers
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        wm[i].fail("'", s, "' must be two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      wm[i].fail("must be a string \"a b\" or an array [\"a\", \"b\"], got ", m.dump().substr(0, 80));
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    if (ia == vocab_.end()) wm[i].fail("uses token '", a, "' which is not in the vocabulary");
    if (ib == vocab_.end()) wm[i].fail("uses token '", b, "' which is not in the vocabulary");
    if (iab == vocab_.end()) wm[i].fail("produces token '", a + b, "' which is not in the vocabulary");
    // A repeated pair takes its last rank, as when tokenizers collects the merges into a map.
    merges_[pair_key(ia->second, ib->second)] = {rank, iab->second};
    ++rank;
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  auto it = vocab_r_.find(id);
  return it == vocab_r_.end() ? nullptr : &it->second;
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    // LLaMA-3 sets ignore_merges: a pre-token that is itself a vocabulary entry is emitted whole,
    // even if the merges would have split it differently.
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kMaxCacheEntries) cache_.emplace(std::string(word), std::move(ids));
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // Symbols form a doubly linked list over the characters; len == 0 marks a merged-away symbol.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    size_t len;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  std::optional<std::pair<int32_t, size_t>> pending_unk;  // (id, byte length) not yet emitted
  auto push = [&symbols](int32_t id, size_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, len});
  };
  for (size_t i = 0; i < word.size();) {
    const size_t b = i;
    i += std::min(unicode::utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(b, i - b);
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      if (pending_unk) push(pending_unk->first, pending_unk->second);
      pending_unk.reset();
      push(it->second, ch.size());
    } else if (unk_id_) {
      // Unknown character: an unk token, fused with a preceding unk when fuse_unk is set.
      if (pending_unk && fuse_unk_) {
        pending_unk->second += ch.size();
      } else {
        if (pending_unk) push(pending_unk->first, pending_unk->second);
        pending_unk = std::make_pair(*unk_id_, ch.size());
      }
    }
    // Without an unk token an unknown character is dropped, as tokenizers does.
  }
  if (pending_unk) push(pending_unk->first, pending_unk->second);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Merge {
    int32_t pos, rank, new_id;
    bool operator<(const Merge& o) const {  // priority_queue pops the "largest": lowest rank, then pos
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Merge> queue;
  auto lookup = [this](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i)
    if (auto m = lookup(symbols[i].id, symbols[i + 1].id))
      queue.push({static_cast<int32_t>(i), m->first, m->second});

  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const Symbol right = symbols[cur.next];
    // Skip stale entries: the pair at this position changed since the entry was queued.
    const auto* m = lookup(cur.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;
    symbols[cur.next].len = 0;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    if (right.next != -1) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0)
      if (auto pm = lookup(symbols[cur.prev].id, cur.id)) queue.push({cur.prev, pm->first, pm->second});
    if (cur.next != -1)
      if (auto nm = lookup(cur.id, symbols[cur.next].id)) queue.push({top.pos, nm->first, nm->second});
  }
  for (int32_t i = 0; i != -1 && i < static_cast<int32_t>(symbols.size()); i = symbols[i].next)
    out.push_back(symbols[i].id);
}

}  // namespace mosaic::tok
