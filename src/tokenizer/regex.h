// A compiled PCRE2 regex (UTF + UCP, JIT when available) standing in for the Oniguruma regexes
// of Hugging Face `tokenizers`. Only find-all is needed: the pre-tokenizers split on matches.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mosaic {

class Regex {
 public:
  // Throws mosaic::Error naming the pattern when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Non-overlapping matches, left to right, as [begin, end) byte offsets. `text` must be valid
  // UTF-8 (the caller validates once; PCRE2's own check would make this quadratic).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::string pattern_;
  std::unique_ptr<Code> code_;
};

}  // namespace mosaic
