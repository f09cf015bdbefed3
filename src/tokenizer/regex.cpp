#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <optional>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace mosaic {

struct Regex::Code {
  pcre2_code* re = nullptr;
  ~Code() { pcre2_code_free(re); }
};

Regex::Regex(const std::string& pattern) : pattern_(pattern), code_(std::make_unique<Code>()) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  code_->re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  if (code_->re == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("regex '", pattern, "' does not compile at offset ", err_offset, ": ",
         reinterpret_cast<const char*>(msg));
  }
  // JIT is only a speed-up; if the platform lacks it the interpreter gives the same matches.
  (void)pcre2_jit_compile(code_->re, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

namespace {

// A stand-in code point with the given class and UTF-8 length that PCRE2 10.42 classifies the
// way Oniguruma classifies the original (see unicode::regex_class_override), or 0 if none.
char32_t proxy_for(int cls, size_t len) {
  switch (cls) {
    case 1: return len == 2 ? 0x0100 : len == 3 ? 0x4E00 : 0x20000;    // letters (Lu, Lo, Lo)
    case 2: return len == 2 ? 0x0660 : len == 3 ? 0x0966 : 0x1D7CE;    // decimal digits
    case 4: return len == 2 ? 0x0085 : len == 3 ? 0x2000 : 0;          // spaces (none 4 bytes long)
    case 0: return len == 2 ? 0x00A7 : len == 3 ? 0x2010 : 0x1F600;    // punctuation / symbol
    default: return 0;
  }
}

// Returns a copy of text with every code point from the override table replaced by a proxy of
// the same byte length, so match offsets in the copy are offsets in the original; or nothing
// when no such code point occurs (the common case: one pass, no copy).
std::optional<std::string> proxied(std::string_view text) {
  std::optional<std::string> out;
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t b = i;
    const char32_t cp = unicode::next_codepoint(text, i);
    const int cls = unicode::regex_class_override(cp);
    if (cls < 0) continue;
    const char32_t proxy = proxy_for(cls, i - b);
    if (proxy == 0) continue;
    if (!out) out.emplace(text);
    std::string enc;
    unicode::append_utf8(enc, proxy);
    out->replace(b, enc.size(), enc);
  }
  return out;
}

}  // namespace

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view original) const {
  const std::optional<std::string> substitute = proxied(original);
  const std::string_view text = substitute ? std::string_view(*substitute) : original;
  std::vector<std::pair<size_t, size_t>> out;
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code_->re, nullptr), &pcre2_match_data_free);
  if (!md) fail("out of memory matching regex '", pattern_, "'");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    const int rc = pcre2_match(code_->re, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex '", pattern_, "' failed while matching: ", reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t b = ov[0], e = ov[1];
    if (e < b) break;  // \K tricks can produce this; such patterns are not supported
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else {
      // Empty match: step over one character so the scan always progresses.
      if (e >= text.size()) break;
      pos = e + unicode::utf8_len(static_cast<unsigned char>(text[e]));
    }
  }
  return out;
}

}  // namespace mosaic
